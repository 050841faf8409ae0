"""`ganpipe sample`: batch-sample a registered generator into Parquet shards (or PNGs) plus a manifest."""

from __future__ import annotations

import argparse
import os
import sys

EPILOG = """\
Sample i depends only on (model version, --seed, i): the same request gives the same values and the
same shard bytes whatever --batch-size, --actors or --gpus. An alias (@champion) is resolved to one
concrete version when the job starts; the manifest records it. The manifest (_manifest.json) is
written last: a folder without it is incomplete, and running the same command again finishes it
(shards already written are kept). Running a finished request again writes nothing.

Output (--out, a local folder or s3://bucket/prefix):
  parquet  part-NNNNN.parquet with columns index (int64) and x (float32, the data's value range)
  png      part-NNNNN/<index>.png, one 8-bit image per sample (image models only)

MLflow from MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, Ray from RAY_ADDRESS (else a local Ray),
S3 from AWS_ENDPOINT_URL and the AWS credential chain.

examples:
  ganpipe sample --model models:/ganpipe-digits@champion --num-samples 100000 --seed 0 --out ./samples/d0
  ganpipe sample --model models:/ganpipe-digits/2 --num-samples 1000000 --seed 7 \\
      --out s3://bucket/samples/digits-v2-s7 --actors 8 --batch-size 8192
  ganpipe sample --model models:/faces64@champion --num-samples 50000 --seed 1 --out ./faces-png \\
      --format png --gpus 1
  ganpipe sample --model runs:/<run_id>/generator --num-samples 64 --seed 0 --out ./preview
  ganpipe sample --model models:/ganpipe-digits@champion --num-samples 10000 --seed 0 --out ./d0-t1 \\
      --truncation 1.0
  ganpipe sample --model models:/digits-cond@champion --num-samples 10000 --seed 0 --out ./d0-class3 \\
      --class 3
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample", help="batch-sample a registered generator",
        description="Generate N samples from a registered generator with Ray Data (one loaded generator per "
                    "actor, CPU or GPU) and write them as shards plus a manifest.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="URI",
                   help="models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>")
    p.add_argument("--num-samples", type=int, required=True, metavar="N", help="how many samples (indices 0..N-1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed S (default 0)")
    p.add_argument("--out", required=True, metavar="URI", help="output folder: a local path or s3://bucket/prefix")
    p.add_argument("--format", dest="fmt", choices=["parquet", "png"], default="parquet",
                   help="parquet (default) or png (image models)")
    p.add_argument("--batch-size", type=int, default=4096,
                   help="latent vectors per generator forward pass (default 4096; memory only, values unchanged)")
    p.add_argument("--actors", type=int, default=1, help="Ray actors, each with one loaded generator (default 1)")
    p.add_argument("--gpus", type=float, default=0.0, metavar="G",
                   help="GPUs per actor (default 0: CPU; 0.5 puts two actors on a GPU)")
    p.add_argument("--truncation", type=float, metavar="PSI",
                   help="the truncation trick (BigGAN): every latent component |z_j| <= PSI (those beyond it "
                        "resampled), trading diversity (recall) for fidelity (precision); a number > 0, e.g. 1.0 "
                        "(default: off). Part of the request: another PSI is another sample set")
    p.add_argument("--class", dest="class_label", type=int, metavar="K",
                   help="a class-conditional model (network.conditional): every sample of class K, an integer "
                        "from 0 to the model's number of classes - 1 (default: class-balanced, sample i of class "
                        "i mod the number of classes). Refused for an unconditional model. Part of the request: "
                        "another K is another sample set")
    p.add_argument("--rows-per-shard", type=int,
                   help="samples per shard, rounded up to whole 1024-sample blocks (default: from N and the sample "
                        "size, up to 16 MiB per shard)")
    p.add_argument("--engine", choices=["auto", "flow", "direct"], default="auto",
                   help="flow: run as the Prefect flow 'sample-generator' (a temporary Prefect server starts when "
                        "PREFECT_API_URL is unset); direct: the same steps without Prefect; auto (default): flow "
                        "when PREFECT_API_URL is set, else direct")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from infra.models.batch_sampling import open_samples
    from infra.base.settings import check_mlflow_reachable

    from infra.models.batch_sampling import check_request

    # 1. the whole request, before Prefect, Ray or MLflow is touched: sizes within their bounds, --out
    # a folder that can be written; then an MLflow server that must answer (seconds, not minutes)
    check_request(args.num_samples, args.seed, args.out, fmt=args.fmt, rows_per_shard=args.rows_per_shard,
                  batch_size=args.batch_size, actors=args.actors, gpus_per_actor=args.gpus,
                  truncation=args.truncation, class_label=args.class_label)
    check_mlflow_reachable()
    uri = _sample(args)
    s = open_samples(uri)
    m = s.manifest
    trunc = f", truncation {m['truncation']:g}" if m.get("truncation") else ""
    trunc += f", class {m['class_label']}" if m.get("class_label") is not None else ""
    print(f"sampled {m['num_rows']} samples of shape {tuple(m['shape'])} from {m['model']['uri']} "
          f"(seed {m['seed']}{trunc}) in {m['num_shards']} {m['sample_format']} shards, {m['num_bytes'] / 1e6:.2f} MB",
          file=sys.stderr)
    print(s.uri)
    return 0


def _sample(args: argparse.Namespace) -> str:
    engine = args.engine
    if engine == "auto":
        engine = "flow" if os.environ.get("PREFECT_API_URL") else "direct"
    if engine == "flow":
        from pipelines.sample import sample_generator

        return sample_generator(args.model, args.num_samples, args.seed, args.out, fmt=args.fmt,
                                batch_size=args.batch_size, actors=args.actors, gpus_per_actor=args.gpus,
                                rows_per_shard=args.rows_per_shard, show_progress=not args.no_progress,
                                truncation=args.truncation, class_label=args.class_label)


    from infra.data import shard_writer

    from infra.models import batch_sampling

    plan = batch_sampling.plan_sampling(args.model, args.num_samples, args.seed, args.out, fmt=args.fmt,
                                        rows_per_shard=args.rows_per_shard, batch_size=args.batch_size,
                                        actors=args.actors, gpus_per_actor=args.gpus,
                                        truncation=args.truncation, class_label=args.class_label)
    print(f"sampling {plan.num_samples} from {plan.model.uri} (requested {args.model}), seed {plan.seed}, "
          f"{plan.num_shards} shards", file=sys.stderr)
    with shard_writer.progress_bar(plan.num_items, "sampling", bar=not args.no_progress, unit="samples",
                               log=lambda line: print(line, file=sys.stderr)) as bar:  # without a bar: lines
        shard_writer.execute(plan, bar.update)
    return plan.out
