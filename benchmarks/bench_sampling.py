"""Sampling throughput of the Ray Data job against a bare loop of generator forward passes, in one run.

    .venv/bin/python -m benchmarks.bench_sampling [--num-samples 500000] [--batch-size 4096] [--actors 1]
                                                  [--model models:/<name>@<alias>]

Without --model a tiny digits generator (one training step) is registered in a throw-away SQLite
MLflow store. Both sides use one thread per process and the same batch size, and neither writes:
- bare: the model loaded once in this process, then ``generate_range`` (seed-addressed latents,
        G forward, conversion to data units) over [0, N) in --batch-size steps;
- flow: SamplingPlan.write_shards(write=False), the executor's writer: Ray Data from_items(shards) ->
        map_batches(ShardSampler) with --actors actors, each loading the model from MLflow once.
Rates: "flow steady" counts the shards after the first one over the time between the first and the
last shard's arrival in the driver (the actor's one-off start and model load excluded); "flow e2e"
includes them. Target: flow steady / bare >= 0.9 with --actors 1 (B5). Prints and records (benchmarks.results), never
asserts.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def register_tiny_generator(tmp: str) -> str:
    import mlflow

    from gan_core import get_preset, train
    from gan_core.data import InMemoryBatches, Normalisation, load_digits
    from infra.models.evaluation import Evaluation
    from infra.models.registry import register_generator

    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)  # MLflow's own resolution then finds it (its env var; the actors get it)
    mlflow.set_registry_uri(uri)
    cfg = get_preset("digits").with_overrides({
        "network.g_width": 8, "network.d_width": 8, "train.global_batch_size": 32, "train.total_steps": 1,
        "train.tick_every_steps": 1, "train.checkpoint_every_steps": 1})
    x, _ = load_digits()
    res = train(cfg, batches=InMemoryBatches(x, 32, seed=0), checkpoint_root=f"{tmp}/ckpt")
    register_generator(res.checkpoint_dir, "bench-gen", normalisation=Normalisation(1 / 8, -1.0), export_formats=(),
                       evaluator=lambda G, c: Evaluation({"score": 1.0}, "score", True, {"evaluator": "fixed"}))
    return "models:/bench-gen@champion"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=500_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="a registered generator (default: register a tiny digits one)")
    args = p.parse_args()

    import torch

    from infra.models import batch_sampling as bs
    from infra.base.ray_cluster import ensure_ray
    from pipelines.cli import set_embedded_defaults

    set_embedded_defaults()  # telemetry off, as the CLI's entry point does
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp:
        model_uri = args.model or register_tiny_generator(tmp)
        plan = bs.plan_sampling(model_uri, args.num_samples, args.seed, f"{tmp}/out", batch_size=args.batch_size,
                                actors=args.actors)
        n, b = args.num_samples, args.batch_size
        print(f"model {plan.model.uri} ({plan.model.requested_uri}), sample shape {plan.model.sample_shape}, "
              f"{n} samples in {plan.num_shards} shards of {plan.layout.rows_per_shard}, batch {b}, "
              f"actors {args.actors}, torch threads 1")

        # bare loop: one process, model loaded once (not timed)
        pm = bs.load_generator_model(plan.model.uri)
        bs.generate_range(pm, args.seed, 0, min(b, n), b)  # warm-up

        def bare_loop() -> float:
            t0 = time.perf_counter()
            for start in range(0, n, b):
                bs.generate_range(pm, args.seed, start, min(b, n - start), b)
            return time.perf_counter() - t0

        bare_s = bare_loop()
        print(f"bare loop:   {n / bare_s:12,.0f} samples/s  ({bare_s:.2f} s)")

        # the Ray Data job without writes
        ensure_ray()
        arrivals: list[tuple[float, int]] = []
        t0 = time.perf_counter()
        for _, rec in plan.write_shards(list(range(plan.num_shards)), write=False):
            arrivals.append((time.perf_counter(), rec["rows"]))
        e2e_s = time.perf_counter() - t0
        arrivals.sort()
        steady_rows = sum(r for _, r in arrivals[1:])
        steady_s = arrivals[-1][0] - arrivals[0][0]
        steady = steady_rows / steady_s if steady_s > 0 else float("nan")
        print(f"flow steady: {steady:12,.0f} samples/s  ({steady_rows} samples in {steady_s:.2f} s after the first "
              f"shard)")
        print(f"flow e2e:    {n / e2e_s:12,.0f} samples/s  ({e2e_s:.2f} s incl. actor start and model load "
              f"{arrivals[0][0] - t0:.2f} s to the first shard)")
        bare2_s = bare_loop()  # again after the flow; the faster of the two counts (load on shared machines)
        print(f"bare loop:   {n / bare2_s:12,.0f} samples/s  ({bare2_s:.2f} s, second run)")
        bare_s = min(bare_s, bare2_s)
        print(f"ratio flow steady / bare = {steady / (n / bare_s):.3f}   (target >= 0.9)")
        print(f"ratio flow e2e / bare    = {(n / e2e_s) / (n / bare_s):.3f}")
    from benchmarks.results import figure, record

    record("bench_sampling", [figure("B5", "batch sampling (Ray Data job, steady) vs a bare loop of G forwards",
                                     steady, n / bare_s, "samples/s", steady / (n / bare_s), "flow / bare", ">= 0.9")],
           sizes=f"{n} samples of a tiny digits generator (width 8), batch {b}, {plan.num_shards} shards, "
                 f"{args.actors} actor(s), 1 torch thread",
           command="python -m benchmarks.bench_sampling",
           details=[f"flow end to end (actor start and model load included): {n / e2e_s:,.0f} samples/s, "
                    f"flow e2e / bare = {(n / e2e_s) / (n / bare_s):.3f}; first shard after "
                    f"{arrivals[0][0] - t0:.2f} s"])


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.bench_sampling"))
