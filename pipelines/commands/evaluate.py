"""`ganpipe evaluate`: score a checkpoint's G_ema against real data, beside the real-vs-real floor."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from gan_core.errors import UserError

EPILOG = """\
CHECKPOINT is a checkpoint directory, a checkpoint URI (s3://...), or the MLflow run id of a training
run (its last checkpoint). Real data: the staged dataset given by --dataset (in the generator's units
after the manifest's normalisation), else the built-in dataset named in the checkpoint's config.

Every metric is printed beside its floor: the same metric for two disjoint halves of the real data,
i.e. what a perfect generator would score with as many samples. FD means something only next to it.

FID: with --inception FILE (default $GANPIPE_FID_INCEPTION), a local copy of NVIDIA's TorchScript
inception-2015-12-05.pt (the file StyleGAN2-ADA, StyleGAN3 and clean-fid use), the distance is the
standard FID, computed by torchmetrics and reported as `fid`. Without it: `fd` in the digits
classifier's features for digits, in random_conv256 features (a fixed random conv net) for other
images, comparable between runs here but not with papers. Nothing is downloaded.

examples:
  ganpipe evaluate ~/.ganpipe/ray_results/gan-digits-0123abcd/checkpoint-000003000
  ganpipe evaluate 5f2c0e... --dataset ~/.ganpipe/data/datasets/digits --json
  ganpipe evaluate 5f2c0e... --dataset ~/.ganpipe/data/datasets/faces64 --inception ~/models/inception-2015-12-05.pt
  ganpipe evaluate s3://bucket/runs/gan-faces64-.../checkpoint-000050000 --dataset s3://bucket/root/datasets/faces64
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint's G_ema",
                       description="Evaluate a checkpoint's G_ema: FD, KID, precision/recall and class or mode "
                                   "coverage, each beside its real-vs-real floor.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or URI, or an MLflow run id")
    p.add_argument("--dataset", help="staged dataset reference for the real data (default: the built-in dataset)")
    p.add_argument("--num-samples", type=int, default=0,
                   help="generated samples (default: the reference half of the real data, at most 10,000)")
    p.add_argument("--seed", type=int, default=0, help="sampling and split seed (default 0)")
    p.add_argument("--inception", metavar="FILE", help="FID Inception weights (NVIDIA's TorchScript "
                   "inception-2015-12-05.pt); default $GANPIPE_FID_INCEPTION; then the metric is 'fid'")
    p.add_argument("--feature-network", metavar="TORCHSCRIPT", help="any other TorchScript feature network ('fd')")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from gan_core.checkpoint import load_generator
    from gan_core.evaluate import evaluate_generator, feature_space, format_report, load_real_data
    from infra.data.datasets import load_numpy
    from infra.models.registry import resolve_checkpoint
    from infra.base.settings import cache_dir, check_mlflow_reachable, mlflow_tracking_uri
    from infra.base.storage import first_line, is_s3
    from pipelines.flow import fetch_checkpoint
    from pipelines.settings import default_inception, inception_weights

    if args.num_samples < 0:
        raise UserError(f"--num-samples: got {args.num_samples}; allowed: an integer >= 0")
    ckpt = args.checkpoint
    if ("/" in ckpt or ckpt.startswith(".")) and "://" not in ckpt and not os.path.isdir(ckpt):
        raise UserError(f"{ckpt}: no such checkpoint directory")
    inception = inception_weights(args.inception, "--inception") or default_inception() or None
    if inception and args.feature_network:
        raise UserError("--feature-network: give either it or the FID Inception weights (--inception, "
                        "$GANPIPE_FID_INCEPTION), not both")
    if not os.path.isdir(ckpt) and not is_s3(ckpt) and not ckpt.startswith("file://"):
        # a run id or an MLflow artifact URI: the tracking server must answer (seconds, not minutes)
        check_mlflow_reachable(mlflow_tracking_uri())
    try:
        with tempfile.TemporaryDirectory(prefix="ganpipe-evaluate-") as scratch:
            ref, _ = resolve_checkpoint(args.checkpoint)
            G, config = load_generator(fetch_checkpoint.fn(ref, scratch))
            if args.dataset:
                real_x, real_labels = load_numpy(args.dataset, normalised=True)
            else:
                real_x, real_labels = load_real_data(config)
            extractor, classifier = feature_space(
                config, inception=inception, feature_network=args.feature_network,
                cache_dir=cache_dir())
            # progress on stderr: stdout is the table or the JSON
            metrics = evaluate_generator(G, config, real_x, real_labels, num_samples=args.num_samples or None,
                                         seed=args.seed, feature_extractor=extractor, classifier=classifier,
                                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    except UserError:
        raise  # one line at the boundary, as it is
    except (ValueError, FileNotFoundError) as e:  # what numpy, torch or a reader refuses in the user's files
        raise UserError(first_line(e)) from None
    if args.json:
        print(json.dumps({**metrics, "features": extractor.name}, indent=2))
    else:
        print(format_report(metrics, extractor.name))
    return 0
