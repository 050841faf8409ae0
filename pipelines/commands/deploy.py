"""`ganpipe deploy`: the pipeline on a cron schedule, served from this host or deployed to a work pool."""

from __future__ import annotations

import argparse
import sys

from gan_core.errors import UserError
from pipelines.commands.run import add_config_arguments, add_console_arguments, console, resolve_request

EPILOG = """\
Without --work-pool, this process serves the deployment (Prefect's flow.serve): it stays in the
foreground and starts each scheduled run as a subprocess on this host; stop it with Ctrl-C (its
schedule is paused). With --work-pool, the deployment is registered with that pool (flow.deploy) and a
worker runs it (e.g. a Kubernetes work pool with --image); the command returns at once.

Both need a Prefect server that outlives this command: set PREFECT_API_URL (e.g. `prefect server
start`, then PREFECT_API_URL=http://127.0.0.1:4200/api). The config file is read now and travels with
the deployment as a parameter, so workers do not need the file. infra/prefect.yaml declares the same
deployment for `prefect deploy`.

examples:
  ganpipe deploy --name nightly --cron "0 3 * * *"
  ganpipe deploy --name nightly --cron "0 3 * * *" --config nightly.toml --timezone Europe/Paris
  ganpipe deploy --name nightly --cron "0 3 * * *" --work-pool k8s --image registry.example/ganpipe:1.0 \\
      --set cluster.num_workers=8 --set cluster.use_gpu=true
  prefect deployment run 'gan-pipeline/nightly'        # a run now, outside the schedule
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("deploy", help="serve or deploy the pipeline on a cron schedule",
                       description="Create a Prefect deployment of the 'gan-pipeline' flow with a cron schedule, "
                                   "and serve it from this host or register it with a work pool.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="deployment name, e.g. nightly")
    p.add_argument("--cron", required=True, help='cron schedule, e.g. "0 3 * * *" (03:00 every day)')
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule (default: %(default)s)")
    p.add_argument("--work-pool", metavar="POOL", help="deploy to this work pool instead of serving from this host")
    p.add_argument("--image", help="work pools: the image the runs use (built and pushed elsewhere)")
    p.add_argument("--tag", action="append", default=[], help="deployment tag (repeatable)")
    p.add_argument("--paused", action="store_true", help="create the schedule paused")
    add_config_arguments(p)
    add_console_arguments(p, "deploy")
    p.set_defaults(func=run)
    return p


def schedule(cron: str, timezone: str = "UTC"):
    """A Prefect cron schedule; a bad expression or time zone is a one-line UserError."""
    from pydantic import ValidationError

    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron

    try:
        CronSchedule(cron=cron, timezone=timezone)  # validates both now, not when the server rejects them
    except ValidationError as e:
        msg = e.errors()[0].get("msg", str(e)).removeprefix("Value error, ")
        raise UserError(f"--cron {cron!r} / --timezone {timezone!r}: {msg}") from None
    return Cron(cron, timezone=timezone)


def make_deployment(name: str, cron: str, parameters: dict, *, timezone: str = "UTC", tags: list[str] = (),
                    paused: bool = False):
    """The RunnerDeployment of gan_pipeline (module entrypoint: the installed package, not a file path)."""
    from prefect.types.entrypoint import EntrypointType

    from pipelines.flow import gan_pipeline

    return gan_pipeline.to_deployment(
        name=name, schedules=[schedule(cron, timezone)], parameters=parameters, tags=list(tags) or None,
        paused=paused or None, entrypoint_type=EntrypointType.MODULE_PATH,
        description="ganpipe: stage, train on Ray, evaluate, register (champion rule), sample a preview")


def check_deployment_name(name: str) -> None:
    """A deployment name Prefect accepts (its own NonEmptyishName type: not empty, none of / % & > <);
    else a UserError naming --name (Prefect's InvalidNameError surfaced as a traceback after start-up)."""
    from prefect.types.names import BANNED_CHARACTERS, NonEmptyishName
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(NonEmptyishName).validate_python(name)
    except ValidationError:
        raise UserError(f"--name: got {name!r}; allowed: a non-empty name without {' '.join(BANNED_CHARACTERS)}") from None


def run(args: argparse.Namespace) -> int:
    import os

    check_deployment_name(args.name)
    tree, settings = resolve_request(args)  # the whole config is validated before anything is created
    # the deployment carries the request (the file's tree travels as data), resolved by each run
    parameters = {k: v for k, v in {"preset": args.preset, "config": tree, "overrides": list(args.set)}.items()
                  if v not in (None, [])}
    sched = schedule(args.cron, args.timezone)
    if args.image and not args.work_pool:
        raise UserError("--image: only meaningful with --work-pool (served runs use this host's environment)")
    if not os.environ.get("PREFECT_API_URL"):  # Prefect's temporary server would stop with this command
        raise UserError("PREFECT_API_URL is not set: a deployment lives in a Prefect server that outlives this "
                        "command; start one (PREFECT_SERVER_API_PORT=4200 prefect server start --port 4200) and "
                        "set PREFECT_API_URL=http://127.0.0.1:4200/api")
    print(f"deploying gan-pipeline/{args.name}: cron {args.cron!r} ({args.timezone}), preset {settings.preset}, "
          f"model {settings.model_name}", file=sys.stderr)
    if args.work_pool:
        from prefect.types.entrypoint import EntrypointType

        from pipelines.flow import gan_pipeline

        try:
            deployment_id = gan_pipeline.deploy(
                name=args.name, work_pool_name=args.work_pool, image=args.image, build=False, push=False,
                schedules=[sched], parameters=parameters, tags=args.tag or None, paused=args.paused or None,
                entrypoint_type=EntrypointType.MODULE_PATH, print_next_steps=True)
        except ValueError as e:  # e.g. the work pool does not exist
            raise UserError(str(e).splitlines()[0]) from None
        print(f"deployment {deployment_id}")
        return 0
    from prefect import serve

    deployment = make_deployment(args.name, args.cron, parameters, timezone=args.timezone, tags=args.tag,
                                 paused=args.paused)
    # the served runs (subprocesses of this one) print like `ganpipe run`: the pipeline's lines here,
    # everything else (Prefect's runner, Ray, MLflow, warnings) in the log
    with console(args, "deploy", f"serving gan-pipeline/{args.name} from this host: each scheduled run starts "
                                 f"here; Ctrl-C stops serving (the schedule is paused); a run now: prefect "
                                 f"deployment run 'gan-pipeline/{args.name}'"):
        serve(deployment)  # blocks; Ctrl-C pauses the schedule and returns
    return 0
