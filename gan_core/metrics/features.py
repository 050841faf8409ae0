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

from ..errors import UserError
from ..files import check_regular_file, sha256_file

# The widest feature vector a distance is computed on: twice Inception's pool3 (2048). Its covariance is
# d x d float64 (128 MiB) and the distance takes a matrix square root of it (O(d^3): seconds here, where
# 64x64 RGB pixels, 12,288-d, ran for minutes in 8 GB). A network returning 200,000-d features grew past
# 5 GB before this bound.
MAX_FEATURE_DIM = 4096


class FeatureNetworkError(UserError, ValueError):
    """A user-supplied feature network (--feature-network, --inception) that cannot be used: not a
    TorchScript file, another calling convention, or features that are not (N, d) finite, varying numbers
    with d <= MAX_FEATURE_DIM. One line naming the file and what is expected."""


def load_torchscript(path: str | Path, what: str, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript module in ``path`` (a regular file), in eval mode on ``device``; FeatureNetworkError
    naming the file otherwise (a text file, a ``torch.save``d dict, a FIFO, ...)."""
    path = Path(path)
    if not path.exists():
        raise FeatureNetworkError(f"{path}: no such {what} file (supply a TorchScript file; nothing is downloaded)")
    try:
        check_regular_file(path, what)
    except ValueError as e:
        raise FeatureNetworkError(str(e)) from None
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, ValueError or pickle errors here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FeatureNetworkError(f"{path}: not a TorchScript file ({first}); expected a module saved with "
                                  "torch.jit.save") from None


def checked_features(module, x: torch.Tensor, path: str | Path, **kwargs: Any) -> torch.Tensor:
    """``module(x, **kwargs)`` as (N, d) float32 features, checked: a call that raises, an output that is not
    a tensor with N rows, d > MAX_FEATURE_DIM, or non-finite values are a FeatureNetworkError naming the file."""
    try:
        out = module(x, **kwargs)
    except Exception as e:  # noqa: BLE001 - the user's network: whatever it raises is its calling convention
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FeatureNetworkError(f"{path}: raised {type(e).__name__} for a batch of shape {tuple(x.shape)} "
                                  f"({first}); expected forward(x{', ' + ', '.join(f'{k}=...' for k in kwargs) if kwargs else ''}) "
                                  "-> (N, d) features") from None
    if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FeatureNetworkError(f"{path}: returned {shape} for a batch of {x.shape[0]}; expected (N, d) features")
    out = out.flatten(1).float()
    if out.shape[1] > MAX_FEATURE_DIM:
        raise FeatureNetworkError(f"{path}: returned {out.shape[1]}-d features; allowed: at most {MAX_FEATURE_DIM} "
                                  "(a distance needs their d x d covariance)")
    if not torch.isfinite(out).all():
        raise FeatureNetworkError(f"{path}: returned non-finite features (NaN or Inf) for a batch of shape "
                                  f"{tuple(x.shape)}")
    return out


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
        self.path = path
        self.module = load_torchscript(path, "feature-network", device)
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
        return checked_features(self.module, x, self.path, **self.call_kwargs).cpu()


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
        self.path = path
        self.network = load_torchscript(path, "FID Inception weights (NVIDIA's inception-2015-12-05.pt)", device)
        self.sha256 = sha256_file(path)
        self.name = f"inception:{path.name}@sha256:{self.sha256[:12]}"
        self.device = torch.device(device)
        probe = self(torch.zeros(2, 3, 32, 32))
        if probe.shape != (2, self.num_features):
            raise FeatureNetworkError(f"{path}: returned features of shape {tuple(probe.shape)} for 2 images; expected "
                             f"(2, {self.num_features}) (Inception-v3 pool3, forward(x, return_features=True))")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).float()
        return checked_features(self.network, x, self.path, return_features=True).cpu()


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
