"""`ganpipe submit`: run `ganpipe train ...` as a Ray job on an existing cluster (no Prefect needed).

The job's entrypoint is `python -m pipelines.cli train ...`, which runs from the uploaded working directory
on a stock Ray cluster (the cluster's Python needs the project's dependencies: the project image, or
`--pip-requirements`) and from the installed package in the project image (`--no-upload`). The job's
submission id is derived from the request (the resolved training settings and the dataset), so a retried
submission attaches to the job already running or finished instead of starting a duplicate; the training
run's name is derived the same way, so a new job for the same request resumes from durable storage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys

from gan_core.errors import UserError

EPILOG = """Everything after `--` is passed to `ganpipe train` on the cluster; it is parsed and its configuration
validated here first, so a typo fails in a second instead of after the job starts. The job runs with
the working directory uploaded (--working-dir, default: this directory) unless the cluster's image
already holds the project (--no-upload). Submitting the same request again attaches to its job (one job
per request); --submission-id names a new one. The exit code is the job's: 0 when it SUCCEEDED.

A cluster with token authentication (Ray >= 2.60 by default) needs RAY_AUTH_MODE=token and its token
(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token).

examples:
  ganpipe submit --address http://head:8265 -- --dataset s3://bucket/root/datasets/digits --workers 4
  RAY_ADDRESS=http://head:8265 ganpipe submit --no-wait -- --dataset s3://bucket/root/datasets/faces64 \\
      --preset dcgan64 --workers 8 --gpus --storage s3://bucket/runs
  ganpipe submit --address http://head:8265 -- --dataset ...    # again: attaches and follows the same job
  ray job logs JOB_ID --address http://head:8265 --follow       # after --no-wait
"""

EXCLUDES = [".venv", ".git", "runs", "*.egg-info", "__pycache__", ".pytest_cache", ".ganpipe"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("submit", help="submit training as a Ray job to a cluster",
                       description="Submit 'ganpipe train ...' as a Ray job (ray.job_submission) to the cluster "
                                   "at --address or RAY_ADDRESS, follow its logs, and exit with its status.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="the cluster's dashboard address, e.g. http://head:8265 (default: RAY_ADDRESS)")
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    p.add_argument("--no-upload", action="store_true", help="upload nothing: the cluster's image has the project")
    p.add_argument("--pip-requirements", metavar="FILE",
                   help="a requirements file Ray installs into the job's environment (a stock cluster)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=1.0,
                   help="CPUs reserved for the driver (default 1; the training workers reserve their own)")
    p.add_argument("--submission-id", help="the job's id (default: derived from the request, so a retry attaches)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN_ARGS",
                   help="arguments for 'ganpipe train' (see ganpipe train --help)")
    p.set_defaults(func=run)
    return p


def validate_train_args(train_args: list[str]) -> tuple[list[str], dict]:
    """(the `ganpipe train` arguments, the request they make: resolved settings and dataset), validated
    here exactly as the job will validate them; UserError otherwise."""
    from pipelines.cli import build_parser
    from pipelines.commands.train import resolve_train_settings

    args = list(train_args)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise UserError("nothing to submit: give the training arguments after --, e.g. -- --dataset s3://.../digits")
    try:
        ns = build_parser().parse_args(["train", *args])
    except SystemExit:
        raise UserError(f"ganpipe train {' '.join(args)}: invalid arguments (see ganpipe train --help)") from None
    settings = resolve_train_settings(ns)  # a typo fails here, in a second
    return args, {"dataset": ns.dataset, "settings": settings.to_dict()}


def train_entrypoint(train_args: list[str]) -> str:
    """The job's shell entrypoint: the module, not the `ganpipe` script, which exists only where the
    project is installed (an uploaded working directory is importable as it is)."""
    return "python -m pipelines.cli train " + " ".join(shlex.quote(a) for a in train_args)


def submission_id(request: dict, upload: bool) -> str:
    """`ganpipe-train-<hash>` of the request (resolved settings, dataset, code source): the same request
    always gets the same id, so a retry finds its job."""
    from infra.data.shardset import content_address

    return "ganpipe-train-" + content_address({**request, "upload": upload}, hex_chars=12)


def runtime_env(args: argparse.Namespace) -> dict:
    env: dict = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
    if not args.no_upload:
        if not os.path.isdir(args.working_dir):
            raise UserError(f"--working-dir {args.working_dir}: no such directory")
        env.update(working_dir=args.working_dir, excludes=list(EXCLUDES))
    if args.pip_requirements:
        if not os.path.isfile(args.pip_requirements):
            raise UserError(f"--pip-requirements {args.pip_requirements}: no such file")
        env["pip"] = os.path.abspath(args.pip_requirements)
    return env


def connect(address: str):
    """A JobSubmissionClient for `address`; UserError (one line, with the fix) when unreachable or refused."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise UserError(f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token and "
                        "RAY_AUTH_TOKEN (or the file ~/.ray/auth_token) to the cluster's token") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None


def submit_or_attach(client, job_id: str, entrypoint: str, env: dict, num_cpus: float) -> bool:
    """Submit the job under `job_id` unless a job of that id exists; True when it was submitted now."""
    if job_exists(client, job_id):
        return False
    try:
        client.submit_job(entrypoint=entrypoint, runtime_env=env, entrypoint_num_cpus=num_cpus,
                          submission_id=job_id)
        return True
    except RuntimeError:
        if job_exists(client, job_id):  # submitted concurrently by another retry: attach to it
            return False
        raise


def job_exists(client, job_id: str) -> bool:
    try:
        client.get_job_info(job_id)
        return True
    except RuntimeError as e:  # the job server answers 404 for an unknown id
        if "does not exist" in str(e):
            return False
        raise


async def follow_logs(client, job_id: str) -> None:
    """Stream the job's log (Ray's tail API: new lines as they are written) until the job ends."""
    async for lines in client.tail_job_logs(job_id):
        sys.stderr.write(lines)
        sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from ray.job_submission import JobStatus

    train_args, request = validate_train_args(args.train_args)
    entrypoint = train_entrypoint(train_args)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no cluster: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    env = runtime_env(args)
    job_id = args.submission_id or submission_id(request, upload=not args.no_upload)
    client = connect(address)
    submitted = submit_or_attach(client, job_id, entrypoint, env, args.entrypoint_num_cpus)
    status = client.get_job_status(job_id)
    verb = "submitted" if submitted else f"attached to ({status.value})"
    print(f"{verb} {job_id}: {entrypoint}", file=sys.stderr)
    print(job_id)
    if args.no_wait:
        return 0
    try:
        asyncio.run(follow_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"detached from {job_id}; it keeps running (submit the same request again to follow it)",
              file=sys.stderr)
        return 130
    status = client.get_job_status(job_id)
    print(f"[{job_id}] {status.value}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1
