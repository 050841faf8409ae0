"""Ray Train against the plain gan_core loop, in one run, on the same model, batch and thread count.

Prints (never asserts), and records (benchmarks.results):
B1  steady-state step time, Ray Train with 1 worker / plain loop                 (target ratio <= 1.10)
B2  throughput of 2 workers / 1 worker, one thread each (ideal 2.0), with a profile of where the time
    goes: the compute ceiling (two plain loops side by side, no Ray), the all-reduce (gloo, two
    processes, the gradient sizes of one step), the CPU the Ray services and the driver use, the data
B3  throughput with Ray Data streaming ingest / in-memory tensors, for digits and for a 32x32 RGB
    dataset (random image-like uint8, the dcgan32-cpu preset)                    (target ratio >= 0.9)

Steady state = the median of the per-tick rates after the first tick (the first carries start-up and
warm-up). Each tick's rate counts training steps only: the loop measures it before the tick's
report and checkpoint. The Ray runs checkpoint every tick so that every tick's metrics are kept.

    python -m benchmarks.bench_ray_train [--preset digits] [--steps 500] [--tick 100]
                                         [--rgb-steps 150] [--rgb-tick 30] [--rgb-rows 2048]
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
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


class ProcessCPU:
    """CPU seconds of this process's descendants while it runs, sampled every ``every`` s (psutil),
    split into Ray Train workers (cmdline names RayTrainWorker) and everything else (Ray's services,
    idle workers, the train controller). Processes that end between samples lose their last interval."""

    def __init__(self, every: float = 0.5):
        import psutil

        self.psutil, self.every = psutil, every
        self.first: dict[int, tuple[float, str]] = {}
        self.last: dict[int, float] = {}
        self.stop = threading.Event()

    def _sample(self) -> None:
        for p in self.psutil.Process().children(recursive=True):
            try:
                t = p.cpu_times()
                cpu = t.user + t.system
                kind = "worker" if "RayTrainWorker" in " ".join(p.cmdline()) else "other"
            except self.psutil.Error:
                continue
            if p.pid not in self.first:
                self.first[p.pid] = (cpu, kind)
            self.last[p.pid] = cpu
            if kind == "worker":
                self.first[p.pid] = (self.first[p.pid][0], kind)

    def _run(self) -> None:
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(self.every)

    def __enter__(self):
        me = self.psutil.Process()
        self.driver0 = sum(me.cpu_times()[:2])
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.wall = time.perf_counter() - self.t0
        self.driver = sum(self.psutil.Process().cpu_times()[:2]) - self.driver0
        self.cpu = {"worker": 0.0, "other": 0.0}
        for pid, (c0, kind) in self.first.items():
            self.cpu[kind] += self.last[pid] - c0


def ray_rate(config, dataset_uri: str, workers: int, loading: str, storage: str,
             profile: bool = False) -> tuple[float, ProcessCPU | None]:
    from infra.train.plan import ClusterConfig
    from infra.train.ray_train import launch_training

    run_name = f"bench-{workers}-{loading}-{time.time_ns()}"
    cluster = ClusterConfig(num_workers=workers, storage_path=storage, threads_per_worker=1, data_loading=loading,
                            run_name=run_name, max_failures=0)
    cpu = ProcessCPU() if profile else None
    with cpu or _null():
        launch_training(config, dataset_uri, cluster)
    ticks = []  # every tick wrote a checkpoint, with the tick's metrics in its summary.json
    for path in sorted(glob.glob(os.path.join(storage, run_name, "checkpoint-*", "summary.json"))):
        ticks.append(json.load(open(path))["metrics"]["perf/kimg_per_s"])
    return steady(ticks), cpu


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _allreduce_worker(rank: int, init: str, sizes: list[int], repeats: int, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    tensors = [torch.randn(n) for n in sizes]
    for t in tensors:  # warm-up
        dist.all_reduce(t)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for t in tensors:
            dist.all_reduce(t)
    if rank == 0:
        out.put((time.perf_counter() - t0) / repeats)
    dist.destroy_process_group()


def allreduce_seconds_per_step(config, repeats: int = 200) -> float:
    """Seconds of the gloo all-reduces of one training step between two processes: D's gradients once
    per D update (train.d_steps), G's once (DDP's one bucket each for nets this small)."""
    from gan_core.training import build_training_state

    state = build_training_state(config)
    n_g = sum(p.numel() for p in state.G.parameters())
    n_d = sum(p.numel() for p in state.D.parameters())
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        init = f"file://{d}/rendezvous"
        procs = [ctx.Process(target=_allreduce_worker, args=(r, init, [n_d] * config.train.d_steps + [n_g],
                                                                    repeats, out)) for r in (0, 1)]
        for p in procs:
            p.start()
        seconds = out.get(timeout=300)
        for p in procs:
            p.join()
    return seconds


def _plain_rate_child(args) -> float:
    config, x = args
    return plain_rate(config, x)


def side_by_side_rate(config, x) -> float:
    """Summed kimg/s of two plain loops run at once in two processes (one thread each), no Ray."""
    with mp.get_context("spawn").Pool(2) as pool:
        return sum(pool.map(_plain_rate_child, [(config, x), (config, x)]))


def say(what: str, result):
    """Print a measurement as soon as it is made (the value, or the first of a tuple), and return it."""
    value = result[0] if isinstance(result, tuple) else result
    print(f"-- {what}: {value:.4g} ({time.strftime('%H:%M:%S')})", flush=True)
    return result


def bench_config(preset: str, steps: int, tick: int):
    from gan_core.config import get_preset

    return get_preset(preset).with_overrides({
        "train.total_steps": steps, "train.tick_every_steps": tick, "train.checkpoint_every_steps": tick,
        "train.num_checkpoints_to_keep": steps // tick + 1})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits", help="a built-in dataset's preset: digits | ring8 | grid25")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--tick", type=int, default=100)
    p.add_argument("--rgb-steps", type=int, default=150)
    p.add_argument("--rgb-tick", type=int, default=30)
    p.add_argument("--rgb-rows", type=int, default=2048)
    args = p.parse_args()

    import numpy as np
    import ray

    from benchmarks.bench_staging import make_images
    from benchmarks.results import figure, record
    from infra.data.datasets import load_numpy, stage

    config = bench_config(args.preset, args.steps, args.tick)
    rgb_config = bench_config("dcgan32-cpu", args.rgb_steps, args.rgb_tick)
    with tempfile.TemporaryDirectory() as root:
        ds = stage(args.preset, root, num_samples=config.data.num_examples) if args.preset != "digits" \
            else stage("digits", root)
        x, _ = load_numpy(ds.uri)
        np.save(f"{root}/rgb.npy", make_images(args.rgb_rows, 32))
        rgb = stage(f"{root}/rgb.npy", root, "rgb32")  # launch_training takes data.shape from its manifest
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        sizes = (f"{args.preset}: {args.steps} steps, ticks of {args.tick}, global batch "
                 f"{config.train.global_batch_size}; rgb32: {args.rgb_rows} random 3x32x32 uint8 images, preset "
                 f"dcgan32-cpu, {args.rgb_steps} steps, ticks of {args.rgb_tick}, batch "
                 f"{rgb_config.train.global_batch_size}; 1 torch thread per process; steady state = median tick "
                 "rate after the first tick")
        print(sizes + f"; {os.cpu_count()} CPUs", flush=True)
        base = say("plain loop", plain_rate(config, x))
        one, _ = say("Ray 1 worker memory", ray_rate(config, ds.uri, 1, "memory", root + "/runs"))
        stream, _ = say("Ray 1 worker stream", ray_rate(config, ds.uri, 1, "stream", root + "/runs"))
        two, cpu = say("Ray 2 workers memory", ray_rate(config, ds.uri, 2, "memory", root + "/runs", profile=True))
        rgb_mem, _ = say("rgb32 Ray 1 worker memory", ray_rate(rgb_config, rgb.uri, 1, "memory", root + "/runs"))
        rgb_stream, _ = say("rgb32 Ray 1 worker stream", ray_rate(rgb_config, rgb.uri, 1, "stream", root + "/runs"))
        ray.shutdown()
        pair = say("two plain loops side by side", side_by_side_rate(config, x))
    allreduce_s = say("all-reduce s/step", allreduce_seconds_per_step(config))
    print(f"plain gan_core loop          : {base:8.3f} kimg/s")
    print(f"Ray Train, 1 worker (memory) : {one:8.3f} kimg/s")
    print(f"Ray Train, 1 worker (stream) : {stream:8.3f} kimg/s")
    print(f"Ray Train, 2 workers (memory): {two:8.3f} kimg/s")
    print(f"rgb32, 1 worker memory/stream: {rgb_mem:8.3f} / {rgb_stream:8.3f} kimg/s")
    print(f"B1 step time Ray 1 worker / plain loop     = {base / one:.3f}  (target <= 1.10)")
    print(f"B3 Ray Data streaming / in-memory (digits) = {stream / one:.3f}  (target >= 0.9)")
    print(f"B3 Ray Data streaming / in-memory (rgb32)  = {rgb_stream / rgb_mem:.3f}  (target >= 0.9)")
    print(f"B2 2 workers / 1 worker throughput         = {two / one:.3f}  (ideal 2.0)")

    # B2's profile: each cost as a share of the 2-worker run's per-worker step time
    batch_kimg = config.train.global_batch_size / 1000
    step2_s = batch_kimg / two  # one global step (both workers) in the 2-worker run
    step1_s = batch_kimg / one
    cores = os.cpu_count() or 1
    other_cores = (cpu.cpu["other"] + cpu.driver) / cpu.wall
    worker_cores = cpu.cpu["worker"] / cpu.wall
    profile = [
        f"B2 profile (2-worker run, global batch {config.train.global_batch_size}, "
        f"{config.train.global_batch_size // 2} per worker): "
        f"step {1e3 * step2_s:.1f} ms vs {1e3 * step1_s:.1f} ms with 1 worker; ideal {1e3 * step1_s / 2:.1f} ms",
        f"compute ceiling: two plain loops side by side (no Ray) make {pair:.3f} kimg/s = {pair / base:.2f}x one "
        f"plain loop ({cores} cores, shared with whatever else runs)",
        f"all-reduce (gloo, 2 processes, D grads x {config.train.d_steps} + G grads per step): "
        f"{1e3 * allreduce_s:.2f} ms/step = {100 * allreduce_s / step2_s:.0f}% of the 2-worker step",
        f"Ray services + driver: {other_cores:.2f} cores on average over the 2-worker run "
        f"({cpu.wall:.0f} s wall, start-up included); the 2 training workers {worker_cores:.2f} cores "
        f"of {cores}",
        "data: in-memory tensors in every worker (B3 measures streaming)",
    ]
    for line in profile:
        print(line)
    record("bench_ray_train", [
        figure("B1", "Ray Train 1 worker vs plain gan_core loop (step time)", 1 / one, 1 / base, "s/kimg",
               base / one, "Ray / plain (step time)", "<= 1.10"),
        figure("B2", "2 workers vs 1 worker (throughput, 1 thread each; ideal 2.0)", two, one, "kimg/s", two / one,
               "2 workers / 1 worker"),
        figure("B3-digits", "Ray Data streaming vs in-memory tensors, digits", stream, one, "kimg/s", stream / one,
               "stream / memory", ">= 0.9"),
        figure("B3-rgb32", "Ray Data streaming vs in-memory tensors, 32x32 RGB", rgb_stream, rgb_mem, "kimg/s",
               rgb_stream / rgb_mem, "stream / memory", ">= 0.9"),
    ], sizes=sizes, command="python -m benchmarks.bench_ray_train", details=[
        f"rates (kimg/s): plain {base:.3f}, Ray 1 worker memory {one:.3f}, stream {stream:.3f}, 2 workers "
        f"{two:.3f}; rgb32 memory {rgb_mem:.3f}, stream {rgb_stream:.3f}", *profile])


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.bench_ray_train"))
