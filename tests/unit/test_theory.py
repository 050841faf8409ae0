"""The seed paper's mathematics (Goodfellow et al. 2014) checked numerically, then against a
discriminator trained with the project's own D update (gan_core.training.discriminator_step)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gan_core import theory
from gan_core.config import DataConfig, GANConfig, NetworkConfig, OptimizerConfig, TrainConfig
from gan_core.losses import LOG_4
from gan_core.training import build_training_state, discriminator_step

pytestmark = pytest.mark.usefixtures("one_thread")


class AffineGenerator(nn.Module):
    """A fixed generator G(z) = scale * z + shift, so p_g = N(shift, scale^2 I) is known exactly."""

    def __init__(self, shift, scale=1.0):
        super().__init__()
        self.z_dim = len(shift)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32))
        self.scale = scale

    def forward(self, z):
        return z * self.scale + self.shift


def train_discriminator(G, sample_real, dim, *, steps, batch_size, lr, d_width=64, seed=0):
    """Train D alone with gan_core.training.discriminator_step against the fixed G; lr / 10 for the
    last 30% of the steps. Returns D's logit as a numpy function."""
    cfg = GANConfig(
        data=DataConfig(name="theory-test", shape=(dim,)),
        network=NetworkConfig(arch="mlp", z_dim=dim, d_width=d_width, d_depth=2, g_width=8, g_depth=1, g_norm="none"),
        d_optim=OptimizerConfig(lr=lr, beta1=0.5, beta2=0.99),
        train=TrainConfig(global_batch_size=batch_size, total_steps=steps, seed=seed),
    )
    state = build_training_state(cfg)
    state.G = G
    g = torch.Generator().manual_seed(seed + 1)
    for i in range(steps):
        state.step = i  # fresh z each step: the latents are addressed by (seed, step)
        if i == int(0.7 * steps):
            for group in state.opt_D.param_groups:
                group["lr"] = lr / 10
        discriminator_step(state, state.D, sample_real(batch_size, g), 0)

    def logit(x):
        with torch.no_grad():
            return state.D(torch.as_tensor(theory._as_points(x), dtype=torch.float32)).double().numpy()

    return logit



def sigmoid(s):
    return 1.0 / (1.0 + np.exp(-s))


# -- closed forms -------------------------------------------------------------------------------------

def test_numeric_kl_matches_closed_form_in_1d_and_2d():
    p, q = theory.gaussian_density(0.0, 1.0), theory.gaussian_density(1.5, 2.0)
    assert theory.kl_divergence(p, q, [(-12, 14)]) == pytest.approx(theory.kl_gaussians(0, 1, 1.5, 2), abs=1e-6)
    cov_p, cov_q = np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[2.0, -0.2], [-0.2, 1.0]])
    p2, q2 = theory.gaussian_density([0, 0], cov_p), theory.gaussian_density([1, -0.5], cov_q)
    numeric = theory.kl_divergence(p2, q2, [(-7, 8), (-7, 7)], num_points=601)
    assert numeric == pytest.approx(theory.kl_gaussians([0, 0], cov_p, [1, -0.5], cov_q), abs=1e-4)


def test_js_is_symmetric_bounded_and_hits_its_extremes():
    p, q = theory.gaussian_density(0.0, 1.0), theory.gaussian_density(1.5, 1.0)
    bounds = [(-10, 12)]
    js = theory.js_divergence(p, q, bounds)
    assert 0 < js < math.log(2)
    assert theory.js_divergence(q, p, bounds) == pytest.approx(js, abs=1e-12)
    assert theory.js_divergence(p, p, bounds) == pytest.approx(0.0, abs=1e-12)
    far = theory.gaussian_density(30.0, 1.0)
    assert theory.js_divergence(p, far, [(-10, 40)], num_points=20001) == pytest.approx(math.log(2), abs=1e-6)
    # the definition: 1/2 KL(p || m) + 1/2 KL(q || m)
    m = theory.mixture_density([p, q])
    assert js == pytest.approx(0.5 * theory.kl_divergence(p, m, bounds) + 0.5 * theory.kl_divergence(q, m, bounds))


def test_optimal_discriminator_maximises_v_and_gives_2js_minus_log4():
    p, q = theory.gaussian_density(0.0, 1.0), theory.gaussian_density(1.5, 1.0)
    bounds = [(-10, 12)]
    js = theory.js_divergence(p, q, bounds)
    v_star = theory.value_function_numeric(lambda x: theory.optimal_discriminator_logit(x, p, q), p, q, bounds)
    assert v_star == pytest.approx(theory.optimal_value(js), abs=1e-9)  # Theorem 1
    assert theory.js_from_value(v_star) == pytest.approx(js, abs=1e-9)
    # any other D scores lower (Proposition 1): perturb the optimal logit
    for delta in (0.3, -0.3):
        v = theory.value_function_numeric(lambda x: theory.optimal_discriminator_logit(x, p, q) + delta, p, q, bounds)
        assert v < v_star
    x = np.linspace(-3, 4.5, 7)
    d_star = theory.optimal_discriminator(x, p, q)
    np.testing.assert_allclose(d_star, sigmoid(theory.optimal_discriminator_logit(x, p, q)))
    # here log p - log q = -1.5 x + 1.125, so D* is a logistic function of x
    np.testing.assert_allclose(d_star, sigmoid(-1.5 * x + 1.125))


def test_density_ratio_with_and_without_a_prior():
    p, q = theory.gaussian_density(0.0, 1.0), theory.gaussian_density(1.5, 1.0)
    x = np.linspace(-2, 3, 11)
    true_ratio = p(x) / q(x)
    np.testing.assert_allclose(theory.density_ratio(theory.optimal_discriminator(x, p, q)), true_ratio, rtol=1e-10)
    np.testing.assert_allclose(theory.density_ratio_from_logit(theory.optimal_discriminator_logit(x, p, q)),
                               true_ratio, rtol=1e-10)
    # a classifier that saw real and fake in proportion pi : 1 - pi is Bayes-optimal at
    # pi p / (pi p + (1 - pi) q); the prior correction recovers p / q
    pi = 0.8
    d_pi = pi * p(x) / (pi * p(x) + (1 - pi) * q(x))
    np.testing.assert_allclose(theory.density_ratio_with_prior(d_pi, pi), true_ratio, rtol=1e-10)
    with pytest.raises(ValueError, match="pi"):
        theory.density_ratio_with_prior(d_pi, 1.0)
    assert theory.js_from_value(-LOG_4) == 0.0


# -- a trained discriminator converges to the theory ---------------------------------------------------

def test_trained_discriminator_converges_to_d_star_and_v_to_2js_minus_log4_in_1d():
    # p_data = N(0, 1), p_g = N(1.5, 1)
    p_data, p_g = theory.gaussian_density(0.0, 1.0), theory.gaussian_density(1.5, 1.0)
    logit = train_discriminator(AffineGenerator([1.5]), lambda n, g: torch.randn(n, 1, generator=g), 1,
                                steps=300, batch_size=512, lr=2e-3)
    x = np.linspace(-3.0, 4.5, 301)
    error = np.abs(sigmoid(logit(x)) - theory.optimal_discriminator(x, p_data, p_g))
    assert error.max() < 0.05, f"max |D - D*| = {error.max():.3f} at x = {x[error.argmax()]:.2f}"
    bounds = [(-10.0, 11.5)]
    js = theory.js_divergence(p_data, p_g, bounds)
    v = theory.value_function_numeric(logit, p_data, p_g, bounds)
    assert abs(v - (2 * js - 2 * math.log(2))) < 0.03, (v, js)


def test_trained_discriminator_converges_to_d_star_on_a_2d_mixture():
    # p_data = 1/2 N((-1, 0), 0.8^2 I) + 1/2 N((1, 0), 0.8^2 I); p_g = N((0, 0.5), 1.2^2 I)
    sd, centres = 0.8, torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    p_data = theory.mixture_density([theory.gaussian_density([-1, 0], sd ** 2),
                                     theory.gaussian_density([1, 0], sd ** 2)])
    p_g = theory.gaussian_density([0.0, 0.5], 1.2 ** 2)

    def sample_real(n, g):
        return centres[torch.randint(0, 2, (n,), generator=g)] + sd * torch.randn(n, 2, generator=g)

    logit = train_discriminator(AffineGenerator([0.0, 0.5], 1.2), sample_real, 2, steps=800, batch_size=512, lr=3e-3)
    # the bulk of both densities: the box spanned by the data's modes and G's mode, +- about 1.5 sigma
    x, _ = theory.grid([(-2.0, 2.0), (-1.5, 2.0)], 81)
    error = np.abs(sigmoid(logit(x)) - theory.optimal_discriminator(x, p_data, p_g))
    assert error.max() < 0.05, f"max |D - D*| = {error.max():.3f} at x = {x[error.argmax()]}"
    bounds = [(-8.0, 8.0), (-8.0, 8.5)]
    js = theory.js_divergence(p_data, p_g, bounds, num_points=801)
    v = theory.value_function_numeric(logit, p_data, p_g, bounds, num_points=801)
    assert abs(v - (2 * js - 2 * math.log(2))) < 0.03, (v, js)
