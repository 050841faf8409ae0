"""Ray Train against the plain gan_core loop, in one run, on the same model, batch and thread count.

Prints (never asserts):
1. steady-state step time, Ray Train with 1 worker / plain loop          (target ratio <= 1.10)
2. throughput with Ray Data streaming ingest / the same loop fed from in-memory tensors (>= 0.9)
3. throughput of 2 workers / 1 worker, one thread each, on this machine's cores

Steady state = the median of the per-tick rates after the first tick (the first carries start-up and
warm-up). Each tick's rate counts training steps only: the loop measures it before the tick's
report and checkpoint. The Ray runs checkpoint every tick so that every tick's metrics are kept.

    python -m benchmarks.bench_ray_train [--preset ring8] [--steps 1200] [--tick 100]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import tempfile
import time


def plain_rate(config, x) -> float:
    import torch

    from gan_core.data import InMemoryBatches
    from gan_core.loop import train

    torch.set_num_threads(1)
    rates = []
    with tempfile.TemporaryDirectory() as d:
        train(config, batches=InMemoryBatches(x, config.train.global_batch_size, config.train.seed),
              on_snapshot=lambda s: rates.append(s.metrics["perf/kimg_per_s"]), checkpoint_root=d)
    return steady(rates)


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:])


def ray_rate(config, dataset_uri: str, workers: int, loading: str, storage: str) -> float:
    from infra.ray_train import ClusterConfig, launch_training

    run_name = f"bench-{workers}-{loading}-{time.time_ns()}"
    launch_training(config, dataset_uri, ClusterConfig(num_workers=workers, storage_path=storage,
                                                       threads_per_worker=1, data_loading=loading,
                                                       run_name=run_name, max_failures=0))
    ticks = []  # every tick wrote a checkpoint, with the tick's metrics in its summary.json
    for path in sorted(glob.glob(os.path.join(storage, run_name, "checkpoint-*", "summary.json"))):
        ticks.append(json.load(open(path))["metrics"]["perf/kimg_per_s"])
    return steady(ticks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ring8")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--tick", type=int, default=100)
    args = p.parse_args()

    import ray

    from gan_core.config import get_preset
    from infra.datasets import load_numpy, stage

    config = get_preset(args.preset).with_overrides({
        "train.total_steps": args.steps, "train.tick_every_steps": args.tick,
        "train.checkpoint_every_steps": args.tick, "train.num_checkpoints_to_keep": args.steps // args.tick + 1,
        "network.g_norm": "layer"})
    with tempfile.TemporaryDirectory() as root:
        ds = stage(args.preset if args.preset in ("ring8", "grid25", "digits") else "ring8", root,
                   num_samples=config.data.num_examples)
        x, _ = load_numpy(ds.uri)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        print(f"preset {args.preset}: {args.steps} steps, global batch {config.train.global_batch_size}, "
              f"1 torch thread per process, {os.cpu_count()} CPUs")
        base = plain_rate(config, x)
        one = ray_rate(config, ds.uri, 1, "memory", root + "/runs")
        stream = ray_rate(config, ds.uri, 1, "stream", root + "/runs")
        two = ray_rate(config, ds.uri, 2, "memory", root + "/runs")
        ray.shutdown()
    print(f"plain gan_core loop          : {base:8.2f} kimg/s")
    print(f"Ray Train, 1 worker (memory) : {one:8.2f} kimg/s")
    print(f"Ray Train, 1 worker (stream) : {stream:8.2f} kimg/s")
    print(f"Ray Train, 2 workers (memory): {two:8.2f} kimg/s")
    print(f"1. step time Ray 1 worker / plain loop     = {base / one:.3f}  (target <= 1.10)")
    print(f"2. Ray Data streaming / in-memory tensors  = {stream / one:.3f}  (target >= 0.9)")
    print(f"3. 2 workers / 1 worker throughput         = {two / one:.3f}")


if __name__ == "__main__":
    main()
