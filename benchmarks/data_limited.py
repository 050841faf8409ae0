"""Data-limited digits: FD/floor of G_ema trained on a class-stratified subset of digits without and
with DiffAugment (Zhao et al. 2020), paired by seed, and how much D overfits its training images
(Karras et al. 2020, Fig. 1b: the mean sign of D's logit on the training reals against the held-out
reals, which D never saw; > 0 reads "real"), as a markdown table.

    python -m benchmarks.data_limited [--seeds 0 1 2] [--steps 10000] [--subset 300] [--jobs 2]
        [--augment augment.policy=cutout augment.fill=-1] [--set train.ema_kimg=20] [--out runs/data-limited]

Each run is ``python -m gan_core --preset digits`` on one thread, in its own process (``--jobs`` at
once); a run whose final checkpoint already exists under ``--out`` is evaluated, not trained again.
FD is the evaluation's own (`gan_core.evaluate`, digits-classifier features against all 1,797
digits). Not part of make bench (it measures quality, not speed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from gan_core.checkpoint import load_training_state
from gan_core.data import load_digits, training_subset
from gan_core.evaluate import evaluate_checkpoint
from gan_core.training import apply

DEFAULT_AUGMENT = ["augment.policy=cutout", "augment.fill=-1"]


def train_run(out: Path, seed: int, steps: int, overrides: list[str]) -> Path:
    """Train one run (unless its final checkpoint exists); returns the final checkpoint directory."""
    final = out / "checkpoints" / f"checkpoint-{steps:09d}"
    if not (final / "state.pt").exists():
        cmd = [sys.executable, "-m", "gan_core", "--preset", "digits", "--threads", "1", "--seed", str(seed),
               "--steps", str(steps), "--out", str(out)]
        for o in overrides:
            cmd += ["--set", o]
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{out}.log", "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        print(f"trained {out}", flush=True)
    return final


def real_signs(checkpoint: Path) -> tuple[float, float]:
    """E[sign(D(x))] over the run's training subset and over the held-out rest of digits."""
    state = load_training_state(checkpoint)
    data = state.config.data
    x, labels = load_digits()
    train_x, _ = training_subset(x, labels, data.subset, data.data_seed)
    seen = {row.tobytes() for row in train_x}
    held = np.stack([row for row in x if row.tobytes() not in seen])
    with torch.no_grad():
        sign = [torch.sign(apply(state.D.eval(), torch.from_numpy(a), None)).mean().item() for a in (train_x, held)]
    return sign[0], sign[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_limited", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--subset", type=int, default=300, help="training images (data.subset)")
    p.add_argument("--augment", nargs="+", default=DEFAULT_AUGMENT, metavar="FIELD=VALUE",
                   help=f"the augmented runs' extra overrides (default: {' '.join(DEFAULT_AUGMENT)})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="an override for both arms, e.g. train.ema_kimg=20 (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    p.add_argument("--out", default="runs/data-limited", help="folder of the runs (reused when present)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    common = [f"data.subset={args.subset}", *args.overrides]
    arms = {"without": common, "with": common + list(args.augment)}
    jobs = [(arm, seed) for seed in args.seeds for arm in arms]
    root = Path(args.out)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        finals = dict(zip(jobs, pool.map(lambda j: train_run(root / f"{j[0]}-s{j[1]}", j[1], args.steps, arms[j[0]]),
                                         jobs)))
    rows = {}
    for job, ckpt in finals.items():
        result = evaluate_checkpoint(ckpt, verbose=False)
        rows[job] = (result["fd"] / result["floor/fd"], *real_signs(ckpt))
    print(f"\n{args.subset} digits, {args.steps} steps; both: {' '.join(common)}; with: {' '.join(args.augment)}\n")
    print("| seed | FD/floor without | FD/floor with | D sign train / held-out, without | with |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        a, b = rows[("without", seed)], rows[("with", seed)]
        print(f"| {seed} | {a[0]:.3f} | {b[0]:.3f} | {a[1]:+.2f} / {a[2]:+.2f} | {b[1]:+.2f} / {b[2]:+.2f} |")
    mean = {arm: np.mean([rows[(arm, s)][0] for s in args.seeds]) for arm in arms}
    lower = sum(rows[("with", s)][0] < rows[("without", s)][0] for s in args.seeds)
    print(f"| mean | {mean['without']:.3f} | {mean['with']:.3f} | lower with augmentation on {lower} of "
          f"{len(args.seeds)} seeds | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
