"""`ganpipe register`: (re-)register a finished run's generator in the MLflow model registry."""

from __future__ import annotations

import argparse

from gan_core.errors import UserError


DESCRIPTION = """\
Register a finished run's generator (its checkpoint's G_ema) as a new version of an MLflow registered model,
evaluate it, and export it for non-Python consumers. With an MLflow run id, the run's last checkpoint, dataset
version and normalisation are used; with a checkpoint, pass --scale/--offset for data that is not in model
units. The new version becomes @champion only if it beats the current champion (ties keep it); --no-promote
registers without moving it. `ganpipe run` registers by itself: use this command when that step failed
(it names this command) or to register a checkpoint trained elsewhere.

examples:
  ganpipe register --run 5f2c0e... --name ganpipe-digits
  ganpipe register --run ~/.ganpipe/ray_results/gan-digits-0123abcd/checkpoint-000003000 --name digits-v2 --no-promote
  ganpipe register --run s3://bucket/runs/gan-faces64-.../checkpoint-000050000 --name faces64 \\
      --dataset s3://bucket/root/datasets/faces64 --scale 0.0078431 --offset -1
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "register", help="register a finished run's generator in MLflow",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_ID_OR_CHECKPOINT",
                   help="MLflow run id of a training run, or a checkpoint directory / URI")
    p.add_argument("--name", default="ganpipe-generator", help="registered model name (default: %(default)s)")
    p.add_argument("--alias", default="champion", help="alias to move if the new version is better (default: %(default)s)")
    p.add_argument("--no-promote", action="store_true", help="register without considering the alias")
    p.add_argument("--force", action="store_true", help="move the alias even if the new version is not better")
    p.add_argument("--scale", type=float, default=None,
                   help="data normalisation scale: model value = data value * scale + offset (default: the run's, else 1)")
    p.add_argument("--offset", type=float, default=None, help="data normalisation offset (default: the run's, else 0)")
    p.add_argument("--dataset-version", default=None, help="dataset version to record (default: the run's)")
    p.add_argument("--dataset", metavar="REF", help="the staged dataset to evaluate against: <root>/datasets/<name>"
                                                    "[/<version>] (needed when the checkpoint's dataset is not built in)")
    p.add_argument("--no-export", action="store_true", help="skip the torch.export / ONNX files")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from gan_core.data import Normalisation
    from mlflow.exceptions import MlflowException

    from infra.models.registry import register_generator, resolve_checkpoint, store_unreachable
    from infra.base.settings import check_mlflow_reachable
    from infra.base.storage import first_line
    from pipelines.settings import check_alias, check_model_name

    # 1. the names first: nothing is evaluated, logged or registered for a name MLflow would refuse
    check_model_name(args.name, "--name")
    check_alias(args.alias, "--alias")
    check_mlflow_reachable()  # 2. a tracking / registry server that does not answer: seconds, not minutes
    try:
        checkpoint, run_id = resolve_checkpoint(args.run)
        normalisation = None
        if args.scale is not None or args.offset is not None:
            normalisation = Normalisation(args.scale if args.scale is not None else 1.0,
                                          args.offset if args.offset is not None else 0.0)
        evaluator = None
        if args.dataset:  # the project's evaluation in its feature space (raw pixels would need a d x d sqrtm)
            from infra.data.datasets import load_numpy
            from infra.models.evaluation import gan_core_evaluator
            from infra.base.settings import cache_dir

            evaluator = gan_core_evaluator(*load_numpy(args.dataset, normalised=True), cache_dir=cache_dir())
        reg = register_generator(
            checkpoint, args.name, run_id=run_id, normalisation=normalisation, evaluator=evaluator,
            dataset_version=args.dataset_version, alias=args.alias, promote=not args.no_promote, force=args.force,
            export_formats=() if args.no_export else ("pt2", "onnx"))
    except UserError:
        raise  # one line at the boundary, as it is
    except ValueError as e:  # a value numpy or torch refuses in what the user gave
        raise UserError(str(e)) from None
    except MlflowException as e:  # the store failed midway (after the run was found): one line, no traceback
        if store_unreachable(e):
            raise UserError(f"registration failed, the MLflow store did not answer ({first_line(e)}); "
                            "run the same command again once it is back") from None
        raise UserError(f"registration failed, the MLflow store refused it ({first_line(e)})") from None
    ev = reg.evaluation
    print(f"registered {reg.name} version {reg.version} ({reg.model_uri})")
    print(f"  {ev.primary} = {ev.value:.6g} ({'higher' if ev.higher_is_better else 'lower'} is better)")
    print(f"  {reg.decision}; @{args.alias} -> version {reg.champion_version or '-'}")
    return 0
