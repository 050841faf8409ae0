"""Seed-addressed sampling and pictures (image grids, 2-D scatter plots).

Sample i depends only on (seed, i): latent vectors come in fixed blocks of `LATENT_BLOCK` rows, block
b drawn from a generator seeded by (seed, b), and G runs in eval mode one aligned block at a time, so
any batch size or partition of [0, N) yields the same bytes.

Truncated sampling (the truncation trick, Brock et al. 2019, section 3.1): with a threshold psi > 0,
every component of z with |z_j| > psi is replaced by a draw from N(0, 1) restricted to [-psi, psi];
components already within psi keep their value. The replacement of component (i, j) is the inverse CDF
of a uniform from a second stream per block (seeded by (seed, b) like the latents), so a truncated
latent is a pure function of (seed, i, psi) too, and each component has exactly the distribution of
BigGAN's "resample until it falls within psi": N(0, 1) conditioned on |z_j| <= psi.

Class-conditional generators (``G.num_classes`` = K > 0) also take a label per sample, again a pure
function of the sample index: class-balanced by default (sample i has class i mod K), or one class K
for every sample (``class_label=K``). Unconditional generators refuse a class.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .networks import apply
from .rng import generator

LATENT_BLOCK = 1024
# The most samples one request may ask for (a batch sampling job, the pyfunc's predict, the CLI): 10^9
# (the 1M-sample test set of a large benchmark times 1,000). Larger requests are refused up front with
# this number in the message, before anything is planned or written.
MAX_NUM_SAMPLES = 10**9


def check_truncation(truncation: float | None) -> float | None:
    """``truncation`` as a float psi > 0 (finite), or None for off (None or 0).

    Raises ValueError naming the value and what is accepted."""
    if truncation is None:
        return None
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float, np.integer, np.floating)):
        psi = float("nan")
    else:
        psi = float(truncation)
    if psi == 0:
        return None
    if not math.isfinite(psi) or psi < 0:
        raise ValueError(f"truncation={truncation!r} is not accepted; accepted: a finite number > 0 "
                         f"(the threshold psi on |z_j|), or 0 / None for no truncation")
    return psi


def truncate_block(z: torch.Tensor, psi: float, seed: int, block: int) -> torch.Tensor:
    """Block ``block`` of seed ``seed``'s latents, z float32 (LATENT_BLOCK, z_dim), truncated at ``psi``:
    components with |z_j| > psi replaced by N(0, 1) restricted to [-psi, psi] (inverse CDF of uniforms
    from the block's own ("latents-truncation", seed, block) stream), the others kept. Same shape and
    dtype; every |z_j| <= psi."""
    u = torch.rand(z.shape, generator=generator("latents-truncation", seed, block), dtype=torch.float64)
    lo = torch.special.ndtr(torch.tensor(-psi, dtype=torch.float64))
    resampled = torch.special.ndtri(lo + u * (1 - 2 * lo)).to(z.dtype).clamp(-psi, psi)
    return torch.where(z.abs() > psi, resampled, z)


def latents_for_range(seed: int, start: int, count: int, z_dim: int, *, truncation: float | None = None
                      ) -> torch.Tensor:
    """z for sample indices [start, start + count), shape (count, z_dim), float32 on the CPU.

    ``truncation``: None or 0 for z ~ N(0, I) (as always); psi > 0 for the truncation trick (every
    |z_j| <= psi; see the module docstring). Raises ValueError for any other truncation."""
    psi = check_truncation(truncation)
    if count <= 0:
        return torch.empty(0, z_dim)
    first, last = start // LATENT_BLOCK, (start + count - 1) // LATENT_BLOCK
    blocks = [torch.randn(LATENT_BLOCK, z_dim, generator=generator("latents", seed, b)) for b in range(first, last + 1)]
    if psi is not None:
        blocks = [truncate_block(z, psi, seed, b) for b, z in zip(range(first, last + 1), blocks)]
    z = torch.cat(blocks)
    offset = start - first * LATENT_BLOCK
    return z[offset:offset + count]


def num_classes_of(G: nn.Module) -> int:
    """K for a class-conditional generator, 0 for an unconditional one (a module without the attribute)."""
    return int(getattr(G, "num_classes", 0) or 0)


def check_class_label(class_label: int | None, num_classes: int) -> int | None:
    """``class_label`` as an int in [0, num_classes), or None (class-balanced). Raises ValueError naming
    the value and what is accepted: a class only for a conditional generator (num_classes > 0)."""
    if class_label is None:
        return None
    if num_classes == 0:
        raise ValueError(f"class {class_label!r} asked of an unconditional generator; accepted: no class "
                         f"(train with network.conditional = true for class-conditional sampling)")
    if isinstance(class_label, bool) or not isinstance(class_label, (int, np.integer)) or not 0 <= class_label < num_classes:
        raise ValueError(f"class {class_label!r} is not accepted; accepted: an integer from 0 to {num_classes - 1}")
    return int(class_label)


def labels_for_range(start: int, count: int, num_classes: int, class_label: int | None = None) -> torch.Tensor:
    """Class labels for sample indices [start, start + count): int64 (count,); sample i gets
    ``class_label`` if given, else i mod ``num_classes`` (class-balanced). Raises ValueError for a class
    outside [0, num_classes)."""
    k = check_class_label(class_label, num_classes)
    if num_classes <= 0:
        raise ValueError("labels_for_range needs num_classes > 0 (a class-conditional generator)")
    if k is not None:
        return torch.full((max(count, 0),), k, dtype=torch.int64)
    return torch.arange(start, start + max(count, 0), dtype=torch.int64) % num_classes


@torch.no_grad()
def generate(G: nn.Module, num_samples: int, seed: int, *, start: int = 0, batch_size: int = 1024,
             device: str | torch.device = "cpu", truncation: float | None = None,
             class_label: int | None = None) -> torch.Tensor:
    """Samples [start, start + num_samples) for ``seed`` from G in eval mode, float32 on the CPU.

    G runs on whole aligned latent blocks (padding the ends), so that a sample's value does not depend
    on which other samples shared its forward pass. ``batch_size`` only bounds memory (in blocks).
    ``truncation``: None or 0 (default: off, z ~ N(0, I)) or a threshold psi > 0 (the truncation
    trick, see latents_for_range); ValueError otherwise, before G runs. ``class_label``: for a
    class-conditional G, one class for every sample, or None for class-balanced labels
    (`labels_for_range`); ValueError for a class an unconditional G or K classes cannot take.
    """
    psi = check_truncation(truncation)
    K = num_classes_of(G)
    check_class_label(class_label, K)
    G.eval()
    z_dim = G.z_dim
    blocks_per_pass = max(1, batch_size // LATENT_BLOCK)
    out = []
    first, end = start // LATENT_BLOCK, start + num_samples
    b = first
    while b * LATENT_BLOCK < end:
        nb = min(blocks_per_pass, math.ceil(end / LATENT_BLOCK) - b)
        z = latents_for_range(seed, b * LATENT_BLOCK, nb * LATENT_BLOCK, z_dim, truncation=psi).to(device)
        c = labels_for_range(b * LATENT_BLOCK, nb * LATENT_BLOCK, K, class_label).to(device) if K else None
        x = apply(G, z, c).float().cpu()
        lo = max(start, b * LATENT_BLOCK) - b * LATENT_BLOCK
        hi = min(end, (b + nb) * LATENT_BLOCK) - b * LATENT_BLOCK
        out.append(x[lo:hi])
        b += nb
    return torch.cat(out) if out else torch.empty(0)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_image_grid(x: torch.Tensor, path: str | Path, *, ncols: int | None = None, scale: int | None = None,
                    padding: int = 1) -> Path:
    """Write a PNG grid of (N, C, H, W) images in [-1, 1]; tiny images are upscaled (nearest)."""
    from PIL import Image

    imgs = to_uint8_images(x)
    n, h, w, c = imgs.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    scale = scale or max(1, 256 // (max(h, w) * ncols) or 1, 64 // max(h, w))
    grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
        grid[y0:y0 + h, x0:x0 + w] = imgs[i]
    mode = "L" if c == 1 else "RGB"
    img = Image.fromarray(grid[:, :, 0] if c == 1 else grid[:, :, :3], mode=mode)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_scatter(samples: torch.Tensor | np.ndarray, path: str | Path, *, centres: np.ndarray | None = None,
                 real: np.ndarray | None = None, title: str = "") -> Path:
    """Write a PNG scatter plot of 2-D samples, with real data and mode centres for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if real is not None:
        ax.scatter(real[:, 0], real[:, 1], s=2, c="#bbbbbb", label="real")
    ax.scatter(s[:, 0], s[:, 1], s=2, c="#1f77b4", alpha=0.6, label="G_ema")
    if centres is not None:
        ax.scatter(centres[:, 0], centres[:, 1], s=40, marker="x", c="#d62728", label="modes")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

