"""Staging throughput against a bare `pyarrow.parquet.write_table` of the same arrays, in the same run.

    .venv/bin/python -m benchmarks.bench_staging [--rows 30000] [--size-px 32] [--no-flow]

MB/s counts uncompressed example bytes. Three measurements, each the best of --repeats:
- bare:   pq.write_table(table, row_group_size=R, compression=C) of the in-memory arrays to local disk;
- writer: infra.data.datasets.stage() of the same arrays saved as .npy (fingerprint = sha256 of the files,
          shards written in parallel, per-shard sha256, manifest), into a fresh root each time;
- flow:   the Prefect flow stage_dataset() (temporary Prefect server; its start is not timed).
Target: writer / bare >= 0.8 (B4). Prints and records (benchmarks.results), never asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_images(rows: int, size_px: int, seed: int = 0) -> np.ndarray:
    """Compressible, image-like uint8 data: blocky low-frequency patterns plus a little noise."""
    rng = np.random.default_rng(seed)
    block = max(1, size_px // 8)
    coarse = rng.integers(0, 256, size=(rows, 3, size_px // block, size_px // block), dtype=np.uint8)
    images = coarse.repeat(block, axis=2).repeat(block, axis=3)
    noise = rng.integers(0, 8, size=images.shape, dtype=np.uint8)
    return images + noise  # wraps at 255: still uint8, still image-like


def best_seconds(fn, repeats: int) -> float:
    times = []
    os.sync()  # start each timing with no pending writeback
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--size-px", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compression", default="zstd")
    p.add_argument("--no-flow", action="store_true", help="skip the Prefect flow measurement")
    args = p.parse_args()

    from pipelines.cli import set_embedded_defaults

    set_embedded_defaults()  # telemetry off, as the CLI's entry point does (before prefect is imported)
    from infra.data import datasets

    images = make_images(args.rows, args.size_px)
    labels = np.arange(args.rows, dtype=np.int64) % 10
    megabytes = images.nbytes / 1e6
    work = Path(tempfile.mkdtemp(prefix="bench-staging-"))
    np.save(work / "images.npy", images)  # .npy: memory-mapped by the stager, as large arrays should be
    np.save(work / "labels.npy", labels)
    source = dict(source=str(work / "images.npy"), labels=str(work / "labels.npy"))
    row_group_rows = datasets.choose_layout(datasets.open_source(**source).spec).row_group_rows
    print(f"data: {args.rows} images of 3x{args.size_px}x{args.size_px} uint8 = {megabytes:.1f} MB, "
          f"row groups of {row_group_rows} rows, {args.compression}, {os.cpu_count()} CPUs")

    def bare(**options) -> None:
        flat = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), images[0].size)
        table = pa.table({"x": flat, "label": pa.array(labels)})
        pq.write_table(table, work / "bare.parquet", row_group_size=row_group_rows, compression=args.compression,
                       **options)

    def bare_same_options() -> None:  # the writer's own Parquet options: statistics for label only
        bare(write_statistics=["label"])

    runs = iter(range(10_000))

    def writer() -> None:
        root = work / f"root-{next(runs)}"
        datasets.stage(root=str(root), compression=args.compression, **source)
        writer.last_root = root

    def clean_up() -> None:  # untimed: keep dirty pages of old roots from throttling the next run
        shutil.rmtree(getattr(writer, "last_root", work / "none"), ignore_errors=True)
        os.sync()

    # interleaved, best of each: a busy shared machine then slows all alike
    t_bare = t_same = t_writer = float("inf")
    for _ in range(args.repeats):
        t_bare = min(t_bare, best_seconds(bare, 1))
        t_same = min(t_same, best_seconds(bare_same_options, 1))
        t_writer = min(t_writer, best_seconds(writer, 1))
        clean_up()
    print(f"bare pq.write_table : {megabytes / t_bare:8.1f} MB/s ({t_bare:.3f} s)  (pyarrow defaults)")
    print(f"  same, writer opts : {megabytes / t_same:8.1f} MB/s ({t_same:.3f} s)  (no statistics for x)")
    print(f"staging writer      : {megabytes / t_writer:8.1f} MB/s ({t_writer:.3f} s)  "
          f"ratio writer/bare = {t_bare / t_writer:.2f} (target >= 0.8); "
          f"vs bare with the writer's options = {t_same / t_writer:.2f}")

    if not args.no_flow:
        from prefect.testing.utilities import prefect_test_harness

        from pipelines.stage import stage_dataset

        def flow() -> None:
            stage_dataset(root=str(work / f"root-{next(runs)}"), compression=args.compression, **source)

        with prefect_test_harness(server_startup_timeout=180):
            t_flow = best_seconds(flow, args.repeats)
        print(f"staging flow        : {megabytes / t_flow:8.1f} MB/s ({t_flow:.3f} s)  "
              f"ratio flow/bare = {t_bare / t_flow:.2f} (includes Prefect's per-run overhead)")
    from benchmarks.results import figure, record

    details = [f"bare pq.write_table with the writer's options (statistics for label only): {megabytes / t_same:.1f} "
               f"MB/s; writer / that = {t_same / t_writer:.2f}"]
    if not args.no_flow:
        details.append(f"the Prefect flow stage_dataset: {megabytes / t_flow:.1f} MB/s, flow / bare = "
                       f"{t_bare / t_flow:.2f} (Prefect's per-run overhead included)")
    record("bench_staging", [figure("B4", "staging writer vs bare pq.write_table of the same arrays",
                                    megabytes / t_writer, megabytes / t_bare, "MB/s", t_bare / t_writer,
                                    "writer / bare", ">= 0.8")],
           sizes=f"{args.rows} images of 3x{args.size_px}x{args.size_px} uint8 = {megabytes:.1f} MB, "
                 f"{args.compression}, row groups of {row_group_rows}, best of {args.repeats}",
           command="python -m benchmarks.bench_staging", details=details)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.bench_staging"))
