"""`ganpipe stage`: stage a dataset into versioned Parquet shards under a storage root."""

from __future__ import annotations

import argparse
import os
import sys

EPILOG = """\
sources:
  digits | ring8 | grid25           built-in datasets (mixtures take --num-samples and --seed)
  PATH_OR_S3_URI                    a folder of PNG/JPEG/WebP images (class sub-folders become labels),
                                    a .npy/.npz file (labels: --labels, or 'labels'/'y' in the .npz),
                                    Parquet file(s) with a numeric column x (and optionally label),
                                    Parquet file(s) with encoded images, as Hugging Face datasets
                                    publish them (--image-column, default image: struct {bytes, path}
                                    or binary; --label-column, default label: integers or strings),
                                    or a .zip of images (labels from StyleGAN's dataset.json, if any)

The version is a hash of the input and the options: staging the same input again writes nothing.
The version's URI is printed on stdout; train on it, or on ROOT/datasets/NAME (the latest version).
S3 settings come from AWS_ENDPOINT_URL and the standard AWS credential chain.

examples:
  ganpipe stage digits --root ./data
  ganpipe stage grid25 --num-samples 100000 --seed 1 --root s3://bucket/ganpipe
  ganpipe stage ./faces --image-size 64 --root s3://bucket/ganpipe --name faces64
  ganpipe stage s3://bucket/raw/cats --image-size 32 --grayscale --skip-bad --root ./data
  ganpipe stage ./cifar10/train-00000-of-00001.parquet --image-size 32 --root ./data
  ganpipe stage s3://bucket/raw/ffhq64.zip --root s3://bucket/ganpipe
  ganpipe stage ./x.npy --labels ./y.npy --root ./data --rows-per-shard 10000
  ganpipe stage s3://bucket/ganpipe/datasets/faces64 --verify   # check the latest version's checksums
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "stage", help="stage a dataset into versioned Parquet shards",
        description="Stage a dataset into versioned, checksummed Parquet shards plus a manifest, on local "
                    "disk or S3.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="built-in name, local path or s3:// URI (see below)")
    p.add_argument("--root", help="storage root: a local folder or s3://bucket/prefix (required unless --verify)")
    p.add_argument("--name", help="dataset name (default: the built-in's or the file/folder's name)")
    p.add_argument("--num-samples", type=int, default=50_000, help="mixtures: number of points (default 50000)")
    p.add_argument("--seed", type=int, default=0, help="mixtures: sampling seed (default 0)")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="images: resize the shorter side to PX and centre-crop to PX x PX "
                        "(default: keep the size; all images must then share one)")
    p.add_argument("--grayscale", action="store_true", help="images: store one channel instead of RGB")
    p.add_argument("--skip-bad", action="store_true",
                   help="images: skip unreadable files and count them in the manifest (default: fail)")
    p.add_argument("--labels", metavar="NPY", help=".npy sources: a .npy file of integer labels, one per example")
    p.add_argument("--image-column", metavar="NAME",
                   help="Parquet: the encoded-image column (default: image; giving it reads x-holding files as images too)")
    p.add_argument("--label-column", metavar="NAME",
                   help="Parquet images: the label column, integers or strings (default: label, if present)")
    p.add_argument("--rows-per-shard", type=int,
                   help="rows per shard (default: about --target-shard-mib of uncompressed data)")
    p.add_argument("--target-shard-mib", type=float, default=64.0, help="shard size target (default 64 MiB)")
    p.add_argument("--row-group-rows", type=int, help="rows per Parquet row group (default: up to 4096)")
    p.add_argument("--compression", default="zstd", choices=["zstd", "snappy", "lz4", "gzip", "none"],
                   help="Parquet compression (default zstd)")
    p.add_argument("--engine", choices=["auto", "flow", "direct"], default="auto",
                   help="flow: run as the Prefect flow 'stage-dataset' (a temporary Prefect server starts "
                        "when PREFECT_API_URL is unset); direct: the same steps without Prefect; "
                        "auto (default): flow when PREFECT_API_URL is set, else direct")
    p.add_argument("--verify", action="store_true",
                   help="treat SOURCE as a staged dataset reference and verify its checksums; stage nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from infra.data.datasets import open_dataset
    from infra.base.storage import first_line
    from gan_core.errors import CommandFailed

    if args.verify:
        ds = open_dataset(args.source, verify=True)
        print(f"ok: {ds.uri}: {ds.num_rows} rows in {len(ds.shard_uris)} shards match their checksums",
              file=sys.stderr)
        print(ds.uri)
        return 0
    check_stage_args(args)  # 1. the whole request, before anything is read or written
    try:
        uri = _stage(args)
        ds = open_dataset(uri)
    except OSError as e:  # storage that failed midway, after each S3 request's retries (infra.base.storage)
        raise CommandFailed(f"storage failed while staging ({first_line(e)}); nothing was committed: run the same "
                             "command again") from None
    m = ds.manifest
    skipped = f", {m['num_skipped']} bad files skipped" if m["num_skipped"] else ""
    print(f"staged {m['name']} version {m['version']}: {m['num_rows']} rows of shape {tuple(m['shape'])} "
          f"{m['dtype']} in {m['num_shards']} shards, {m['num_bytes'] / 1e6:.2f} MB{skipped}", file=sys.stderr)
    print(ds.uri)
    return 0


def check_stage_args(args: argparse.Namespace) -> None:
    """UserError (one line naming the flag) unless every size and name is within its bound and --root is
    a folder that can be written (not a file; its S3 bucket reachable). Nothing is read or written."""
    from infra.base import storage
    from gan_core.errors import UserError
    from infra.data.datasets import check_dataset_name
    from pipelines.settings import check_staging_sizes

    if not args.root:
        raise UserError("--root is required (a local folder or s3://bucket/prefix)")
    check_staging_sizes(args.num_samples, args.seed, args.image_size or 0, "--")
    if args.name is not None:
        check_dataset_name(args.name, "--name")
    for flag, value, ok in (("--rows-per-shard", args.rows_per_shard, args.rows_per_shard is None or args.rows_per_shard > 0),
                            ("--row-group-rows", args.row_group_rows, args.row_group_rows is None or args.row_group_rows > 0),
                            ("--target-shard-mib", args.target_shard_mib, 0 < args.target_shard_mib <= 4096)):
        if not ok:
            raise UserError(f"{flag}: got {value:g}; allowed: a positive number"
                            + (" up to 4096" if flag == "--target-shard-mib" else ""))
    storage.check_output_folder(storage.resolve(args.root), "--root")  # StorageError: the caller's one line


def _stage(args: argparse.Namespace) -> str:
    options = dict(num_samples=args.num_samples, seed=args.seed, image_size=args.image_size,
                   grayscale=args.grayscale, skip_bad=args.skip_bad, labels=args.labels,
                   image_column=args.image_column, label_column=args.label_column,
                   rows_per_shard=args.rows_per_shard, target_shard_mib=args.target_shard_mib,
                   row_group_rows=args.row_group_rows, compression=args.compression)
    engine = args.engine
    if engine == "auto":
        engine = "flow" if os.environ.get("PREFECT_API_URL") else "direct"
    if engine == "flow":
        from pipelines.stage import stage_dataset

        return stage_dataset(args.source, args.root, args.name, show_progress=not args.no_progress, **options)

    from infra.data import datasets

    from infra.data import shard_writer

    plan = datasets.plan_staging(args.source, args.root, args.name, **options)
    if shard_writer.committed(plan) is not None:  # content-addressed: the same input and options, the same version
        print(f"{plan.uri}: already committed, nothing to write", file=sys.stderr)
        return plan.uri
    with shard_writer.progress_bar(plan.num_items, f"staging {plan.name}", bar=not args.no_progress) as bar:
        shard_writer.execute(plan, bar.update)
    return plan.uri
