"""Each loss against values computed by hand from the formulas (not from the implementation)."""

import math

import pytest
import torch

from gan_core import losses

REAL = torch.tensor([2.0, -1.0])  # logits: D(x) = sigmoid(logit)
FAKE = torch.tensor([0.5, -3.0])


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_value_function_is_mean_log_d_plus_mean_log_one_minus_d():
    expected = (math.log(sig(2.0)) + math.log(sig(-1.0))) / 2 + (math.log(1 - sig(0.5)) + math.log(1 - sig(-3.0))) / 2
    assert losses.value_function(REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_is_negative_value():
    assert losses.discriminator_loss(REAL, FAKE).item() == pytest.approx(-losses.value_function(REAL, FAKE).item())
    # and equals binary cross-entropy with real = 1, fake = 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(REAL, torch.ones(2)) + bce(FAKE, torch.zeros(2))
    assert losses.discriminator_loss(REAL, FAKE).item() == pytest.approx(expected.item(), rel=1e-6)


def test_minimax_generator_loss_is_mean_log_one_minus_d():
    expected = (math.log(1 - sig(0.5)) + math.log(1 - sig(-3.0))) / 2
    assert losses.minimax_g_loss(FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_non_saturating_generator_loss_is_negative_mean_log_d():
    expected = -(math.log(sig(0.5)) + math.log(sig(-3.0))) / 2
    assert losses.non_saturating_g_loss(FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_losses_are_finite_for_extreme_logits():
    big = torch.tensor([200.0, -200.0])
    for v in (losses.discriminator_loss(big, -big), losses.minimax_g_loss(big), losses.non_saturating_g_loss(-big)):
        assert torch.isfinite(v)
    assert losses.non_saturating_g_loss(torch.tensor([-200.0])).item() == pytest.approx(200.0)


def test_hinge_losses():
    # relu(1 - 2) = 0, relu(1 + 1) = 2 -> 1.0 ; relu(1 + 0.5) = 1.5, relu(1 - 3) = 0 -> 0.75
    assert losses.hinge_d_loss(REAL, FAKE).item() == pytest.approx(1.0 + 0.75)
    assert losses.hinge_g_loss(FAKE).item() == pytest.approx(1.25)


def test_wasserstein_losses():
    assert losses.wasserstein_d_loss(REAL, FAKE).item() == pytest.approx(-1.25 - 0.5)
    assert losses.wasserstein_g_loss(FAKE).item() == pytest.approx(1.25)


def test_gradient_penalty_of_linear_critic():
    # D(x) = w . x has gradient w everywhere: penalty = (|w| - 1)^2
    w = torch.tensor([3.0, 4.0])
    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    x_hat = losses.interpolate(real, fake, torch.rand(5, 1))
    assert losses.gradient_penalty(x_hat @ w, x_hat).item() == pytest.approx((5.0 - 1.0) ** 2)


def test_r1_penalty_of_quadratic_discriminator():
    # D(x) = sum x^2 has gradient 2x: R1 = mean ||2x||^2
    x = torch.tensor([[1.0, 2.0], [0.0, 3.0]], requires_grad=True)
    logits = (x ** 2).sum(dim=1)
    assert losses.r1_penalty(logits, x).item() == pytest.approx((4 * 5 + 4 * 9) / 2)


def test_js_estimate_maps_value_range_to_zero_and_log2():
    assert losses.js_estimate(-math.log(4)) == pytest.approx(0.0)
    assert losses.js_estimate(0.0) == pytest.approx(math.log(2))
