"""Cost of the per-tick training diagnostics (gan_core.diagnostics) relative to training time.

    .venv/bin/python -m benchmarks.bench_diagnostics [--presets ring8 grid25 digits] [--steps 40]
                                                     [--repeats 5] [--threads 1] [--device cpu]

For each preset, on its own configuration (batch, networks, tick_every_steps):
- step:  median seconds of one Algorithm 1 iteration (train_step), over --repeats blocks of --steps;
- diag:  median seconds of one diagnostics call (G_ema samples, mode/class coverage, diversity, the
         vanishing-gradient indicator), over --repeats calls after one warm-up call;
- cost:  diag / (tick_every_steps * step), the fraction of training time the diagnostics add.
Target: cost < 5% (B7: tick with / without <= 1.05). Prints and records (benchmarks.results), never asserts. On a shared machine, run it twice and trust the lower.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.results import figure, record
from gan_core.config import get_preset
from gan_core.data import BUILTIN_DATASETS, InMemoryBatches, load_builtin
from gan_core.diagnostics import TrainingDiagnostics
from gan_core.training import build_training_state, train_step


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(preset: str, steps: int, repeats: int, device: str) -> dict[str, float]:
    config = get_preset(preset)
    if config.data.name in BUILTIN_DATASETS:
        x, _ = load_builtin(config.data.name, min(config.data.num_examples, 20_000), config.data.data_seed)
        diag = TrainingDiagnostics.for_config(config)
    else:  # e.g. dcgan64's image folders: random images stand in (the cost does not depend on content)
        x = torch.rand(4 * config.train.global_batch_size, *config.data.shape) * 2 - 1
        diag = TrainingDiagnostics(config, real_x=x[:512])
    stream = InMemoryBatches(x, config.train.global_batch_size, config.train.seed)(0)
    state = build_training_state(config, device)
    state.images_seen = 10**6  # past the EMA ramp-up, as in the middle of a run

    def next_real():
        return next(stream)

    def block():
        for _ in range(steps):
            stats = train_step(state, next_real, state.G, state.D)
        float(stats["loss/G"])  # wait for the device (the loop itself syncs once per tick)

    block()  # warm-up
    step_s = statistics.median(_timed(block) for _ in range(repeats)) / steps
    metrics = {"D/fake": 0.3, "grad_norm/G": 1.0}
    diag(state, metrics)  # warm-up: latents drawn and the real reference's diversity computed once
    diag_s = statistics.median(_timed(lambda: diag(state, metrics)) for _ in range(repeats))
    tick_s = config.train.tick_every_steps * step_s
    return {"step_s": step_s, "diag_s": diag_s, "tick_s": tick_s, "cost": diag_s / tick_s,
            "tick_every_steps": config.train.tick_every_steps, "num_samples": diag.num_samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_diagnostics", description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["ring8", "grid25", "digits"])
    p.add_argument("--steps", type=int, default=40, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1, as the other benches)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'preset':<8} {'step ms':>9} {'tick steps':>10} {'tick s':>8} {'diag ms':>9} {'samples':>8} {'cost':>7}")
    figures, details = [], []
    for preset in args.presets:
        r = bench(preset, args.steps, args.repeats, args.device)
        line = (f"{preset:<8} {1e3 * r['step_s']:>9.2f} {r['tick_every_steps']:>10d} {r['tick_s']:>8.2f} "
                f"{1e3 * r['diag_s']:>9.2f} {r['num_samples']:>8d} {100 * r['cost']:>6.2f}%")
        print(line, flush=True)
        on, off = r["tick_s"] + r["diag_s"], r["tick_s"]
        figures.append(figure(f"B7-{preset}", f"a tick of {preset} with diagnostics vs without", on, off, "s/tick",
                              on / off, "on / off", "<= 1.05"))
        details.append(f"{preset}: step {1e3 * r['step_s']:.2f} ms x {r['tick_every_steps']} steps per tick, "
                       f"diagnostics {1e3 * r['diag_s']:.1f} ms per tick over {r['num_samples']} G_ema samples")
    print("target: cost < 5% of training time")
    record("bench_diagnostics", figures, command=" ".join(["python -m benchmarks.bench_diagnostics", *(argv or [])]),
           sizes=f"presets {' '.join(args.presets)} on their own configs; {args.repeats} x {args.steps} steps timed "
                 f"(median), {args.repeats} diagnostics calls (median); {torch.get_num_threads()} torch thread(s)",
           details=details)
    return 0


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.bench_diagnostics"))
