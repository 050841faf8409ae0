"""R3GAN beside DCGAN, seed by seed, in one run: G_ema's FD/floor (and on stacked digits the 1000-mode
protocol's modes_covered and mode_kl, each beside its real-data floor) and the training seconds of each
preset, as a markdown table.

    python -m benchmarks.modern_gan [--presets digits r3gan-digits] [--seeds 0 1 2] [--jobs 2]
        [--set FIELD=VALUE ...] [--out runs/modern-gan]
    python -m benchmarks.modern_gan --presets stacked r3gan-stacked

Each run is ``python -m gan_core --preset P --seed S`` on one thread in its own process (``--jobs`` at
once: two at a time on this 2-core machine, so the seconds of one run are comparable within the table);
``--set`` goes to every run. The final checkpoint is evaluated by `gan_core.evaluate` (digits-classifier
features). Not part of make bench (it measures quality, not speed).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gan_core.config import PRESETS, ConfigError, get_preset, parse_overrides
from gan_core.evaluate import evaluate_checkpoint

from .data_limited import RunFailed, run_gan_core


def train(out: Path, preset: str, seed: int, overrides: list[str]) -> tuple[Path, float]:
    """Train one run into `out` (a fresh folder); (final checkpoint, training seconds). RunFailed with the
    log's tail when the run fails."""
    run_gan_core(out, ["--preset", preset, "--seed", str(seed)], overrides)
    summary = json.loads((out / "summary.json").read_text())
    return Path(summary["checkpoint"]), float(summary["seconds"])


def measure(out: Path, preset: str, seed: int, overrides: list[str]) -> dict[str, float]:
    checkpoint, seconds = train(out, preset, seed, overrides)
    m = evaluate_checkpoint(checkpoint, verbose=False)
    row = {"fd": m["fd"], "floor/fd": m["floor/fd"], "fd/floor": m["fd"] / m["floor/fd"], "seconds": seconds}
    row.update({k: m[k] for k in ("modes_covered", "mode_kl", "floor/modes_covered", "floor/mode_kl") if k in m})
    return row


def table(results: dict[tuple[str, int], dict[str, float]]) -> str:
    """Markdown: one row per (preset, seed), then each preset's mean."""
    keys = ["fd/floor", "fd", "floor/fd"] + [k for k in ("modes_covered", "mode_kl", "floor/mode_kl")
                                               if any(k in r for r in results.values())] + ["seconds"]
    lines = ["| preset | seed | " + " | ".join(keys) + " |", "|---|---|" + "---:|" * len(keys)]
    for (preset, seed), r in sorted(results.items()):
        lines.append(f"| {preset} | {seed} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |")
    for preset in sorted({p for p, _ in results}):
        rows = [r for (p, _), r in results.items() if p == preset]
        lines.append(f"| **{preset}** | mean | " + " | ".join(
            f"{np.mean([r.get(k, float('nan')) for r in rows]):.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.modern_gan", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["digits", "r3gan-digits"], choices=sorted(PRESETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one CPU thread each)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override for every run")
    p.add_argument("--out", default="runs/modern-gan", help="a new folder (each run writes a sub-folder)")
    args = p.parse_args(argv)
    try:
        for preset in args.presets:  # every request checked before anything starts
            get_preset(preset).with_overrides(parse_overrides(args.set))
        if args.jobs < 1 or any(s < 0 for s in args.seeds):
            raise ConfigError("--jobs: at least 1; --seeds: integers >= 0")
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out}: not empty; allowed: a new or empty folder")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    runs = [(preset, seed) for seed in dict.fromkeys(args.seeds) for preset in args.presets]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {run: pool.submit(measure, out / f"{run[0]}-s{run[1]}", run[0], run[1], args.set) for run in runs}
        try:
            results = {run: f.result() for run, f in futures.items()}
        except RunFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(f"command: python -m benchmarks.modern_gan --presets {' '.join(args.presets)} --seeds "
          f"{' '.join(map(str, args.seeds))} --jobs {args.jobs}" + "".join(f" --set {o}" for o in args.set))
    print(table(results))
    return 0


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.modern_gan"))
