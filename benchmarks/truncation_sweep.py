"""Precision and recall (Kynkäänniemi et al. 2019, k = 3) of a checkpoint's G_ema against the truncation
threshold psi (Brock et al. 2019): the fidelity/diversity trade-off, as a markdown table.

    python -m benchmarks.truncation_sweep CHECKPOINT_DIR [--psi 2 1.5 1 0.75 0.5 0.25]

Features are the evaluation's own (`gan_core.evaluate.feature_space`: the digits classifier for digits);
the generated set has as many samples as the reference half of the real data. Not part of make bench
(it measures quality, not speed).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from gan_core.checkpoint import load_generator
from gan_core.evaluate import feature_space, load_real_data, split_real
from gan_core.metrics import extract_features, precision_recall
from gan_core.sampling import generate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.truncation_sweep", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint directory (state.pt, config.json)")
    p.add_argument("--psi", type=float, nargs="+", default=[2.0, 1.5, 1.0, 0.75, 0.5, 0.25])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    G, config = load_generator(args.checkpoint)
    x, labels = load_real_data(config)
    ref_x, _, _, _ = split_real(x.astype(np.float32), labels, args.seed)
    extractor, _ = feature_space(config)
    f_ref = extract_features(extractor, torch.from_numpy(ref_x))
    print(f"{args.checkpoint}: {len(ref_x)} samples per set, {extractor.name} features\n")
    print("| psi | precision | recall |\n|---|---|---|")
    for psi in [None, *args.psi]:
        fake = generate(G, len(ref_x), seed=args.seed, truncation=psi)
        pr = precision_recall(f_ref, extract_features(extractor, fake), k=3)
        print(f"| {psi or 'off'} | {pr['precision']:.3f} | {pr['recall']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.truncation_sweep"))
