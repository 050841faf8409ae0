"""`ganpipe submit`: run `ganpipe train ...` as a Ray job on an existing cluster (no Prefect needed)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from pipelines.cli import UserError

EPILOG = """\
Everything after `--` is passed to `ganpipe train` on the cluster; it is parsed and its configuration
validated here first, so a typo fails in a second instead of after the job starts. The job runs on the
cluster with the working directory uploaded (--working-dir, default: this directory) unless the
cluster's image already holds the project (--no-upload).

examples:
  ganpipe submit --address http://head:8265 -- --dataset s3://bucket/root/datasets/digits --workers 4
  RAY_ADDRESS=http://head:8265 ganpipe submit --no-wait -- --dataset s3://bucket/root/datasets/faces64 \\
      --preset dcgan64 --workers 8 --gpus --storage s3://bucket/runs
  ray job logs JOB_ID --address http://head:8265 --follow      # after --no-wait
"""

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("submit", help="submit training as a Ray job to a cluster",
                       description="Submit 'ganpipe train ...' as a Ray job (ray.job_submission) to the cluster "
                                   "at --address or RAY_ADDRESS, and follow it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="the cluster's dashboard address, e.g. http://head:8265 (default: RAY_ADDRESS)")
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    p.add_argument("--no-upload", action="store_true", help="upload nothing: the cluster's image has the project")
    p.add_argument("--entrypoint-num-cpus", type=float, default=1.0,
                   help="CPUs reserved for the driver (default 1; the training workers reserve their own)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN_ARGS",
                   help="arguments for 'ganpipe train' (see ganpipe train --help)")
    p.set_defaults(func=run)
    return p


def train_entrypoint(train_args: list[str]) -> str:
    """Validate `ganpipe train` arguments here and return the job's shell entrypoint."""
    from pipelines.cli import build_parser
    from pipelines.commands.train import resolve_train_settings

    args = list(train_args)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise UserError("nothing to submit: give the training arguments after --, e.g. -- --dataset s3://.../digits")
    parser = build_parser()
    try:
        ns = parser.parse_args(["train", *args])
    except SystemExit:
        raise UserError(f"ganpipe train {' '.join(args)}: invalid arguments (see ganpipe train --help)") from None
    resolve_train_settings(ns)  # the same validation the job will run: a typo fails here, in a second
    return "ganpipe train " + " ".join(shlex.quote(a) for a in args)


def run(args: argparse.Namespace) -> int:
    entrypoint = train_entrypoint(args.train_args)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no cluster: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    from ray.job_submission import JobStatus, JobSubmissionClient

    runtime_env = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
    if not args.no_upload:
        if not os.path.isdir(args.working_dir):
            raise UserError(f"--working-dir {args.working_dir}: no such directory")
        runtime_env["working_dir"] = args.working_dir
        runtime_env["excludes"] = [".venv", ".git", "runs", "*.egg-info", "__pycache__"]
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                               entrypoint_num_cpus=args.entrypoint_num_cpus)
    print(f"submitted {job_id}: {entrypoint}", file=sys.stderr)
    print(job_id)
    if args.no_wait:
        return 0
    # follow: status changes and new log lines every few seconds
    printed, status = 0, None
    while True:
        new_status = client.get_job_status(job_id)
        if new_status != status:
            status = new_status
            print(f"[{job_id}] {status}", file=sys.stderr)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            sys.stderr.write(logs[printed:])
            printed = len(logs)
        if str(status).split(".")[-1] in TERMINAL:
            break
        time.sleep(3)
    return 0 if status == JobStatus.SUCCEEDED else 1
