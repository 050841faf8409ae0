"""Feature extractors for the distribution metrics. Each is a callable ``(N, ...) tensor -> (N, d)``
with a ``name``; nothing is ever downloaded.

- `IdentityFeatures`: the samples themselves, flattened (2-D mixtures, any vector data).
- `gan_core.metrics.digits.DigitsClassifierFeatures`: the penultimate layer of a small CNN trained on
  the labelled digits.
- `TorchScriptFeatures`: any network the user supplies as a TorchScript file (``--feature-network``).
- `FIDInceptionFeatures`: the FID feature network (Inception-v3 pool3, Szegedy et al. 2016; Heusel et
  al. 2017) from a local copy of NVIDIA's TorchScript ``inception-2015-12-05.pt`` (StyleGAN2-ADA,
  StyleGAN3 and clean-fid use this file), fed 8-bit images as StyleGAN's metric code does. It is
  loaded from disk only.
- `RandomConvFeatures`: the fallback for images when no Inception weights are given: a small conv net
  with fixed, seeded random weights and global pooling (random-network embeddings, Naeem et al. 2020).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..files import sha256_file


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


class FIDInceptionFeatures(nn.Module):
    """The FID feature network: (N, C, H, W) images in [-1, 1] -> (N, 2048) float32 Inception-v3 pool3
    features (Heusel et al. 2017), from a local TorchScript file with NVIDIA's calling convention
    ``forward(x, return_features=True)``: x float (N, 3, H, W) in [0, 255], any H, W (the network
    resizes to 299 x 299 itself). That is ``inception-2015-12-05.pt`` as StyleGAN2-ADA, StyleGAN3 and
    clean-fid distribute it; a value is comparable with papers' FID only with that file.

    Images are quantised to 8 bits first, ``(x * 127.5 + 128).clamp(0, 255)`` truncated, as StyleGAN's
    metric code does with generated images (real images staged from 8-bit files come back unchanged);
    grey images are repeated to 3 channels. ``name`` records the weights: file name and SHA-256 prefix.

    Raises FileNotFoundError (no such file) or ValueError (not a TorchScript file, or it does not
    return (N, 2048) features for a 3 x 32 x 32 probe).
    """

    num_features = 2048  # read by torchmetrics' FrechetInceptionDistance instead of probing at 299 px

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu"):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such FID Inception weights file (expected a local copy of "
                                    "NVIDIA's TorchScript inception-2015-12-05.pt; nothing is downloaded)")
        try:
            self.network = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as e:
            raise ValueError(f"{path}: not a TorchScript file ({str(e).splitlines()[0]}); expected NVIDIA's "
                             "inception-2015-12-05.pt") from None
        self.sha256 = sha256_file(path)
        self.name = f"inception:{path.name}@sha256:{self.sha256[:12]}"
        self.device = torch.device(device)
        probe = self(torch.zeros(2, 3, 32, 32))
        if probe.shape != (2, self.num_features):
            raise ValueError(f"{path}: returned features of shape {tuple(probe.shape)} for 2 images; expected "
                             f"(2, {self.num_features}) (Inception-v3 pool3, forward(x, return_features=True))")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).float()
        return self.network(x, return_features=True).flatten(1).float().cpu()


class RandomConvFeatures(nn.Module):
    """Random-network embeddings: (N, C, H, W) images in [-1, 1] -> (N, 256) float32, for Fréchet
    distances between image sets when no Inception weights are given.

    Four 3x3 stride-2 convolutions (3 -> 32 -> 64 -> 128 -> 256 channels, LeakyReLU 0.2) and a global
    average pool: the cost is linear in H x W and the feature dimension is 256 at any resolution, so the
    covariance is never over raw pixels (12,288 dims for 64 x 64 RGB). The weights are He-normal draws
    from a ``torch.Generator`` seeded with ``seed`` on the CPU (the same on every machine); biases are 0.
    Naeem et al. 2020 ("Reliable Fidelity and Diversity Metrics for Generative Models", section 4) show
    that embeddings of a randomly initialised network rank generators sensibly. NOTE: the values are
    comparable between runs of this project (same seed, same network), never with papers' FID.
    """

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.num_features = widths[-1]
        self.name = f"random_conv{widths[-1]}"
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    gain = math.sqrt(2.0 / (1 + 0.2 ** 2))  # He et al. 2015, for LeakyReLU(0.2)
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain / math.sqrt(fan_in))
                    m.bias.zero_()
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).float().to(self.net[0].weight.device)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net(x).mean(dim=(2, 3)).cpu()


def extract_features(extractor: FeatureExtractor, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Apply ``extractor`` in batches; returns (N, d) float32 on the CPU."""
    x = torch.as_tensor(x)
    if len(x) == 0:
        raise ValueError("no samples to extract features from")
    with torch.no_grad():
        return torch.cat([extractor(b).detach().float().cpu() for b in x.split(batch_size)])
