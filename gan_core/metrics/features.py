"""Feature extractors for the distribution metrics. Each is a callable ``(N, ...) tensor -> (N, d)``
with a ``name``; nothing is ever downloaded.

- `IdentityFeatures`: the samples themselves, flattened (2-D mixtures, any vector data).
- `gan_core.metrics.digits.DigitsClassifierFeatures`: the penultimate layer of a small CNN trained on
  the labelled digits.
- `TorchScriptFeatures`: a network the user supplies as a TorchScript file, e.g. the Inception-v3
  feature network of FID (Szegedy et al. 2016; Heusel et al. 2017) that clean-fid and StyleGAN3
  distribute as ``inception-2015-12-05.pt``. It is loaded from disk only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class IdentityFeatures:
    """x (N, ...) -> x flattened to (N, d): metrics in the sample space."""

    name = "identity"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(x).flatten(1).float()


class TorchScriptFeatures:
    """Features from a user-supplied TorchScript network file (Inception or any other).

    Images in [-1, 1] (N, C, H, W) are mapped to ``input_range`` (default [0, 255], the convention of
    the FID Inception ports), grey images are repeated to 3 channels, and the network is called with
    ``call_kwargs`` (default ``return_features=True``, the clean-fid / StyleGAN3 convention that
    returns the 2048-d pool features; pass ``{}`` for a plain ``forward(x)``). ``resize`` resizes to a
    square size first if the network does not resize itself.
    """

    def __init__(self, path: str | Path, *, input_range: tuple[float, float] = (0.0, 255.0),
                 call_kwargs: dict[str, Any] | None = None, resize: int | None = None,
                 device: str | torch.device = "cpu", name: str | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such feature-network file (supply a TorchScript file; nothing "
                                    "is downloaded)")
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self.input_range = input_range
        self.call_kwargs = {"return_features": True} if call_kwargs is None else dict(call_kwargs)
        self.resize = resize
        self.device = torch.device(device)
        self.name = name or path.stem

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).float().to(self.device)
        if x.dim() == 4:
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if self.resize is not None:
                x = nn.functional.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                                              align_corners=False)
        lo, hi = self.input_range
        x = (x.clamp(-1, 1) + 1.0) * 0.5 * (hi - lo) + lo
        return self.module(x, **self.call_kwargs).flatten(1).float().cpu()


def extract_features(extractor: FeatureExtractor, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Apply ``extractor`` in batches; returns (N, d) float32 on the CPU."""
    x = torch.as_tensor(x)
    if len(x) == 0:
        raise ValueError("no samples to extract features from")
    with torch.no_grad():
        return torch.cat([extractor(b).detach().float().cpu() for b in x.split(batch_size)])
