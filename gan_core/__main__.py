"""Train a GAN in one process, with no Ray, Prefect or MLflow: the plain-PyTorch baseline.

    python -m gan_core --preset ring8 --out runs/ring8

writes into --out: checkpoints/, samples.png (G_ema at the end; one row per class for a class-conditional
G, e.g. --preset digits-cond), training_curves.png (the per-tick
metrics over kimg), sample_strip.png (fixed-seed G_ema samples at each tick) and summary.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_generator, verify_checkpoint
from .config import PRESETS, ConfigError, get_preset, parse_overrides
from .errors import run_command
from .files import claim_output_folder
from .data import MIXTURES, InMemoryBatches, label_counts, load_builtin, mixture, mode_coverage, training_subset
from .networks import parameter_counts
from .loop import NonFiniteLossError, Snapshot, format_tick, train
from .plots import SampleStripRecorder, save_training_curves
from .sampling import generate, save_image_grid, save_scatter
from .training import build_training_state, check_device

STRIP_SEED = 0  # the sample strip's fixed latents: the same samples as samples.png
CLASS_GRID_COLUMNS = 10  # samples per class (one row each) in a class-conditional samples.png


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; allowed: a positive integer")
    return value


def preset_table() -> str:
    """The presets with their data, networks and parameter counts (counted on the meta device)."""
    lines = ["presets (parameters of G / D):"]
    for name in sorted(PRESETS):
        cfg = get_preset(name)
        g, d = parameter_counts(cfg)
        shape = "x".join(map(str, cfg.data.shape))
        data = f"{cfg.data.name} {shape}"
        lines.append(f"  {name:<14} {cfg.network.arch:<6} {cfg.loss.kind:<15} {data:<22} {_count(g):>7} / {_count(d)}")
    return "\n".join(lines) + "\n"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gan_core",
        description="Train a GAN (Goodfellow et al. 2014, Algorithm 1) in one process on a built-in dataset.",
        epilog="examples:\n  python -m gan_core --preset ring8 --out runs/ring8\n"
               "  python -m gan_core --preset digits --steps 500 --set loss.kind=minimax\n"
               "  python -m gan_core --preset r3gan-digits --out runs/r3gan-digits\n\n" + preset_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS), help="configuration preset (default: digits)")
    p.add_argument("--steps", type=int, help="iterations of Algorithm 1 (overrides train.total_steps)")
    p.add_argument("--seed", type=int, help="training seed (overrides train.seed)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set loss.r1_gamma=1.0 (repeatable)")
    p.add_argument("--out", default="runs/gan_core", help="output folder for checkpoints and pictures")
    p.add_argument("--resume", help="checkpoint directory to continue from")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m gan_core`, ending at the shared error boundary (gan_core.errors)."""
    return run_command(lambda: _train_command(argv), prog="python -m gan_core")


def _prepare(args: argparse.Namespace):
    """The request, validated before anything is written: (config, x, labels, batches, out folder).
    Raises ConfigError, CheckpointError, ValueError (user errors) or OSError (the --out folder)."""
    overrides = parse_overrides(args.set)
    if args.steps is not None:
        overrides["train.total_steps"] = args.steps
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    config = get_preset(args.preset).with_overrides(overrides)
    x, labels = load_builtin(config.data.name, config.data.num_examples, config.data.data_seed)
    if config.data.subset:  # data-limited training; evaluation still uses the whole dataset
        if config.data.name in MIXTURES:
            raise ValueError(f"data.subset: got {config.data.subset}; allowed: 0 for the 2-D mixtures "
                             "(set data.num_examples instead)")
        if config.data.subset < config.train.global_batch_size:
            raise ValueError(f"data.subset: got {config.data.subset}; allowed: 0 (every example) or at least "
                             f"one global batch (train.global_batch_size = {config.train.global_batch_size})")
        x, labels = training_subset(x, labels, config.data.subset, config.data.data_seed)
    if config.network.conditional:  # fakes follow the data's p(c)
        config = config.with_label_counts(label_counts(labels, config.data.num_classes))
    batches = InMemoryBatches(x, config.train.global_batch_size, config.train.seed,
                              labels=labels if config.network.conditional else None)
    check_device(args.device)
    if args.resume:
        verify_checkpoint(args.resume)  # missing, incomplete or damaged: refused before anything is written
        load_generator(args.resume)  # its config.json must build networks its weights fit
    out = claim_output_folder(args.out, "--out", "python -m gan_core")  # last: it writes the folder's mark
    return config, x, labels, batches, out


def _save_pictures(config, G_ema, x, result, strip: SampleStripRecorder, out: Path,
                   device: str) -> tuple[dict, list[Path]]:
    """samples.png (a scatter with mode coverage for the 2-D mixtures, a grid per class or a plain grid for
    images), the training curves and the sample strip; returns (summary entries, picture paths)."""
    extra: dict[str, object] = {}
    if config.data.name in MIXTURES:
        samples = generate(G_ema, 2500, seed=0, device=device)
        cov = mode_coverage(samples, config.data.name)
        extra["mode_coverage"] = cov
        save_scatter(samples, out / "samples.png", centres=mixture(config.data.name).centres, real=x[:2500],
                     title=f"{config.data.name}: {cov['modes_covered']:.0f}/{cov['num_modes']:.0f} modes, "
                           f"{100 * cov['high_quality_fraction']:.1f}% high quality")
    elif config.data.is_image and config.network.conditional:  # one row per class, the same z in a column
        K = config.data.num_classes
        rows = [generate(G_ema, CLASS_GRID_COLUMNS, seed=0, device=device, class_label=k) for k in range(K)]
        save_image_grid(torch.cat(rows), out / "samples.png", ncols=CLASS_GRID_COLUMNS)
    elif config.data.is_image:
        save_image_grid(generate(G_ema, 64, seed=0, device=device), out / "samples.png")
    pictures = [out / "samples.png"]
    if result.history:
        pictures.append(save_training_curves(result.history, out / "training_curves.png"))
    if strip.rows:
        real = None if config.data.is_image else x[:2500]
        pictures.append(strip.save(out / "sample_strip.png", real=real))
    return extra, pictures


def _train_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, x, labels, batches, out = _prepare(args)
    except (ConfigError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: --out: cannot create {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    stop_requested = False

    def request_stop(signum, frame):  # Ctrl-C: finish the step, write a checkpoint, exit
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    print(f"training {args.preset}: {config.train.total_steps} steps, global batch {config.train.global_batch_size}, "
          f"k = {config.train.d_steps}, loss {config.loss.kind}, {len(x)} training examples, device {args.device}", flush=True)
    state = build_training_state(config, args.device)
    strip = SampleStripRecorder()  # a few fixed-seed G_ema samples per tick

    def on_snapshot(s: Snapshot) -> None:
        print(format_tick(s, config.train.total_steps), flush=True)
        n = strip.images_per_tick if config.data.is_image else strip.points_per_tick
        strip.add(s.kimg, generate(state.G_ema, n, seed=STRIP_SEED, device=args.device))

    t0 = time.perf_counter()
    try:
        result = train(config, batches=batches, device=args.device, on_snapshot=on_snapshot,
                       should_stop=lambda: stop_requested, resume_from=args.resume,
                       checkpoint_root=out / "checkpoints", state=state)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except CheckpointError as e:  # --resume from a checkpoint whose networks do not fit this config
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    summary: dict[str, object] = {"preset": args.preset, "steps": result.state.step, "kimg": result.state.kimg,
                                  "seconds": round(seconds, 1), "checkpoint": result.checkpoint_dir}
    extra, pictures = _save_pictures(config, result.state.G_ema, x, result, strip, out, args.device)
    summary.update(extra)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print("pictures: " + "  ".join(str(p) for p in pictures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
