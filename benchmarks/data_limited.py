"""Data-limited digits: FD/floor of G_ema trained on a class-stratified subset of digits without and
with DiffAugment (Zhao et al. 2020), paired by seed, and how much D overfits its training images
(Karras et al. 2020, Fig. 1b: the mean sign of D's logit on the training reals against the held-out
reals, which D never saw; > 0 reads "real"), as a markdown table.

    python -m benchmarks.data_limited [--seeds 0 1 2] [--steps 10000] [--subset 300] [--jobs 2]
        [--augment augment.policy=cutout augment.fill=-1] [--set FIELD=VALUE ...] [--out runs/data-limited]

Each run is ``python -m gan_core --preset digits`` on one thread, in its own process (``--jobs`` at
once); both arms take ``train.ema_kimg=20`` (StyleGAN2-ADA's 10 kimg per 32 images of batch) unless
``--set`` says otherwise. A run whose final checkpoint already exists under ``--out`` with the same
training config is evaluated, not trained again; one with another config is refused (exit 2), as are
bad overrides, before anything starts. A failed training run exits 1 with the tail of its log. FD is
the evaluation's own (`gan_core.evaluate`, digits-classifier features against all 1,797 digits). Not part
of make bench (it measures quality, not speed).
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

from gan_core.checkpoint import load_training_state, read_checkpoint_config
from gan_core.config import ConfigError, GANConfig, get_preset, parse_overrides
from gan_core.data import load_digits, training_subset
from gan_core.evaluate import evaluate_checkpoint
from gan_core.networks import apply

DEFAULT_AUGMENT = ["augment.policy=cutout", "augment.fill=-1"]
DEFAULT_SET = ["train.ema_kimg=20"]
# fields that do not change what is trained: a finished run is reused whatever they are
HOUSEKEEPING = ("num_checkpoints_to_keep", "checkpoint_every_steps", "tick_every_steps")


class RunFailed(RuntimeError):
    """A training subprocess exited non-zero (the message names the run and holds its log's tail)."""


def expected_config(seed: int, steps: int, overrides: list[str]) -> GANConfig:
    """The config `python -m gan_core --preset digits --seed --steps --set ...` trains (ConfigError if bad)."""
    values = parse_overrides(overrides)
    values.update({"train.total_steps": steps, "train.seed": seed})
    config = get_preset("digits").with_overrides(values)
    if config.network.d_pack != 1 or config.network.conditional:
        raise ConfigError("network: D's sign on single unlabelled images needs network.d_pack = 1 and "
                          "network.conditional = false here")
    if config.data.subset < config.train.global_batch_size:
        raise ConfigError(f"--subset: got {config.data.subset}; allowed: at least one global batch "
                          f"(train.global_batch_size = {config.train.global_batch_size})")
    return config


def _training_part(config: GANConfig) -> dict:
    d = config.to_dict()
    for name in HOUSEKEEPING:
        d["train"].pop(name, None)
    return d


def run_gan_core(out: Path, args: list[str], overrides: list[str]) -> None:
    """``python -m gan_core <args> --set <overrides> --threads 1 --out <out>`` in its own process on one
    thread, its output in ``<out>.log``. Raises RunFailed (naming the log, with its tail) on a non-zero exit."""
    cmd = [sys.executable, "-m", "gan_core", *args, "--threads", "1", "--out", str(out)]
    cmd += [a for o in overrides for a in ("--set", o)]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Path(f"{out}.log")
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise RunFailed(f"{out}: training failed (exit {rc}); see {log}:\n{tail}")


def train_run(out: Path, config: GANConfig, overrides: list[str]) -> Path:
    """Train one run (unless its final checkpoint exists); returns the final checkpoint directory. Raises
    RunFailed when training exits non-zero."""
    steps, seed = config.train.total_steps, config.train.seed
    final = out / "checkpoints" / f"checkpoint-{steps:09d}"
    if not (final / "state.pt").exists():
        run_gan_core(out, ["--preset", "digits", "--seed", str(seed), "--steps", str(steps)], overrides)
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; allowed: an integer >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_limited", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--steps", type=positive_int, default=10_000, help="iterations of each run (default: 10000)")
    p.add_argument("--subset", type=positive_int, default=300, help="training images, data.subset (default: 300)")
    p.add_argument("--augment", nargs="+", default=DEFAULT_AUGMENT, metavar="FIELD=VALUE",
                   help=f"the augmented runs' extra overrides (default: {' '.join(DEFAULT_AUGMENT)})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"an override for both arms, after {' '.join(DEFAULT_SET)} (repeatable)")
    p.add_argument("--jobs", type=positive_int, default=2, help="runs at once, one thread each (default: 2)")
    p.add_argument("--out", default="runs/data-limited", help="folder of the runs (reused when present)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(dict.fromkeys(args.seeds))  # each seed once: two jobs must not share a folder
    common = [f"data.subset={args.subset}", *DEFAULT_SET, *args.overrides]
    arms = {"without": common, "with": common + list(args.augment)}
    jobs = [(arm, seed) for seed in seeds for arm in arms]
    root = Path(args.out)
    try:  # the whole request, before anything is trained
        configs = {job: expected_config(job[1], args.steps, arms[job[0]]) for job in jobs}
        for (arm, seed), config in configs.items():
            final = root / f"{arm}-s{seed}" / "checkpoints" / f"checkpoint-{args.steps:09d}"
            if (final / "config.json").exists() and _training_part(read_checkpoint_config(final)) != \
                    _training_part(config):
                raise ConfigError(f"{final.parent.parent}: a finished run with another config; allowed: "
                                  "the same settings, or another --out")
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            finals = dict(zip(jobs, pool.map(lambda j: train_run(root / f"{j[0]}-s{j[1]}", configs[j], arms[j[0]]),
                                             jobs)))
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows = {}
    for job, ckpt in finals.items():
        result = evaluate_checkpoint(ckpt, verbose=False)
        rows[job] = (result["fd"] / result["floor/fd"], *real_signs(ckpt))
    print(f"\n{args.subset} digits, {args.steps} steps; both: {' '.join(common)}; with: {' '.join(args.augment)}\n")
    print("| seed | FD/floor without | FD/floor with | D sign train / held-out, without | with |")
    print("|---|---|---|---|---|")
    for seed in seeds:
        a, b = rows[("without", seed)], rows[("with", seed)]
        print(f"| {seed} | {a[0]:.3f} | {b[0]:.3f} | {a[1]:+.2f} / {a[2]:+.2f} | {b[1]:+.2f} / {b[2]:+.2f} |")
    mean = {arm: np.mean([rows[(arm, s)][0] for s in seeds]) for arm in arms}
    lower = sum(rows[("with", s)][0] < rows[("without", s)][0] for s in seeds)
    print(f"| mean | {mean['without']:.3f} | {mean['with']:.3f} | lower with augmentation on {lower} of "
          f"{len(seeds)} seeds | |")
    return 0


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.data_limited"))
