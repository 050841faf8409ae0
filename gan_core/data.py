"""Built-in datasets that need no download, the mode-coverage metric for mixtures, and an in-memory
batch stream with the same global-batch/rank-slice semantics as the distributed readers.

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), scaled to [-1, 1].
- ``ring8``: 8 Gaussians at angles 2*pi*i/8 on the unit circle, sigma 0.01.
- ``grid25``: 25 Gaussians at {-4, -2, 0, 2, 4}^2, sigma 0.05.
The mixtures follow the VEEGAN (Srivastava et al. 2017) / PacGAN (Lin et al. 2018) protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .rng import derive_seed, generator, rank_slice

MIXTURES = ("ring8", "grid25")
STACKED_DIGITS = "stacked-digits"
STACKED_MODES = 1000  # 10 digits in each of 3 channels
BUILTIN_DATASETS = ("digits", STACKED_DIGITS) + MIXTURES


@dataclass(frozen=True)
class Normalisation:
    """The affine map between a dataset's stored values and the model's inputs/outputs:
    model value = stored value * scale + offset (digits: 0..16 -> [-1, 1] is scale 1/8, offset -1).

    The one representation of normalisation in the project: staged manifests, the registered model's
    metadata and the exports all carry it as ``{"scale": s, "offset": o}`` (`to_dict` / `from_dict`).
    Raises ValueError for a non-finite value or scale 0 (the map must be invertible).
    """

    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        scale, offset = float(self.scale), float(self.offset)
        if not (math.isfinite(scale) and scale != 0 and math.isfinite(offset)):
            raise ValueError(f"normalisation: got scale={self.scale!r}, offset={self.offset!r}; allowed: finite "
                             "numbers, scale != 0")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "offset", offset)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Normalisation":
        """From ``{"scale": s, "offset": o}`` (a manifest's ``normalisation``); None -> identity."""
        d = d or {}
        return cls(float(d.get("scale", 1.0)), float(d.get("offset", 0.0)))

    def to_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "offset": self.offset}

    def to_model(self, stored):
        """Stored values (numpy array of any dtype, or torch tensor) -> float32 model values."""
        if isinstance(stored, np.ndarray):
            return (stored.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)).astype(np.float32)
        return stored.float() * self.scale + self.offset

    def to_data(self, model_values):
        """Model values (numpy array or torch tensor) -> the data's own units, float32:
        (y - offset) / scale."""
        if isinstance(model_values, np.ndarray):
            return ((model_values - np.float32(self.offset)) / np.float32(self.scale)).astype(np.float32)
        return (model_values.float() - self.offset) / self.scale


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (1797, 1, 8, 8) in [-1, 1], labels int64 (1797,)), from the copy inside scikit-learn."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.images.astype(np.float32) / 8.0 - 1.0)[:, None, :, :]  # pixel values are 0..16
    return x, bunch.target.astype(np.int64)


def stacked_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` "stacked digits" (x float32 (n, 3, 8, 8) in [-1, 1], labels int64 (n,) in [0, 1000)): three
    scikit-learn digits drawn uniformly at random (seeded by ``seed``) as the R, G and B channels of one
    image; the label is the mode 100 * d_R + 10 * d_G + d_B. The 8x8 counterpart of StackedMNIST
    (Metz et al. 2017; the 1000-mode protocol of VEEGAN, PacGAN and R3GAN, Sec. 4.1)."""
    x, y = load_digits()
    idx = np.random.default_rng(derive_seed("stacked-digits", seed)).integers(0, len(x), size=(n, 3))
    return np.ascontiguousarray(x[idx, 0]), (y[idx] @ np.array([100, 10, 1], dtype=np.int64)).astype(np.int64)


def training_subset(x: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of the examples (x (N, ...), labels int (N,)), stratified by class, for data-limited training
    (``data.subset``): each class keeps its share of n (largest remainders first), its members drawn by a
    permutation seeded by (seed, class); the result is in the original order. n = 0 or n >= N returns
    everything. A pure function of (x, labels, n, seed)."""
    if n <= 0 or n >= len(x):
        return x, labels
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(x)
    take = np.floor(quota).astype(np.int64)
    for i in np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    keep = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng(derive_seed("subset", seed, int(c)))
        keep.append(members[rng.permutation(len(members))[:k]])
    idx = np.sort(np.concatenate(keep))
    return x[idx], labels[idx]


def label_counts(labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """How many of ``labels`` (int (N,)) are in each class 0..num_classes-1: the label distribution a
    class-conditional G's fakes are drawn from (``data.class_frequencies``). Raises ValueError naming
    the labels outside [0, num_classes) and the data.num_classes that would take them."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels: got values in [{int(labels.min())}, {int(labels.max())}]; allowed: 0 to "
                         f"{num_classes - 1} (data.num_classes = {num_classes}; set it to at least "
                         f"{int(labels.max()) + 1})")
    return tuple(int(n) for n in np.bincount(labels.astype(np.int64), minlength=num_classes))


@dataclass(frozen=True)
class Mixture:
    name: str
    centres: np.ndarray  # (K, 2)
    sigma: float


def mixture(name: str) -> Mixture:
    if name == "ring8":
        angles = 2 * np.pi * np.arange(8) / 8
        return Mixture(name, np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01)
    if name == "grid25":
        g = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        xx, yy = np.meshgrid(g, g, indexing="ij")
        return Mixture(name, np.stack([xx.ravel(), yy.ravel()], axis=1), 0.05)
    raise ValueError(f"mixture: got {name!r}; allowed: {' | '.join(MIXTURES)}")


def sample_mixture(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points (float32 (n, 2)) and their mode ids (int64 (n,)), uniform over modes."""
    m = mixture(name)
    rng = np.random.default_rng(derive_seed("mixture", name, seed))
    modes = rng.integers(0, len(m.centres), size=n)
    x = m.centres[modes] + m.sigma * rng.standard_normal((n, 2))
    return x.astype(np.float32), modes.astype(np.int64)


def load_builtin(name: str, num_examples: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, labels) for a built-in dataset name."""
    if name == "digits":
        return load_digits()
    if name == STACKED_DIGITS:
        return stacked_digits(num_examples, seed)
    if name in MIXTURES:
        return sample_mixture(name, num_examples, seed)
    raise ValueError(f"dataset: got {name!r}; built-in datasets: {' | '.join(BUILTIN_DATASETS)}")


def mode_coverage(samples: np.ndarray | torch.Tensor, name: str) -> dict[str, float]:
    """Mode coverage of 2-D samples on a mixture (VEEGAN / PacGAN protocol; 2,500 samples is standard).

    A sample is *high quality* if it lies within 3 sigma of its nearest centre; a mode is *covered* if
    at least one high-quality sample is nearest to it. Also returns the reverse KL
    KL(p_gen || uniform) of the high-quality samples' mode histogram (0 = perfectly balanced; inf when
    no sample is high quality).
    """
    x = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    m = mixture(name)
    d = np.linalg.norm(x[:, None, :] - m.centres[None, :, :], axis=2)  # (n, K)
    nearest = d.argmin(axis=1)
    high_quality = d[np.arange(len(x)), nearest] <= 3 * m.sigma
    k = len(m.centres)
    counts = np.bincount(nearest[high_quality], minlength=k).astype(np.float64)
    if counts.sum() > 0:
        p = counts / counts.sum()
        nz = p > 0
        reverse_kl = float(np.sum(p[nz] * np.log(p[nz] * k)))
    else:
        reverse_kl = math.inf
    return {
        "modes_covered": float((counts > 0).sum()),
        "num_modes": float(k),
        "high_quality_fraction": float(high_quality.mean()) if len(x) else 0.0,
        "reverse_kl": reverse_kl,
    }


class InMemoryBatches:
    """Endless minibatches from in-memory examples: epoch e is a permutation seeded by (seed, e), cut
    into global batches (the last partial batch is dropped); rank r keeps rows r*b:(r+1)*b of each.

    Call it with the number of minibatches already consumed to resume mid-epoch; the stream is a pure
    function of (seed, global_batch_size), whatever the number of workers. With ``labels`` (int64, one
    per example) each item is an (images, labels) pair, for class-conditional training.
    """

    def __init__(self, x: np.ndarray | torch.Tensor, global_batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, labels: np.ndarray | torch.Tensor | None = None):
        self.x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels)).to(torch.int64)
        if self.labels is not None and self.labels.shape != (len(self.x),):
            raise ValueError(f"labels: got shape {tuple(self.labels.shape)}; expected ({len(self.x)},), one per example")
        if len(self.x) < global_batch_size:
            raise ValueError(f"dataset has {len(self.x)} examples, fewer than one global batch of "
                             f"{global_batch_size}")
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rows = rank_slice(global_batch_size, rank, world_size)
        self.batches_per_epoch = len(self.x) // global_batch_size

    def __call__(self, start: int = 0) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        index = start
        while True:
            epoch, i = divmod(index, self.batches_per_epoch)
            perm = torch.randperm(len(self.x), generator=generator(self.seed, "epoch", epoch))
            while i < self.batches_per_epoch:
                batch = perm[i * self.global_batch_size:(i + 1) * self.global_batch_size][self.rows]
                yield self.x[batch] if self.labels is None else (self.x[batch], self.labels[batch])
                i += 1
                index += 1
