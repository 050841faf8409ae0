"""`ganpipe run`: the whole pipeline as the Prefect flow `gan-pipeline`: stage, train, evaluate,
register (champion rule), sample a preview, and publish a markdown report."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gan_core.errors import UserError

EPILOG = """\
With nothing configured everything runs on this host under GANPIPE_HOME (default ~/.ganpipe): Ray
started locally, a temporary Prefect server, MLflow on SQLite, datasets in GANPIPE_HOME/data. Set
RAY_ADDRESS, PREFECT_API_URL, MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL (and [storage] root) to use
services instead.

A rerun reuses what is done: the staged dataset is content-addressed (cache hit: "already committed"),
and training resumes its run (same config + dataset = same run name) from the latest checkpoint.

examples:
  ganpipe run                                           # digits, the embedded default
  ganpipe run --preset ring8 --set train.total_steps=2000
  ganpipe run --config nightly.toml --set cluster.num_workers=4 --set cluster.use_gpu=true
  ganpipe run --config nightly.toml --dry-run           # print the resolved config (TOML) and stop
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the whole pipeline: stage, train, evaluate, register, sample",
                       description="Run the whole pipeline as the Prefect flow 'gan-pipeline': stage the dataset, "
                                   "train on Ray, evaluate G_ema against the real-vs-real floor, register it in "
                                   "MLflow (the alias moves only for a better version), and sample a preview grid.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as TOML and stop")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    add_console_arguments(p, "run")
    p.set_defaults(func=run)
    return p


def add_console_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """--verbose / --log-file, shared by run and deploy (whose served runs print alike)."""
    p.add_argument("--verbose", action="store_true",
                   help="show everything on the console (Ray, Prefect, MLflow, warnings); by default they go "
                        "to the log file and the console shows the pipeline's own lines")
    p.add_argument("--log-file", metavar="FILE",
                   help=f"where the full output goes (default: GANPIPE_HOME/logs/{command}-<UTC time>.log)")


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """--preset / --config / --set, shared by run and deploy."""
    from gan_core.config import PRESETS

    p.add_argument("--preset", help=f"GAN preset: {' | '.join(PRESETS)} (default: the config file's, else digits)")
    p.add_argument("--config", metavar="FILE", help="config file (TOML); see README 'Configuration'")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a field, e.g. --set train.total_steps=500 --set registry.model_name=faces "
                        "(repeatable; values parse as JSON when they can)")


def resolve_request(args, needs_source: bool = True, **cluster_overrides):
    """(the config file's tree or None, Settings) from --preset/--config/--set (and explicit cluster
    flags): the file is read and every value parsed and validated once, here; a one-line UserError
    otherwise (gan_core.config.ConfigError). The tree is what a deployment carries (workers need no file)."""
    from pipelines.settings import read_config_file, resolve_settings

    tree = read_config_file(args.config) if args.config else None
    return tree, resolve_settings(preset=args.preset, config_data=tree, overrides=args.set,
                                  cluster_overrides=cluster_overrides, needs_source=needs_source)


def default_log_file(command: str = "run") -> Path:
    from infra.base.settings import local_home

    return local_home() / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.log"


@contextlib.contextmanager
def console(args: argparse.Namespace, command: str, headline: str) -> Iterator[Path | None]:
    """The console of `command` as --verbose / --log-file ask: inside, everything printed goes to the log
    file and only the pipeline's own lines reach the terminal, starting with `headline` and the log's
    path. Yields that file; with --verbose nothing is captured and it yields None."""
    from infra.base.console import ConsoleCapture, say

    log_file = None if args.verbose else Path(args.log_file) if args.log_file else default_log_file(command)
    with contextlib.nullcontext() if log_file is None else ConsoleCapture(log_file):
        say(headline)
        if log_file is not None:
            say(f"full log: {log_file}")
        yield log_file


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    _, settings = resolve_request(args)  # 1. full validation before anything starts
    if args.dry_run:
        sys.stdout.write(settings.to_toml())
        return 0
    from infra.base.settings import check_mlflow_reachable
    from pipelines.settings import check_output_locations

    check_output_locations(settings)  # where it will write: before any service starts
    # a tracking / registry server given by address answers (the register step needs it even with
    # tracking off): seconds here, not MLflow's minutes of retries at registration
    check_mlflow_reachable()
    with console(args, "run", f"ganpipe run: preset {settings.preset}, dataset {settings.source_uri} -> "
                              f"{settings.storage_root}, model {settings.model_name}") as log_file:
        summary, temporary_api_url = run_pipeline(settings, args, log_file)
    # 3. where to look
    summary["seconds"] = {"service start-up": round(summary["started_at"] - t_start, 1), **summary["seconds"],
                          "total": round(time.time() - t_start, 1)}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    from pipelines.flow import summary_lines

    lines = ["", "ganpipe run: done"] + summary_lines(summary, temporary_api_url)
    if not args.verbose:
        lines.append(f"log          {log_file}   (Ray, Prefect, MLflow and warnings; --verbose shows them here)")
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout)
    return 0


def run_pipeline(settings, args, log_file: Path) -> tuple[dict, str | None]:
    """2. the services, side by side (a temporary Prefect server when PREFECT_API_URL is unset), then the
    flow. UserError families reach the boundary as they are (exit 2); a service that did not start is
    CommandFailed (exit 1); any other failure one line naming the log, with the traceback in the log."""
    import traceback

    from gan_core.errors import CommandFailed
    from pipelines.services import ServiceError, start_embedded_services

    try:
        temporary_api_url = start_embedded_services(settings, getattr(args, "embedded_prefect_home", None))
        from pipelines.flow import gan_pipeline

        return gan_pipeline(settings=settings), temporary_api_url
    except (UserError, CommandFailed):
        raise  # one line at the boundary (gan_core.errors.report)
    except ServiceError as e:
        raise CommandFailed(str(e)) from None
    except Exception as e:
        if args.verbose:
            raise
        traceback.print_exc()  # into the log
        first = (str(e).strip().splitlines() or [""])[0]
        raise CommandFailed(f"the pipeline failed: {type(e).__name__}: {first} (details: {log_file})") from None
