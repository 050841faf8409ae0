"""`ganpipe train`: train on a staged dataset with Ray Train; no Prefect server needed, so that
`ray job submit --address ... -- ganpipe train ...` runs on an existing cluster."""

from __future__ import annotations

import argparse

from pipelines.commands.run import add_config_arguments, resolve_request

EXAMPLES = """examples:
  ganpipe train --dataset ~/.ganpipe/data/datasets/digits --preset digits
  ganpipe train --dataset s3://bucket/root/datasets/digits --workers 4 --gpus --storage s3://bucket/runs
  RAY_ADDRESS=http://head:8265 ray job submit --working-dir . -- ganpipe train --dataset ... --workers 8 --gpus
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a GAN with Ray Train on a staged dataset",
                       description="Train a GAN with Ray Train (PyTorch DDP) on a staged dataset. Connects to "
                                   "RAY_ADDRESS when set, else starts Ray locally. Re-running the same request "
                                   "resumes the run from its latest checkpoint.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="staged dataset: <root>/datasets/<name>[/<version>] (local or s3://)")
    add_config_arguments(p)
    p.add_argument("--workers", type=int, help="number of Ray Train workers (one per GPU)")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker (NCCL); default: CPU workers (gloo)")
    p.add_argument("--storage", help="run storage: a folder or s3://bucket/prefix (default: <GANPIPE_HOME>/ray_results)")
    p.add_argument("--run-name", help="run name (default: derived from the config and dataset version)")
    p.add_argument("--max-failures", type=int, help="worker-group restarts from the latest checkpoint (-1 = unlimited)")
    p.add_argument("--verify-sync", action="store_true", help="check after every update that workers hold identical weights")
    p.set_defaults(func=run)
    return p


def resolve_train_settings(args: argparse.Namespace):
    """Settings for `ganpipe train` (and `ganpipe submit`, which validates the same arguments before it
    submits): --preset/--config/--set, then the explicit cluster flags."""
    _, settings = resolve_request(args, needs_source=False, num_workers=args.workers, use_gpu=args.gpus or None,
                                  storage_path=args.storage, run_name=args.run_name,
                                  max_failures=args.max_failures, verify_sync=args.verify_sync or None)
    return settings


def run(args: argparse.Namespace) -> int:
    from infra.train.ray_train import TrainingStopped, launch_training, outcome_to_json
    from gan_core.errors import CommandFailed

    from pipelines.settings import check_output_locations

    settings = resolve_train_settings(args)
    try:
        check_output_locations(settings)  # --storage: before Ray starts
        outcome = launch_training(settings.gan, args.dataset, settings.cluster)
    except TrainingStopped as e:
        raise CommandFailed(str(e)) from None
    print(outcome_to_json(outcome))
    return 0
