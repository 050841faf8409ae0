"""Generator G and discriminator D: MLPs for vectors, DCGAN conv nets for square images (R3GAN's
ResNets live in gan_core.r3gan; build_generator / build_discriminator pick by network.arch).

Device placement, distribution (DDP) and precision are applied from outside; these modules only
define the maths. D returns one pre-sigmoid score ("logit") per example, shape (N,).

Class-conditional networks (``network.conditional``, ``data.num_classes`` = K): every module takes
an optional second argument ``c``, int64 class labels (N,) in [0, K). G concatenates a learned class
embedding (z_dim wide) to z and, with g_norm "batch", uses conditional batch norm (per-class scale and
shift, de Vries et al. 2017), as the conditional G of Miyato & Koyama 2018; D is a projection discriminator (Miyato & Koyama 2018, eq. 3):
logit = psi(phi(x)) + <embed(c), phi(x)>, with phi(x) D's last hidden features. Unconditional
networks (K = 0) keep their exact parameters and state-dict keys, and refuse labels; conditional ones
require them. ``num_classes`` on every network says which (0 = unconditional).
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


def check_labels(num_classes: int, c: torch.Tensor | None, n: int) -> None:
    """Raise ValueError unless ``c`` fits a network with ``num_classes`` classes (0 = unconditional):
    None for an unconditional network; int64 of shape (n,) for a conditional one."""
    if num_classes == 0:
        if c is not None:
            raise ValueError("class labels given to an unconditional network (network.conditional = false)")
        return
    if c is None:
        raise ValueError(f"a class-conditional network needs class labels c: int64 (N,) in [0, {num_classes})")
    if c.shape != (n,) or c.dtype != torch.int64:
        raise ValueError(f"class labels: got {c.dtype} {tuple(c.shape)}; expected int64 ({n},) in [0, {num_classes})")


def apply(net: nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """``net(x, c)`` for class labels c, ``net(x)`` without: any G or D module (also a caller's own
    one-argument module, or DDP around either) runs through this one call."""
    return net(x) if c is None else net(x, c)


def _num_classes(config: GANConfig) -> int:
    return config.data.num_classes if config.network.conditional else 0


class ClassConditionalBatchNorm(nn.Module):
    """Batch normalisation whose scale and shift are looked up per class: gamma[c] * x_hat + beta[c]
    (conditional batch norm, de Vries et al. 2017; the class-conditional G of Miyato & Koyama 2018).
    x (N, F) or (N, F, H, W), c int64 (N,) -> the same shape. gamma starts at 1, beta at 0."""

    def __init__(self, num_features: int, num_classes: int, image: bool):
        super().__init__()
        self.bn = (nn.BatchNorm2d if image else nn.BatchNorm1d)(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        return self.gamma(c).view(shape).to(x.dtype) * self.bn(x) + self.beta(c).view(shape).to(x.dtype)


def _g_norm(kind: str, features: int, num_classes: int, image: bool) -> nn.Module:
    """G's normalisation layer: conditional batch norm for a class-conditional G with g_norm "batch"."""
    if kind == "batch" and num_classes:
        return ClassConditionalBatchNorm(features, num_classes, image)
    return _norm2d(kind, features) if image else _norm1d(kind, features)


def _run(net: nn.Sequential, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """net(x), handing the class labels to the layers that take them (conditional batch norm)."""
    for layer in net:
        x = layer(x, c) if isinstance(layer, ClassConditionalBatchNorm) else layer(x)
    return x


class _ClassInput(nn.Module):
    """G's conditioning: z (N, z_dim) -> [z, embed(c)] (N, z_dim + width), or z itself when unconditional."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, width) if num_classes else None

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        check_labels(self.num_classes, c, z.shape[0])
        return z if self.embed is None else torch.cat([z, self.embed(c).to(z.dtype)], dim=1)


def _projection(net: nn.Sequential, embed: nn.Module | None, x: torch.Tensor, c: torch.Tensor | None,
                num_classes: int) -> torch.Tensor:
    """D's logit (N,): net's last layer is the linear score psi, the layers before it are phi; with
    labels, add the projection <embed(c), phi(x)> (Miyato & Koyama 2018)."""
    check_labels(num_classes, c, x.shape[0])
    if embed is None:
        return net(x).squeeze(1)
    h = net[:-1](x)
    return net[-1](h).squeeze(1) + (embed(c).to(h.dtype) * h).sum(dim=1)


# -- vectors ------------------------------------------------------------------------------------------

class MLPGenerator(nn.Module):
    """z (N, z_dim) [, c (N,)] -> x (N, *shape). Linear output for vectors, tanh for images in [-1, 1]."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.shape = tuple(shape)
        self.num_classes = num_classes
        self.cond = _ClassInput(num_classes, cfg.z_dim)
        out = math.prod(shape)
        layers: list[nn.Module] = []
        width_in = cfg.z_dim * (2 if num_classes else 1)
        for _ in range(cfg.g_depth):
            layers += [nn.Linear(width_in, cfg.g_width), _g_norm(cfg.g_norm, cfg.g_width, num_classes, False), nn.ReLU()]
            width_in = cfg.g_width
        layers.append(nn.Linear(width_in, out))
        if len(shape) == 3:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return _run(self.net, self.cond(z, c), c).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    """x (N, *shape) [, c (N,)] -> logit (N,). LeakyReLU(0.2) as in most GAN discriminators."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        sn = cfg.d_spectral_norm
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = math.prod(shape)
        for _ in range(cfg.d_depth):
            layers += [_maybe_sn(nn.Linear(width_in, cfg.d_width), sn), _norm1d(cfg.d_norm, cfg.d_width),
                       nn.LeakyReLU(0.2)]
            width_in = cfg.d_width
        layers.append(_maybe_sn(nn.Linear(width_in, 1), sn))
        self.net = nn.Sequential(*layers)
        self.embed = _maybe_sn(nn.Embedding(num_classes, width_in), sn) if num_classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return _projection(self.net, self.embed, x, c, self.num_classes)


# -- images (Radford et al. 2015) ---------------------------------------------------------------------

def _dcgan_channels(width: int, resolution: int) -> list[int]:
    """Channels at 4x4, 8x8, ..., resolution: width at full resolution, doubling per halving, capped at 8x."""
    n = int(math.log2(resolution)) - 2  # number of 2x resamplings between 4x4 and the image
    return [width * min(2 ** (n - i), 8) for i in range(n + 1)]


class DCGANGenerator(nn.Module):
    """z (N, z_dim) [, c (N,)] -> image (N, C, S, S) in [-1, 1]: transposed convs from 4x4, doubling to S."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.shape = tuple(shape)
        self.num_classes = num_classes
        self.cond = _ClassInput(num_classes, cfg.z_dim)
        c, s, _ = shape
        ch = _dcgan_channels(cfg.g_width, s)
        z_in = cfg.z_dim * (2 if num_classes else 1)
        layers: list[nn.Module] = [
            # state: z_in x 1 x 1 (z, and the class embedding when conditional)
            nn.ConvTranspose2d(z_in, ch[0], 4, 1, 0, bias=False), _g_norm(cfg.g_norm, ch[0], num_classes, True),
            nn.ReLU(),
            # state: ch[0] x 4 x 4
        ]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                       _g_norm(cfg.g_norm, c_out, num_classes, True), nn.ReLU()]
            # state: c_out x (2 * previous) x (2 * previous)
        layers += [nn.Conv2d(ch[-1], c, 3, 1, 1), nn.Tanh()]
        # state: C x S x S
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        z = self.cond(z, c)
        return _run(self.net, z.view(z.shape[0], z.shape[1], 1, 1), c)


class DCGANDiscriminator(nn.Module):
    """image (N, C, S, S) [, c (N,)] -> logit (N,): strided convs halving to 4x4, then a linear score."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        c, s, _ = shape
        sn = cfg.d_spectral_norm
        self.num_classes = num_classes
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
        self.embed = _maybe_sn(nn.Embedding(num_classes, ch[-1] * 4 * 4), sn) if num_classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return _projection(self.net, self.embed, x, c, self.num_classes)


def _classes(arch: str) -> tuple[type[nn.Module], type[nn.Module]]:
    """(G, D) classes of a network.arch."""
    if arch == "r3gan":
        from .r3gan import R3GANDiscriminator, R3GANGenerator  # NOTE: here, as gan_core.r3gan imports this module

        return R3GANGenerator, R3GANDiscriminator
    return (DCGANGenerator, DCGANDiscriminator) if arch == "dcgan" else (MLPGenerator, MLPDiscriminator)


def build_generator(config: GANConfig) -> nn.Module:
    """G for config.network.arch (mlp, dcgan or r3gan), on the CPU, initialised from the global RNG."""
    return _classes(config.network.arch)[0](config.network, config.data.shape, _num_classes(config))


def packed_shape(shape: tuple[int, ...], pack: int) -> tuple[int, ...]:
    """What D sees with PacGAN packing: ``pack`` examples stacked along the first (feature/channel) axis."""
    return (shape[0] * pack,) + tuple(shape[1:])


def pack(x: torch.Tensor, pack: int) -> torch.Tensor:
    """(N, C, ...) -> (N / pack, pack * C, ...): consecutive examples become one input of D (Lin et al. 2018)."""
    if pack == 1:
        return x
    return x.reshape(x.shape[0] // pack, pack * x.shape[1], *x.shape[2:])


def build_discriminator(config: GANConfig) -> nn.Module:
    """D for config.network.arch, taking network.d_pack packed examples (packed_shape)."""
    return _classes(config.network.arch)[1](config.network, packed_shape(config.data.shape, config.network.d_pack),
                                            _num_classes(config))


def parameter_counts(config: GANConfig) -> tuple[int, int]:
    """(parameters of G, parameters of D) for a config, counted on torch's meta device: nothing is
    allocated, so it is cheap for any size (R3GAN's CIFAR-10 nets: about 20.7 M each)."""
    with torch.device("meta"):
        G, D = build_generator(config), build_discriminator(config)
    return sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters())
