"""A small CNN classifier for the 8x8 ``digits``, trained reproducibly on the CPU in seconds and cached
as a state dict in a directory the caller chooses (never downloaded).

It serves twice: its penultimate layer is the feature space of FD, KID and precision/recall for
digits (the role Inception plays for natural images, as the LeNet features of Binkowski et al. 2018
did for MNIST), and its predictions give class coverage.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import load_digits
from ..rng import derive_seed, generator

CACHE_FILE = "digits_classifier-v1.pt"
FORMAT = "ganpipe-digits-classifier/1"
TRAIN_SEED = 0
HELD_OUT_FRACTION = 0.2
EPOCHS = 30
BATCH_SIZE = 64


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) in [-1, 1] -> 10 class logits; ``features`` gives the 64-d penultimate layer."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            # state: 1 x 8 x 8
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            # state: 16 x 8 x 8
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            # state: 32 x 4 x 4
            nn.Flatten(), nn.Linear(32 * 4 * 4, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits_split(seed: int = TRAIN_SEED, held_out_fraction: float = HELD_OUT_FRACTION):
    """(train_x, train_y, held_out_x, held_out_y): a seeded, stratification-free permutation split."""
    x, y = load_digits()
    perm = np.random.default_rng(derive_seed("digits-split", seed)).permutation(len(x))
    n_held = int(round(held_out_fraction * len(x)))
    held, train = perm[:n_held], perm[n_held:]
    return x[train], y[train], x[held], y[held]


def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each (1, 8, 8) image by (dy, dx) in {-1, 0, 1}^2, filling with the background (-1)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)  # (N, 1, 10, 10)
    crops = torch.stack([padded[:, :, 1 - dy:9 - dy, 1 - dx:9 - dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    which = (shifts[:, 0] + 1) * 3 + (shifts[:, 1] + 1)  # index of (dy, dx) in the stack
    return crops[which, torch.arange(len(x))]


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(torch.as_tensor(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train_digits_classifier(seed: int = TRAIN_SEED, epochs: int = EPOCHS) -> tuple[DigitsCNN, float]:
    """Train the classifier on the training split (CPU, seeded, independent of the global RNG) and
    return it with its held-out accuracy. Adam, cross-entropy, random shifts of at most one pixel."""
    # NOTE: one intra-op thread while training: tiny convs gain nothing from more, and a fixed thread
    # count keeps the float reduction order, hence the weights, the same on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, epochs: int) -> tuple[DigitsCNN, float]:
    tx, ty, hx, hy = digits_split(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("digits-classifier-init", seed))
        model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    x, y = torch.as_tensor(tx), torch.as_tensor(ty)
    for epoch in range(epochs):
        model.train()
        g = generator("digits-classifier-epoch", seed, epoch)
        perm = torch.randperm(len(x), generator=g)
        shifts = torch.randint(-1, 2, (len(x), 2), generator=g)
        for i in range(0, len(x), BATCH_SIZE):
            idx = perm[i:i + BATCH_SIZE]
            xb = shift_images(x[idx], shifts[idx])
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval().requires_grad_(False)
    return model, accuracy(model, hx, hy)


def load_or_train_digits_classifier(cache_dir: str | os.PathLike, seed: int = TRAIN_SEED) -> DigitsCNN:
    """The digits classifier from ``cache_dir/digits_classifier-v1.pt`` (loaded with weights_only=True),
    trained and written there (atomically) first if absent. Raises if a cached file is unreadable."""
    cache_dir = Path(cache_dir)
    path = cache_dir / CACHE_FILE
    model = DigitsCNN()
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT or payload.get("seed") != seed:
            raise ValueError(f"{path}: not a digits classifier for seed {seed} (format {payload.get('format')!r}); "
                             "delete it to retrain")
        model.load_state_dict(payload["state_dict"])
        model.held_out_accuracy = float(payload["held_out_accuracy"])
        return model.eval().requires_grad_(False)
    model, acc = train_digits_classifier(seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=cache_dir)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, "seed": seed, "held_out_accuracy": acc, "state_dict": model.state_dict()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    model.held_out_accuracy = acc
    return model


class DigitsClassifierFeatures:
    """Penultimate-layer features of the digits classifier (64-d), for FD, KID and precision/recall."""

    name = "digits_classifier"

    def __init__(self, model: DigitsCNN):
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        return self.model.features(torch.as_tensor(x).to(p.device, p.dtype)).float().cpu()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        p = next(self.model.parameters())
        x = torch.as_tensor(x)
        return torch.cat([self.model(b.to(p.device, p.dtype)).argmax(1).cpu() for b in x.split(batch_size)]).numpy()
