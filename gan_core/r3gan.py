"""R3GAN's generator and discriminator (Huang et al., NeurIPS 2024, "The GAN is dead; long live the GAN! A
Modern GAN Baseline", Sec. 3, config E; the authors' code: github.com/brownvc/R3GAN, R3GAN/Networks.py).

A normalisation-free ResNet: no batch/instance/layer norm, no mapping network, no noise inputs. What
keeps a deep stack trainable without normalisation is the initialisation (fix-up, Zhang et al. 2019;
Sec. 3 of the paper): every residual branch ends in a zero-initialised layer, so a fresh network is a
chain of identities around the transition layers, and the other layers are variance-scaled by
L^(-1/4) for L residual blocks. Blocks, bottom-up:

- `ResidualBlock`: x + W3 phi(W2 phi(W1 x)): 1x1 conv C -> 2C (inverted bottleneck, expansion 2),
  grouped 3x3 conv 2C -> 2C (ResNeXt, groups of `group_width` channels), 1x1 conv 2C -> C, W3 = 0.
- phi = `BiasedLeakyReLU`: a learned per-channel bias, then leaky ReLU 0.2 (convs carry no bias).
- `Upsample` / `Downsample`: 2x resampling through the [1, 2, 1] low-pass filter (interpolative: the
  filter convolved with a box, [1, 3, 3, 1] per axis); a 1x1 conv changes the width (before up,
  after down).
- `GenerativeBasis`: z -> a learned 4x4 basis per channel, each channel scaled by a linear map of z.
- `DiscriminativeBasis`: a depthwise 4x4 conv over the 4x4 features, then a linear head.

G: basis at 4x4, then per stage (4, 8, ..., S px) up-sampling and `blocks_per_stage` blocks, then a
1x1 conv to the image channels (linear: no tanh, as R3GAN). D mirrors it: a 1x1 conv from the image,
per stage blocks then down-sampling, the basis and head at 4x4. Class-conditional (R3GAN's --cond):
G concatenates a class embedding (z_dim wide) to z; D's head outputs an embedding-wide vector whose
inner product with the class embedding (gain 1/sqrt(width)) is the logit, the projection
discriminator of Miyato & Koyama 2018 as R3GAN uses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import EXPANSION, NetworkConfig, r3gan_widths
from .networks import check_labels

LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0 / (1.0 + LEAKY_SLOPE ** 2))  # He gain of leaky ReLU 0.2
LOWPASS = (1.0, 2.0, 1.0)  # R3GAN's resampling filter


def variance_scaled_(layer: nn.Module, gain: float) -> nn.Module:
    """He/MSR initialisation with a gain: weight ~ N(0, gain^2 / fan_in); zeros for gain 0 (the fix-up
    of a residual branch's last layer). Returns the layer."""
    fan_in = layer.weight[0].numel()
    with torch.no_grad():
        layer.weight.normal_(0.0, gain / math.sqrt(fan_in)) if gain else layer.weight.zero_()
    return layer


def conv(c_in: int, c_out: int, kernel: int, gain: float = 1.0, groups: int = 1) -> nn.Conv2d:
    """A bias-free 'same' conv, variance-scaled with `gain`."""
    return variance_scaled_(nn.Conv2d(c_in, c_out, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False), gain)


class BiasedLeakyReLU(nn.Module):
    """phi(x) = leaky_relu(x + b, 0.2) with a learned per-channel bias b (zero at init)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return F.leaky_relu(x + self.bias.to(x.dtype).view(shape), LEAKY_SLOPE)


class ResidualBlock(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): x + W3 phi(W2 phi(W1 x)), W3 zero-initialised (an identity at init).
    `num_blocks` (L, all residual blocks of the network) scales W1 and W2 by L^(-1/4) (2 * 3 - 2 = 4
    for three linear layers per branch; the paper's variance scaling)."""

    def __init__(self, channels: int, group_width: int, num_blocks: int):
        super().__init__()
        inner = channels * EXPANSION
        gain = LEAKY_GAIN * num_blocks ** (-1.0 / 4.0)
        self.expand = conv(channels, inner, 1, gain)
        self.act1 = BiasedLeakyReLU(inner)
        self.grouped = conv(inner, inner, 3, gain, groups=inner // group_width)
        self.act2 = BiasedLeakyReLU(inner)
        self.project = conv(inner, channels, 1, gain=0.0)  # fix-up: the branch starts at exactly zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act2(self.grouped(self.act1(self.expand(x)))))


def _lowpass_kernel(channels: int) -> torch.Tensor:
    """The interpolative [1, 2, 1] filter as a depthwise (channels, 1, 4, 4) kernel summing to 1."""
    k = torch.tensor(LOWPASS, dtype=torch.float64)
    k = torch.nn.functional.conv1d(k.view(1, 1, -1), torch.ones(1, 1, 2, dtype=torch.float64), padding=1).view(-1)
    k2 = torch.outer(k, k)
    return (k2 / k2.sum()).to(torch.float32).expand(channels, 1, -1, -1).contiguous()


class Upsample(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, 2H, 2W): a 1x1 conv when the width changes, then 2x up-sampling
    through the low-pass filter (a transposed depthwise conv, the kernel x 4 to keep the mean)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.linear = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.register_buffer("kernel", _lowpass_kernel(c_out) * 4.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return F.conv_transpose2d(x, self.kernel.to(x.dtype), stride=2, padding=1, groups=x.shape[1])


class Downsample(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, H/2, W/2): 2x down-sampling through the low-pass filter, then a 1x1
    conv when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.register_buffer("kernel", _lowpass_kernel(c_in), persistent=False)
        self.linear = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.kernel.to(x.dtype), stride=2, padding=1, groups=x.shape[1])
        return self.linear(x)


class GenerativeBasis(nn.Module):
    """(N, D) -> (N, C, 4, 4): a learned basis B (C, 4, 4), channel k scaled by (W z)_k."""

    def __init__(self, in_features: int, channels: int):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(channels, 4, 4))
        self.linear = variance_scaled_(nn.Linear(in_features, channels, bias=False), 1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.basis.to(z.dtype).unsqueeze(0) * self.linear(z).view(z.shape[0], -1, 1, 1)


class DiscriminativeBasis(nn.Module):
    """(N, C, 4, 4) -> (N, out_features): a depthwise 4x4 conv (one value per channel), then linear."""

    def __init__(self, channels: int, out_features: int):
        super().__init__()
        self.basis = variance_scaled_(nn.Conv2d(channels, channels, 4, groups=channels, bias=False), 1.0)
        self.linear = variance_scaled_(nn.Linear(channels, out_features, bias=False), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.basis(x).flatten(1))


class R3GANGenerator(nn.Module):
    """z (N, z_dim) [, c (N,)] -> image (N, C, S, S), linear output (the data's [-1, 1] range is learned)."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        channels, size, _ = shape
        self.z_dim, self.shape, self.num_classes = cfg.z_dim, tuple(shape), num_classes
        widths = r3gan_widths(cfg.g_width, size)
        num_blocks = cfg.blocks_per_stage * len(widths)
        # class embedding concatenated to z (a one-hot times a variance-scaled matrix, as R3GAN's --cond)
        self.embed = variance_scaled_(nn.Linear(num_classes, cfg.z_dim, bias=False), 1.0) if num_classes else None
        stages: list[nn.Module] = []
        for i, w in enumerate(widths):
            # state: widths[i-1] x (2^(i+1)) px -> w x (4 * 2^i) px
            transition = (GenerativeBasis(cfg.z_dim * (2 if num_classes else 1), w) if i == 0
                          else Upsample(widths[i - 1], w))
            stages.append(nn.Sequential(transition, *[ResidualBlock(w, cfg.group_width, num_blocks)
                                                      for _ in range(cfg.blocks_per_stage)]))
        self.stages = nn.Sequential(*stages)
        self.to_image = conv(widths[-1], channels, 1)  # state: C x S x S

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(self.num_classes, c, z.shape[0])
        if self.embed is not None:
            z = torch.cat([z, self.embed(F.one_hot(c, self.num_classes).to(z.dtype))], dim=1)
        return self.to_image(self.stages(z))


class R3GANDiscriminator(nn.Module):
    """image (N, C, S, S) [, c (N,)] -> logit (N,)."""

    def __init__(self, cfg: NetworkConfig, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        channels, size, _ = shape
        self.num_classes = num_classes
        widths = r3gan_widths(cfg.d_width, size)[::-1]  # full resolution first
        num_blocks = cfg.blocks_per_stage * len(widths)
        self.from_image = conv(channels, widths[0], 1)  # state: widths[0] x S x S
        stages: list[nn.Module] = []
        for i, w in enumerate(widths):
            blocks = [ResidualBlock(w, cfg.group_width, num_blocks) for _ in range(cfg.blocks_per_stage)]
            last = i == len(widths) - 1
            # state: w x (S / 2^i) px -> widths[i+1] x (S / 2^(i+1)) px, or the head's features at 4x4
            transition = (DiscriminativeBasis(w, w if num_classes else 1) if last else Downsample(w, widths[i + 1]))
            stages.append(nn.Sequential(*blocks, transition))
        self.stages = nn.Sequential(*stages)
        width = widths[-1]
        self.embed = (variance_scaled_(nn.Linear(num_classes, width, bias=False), 1.0 / math.sqrt(width))
                      if num_classes else None)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(self.num_classes, c, x.shape[0])
        h = self.stages(self.from_image(x))
        if self.embed is None:
            return h.squeeze(1)
        return (h * self.embed(F.one_hot(c, self.num_classes).to(h.dtype))).sum(dim=1)
