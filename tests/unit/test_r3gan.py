"""R3GAN (Huang et al. 2024): the RpGAN losses against hand-computed values, R2 against a closed form, the
fix-up initialisation (a fresh network's residual branches output exactly zero), the resampling filters,
the G step's real minibatch, bitwise resume and a golden loss curve of a tiny run."""

from __future__ import annotations

import math

import pytest
import torch

from gan_core import losses
from gan_core.checkpoint import load_training_state
from gan_core.config import ConfigError, get_preset, r3gan_widths
from gan_core.data import InMemoryBatches, load_builtin
from gan_core.loop import train
from gan_core.networks import build_discriminator, build_generator
from gan_core.r3gan import Downsample, ResidualBlock, Upsample
from gan_core.training import build_training_state, minibatches_per_step, train_step


def sp(t: float) -> float:
    return math.log1p(math.exp(t))


# -- losses ---------------------------------------------------------------------------------------------------

def test_rpgan_losses_match_hand_computed_values():
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    # D: softplus(-(r - f)) over pairs (1 - 0, 0 - 2) = (1, -2)
    assert losses.rpgan_d_loss(real, fake).item() == pytest.approx((sp(-1.0) + sp(2.0)) / 2, abs=1e-6)
    # G: softplus(-(f - r)) over pairs (-1, 2)
    assert losses.rpgan_g_loss(fake, real).item() == pytest.approx((sp(1.0) + sp(-2.0)) / 2, abs=1e-6)
    assert losses.d_loss_for("rpgan", real, fake).item() == pytest.approx(1.2200948, abs=1e-6)
    assert losses.g_loss_for("rpgan", fake, real).item() == pytest.approx(0.7200948, abs=1e-6)
    # pairing matters: the same logits in another row order give another loss (a mean of D(x) would not)
    assert losses.rpgan_d_loss(real, fake.flip(0)).item() != pytest.approx(losses.rpgan_d_loss(real, fake).item())
    with pytest.raises(ValueError, match="needs D's logits on a real minibatch"):
        losses.g_loss_for("rpgan", fake)


def test_r2_is_the_mean_squared_input_gradient_on_fakes():
    """D(x) = 1/2 ||A x||^2 has gradient A^T A x: R2 = mean ||A^T A x||^2 (closed form)."""
    torch.manual_seed(0)
    A = torch.randn(3, 3)
    fake = torch.randn(5, 3, requires_grad=True)
    logits = 0.5 * (fake @ A.T).square().sum(dim=1)
    expected = (fake.detach() @ A.T @ A).square().sum(dim=1).mean()
    torch.testing.assert_close(losses.r2_penalty(logits, fake), expected)
    # R1 is the same penalty on reals: one formula, two names from the papers
    real = fake.detach().clone().requires_grad_(True)
    torch.testing.assert_close(losses.r1_penalty(0.5 * (real @ A.T).square().sum(dim=1), real), expected)


# -- the networks ---------------------------------------------------------------------------------------------

def r3gan_config(size=8, channels=1, **extra):
    base = get_preset("digits")
    return base.with_overrides({"network.arch": "r3gan", "network.g_width": 32, "network.d_width": 32,
                                "network.group_width": 8, "data.shape": [channels, size, size], **extra})


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_fresh_residual_branches_output_exactly_zero(size):
    """Fix-up: each residual branch's last layer starts at zero, so every block is the identity."""
    cfg = r3gan_config(size, 3)
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    blocks = [m for net in (G, D) for m in net.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 2 * cfg.network.blocks_per_stage * len(r3gan_widths(32, size))
    for block in blocks:
        x = torch.randn(2, block.expand.in_channels, 4, 4)
        assert torch.equal(block(x), x)
        assert torch.count_nonzero(block.project.weight) == 0
        assert torch.count_nonzero(block.expand.weight) > 0  # only the last layer is zero
    z = torch.randn(2, cfg.network.z_dim)
    x = G(z)
    assert x.shape == (2, 3, size, size) and D(x).shape == (2,)


def test_residual_layers_are_variance_scaled_by_the_number_of_blocks():
    """W1, W2 ~ N(0, (gain * L^(-1/4))^2 / fan_in) with the leaky-ReLU gain (the paper's fix-up scaling)."""
    torch.manual_seed(0)
    block = ResidualBlock(256, 16, num_blocks=16)
    gain = math.sqrt(2 / (1 + 0.2 ** 2)) * 16 ** -0.25
    assert block.expand.weight.std().item() == pytest.approx(gain / math.sqrt(256), rel=0.03)
    assert block.grouped.weight.std().item() == pytest.approx(gain / math.sqrt(16 * 9), rel=0.03)
    assert block.grouped.groups == 512 // 16


def test_lowpass_resampling_keeps_a_constant_image_constant_away_from_the_border():
    x = torch.full((1, 4, 8, 8), 3.0)
    up, down = Upsample(4, 4)(x), Downsample(4, 4)(x)
    assert up.shape == (1, 4, 16, 16) and down.shape == (1, 4, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.0))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 3.0))


def test_conditional_r3gan_uses_the_label_and_unconditional_refuses_one():
    cfg = r3gan_config(**{"network.conditional": True})
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    z = torch.randn(2, cfg.network.z_dim).repeat(2, 1)
    c = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():  # the head is zero-free: different labels give different images and logits
        x = G(z, c)
        assert not torch.equal(x[0], x[2])
        assert not torch.equal(D(x[:2], c[:2]), D(x[:2], c[2:]))
    with pytest.raises(ValueError, match="class labels given to an unconditional network"):
        build_generator(r3gan_config())(z, c)


def test_r3gan_config_is_checked():
    with pytest.raises(ConfigError, match="network.g_width: got 18; allowed: a width whose stages"):
        r3gan_config(**{"network.g_width": 18})
    with pytest.raises(ConfigError, match="r3gan needs \\(C, H, W\\)"):
        get_preset("ring8").with_overrides({"network.arch": "r3gan"})
    with pytest.raises(ConfigError, match="square images of 8, 16, 32, 64, 128 or 256 px"):
        r3gan_config(12)


# -- the G step's real minibatch, resume, golden losses ------------------------------------------------------

def tiny_r3gan(**extra):
    return r3gan_config(**{"loss.kind": "rpgan", "loss.r1_gamma": 0.1, "loss.r2_gamma": 0.1, "loss.r1_interval": 1,
                           "g_optim.beta1": 0.0, "d_optim.beta1": 0.0, "train.global_batch_size": 16,
                           "train.total_steps": 20, "train.tick_every_steps": 5,
                           "train.checkpoint_every_steps": 7, "network.g_width": 16, "network.d_width": 16,
                           "network.blocks_per_stage": 1, **extra})


def digits_batches(cfg):
    x, _ = load_builtin("digits", 0, 0)
    return InMemoryBatches(x[:200], cfg.train.global_batch_size, seed=3)


def test_rpgan_takes_one_more_real_minibatch_per_step_for_g():
    cfg = tiny_r3gan(**{"train.d_steps": 2})
    assert minibatches_per_step(cfg) == 3 and minibatches_per_step(cfg.with_overrides({"loss.kind": "hinge"})) == 2
    state = build_training_state(cfg)
    stream, calls = digits_batches(cfg)(), []

    def next_real():
        calls.append(1)
        return next(stream)

    stats = train_step(state, next_real, state.G, state.D)
    assert len(calls) == 3
    assert {"D/real>fake", "D/real-fake", "loss/D_r1", "loss/D_r2"} <= set(stats)
    assert not {"value", "D/real", "D/fake"} & set(stats)  # no number without a meaning under RpGAN


def test_r2_changes_the_d_update():
    """loss.r2_gamma is not ignored: the same step with and without R2 gives different D weights."""
    def d_after(r2):
        cfg = tiny_r3gan(**{"loss.r2_gamma": r2})
        state = build_training_state(cfg)
        stream = digits_batches(cfg)()
        train_step(state, lambda: next(stream), state.G, state.D)
        return torch.cat([p.flatten() for p in state.D.parameters()])

    assert not torch.equal(d_after(0.0), d_after(1.0))


def test_rpgan_r3gan_resume_is_bitwise(tmp_path):
    cfg = tiny_r3gan()
    full = train(cfg, batches=digits_batches(cfg), checkpoint_root=tmp_path / "full").state
    first = train(cfg.with_overrides({"train.total_steps": 7}), batches=digits_batches(cfg),
                  checkpoint_root=tmp_path / "part")
    resumed = train(cfg, batches=digits_batches(cfg), resume_from=first.checkpoint_dir,
                    checkpoint_root=tmp_path / "part").state
    for net in ("G", "D", "G_ema"):
        for a, b in zip(getattr(full, net).state_dict().values(), getattr(resumed, net).state_dict().values()):
            assert torch.equal(a, b), net
    assert load_training_state(tmp_path / "full" / "checkpoint-000000020").step == 20


# measured once (torch 2.13 CPU, one thread): the first 20 D and G losses of tiny_r3gan()
GOLDEN_LOSSES: list[tuple[float, float]] = [
    (0.94989, 0.82425), (1.25691, 0.65865), (1.07584, 0.6222), (0.8557, 0.8626), (1.06597, 0.56985),
    (0.83459, 0.64629), (0.83068, 0.64995), (0.90204, 0.72807), (1.11483, 0.55078), (0.94723, 0.62994),
    (0.99806, 0.53967), (0.85153, 0.70237), (0.69654, 0.59502), (0.8081, 0.61793), (0.72153, 0.61133),
    (1.00426, 0.63584), (0.88815, 0.75683), (0.93083, 0.54471), (1.05019, 0.66283), (0.87809, 0.7625)]


def test_golden_first_20_losses_of_a_tiny_r3gan_run():
    cfg = tiny_r3gan()
    state = build_training_state(cfg)
    stream = digits_batches(cfg)()
    got = []
    for _ in range(20):
        s = train_step(state, lambda: next(stream), state.G, state.D)
        got.append((round(s["loss/D"].item(), 5), round(s["loss/G"].item(), 5)))
    flat = [v for pair in got for v in pair]
    assert flat == pytest.approx([v for pair in GOLDEN_LOSSES for v in pair], abs=2e-5), got
