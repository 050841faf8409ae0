import pytest
import torch
from torch import nn

from gan_core.config import DataConfig, GANConfig, NetworkConfig
from gan_core.networks import build_discriminator, build_generator


NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
# the layers each g_norm / d_norm value builds (GroupNorm(1, C) is layer norm over (C, H, W))
EXPECTED_NORMS = {("mlp", "batch"): {"BatchNorm1d"}, ("mlp", "layer"): {"LayerNorm"}, ("mlp", "none"): set(),
                  ("dcgan", "batch"): {"BatchNorm2d"}, ("dcgan", "layer"): {"GroupNorm"}, ("dcgan", "none"): set()}


def norm_layers(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if isinstance(m, NORM_LAYERS)}


@pytest.mark.parametrize("shape", [(2,), (64,), (1, 8, 8)])
@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_mlp_shapes(shape, norm):
    cfg = GANConfig(data=DataConfig(name="x", shape=shape),
                    network=NetworkConfig(arch="mlp", z_dim=8, g_width=16, d_width=16, g_norm=norm, d_norm=norm))
    G, D = build_generator(cfg), build_discriminator(cfg)
    x = G(torch.randn(4, 8))
    assert x.shape == (4, *shape)
    assert D(x).shape == (4,)
    assert norm_layers(G) == norm_layers(D) == EXPECTED_NORMS["mlp", norm]  # the option is built, not ignored


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [8, 16, 32, 64, 128])
def test_dcgan_shapes(size, channels):
    width = 4 if size >= 64 else 8
    cfg = GANConfig(data=DataConfig(name="x", shape=(channels, size, size)),
                    network=NetworkConfig(arch="dcgan", z_dim=8, g_width=width, d_width=width, d_spectral_norm=True))
    G, D = build_generator(cfg), build_discriminator(cfg)
    x = G(torch.randn(2, 8))
    assert x.shape == (2, channels, size, size)
    assert x.abs().max() <= 1.0  # tanh output
    assert D(x).shape == (2,)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_dcgan_norm_options(norm):
    cfg = GANConfig(data=DataConfig(name="x", shape=(3, 16, 16)),
                    network=NetworkConfig(arch="dcgan", z_dim=8, g_width=8, d_width=8, g_norm=norm, d_norm=norm))
    G, D = build_generator(cfg), build_discriminator(cfg)
    assert D(G(torch.randn(3, 8))).shape == (3,)
    assert norm_layers(G) == norm_layers(D) == EXPECTED_NORMS["dcgan", norm]
    cfg = GANConfig(data=cfg.data, network=NetworkConfig(arch="dcgan", z_dim=8, g_width=8, d_width=8, g_norm=norm))
    assert norm_layers(build_discriminator(cfg)) == set()  # d_norm independent of g_norm: its default, none


def test_layer_norm_is_batch_independent():
    cfg = GANConfig(data=DataConfig(name="x", shape=(1, 8, 8)),
                    network=NetworkConfig(arch="dcgan", z_dim=8, g_width=8, d_width=8, g_norm="layer", d_norm="layer"))
    G = build_generator(cfg)
    z = torch.randn(6, 8)
    torch.testing.assert_close(G(z)[:2], G(z[:2]), rtol=0, atol=1e-6)
