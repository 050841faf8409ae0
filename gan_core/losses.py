"""Adversarial losses and regularisers, one small pure function per paper term.

All functions take D's pre-sigmoid outputs ("logits"). With D(x) = sigmoid(logit(x)) the stable forms
are log D(x) = -softplus(-logit) and log(1 - D(x)) = -softplus(logit); nothing here takes the log of a
sigmoid output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_4 = math.log(4.0)


def value_function(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]  (Goodfellow et al. 2014, eq. 1).

    D ascends V; G descends it. Estimated on a minibatch of real and generated samples.
    """
    return -F.softplus(-real_logits).mean() - F.softplus(fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-V(D, G): binary cross-entropy with real = 1 and fake = 0 (Goodfellow et al. 2014, Alg. 1)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def minimax_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """E_z[log(1 - D(G(z)))], the saturating generator loss of the minimax game (Goodfellow et al. 2014).

    Its gradient vanishes when D confidently rejects the fakes (D(G(z)) -> 0), which is why the paper
    recommends the non-saturating variant in practice.
    """
    return -F.softplus(fake_logits).mean()


def non_saturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E_z[log D(G(z))], the non-saturating generator loss (Goodfellow et al. 2014, sec. 3).

    Same fixed point as the minimax loss, strong gradients early in training.
    """
    return F.softplus(-fake_logits).mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] on raw scores (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))] on raw scores (Lim & Ye 2017)."""
    return -fake_logits.mean()


def wasserstein_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] - E[D(x)]: the critic's loss, a dual estimate of -W1 (Arjovsky et al. 2017)."""
    return fake_logits.mean() - real_logits.mean()


def wasserstein_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))] (Arjovsky et al. 2017)."""
    return -fake_logits.mean()


def rpgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[softplus(-(D(x_r) - D(x_f)))] over paired rows: the relativistic pairing GAN's D loss (RpGAN,
    Jolicoeur-Martineau 2019; R3GAN, Huang et al. 2024, Sec. 2.1, eq. 2; R3GAN/Trainer.py).

    Row i of ``real_logits`` is paired with row i of ``fake_logits`` (both (N,)). D is asked only that
    each real look more real than its fake: f(t) = -log sigmoid(t) of the difference. Its optimum is not
    a density ratio, so V(D, G) and the Jensen-Shannon estimate of Goodfellow et al. (Thm. 1) say
    nothing under this loss; Huang et al. (Sec. 2.2) show instead that every fixed point of RpGAN is a
    global one (no mode-dropping local optimum), and with R1 + R2 local convergence."""
    return F.softplus(-(real_logits - fake_logits)).mean()


def rpgan_g_loss(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """E[softplus(-(D(x_f) - D(x_r)))] over paired rows: G's side of RpGAN (R3GAN, Sec. 2.1), the same
    pairing with the roles swapped. ``real_logits`` carry no gradient that G could use (D frozen)."""
    return F.softplus(-(fake_logits - real_logits)).mean()


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_hat = eps * x + (1 - eps) * G(z), the points where WGAN-GP evaluates D's gradient.

    ``eps`` is uniform in [0, 1), one value per sample, broadcastable to ``real``; the caller draws it
    from a seeded generator so the step stays deterministic. The result requires grad.
    """
    return (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)


def gradient_penalty(x_hat_logits: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: E[(||grad_x_hat D(x_hat)||_2 - 1)^2] (Gulrajani et al. 2017).

    Takes D's scores on the interpolates so that D runs once per step on cat([real, fake, x_hat]):
    a second forward of a DDP-wrapped D before one backward would break gradient synchronisation.
    """
    (grad,) = torch.autograd.grad(x_hat_logits.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).square().mean()


def zero_centred_gradient_penalty(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||^2]: D's squared input-gradient norm, averaged over the rows of ``x`` (which
    must have ``requires_grad`` set before D's forward pass). R1 and R2 are this on reals and on fakes."""
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.flatten(1).square().sum(dim=1).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 = E_x[||grad_x D(x)||^2] on real data (Mescheder et al. 2018); the loss adds gamma/2 * R1.

    ``real`` must have ``requires_grad`` set before D's forward pass.
    """
    return zero_centred_gradient_penalty(real_logits, real)


def r2_penalty(fake_logits: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """R2 = E_z[||grad_x D(x)|_{x=G(z)}||^2] on generated data (Mescheder et al. 2018; Roth et al. 2017);
    R3GAN adds gamma/2 * (R1 + R2) (Huang et al. 2024, Sec. 2.2, eq. 5): R1 alone lets RpGAN's D sharpen
    around the fakes, R2 keeps it smooth there too. ``fake`` must have ``requires_grad`` set (detached
    from G) before D's forward pass."""
    return zero_centred_gradient_penalty(fake_logits, fake)


def js_estimate(value: torch.Tensor | float) -> torch.Tensor | float:
    """JS(p_data || p_g) ~= (V(D, G) + log 4) / 2, from Theorem 1: max_D V = 2 JS - log 4.

    Exact when D is the optimal discriminator; a lower bound in expectation otherwise.
    """
    return (value + LOG_4) / 2.0


def d_loss_for(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator loss for a `LossConfig.kind`."""
    if kind in ("non_saturating", "minimax"):
        return discriminator_loss(real_logits, fake_logits)
    if kind == "hinge":
        return hinge_d_loss(real_logits, fake_logits)
    if kind == "wasserstein":
        return wasserstein_d_loss(real_logits, fake_logits)
    if kind == "rpgan":
        return rpgan_d_loss(real_logits, fake_logits)
    raise ValueError(f"loss.kind: got {kind!r}")


def g_loss_for(kind: str, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The generator loss for a `LossConfig.kind`; ``real_logits`` (paired rows) for rpgan only."""
    if kind == "rpgan":
        if real_logits is None:
            raise ValueError("loss.kind = rpgan: G's loss needs D's logits on a real minibatch (paired rows)")
        return rpgan_g_loss(fake_logits, real_logits)
    if kind == "non_saturating":
        return non_saturating_g_loss(fake_logits)
    if kind == "minimax":
        return minimax_g_loss(fake_logits)
    if kind == "hinge":
        return hinge_g_loss(fake_logits)
    if kind == "wasserstein":
        return wasserstein_g_loss(fake_logits)
    raise ValueError(f"loss.kind: got {kind!r}")
