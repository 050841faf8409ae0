"""DCGAN or R3GAN (--preset: dcgan64 by default, dcgan32, r3gan32, r3gan64) on one GPU: training and
sampling images/s, model FLOP utilisation (MFU) and peak memory for fp32 eager, bf16 autocast +
channels_last, and torch.compile (bf16 + channels_last).

    python -m benchmarks.gpu.bench_gpu --out runs/bench_gpu/results.json      # one GPU, under 5 minutes
    python -m benchmarks.gpu.bench_gpu --preset r3gan32 --out runs/bench_gpu/r3gan32.json
    python -m benchmarks.gpu.bench_gpu --smoke --out /tmp/smoke.json          # CPU, tiny sizes, seconds
    python -m benchmarks.gpu.bench_gpu --smoke --preset r3gan32 --out /tmp/smoke-r3gan.json

Pure gan_core + torch: no Ray, Prefect or MLflow. Training runs the engine's own Algorithm 1 step
(`gan_core.training.train_step`: k D updates with R1, one G update, the G_ema update, both lr schedules)
on the preset's configuration; bf16 and channels_last are the engine's switches (train.amp,
train.channels_last). Real minibatches are random images resident on the device, so data loading is not
measured. Each variant: warm-up steps (and compilation) excluded, then whole steps until
--seconds-per-variant have passed, timed between CUDA synchronisations. Sampling: G_ema forward in eval
mode on a large batch of z, time-boxed the same way. Peak memory: torch.cuda.max_memory_allocated,
reset before training and before sampling.

MFU = (FLOPs of one training step x steps/s) / the card's peak dense TFLOP/s for the variant's arithmetic
(bf16 for the bf16 variants; TF32 for fp32 when cuDNN may use it for convolutions, PyTorch's default,
else fp32). The step's FLOPs are counted once with torch.utils.flop_counter.FlopCounterMode: every
convolution and matmul of G and D, forward and backward, R1's double backward included. Peaks: PEAKS
below, by torch.cuda.get_device_name(); --peak-tflops / --peak-tflops-fp32 override them.

Prints a table with the ratios (targets: bf16 + channels_last >= 2x fp32 eager; compile >= 1.2x eager
bf16) and writes the JSON (--out). Exit status: 0; 2 for bad input (one line, nothing written); 1 when a
variant failed (its error is in the JSON, the other figures too).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import re
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from gan_core.config import PRESETS, GANConfig, get_preset, parse_overrides
from gan_core.training import TrainingState, build_training_state, train_step

# -- the card's peak ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peak:
    """Dense (no structured sparsity) peak TFLOP/s of one card: bf16 and TF32 tensor cores, fp32 CUDA cores."""

    card: str
    bf16: float | None
    tf32: float | None
    fp32: float | None
    source: str


# NVIDIA's datasheets give tensor-core figures "with sparsity"; the dense figure is half of it.
# First match of the pattern in torch.cuda.get_device_name() wins (so "H100 PCIe" before "H100").
_H100_SHEET = "https://www.nvidia.com/en-us/data-center/h100/ (datasheet; sparse figures / 2)"
_H200_SHEET = "https://www.nvidia.com/en-us/data-center/h200/ (datasheet; sparse figures / 2)"
PEAKS: tuple[tuple[str, Peak], ...] = (
    (r"H100.*PCIe", Peak("H100 PCIe", bf16=756.5, tf32=378.0, fp32=51.0, source=_H100_SHEET)),
    (r"H100.*NVL", Peak("H100 NVL", bf16=835.5, tf32=417.5, fp32=60.0, source=_H100_SHEET)),
    (r"H100", Peak("H100 SXM", bf16=989.5, tf32=494.5, fp32=67.0, source=_H100_SHEET)),
    (r"GH200", Peak("GH200", bf16=989.5, tf32=494.5, fp32=67.0,
                    source="https://www.nvidia.com/en-us/data-center/grace-hopper-superchip/ (datasheet)")),
    (r"\bH200.*NVL", Peak("H200 NVL", bf16=835.5, tf32=417.5, fp32=60.0, source=_H200_SHEET)),
    (r"\bH200\b", Peak("H200 SXM", bf16=989.5, tf32=494.5, fp32=67.0, source=_H200_SHEET)),
    (r"A100", Peak("A100", bf16=312.0, tf32=156.0, fp32=19.5,
                   source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
                          "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")),
    (r"L40S", Peak("L40S", bf16=366.5, tf32=183.0, fp32=91.6,
                   source="https://www.nvidia.com/en-us/data-center/l40s/ (datasheet; sparse figures / 2)")),
    (r"\bL4\b", Peak("L4", bf16=121.0, tf32=60.0, fp32=30.3,
                     source="https://www.nvidia.com/en-us/data-center/l4/ (datasheet; sparse figures / 2)")),
    (r"\bA10\b", Peak("A10", bf16=125.0, tf32=62.5, fp32=31.2,
                      source="https://www.nvidia.com/en-us/data-center/products/a10-gpu/ (datasheet)")),
)
# --smoke on a CPU: no hardware peak; a nominal 1 TFLOP/s keeps MFU's arithmetic exercised
SMOKE_PEAK = Peak("nominal (smoke, CPU)", bf16=1.0, tf32=1.0, fp32=1.0, source="nominal: --smoke has no hardware peak")


def peak_for(device_name: str) -> Peak | None:
    """The PEAKS entry whose pattern matches ``device_name`` (case-insensitive), or None."""
    for pattern, peak in PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def peak_kind(amp: str, device: torch.device) -> str:
    """Which peak a variant's MFU is measured against: bf16/fp16 autocast -> "bf16"; fp32 on CUDA -> "tf32"
    when cuDNN may run fp32 convolutions on TF32 tensor cores (torch.backends.cudnn.allow_tf32, PyTorch's
    default; the convolutions are nearly all of the FLOPs), else "fp32"."""
    if amp != "off":
        return "bf16"  # NOTE: the fp16 tensor-core peak equals bf16's on every card in PEAKS
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def override_peak(peak: Peak | None, bf16: float | None, fp32: float | None) -> Peak | None:
    """``peak`` with --peak-tflops (bf16) and --peak-tflops-fp32 (the fp32 variant's: TF32 and fp32) applied."""
    if bf16 is None and fp32 is None:
        return peak
    base = peak or Peak("unknown card", None, None, None, "")
    return Peak(base.card, bf16=bf16 or base.bf16, tf32=fp32 or base.tf32, fp32=fp32 or base.fp32,
                source="--peak-tflops / --peak-tflops-fp32" + (f"; the rest: {base.source}" if base.source else ""))


# -- the variants ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    amp: str  # train.amp
    channels_last: bool  # train.channels_last
    compile: bool


VARIANTS = (
    Variant("fp32_eager", "fp32 eager", "off", False, False),
    Variant("bf16_channels_last", "bf16 + channels_last", "bf16", True, False),
    Variant("compile_bf16_channels_last", "compile (bf16 + CL)", "bf16", True, True),
)
# (numerator, denominator, target on training images/s)
RATIOS = (("bf16_channels_last", "fp32_eager", 2.0), ("compile_bf16_channels_last", "bf16_channels_last", 1.2))
# image presets of both engines: DCGAN (Radford et al. 2015) and R3GAN (Huang et al. 2024)
IMAGE_PRESETS = sorted(name for name, preset in PRESETS.items() if preset().network.arch in ("dcgan", "r3gan"))
SMOKE_OVERRIDES = {"data.shape": [3, 16, 16], "network.z_dim": 16, "network.g_width": 8, "network.d_width": 8,
                   "train.global_batch_size": 8}


def needs_double_backward(config: GANConfig) -> bool:
    """R1, R2 (Mescheder et al. 2018) and the WGAN-GP penalty differentiate D's input gradient."""
    return config.loss.r1_gamma > 0 or config.loss.r2_gamma > 0 or config.loss.gp_lambda > 0


def apply_compile(state: TrainingState, compile_fn: Callable) -> tuple[torch.nn.Module, list[str]]:
    """Compile G and D in place (their parameters stay the optimisers' and G_ema's); returns D for the D
    update and the names of what runs compiled.

    NOTE: torch.compile (AOTAutograd) cannot differentiate its own backward ("does not currently support
    double backward"), so with R1 or a gradient penalty the D update uses D eager; G (both updates),
    D in the G update and G_ema (sampling) still run compiled.
    """
    D_eager = state.D
    state.G = compile_fn(state.G)
    state.D = compile_fn(state.D)
    state.G_ema = compile_fn(state.G_ema)
    compiled = ["G", "D in the G update", "G_ema"]
    if needs_double_backward(state.config):
        return D_eager, compiled
    return state.D, compiled + ["D in the D update"]


# -- measuring -----------------------------------------------------------------------------------------


def device_batches(config: GANConfig, device: torch.device, pool: int = 4) -> Callable[[], torch.Tensor]:
    """``next_real()`` cycling through ``pool`` random minibatches in [-1, 1], resident on ``device``."""
    g = torch.Generator().manual_seed(0)
    shape = (config.train.global_batch_size, *config.data.shape)
    batches = [(torch.rand(shape, generator=g) * 2 - 1).to(device) for _ in range(pool)]
    i = -1

    def next_real() -> torch.Tensor:
        nonlocal i
        i = (i + 1) % pool
        return batches[i]

    return next_real


def count_flops(state: TrainingState, next_real: Callable[[], torch.Tensor]) -> dict[str, float]:
    """FLOPs of one Algorithm 1 step (one train_step, which it runs): in total ("per_step", and
    "per_image" per real image shown to D) and as FlopCounterMode attributes them to G and D ("other":
    what it counts outside a module call, e.g. R1's double backward); and of one G forward per image."""
    with FlopCounterMode(display=False) as counter:
        train_step(state, next_real, state.G, state.D)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = counter.get_total_flops()
    g, d = by_module.get(type(state.G).__name__, 0), by_module.get(type(state.D).__name__, 0)
    z = torch.randn(2, state.config.network.z_dim, device=state.device)
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        state.G_ema(z)
    t = state.config.train
    return {"per_step": total, "G": g, "D": d, "other": total - g - d,
            "per_image": total / (t.global_batch_size * t.d_steps), "G_forward_per_image": forward.get_total_flops() / 2}


def time_boxed(run_once: Callable[[], None], seconds: float, sync: Callable[[], None]) -> tuple[int, float]:
    """Repeat ``run_once`` for at least ``seconds`` (and at least once); returns (runs, elapsed seconds).

    The clock is read between synchronisations, in chunks of about a quarter second (estimated from one
    timed run) so that host and device keep overlapping inside a chunk.
    """
    sync()
    t0 = time.perf_counter()
    run_once()
    sync()
    first = time.perf_counter() - t0
    chunk = max(1, min(100, int(0.25 / max(first, 1e-6))))
    runs = 0
    sync()
    t0 = time.perf_counter()
    while True:
        for _ in range(chunk):
            run_once()
        runs += chunk
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return runs, elapsed


def autocast_for(amp: str, device: torch.device):
    """The engine's autocast for ``train.amp`` (off, bf16 or fp16), for the sampling forward."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def peak_memory_bytes(device: torch.device) -> int:
    """The allocator's peak since the last reset (CUDA); on a CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_variant(variant: Variant, base: GANConfig, device: torch.device, args: argparse.Namespace,
                peak: Peak | None, flops: dict[str, float] | None) -> tuple[dict, dict[str, float]]:
    """One variant: training images/s, MFU, sampling images/s, peak memory. Returns its figures and the
    FLOPs (`count_flops`: counted on the first variant, eager, then passed in)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = base.with_overrides({"train.amp": variant.amp, "train.channels_last": variant.channels_last})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # 1. the engine's state and switches; compilation applied from outside, like DDP
    state = build_training_state(config, device)
    next_real = device_batches(config, device)
    out: dict = {"label": variant.label, "amp": variant.amp, "channels_last": variant.channels_last,
                 "weights_channels_last": _conv_weights_channels_last(state.D)}
    if flops is None:
        flops = count_flops(state, next_real)  # eager, before any compilation
    D_update = state.D
    t0 = time.perf_counter()
    if variant.compile:
        compile_fn = functools.partial(torch.compile, backend=args.compile_backend, mode=args.compile_mode,
                                       dynamic=False)
        D_update, out["compiled"] = apply_compile(state, compile_fn)
        out["compile_backend"] = args.compile_backend
    # 2. warm-up (compilation happens here), excluded from the timing
    state.G.train()
    state.D.train()
    for _ in range(args.warmup_steps):
        train_step(state, next_real, state.G, D_update)
    sync()
    out["warmup_seconds"] = time.perf_counter() - t0
    # 3. training: whole Algorithm 1 steps, time-boxed
    steps, seconds = time_boxed(lambda: train_step(state, next_real, state.G, D_update), args.seconds_per_variant, sync)
    out["train_steps"], out["train_seconds"] = steps, seconds
    # real images shown to D (the engine's images_seen, perf/kimg_per_s): k minibatches per step
    out["train_images_per_s"] = steps * config.train.d_steps * config.train.global_batch_size / seconds
    out["step_ms"] = 1000.0 * seconds / steps
    out["achieved_tflops"] = flops["per_step"] * steps / seconds / 1e12
    out["peak_memory_train_bytes"] = peak_memory_bytes(device)
    # 4. sampling: G_ema forward in eval mode on one large batch of z
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    z = torch.randn(args.sample_batch_size, config.network.z_dim, device=device)
    state.G_ema.eval()

    def sample_once() -> None:
        with torch.inference_mode(), autocast_for(config.train.amp, device):
            state.G_ema(z)

    for _ in range(args.warmup_steps):
        sample_once()
    runs, s_seconds = time_boxed(sample_once, args.sample_seconds, sync)
    out["sample_images_per_s"] = runs * args.sample_batch_size / s_seconds
    out["sample_batch_size"] = args.sample_batch_size
    out["peak_memory_sample_bytes"] = peak_memory_bytes(device)
    out["sample_achieved_tflops"] = out["sample_images_per_s"] * flops["G_forward_per_image"] / 1e12
    # 5. MFU against the peak for this variant's arithmetic
    out["peak_kind"] = kind = peak_kind(variant.amp, device)
    out["peak_tflops"] = peak_tflops = getattr(peak, kind) if peak is not None else None
    out["mfu"] = out["achieved_tflops"] / peak_tflops if peak_tflops else None
    out["sample_mfu"] = out["sample_achieved_tflops"] / peak_tflops if peak_tflops else None
    return out, flops


def _conv_weights_channels_last(D: torch.nn.Module) -> bool:
    """Whether every 4-D parameter of D is stored channels_last."""
    weights = [p for p in D.parameters() if p.dim() == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def _release(device: torch.device) -> None:
    torch.compiler.reset()  # drop compiled graphs (and their guards on the deleted modules)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- reporting -------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    env = {"device_type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                   memory_total_bytes=props.total_memory)
    else:
        env["device_name"] = "cpu"
    return env


def ratios(variants: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for num, den, target in RATIOS:
        a, b = variants.get(num, {}), variants.get(den, {})
        ok = "train_images_per_s" in a and "train_images_per_s" in b
        out[f"{num}/{den}"] = {
            "train": a["train_images_per_s"] / b["train_images_per_s"] if ok else None,
            "sample": a["sample_images_per_s"] / b["sample_images_per_s"] if ok else None,
            "train_target": target,
        }
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    lines = [f"gan_core {result['preset']} on {env['device_name']} (torch {env['torch']}, CUDA {env['cuda']}), "
             f"batch {cfg['global_batch_size']}, images {cfg['image_shape']}, R1 gamma {cfg['r1_gamma']}, "
             f"{result['flops']['per_step'] / 1e9:.1f} GFLOP per step",
             f"{'variant':<22} {'train img/s':>11} {'step ms':>8} {'TFLOP/s':>8} {'MFU':>7} {'sample img/s':>12} "
             f"{'peak GiB train/sample':>22}"]
    for v in result["variants"].values():
        if "error" in v:
            lines.append(f"{v['label']:<22} failed: {v['error']}")
            continue
        mfu = None if v["mfu"] is None else 100 * v["mfu"]
        lines.append(f"{v['label']:<22} {v['train_images_per_s']:>11,.0f} {v['step_ms']:>8.2f} "
                     f"{v['achieved_tflops']:>8.2f} {_fmt(mfu, '>6.1f') + '%':>7} {v['sample_images_per_s']:>12,.0f} "
                     f"{v['peak_memory_train_bytes'] / 2**30:>10.2f} / {v['peak_memory_sample_bytes'] / 2**30:<9.2f}")
    for name, r in result["ratios"].items():
        lines.append(f"ratio {name}: train {_fmt(r['train'], '.2f')}x (target >= {r['train_target']}x), "
                     f"sampling {_fmt(r['sample'], '.2f')}x")
    peak = result["peak"]
    lines.append(f"MFU against {peak['card']} dense peaks (bf16 {peak['bf16']}, tf32 {peak['tf32']}, fp32 "
                 f"{peak['fp32']} TFLOP/s; {peak['source']})" if peak["card"] else
                 "MFU: n/a (no peak known for this card; pass --peak-tflops / --peak-tflops-fp32)")
    return "\n".join(lines)


def write_json(path: Path, result: dict) -> None:
    """Written whole or not at all: a temporary file in the same folder, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


# -- entry point -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.bench_gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="CPU smoke mode: 16x16 images, tiny widths, batch 8, a fraction of a second per variant, "
                        "torch.compile with the 'eager' backend (graph capture without code generation)")
    p.add_argument("--preset", default="dcgan64", choices=IMAGE_PRESETS)
    p.add_argument("--batch-size", type=int, help="train.global_batch_size (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set loss.r1_gamma=0 (repeatable)")
    p.add_argument("--seconds-per-variant", type=float, help="timed training seconds per variant (default 20; smoke 0.3)")
    p.add_argument("--sample-seconds", type=float, help="timed sampling seconds per variant (default 5; smoke 0.1)")
    p.add_argument("--warmup-steps", type=int, help="untimed steps (and sampling passes) first (default 10; smoke 2)")
    p.add_argument("--sample-batch-size", type=int, help="z per G_ema forward (default 2048; smoke 32)")
    p.add_argument("--peak-tflops", type=float, help="the card's peak dense bf16 TFLOP/s (default: from PEAKS)")
    p.add_argument("--peak-tflops-fp32", type=float,
                   help="the peak for the fp32 variant: TF32 dense when cuDNN may use TF32, else fp32 (default: PEAKS)")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor; smoke eager)")
    p.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's)")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="leave torch.backends.cudnn.benchmark off")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; smoke 1)")
    p.add_argument("--out", default="runs/bench_gpu/results.json", help="the JSON file to write")
    return p


def resolve_args(args: argparse.Namespace) -> tuple[GANConfig, torch.device, Peak | None, Path]:
    """Defaults for the mode, then every check before anything runs. Raises ValueError (ConfigError
    included) with a one-line message naming the option, the value and what is accepted."""
    smoke = args.smoke
    defaults = {"seconds_per_variant": (20.0, 0.3), "sample_seconds": (5.0, 0.1), "warmup_steps": (10, 2),
                "sample_batch_size": (2048, 32), "compile_backend": ("inductor", "eager"), "threads": (None, 1)}
    for name, (gpu, cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, cpu if smoke else gpu)
    for name in ("seconds_per_variant", "sample_seconds", "peak_tflops", "peak_tflops_fp32"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{name.replace('_', '-')}: got {v}; allowed: a positive number")
    for name in ("sample_batch_size", "threads"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: got {v}; allowed: a positive integer")
    if args.warmup_steps < 1:
        raise ValueError(f"--warmup-steps: got {args.warmup_steps}; allowed: an integer >= 1")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out: got {args.out!r}, a folder; allowed: a file path for the JSON")
    overrides = parse_overrides(args.set)
    if args.batch_size is not None:
        overrides["train.global_batch_size"] = args.batch_size
    if smoke:
        overrides = {**SMOKE_OVERRIDES, **overrides}
    config = get_preset(args.preset).with_overrides(overrides)
    if not smoke and not torch.cuda.is_available():
        raise ValueError("no CUDA device: this benchmark measures one GPU (torch "
                         f"{torch.__version__} sees none); pass --smoke for the CPU smoke mode")
    device = torch.device("cpu" if smoke else "cuda")
    try:  # the JSON's folder, now rather than after minutes of measuring
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out: got {args.out!r}; its folder cannot be created ({e.strerror}: {e.filename}); "
                         f"allowed: a writable file path") from None
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out: got {args.out!r}; {out.parent} is not writable; allowed: a writable file path")
    peak = SMOKE_PEAK if smoke else peak_for(torch.cuda.get_device_name(device))
    return config, device, override_peak(peak, args.peak_tflops, args.peak_tflops_fp32), out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, device, peak, out_path = resolve_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not args.no_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
    if peak is None:
        print(f"warning: no peak TFLOP/s known for {torch.cuda.get_device_name(device)}; MFU is left out "
              f"(pass --peak-tflops)", file=sys.stderr)
    t_start = time.perf_counter()
    result: dict = {
        "benchmark": "gan_core GPU: training and sampling throughput, MFU, peak memory",
        "mode": "smoke" if args.smoke else "gpu", "preset": args.preset,
        "command": shlex.join(["python", "-m", "benchmarks.gpu.bench_gpu",
                               *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment(device),
        "config": {"image_shape": list(config.data.shape), "global_batch_size": config.train.global_batch_size,
                   "d_steps": config.train.d_steps, "z_dim": config.network.z_dim,
                   "g_width": config.network.g_width, "d_width": config.network.d_width,
                   "r1_gamma": config.loss.r1_gamma, "gp_lambda": config.loss.gp_lambda,
                   "d_spectral_norm": config.network.d_spectral_norm},
        "settings": {"seconds_per_variant": args.seconds_per_variant, "sample_seconds": args.sample_seconds,
                     "warmup_steps": args.warmup_steps, "compile_backend": args.compile_backend,
                     "compile_mode": args.compile_mode},
        "peak": asdict(peak) if peak else {"card": None, "bf16": None, "tf32": None, "fp32": None, "source": None},
        "variants": {},
    }
    flops = None
    failed = False
    for variant in VARIANTS:
        print(f"== {variant.label}", flush=True)
        try:
            figures, flops = run_variant(variant, config, device, args, peak, flops)
        except Exception as e:  # noqa: BLE001 - a failed variant is reported; the others still count
            failed = True
            figures = {"label": variant.label, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"   failed: {figures['error']}", file=sys.stderr, flush=True)
        result["variants"][variant.name] = figures
        _release(device)
    result["flops"] = flops or {}
    result["ratios"] = ratios(result["variants"])
    result["total_seconds"] = time.perf_counter() - t_start
    print(format_table(result))
    write_json(out_path, result)
    print(f"results: {out_path}  ({result['total_seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    from gan_core.errors import run_command

    raise SystemExit(run_command(main, prog="python -m benchmarks.gpu.bench_gpu"))
