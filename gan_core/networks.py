"""Generator G and discriminator D: MLPs for vectors, DCGAN conv nets for square images.

Device placement, distribution (DDP) and precision are applied from outside; these modules only
define the maths. D returns one pre-sigmoid score ("logit") per example, shape (N,).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .config import GANConfig, NetworkConfig


def _norm1d(kind: str, features: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "layer":  # batch-independent: statistics over the features of one example
        return nn.LayerNorm(features)
    return nn.Identity()


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # batch-independent: GroupNorm with one group = LayerNorm over (C, H, W)
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


# -- vectors ------------------------------------------------------------------------------------------

class MLPGenerator(nn.Module):
    """z (N, z_dim) -> x (N, *shape). Linear output for vectors, tanh for images in [-1, 1]."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...]):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.shape = tuple(shape)
        out = math.prod(shape)
        layers: list[nn.Module] = []
        width_in = cfg.z_dim
        for _ in range(cfg.g_depth):
            layers += [nn.Linear(width_in, cfg.g_width), _norm1d(cfg.g_norm, cfg.g_width), nn.ReLU()]
            width_in = cfg.g_width
        layers.append(nn.Linear(width_in, out))
        if len(shape) == 3:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    """x (N, *shape) -> logit (N,). LeakyReLU(0.2) as in most GAN discriminators."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...]):
        super().__init__()
        sn = cfg.d_spectral_norm
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = math.prod(shape)
        for _ in range(cfg.d_depth):
            layers += [_maybe_sn(nn.Linear(width_in, cfg.d_width), sn), _norm1d(cfg.d_norm, cfg.d_width),
                       nn.LeakyReLU(0.2)]
            width_in = cfg.d_width
        layers.append(_maybe_sn(nn.Linear(width_in, 1), sn))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


# -- images (Radford et al. 2015) ---------------------------------------------------------------------

def _dcgan_channels(width: int, resolution: int) -> list[int]:
    """Channels at 4x4, 8x8, ..., resolution: width at full resolution, doubling per halving, capped at 8x."""
    n = int(math.log2(resolution)) - 2  # number of 2x resamplings between 4x4 and the image
    return [width * min(2 ** (n - i), 8) for i in range(n + 1)]


class DCGANGenerator(nn.Module):
    """z (N, z_dim) -> image (N, C, S, S) in [-1, 1]: transposed convs from 4x4, doubling to S."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...]):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.shape = tuple(shape)
        c, s, _ = shape
        ch = _dcgan_channels(cfg.g_width, s)
        layers: list[nn.Module] = [
            # state: z_dim x 1 x 1
            nn.ConvTranspose2d(cfg.z_dim, ch[0], 4, 1, 0, bias=False), _norm2d(cfg.g_norm, ch[0]), nn.ReLU(),
            # state: ch[0] x 4 x 4
        ]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), _norm2d(cfg.g_norm, c_out), nn.ReLU()]
            # state: c_out x (2 * previous) x (2 * previous)
        layers += [nn.Conv2d(ch[-1], c, 3, 1, 1), nn.Tanh()]
        # state: C x S x S
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image (N, C, S, S) -> logit (N,): strided convs halving to 4x4, then a linear score."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...]):
        super().__init__()
        c, s, _ = shape
        sn = cfg.d_spectral_norm
        ch = _dcgan_channels(cfg.d_width, s)[::-1]  # full resolution first
        layers: list[nn.Module] = [
            # state: C x S x S; no normalisation on the first layer (Radford et al. 2015)
            _maybe_sn(nn.Conv2d(c, ch[0], 3, 1, 1), sn), nn.LeakyReLU(0.2),
        ]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [_maybe_sn(nn.Conv2d(c_in, c_out, 4, 2, 1), sn), _norm2d(cfg.d_norm, c_out), nn.LeakyReLU(0.2)]
            # state: c_out x (previous / 2) x (previous / 2)
        layers += [nn.Flatten(), _maybe_sn(nn.Linear(ch[-1] * 4 * 4, 1), sn)]
        # state: 1
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def build_generator(config: GANConfig) -> nn.Module:
    cls = DCGANGenerator if config.network.arch == "dcgan" else MLPGenerator
    return cls(config.network, config.data.shape)


def packed_shape(shape: tuple[int, ...], pack: int) -> tuple[int, ...]:
    """What D sees with PacGAN packing: ``pack`` examples stacked along the first (feature/channel) axis."""
    return (shape[0] * pack,) + tuple(shape[1:])


def pack(x: torch.Tensor, pack: int) -> torch.Tensor:
    """(N, C, ...) -> (N / pack, pack * C, ...): consecutive examples become one input of D (Lin et al. 2018)."""
    if pack == 1:
        return x
    return x.reshape(x.shape[0] // pack, pack * x.shape[1], *x.shape[2:])


def build_discriminator(config: GANConfig) -> nn.Module:
    cls = DCGANDiscriminator if config.network.arch == "dcgan" else MLPDiscriminator
    return cls(config.network, packed_shape(config.data.shape, config.network.d_pack))
