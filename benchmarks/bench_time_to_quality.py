"""B9 time-to-quality: wall-clock seconds of training until the digits preset's G_ema reaches
FD/floor <= 2.5 and <= 2.0, evaluated every --eval-every steps.

    python -m benchmarks.bench_time_to_quality [--steps N] [--eval-every 100] [--threads 1]
                                               [--set FIELD=VALUE ...] [--baseline-set FIELD=VALUE ...]

The evaluation is gan_core.evaluate's (`python -m gan_core.evaluate`): the real digits split into a
reference and a held-back half, FD in the digits classifier's features of G_ema's seed-0 samples
against the reference half, over the floor (held-back half against the reference half). Only the
distance to the floor means anything. The training is gan_core.loop.train with the preset's config
(and --set), ticks every --eval-every steps; evaluation runs in the tick's callback and its time is
not counted: "training seconds" are the loop's wall-clock time, ticks and checkpoints included.

With --baseline-set, a second run with those overrides is the baseline of the recorded figures (e.g.
``--baseline-set loss.r1_interval=1``: the preset before lazy R1, the default when the preset uses lazy
R1 and no --set is given); without one, the baseline is the same run (ratio 1). A threshold never
reached counts as missing (nan).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

THRESHOLDS = (2.5, 2.0)


class FDOverFloor:
    """FD / floor of a generator, with the reference and held-back features computed once."""

    def __init__(self, config, device: str = "cpu"):
        from gan_core.evaluate import feature_space, load_real_data, split_real
        from gan_core.metrics import extract_features, frechet_distance

        self.extract, self.frechet, self.device = extract_features, frechet_distance, device
        real_x, labels = load_real_data(config)
        self.extractor, _ = feature_space(config, device=device)
        ref_x, _, held_x, _ = split_real(real_x.astype("float32"), labels, 0)
        self.n = min(len(ref_x), 10_000)  # evaluate_generator's sizes and seed
        self.f_ref = extract_features(self.extractor, torch.from_numpy(ref_x[:self.n]))
        self.floor = frechet_distance(extract_features(self.extractor, torch.from_numpy(held_x[:self.n])), self.f_ref)

    def __call__(self, G) -> float:
        from gan_core.sampling import generate

        fake = generate(G, self.n, seed=0, device=self.device)
        return self.frechet(self.extract(self.extractor, fake), self.f_ref)


def time_to_quality(config, eval_every: int, device: str = "cpu") -> dict:
    """Train ``config`` from scratch; returns the curve [(step, training seconds, FD, FD/floor)], the
    first (seconds, step) at which FD/floor <= each of THRESHOLDS, the final FD/floor and the floor."""
    from gan_core.data import InMemoryBatches, load_builtin
    from gan_core.evaluate import evaluate_generator, load_real_data
    from gan_core.loop import train
    from gan_core.training import build_training_state

    import tempfile

    config = config.with_overrides({"train.tick_every_steps": eval_every})
    fd = FDOverFloor(config, device)
    x, _ = load_builtin(config.data.name, config.data.num_examples, config.data.data_seed)
    curve: list[tuple[int, float, float, float]] = []
    eval_s = [0.0]
    t0 = time.perf_counter()

    def on_snapshot(s) -> None:
        trained = time.perf_counter() - t0 - eval_s[0]
        e0 = time.perf_counter()
        value = fd(state.G_ema)
        curve.append((s.step, trained, value, value / fd.floor))
        print(f"step {s.step:6d}  training {trained:7.1f} s  FD {value:7.2f}  FD/floor {value / fd.floor:5.2f}",
              flush=True)
        eval_s[0] += time.perf_counter() - e0

    with tempfile.TemporaryDirectory() as d:
        state = build_training_state(config, device)
        t0 = time.perf_counter()
        train(config, batches=InMemoryBatches(x, config.train.global_batch_size, config.train.seed), device=device,
              on_snapshot=on_snapshot, checkpoint_root=d, state=state)
    reached = {}
    for th in THRESHOLDS:
        hit = next(((sec, step) for step, sec, _, r in curve if r <= th), None)
        reached[str(th)] = hit
    # the same number as `python -m gan_core.evaluate` on the final G_ema (a consistency check)
    real_x, labels = load_real_data(config)
    full = evaluate_generator(state.G_ema, config, real_x, labels, device=device)
    return {"curve": curve, "reached": reached, "floor": fd.floor, "final_fd_over_floor": curve[-1][3],
            "evaluate_fd_over_floor": full["fd"] / full["floor/fd"], "training_s": curve[-1][1],
            "eval_s": eval_s[0], "steps": config.train.total_steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_time_to_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits")
    p.add_argument("--steps", type=int, help="train.total_steps (default: the preset's)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="overrides of the preset")
    p.add_argument("--baseline-set", action="append", default=None, metavar="FIELD=VALUE",
                   help="overrides of the preset for a baseline run (repeatable)")
    p.add_argument("--json", help="also write the full curves here")
    args = p.parse_args(argv)

    from benchmarks.results import figure, record
    from gan_core.config import get_preset, parse_overrides

    torch.set_num_threads(args.threads)
    if args.baseline_set is None and not args.set and get_preset(args.preset).loss.r1_interval != 1:
        args.baseline_set = ["loss.r1_interval=1"]  # the preset as it was before lazy R1 (bitwise)
    base = {"train.total_steps": args.steps} if args.steps else {}
    variants = {"project": args.set}
    if args.baseline_set is not None:
        variants["baseline"] = args.baseline_set
    out = {}
    for name, sets in variants.items():
        config = get_preset(args.preset).with_overrides({**base, **parse_overrides(sets)})
        print(f"== {name}: preset {args.preset} {' '.join(sets)}: {config.train.total_steps} steps, batch "
              f"{config.train.global_batch_size}, r1_interval {config.loss.r1_interval}, "
              f"{args.threads} thread(s)", flush=True)
        out[name] = time_to_quality(config, args.eval_every)
        r = out[name]
        print(f"{name}: training {r['training_s']:.1f} s (+ {r['eval_s']:.1f} s evaluation, not counted); final "
              f"FD/floor {r['final_fd_over_floor']:.3f} (gan_core.evaluate: {r['evaluate_fd_over_floor']:.3f}); "
              + "; ".join(f"<= {th}: " + (f"{hit[0]:.1f} s at step {hit[1]}" if hit else "not reached")
                          for th, hit in r["reached"].items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    proj = out["project"]
    ref = out.get("baseline", proj)
    ref_label = "the preset with " + " ".join(args.baseline_set) if args.baseline_set is not None else "the same run"
    figures = []
    for th in THRESHOLDS:
        a, b = proj["reached"][str(th)], ref["reached"][str(th)]
        sa, sb = (a[0] if a else float("nan")), (b[0] if b else float("nan"))
        figures.append(figure(f"B9-{th}", f"seconds of training until digits G_ema FD/floor <= {th} (baseline: "
                              f"{ref_label})", sa, sb, "s", sa / sb if a and b else float("nan"),
                              "project / baseline"))
    figures.append(figure("B9-final", "final FD/floor of the digits preset", proj["final_fd_over_floor"],
                          ref["final_fd_over_floor"], "FD/floor", proj["final_fd_over_floor"] / ref["final_fd_over_floor"],
                          "project / baseline"))
    details = []
    for name, r in out.items():
        curve = ", ".join(f"{step}: {ratio:.2f}" for step, _, _, ratio in r["curve"])
        details.append(f"{name}: {r['training_s']:.1f} s of training for {r['steps']} steps; FD/floor by step: "
                       f"{curve}; floor FD {r['floor']:.2f}")
    record("bench_time_to_quality", figures,
           sizes=f"preset {args.preset}, {proj['steps']} steps, evaluated every {args.eval_every} steps "
                 f"(ticks every {args.eval_every}), {args.threads} torch thread(s), one seed",
           command="python -m benchmarks.bench_time_to_quality " + " ".join(
               [f"--set {s}" for s in args.set] + [f"--baseline-set {s}" for s in args.baseline_set or []]),
           details=details)
    return 0


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.bench_time_to_quality"))
