"""The seed paper's mathematics as numbers: optimal discriminator, KL and JS divergences, the value
function at the optimum, and the density-ratio reading of a discriminator (Goodfellow et al. 2014).

Densities are plain functions ``p(x) -> array``: ``x`` has shape (n, d) (or (n,) when d = 1) and the
result has shape (n,). Integrals are midpoint-rule sums over a fine grid on a bounding box, which is
exact enough for the smooth 1-D and 2-D densities the tests and diagnostics use (the box must hold
essentially all the mass of both densities).

Everything here is numpy; the networks never see it. It exists so that tests can check a trained
discriminator against the closed form, and so that the logged JS estimate has a reference.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .losses import LOG_4, js_estimate

Density = Callable[[np.ndarray], np.ndarray]
Bounds = Sequence[tuple[float, float]]  # one (low, high) per dimension


# -- densities used as references -------------------------------------------------------------------

def _as_points(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def gaussian_density(mean: Sequence[float] | float, cov: np.ndarray | Sequence | float) -> Density:
    """N(mean, cov) as a density function; ``cov`` may be a scalar variance, a vector of variances
    or a full (d, d) matrix."""
    mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    d = mean.shape[0]
    cov = np.asarray(cov, dtype=np.float64)
    cov = cov * np.eye(d) if cov.ndim == 0 else (np.diag(cov) if cov.ndim == 1 else cov)
    inv = np.linalg.inv(cov)
    log_norm = -0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1])

    def p(x: np.ndarray) -> np.ndarray:
        diff = _as_points(x) - mean
        return np.exp(log_norm - 0.5 * np.einsum("ni,ij,nj->n", diff, inv, diff))

    return p


def mixture_density(components: Sequence[Density], weights: Sequence[float] | None = None) -> Density:
    """sum_k w_k p_k(x); equal weights by default."""
    w = np.full(len(components), 1.0 / len(components)) if weights is None else np.asarray(weights, np.float64)
    if not math.isclose(float(w.sum()), 1.0, rel_tol=1e-9):
        raise ValueError(f"mixture weights must sum to 1, got {float(w.sum())}")

    def p(x: np.ndarray) -> np.ndarray:
        return sum(wk * pk(x) for wk, pk in zip(w, components))

    return p


def kl_gaussians(mean_p, cov_p, mean_q, cov_q) -> float:
    """KL(N(mu_p, S_p) || N(mu_q, S_q)) in closed form (full covariance matrices):
    1/2 [tr(S_q^-1 S_p) + (mu_q - mu_p)^T S_q^-1 (mu_q - mu_p) - d + log det S_q / det S_p].
    An independent reference for the numerical `kl_divergence`."""
    mp, mq = np.atleast_1d(mean_p).astype(np.float64), np.atleast_1d(mean_q).astype(np.float64)
    sp, sq = np.atleast_2d(cov_p).astype(np.float64), np.atleast_2d(cov_q).astype(np.float64)
    inv_q = np.linalg.inv(sq)
    diff = mq - mp
    return 0.5 * float(np.trace(inv_q @ sp) + diff @ inv_q @ diff - len(mp)
                       + np.linalg.slogdet(sq)[1] - np.linalg.slogdet(sp)[1])


# -- integration grid -------------------------------------------------------------------------------

def grid(bounds: Bounds, num_points: int = 2001) -> tuple[np.ndarray, float]:
    """Midpoints of a regular grid over the box ``bounds`` (num_points per axis) and the cell volume.

    Returns (points of shape (num_points**d, d), cell volume). Keep d small: the grid has n**d points.
    """
    axes, volume = [], 1.0
    for lo, hi in bounds:
        step = (hi - lo) / num_points
        axes.append(lo + step * (np.arange(num_points) + 0.5))
        volume *= step
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1), volume


def integrate(values: np.ndarray, cell_volume: float) -> float:
    """Midpoint rule: sum of f(midpoint) * cell volume."""
    return float(np.sum(values) * cell_volume)


# -- the paper's quantities -------------------------------------------------------------------------

def optimal_discriminator(x: np.ndarray, p_data: Density, p_g: Density) -> np.ndarray:
    """D*(x) = p_data(x) / (p_data(x) + p_g(x))  (Goodfellow et al. 2014, Proposition 1).

    The best a discriminator can do for a fixed G. Where both densities vanish D* is undefined; it is
    reported as 1/2 there (no evidence either way).
    """
    pd, pg = p_data(x), p_g(x)
    total = pd + pg
    return np.divide(pd, total, out=np.full_like(total, 0.5), where=total > 0)


def optimal_discriminator_logit(x: np.ndarray, p_data: Density, p_g: Density) -> np.ndarray:
    """logit D*(x) = log p_data(x) - log p_g(x): the log density ratio (Prop. 1 with the ratio view)."""
    with np.errstate(divide="ignore"):
        return np.log(p_data(x)) - np.log(p_g(x))


def kl_divergence(p: Density, q: Density, bounds: Bounds, num_points: int = 2001) -> float:
    """KL(p || q) = integral p(x) log(p(x) / q(x)) dx, numerically on a grid over ``bounds``.

    Terms with p(x) = 0 contribute 0; p(x) > 0 where q(x) = 0 gives +inf (Kullback & Leibler 1951).
    """
    x, vol = grid(bounds, num_points)
    px, qx = p(x), q(x)
    mask = px > 0
    if np.any(qx[mask] <= 0):
        return math.inf
    return integrate(px[mask] * (np.log(px[mask]) - np.log(qx[mask])), vol)


def js_divergence(p: Density, q: Density, bounds: Bounds, num_points: int = 2001) -> float:
    """JS(p || q) = 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2, in nats, in [0, log 2]
    (Lin 1991; the divergence of Goodfellow et al. 2014, Theorem 1). Computed on one grid."""
    x, vol = grid(bounds, num_points)
    px, qx = p(x), q(x)
    mx = 0.5 * (px + qx)

    def half_kl(a: np.ndarray) -> float:
        mask = a > 0
        return 0.5 * integrate(a[mask] * (np.log(a[mask]) - np.log(mx[mask])), vol)

    return half_kl(px) + half_kl(qx)


def optimal_value(js: float) -> float:
    """max_D V(D, G) = C(G) = -log 4 + 2 JS(p_data || p_g)  (Goodfellow et al. 2014, Theorem 1)."""
    return 2.0 * js - LOG_4


def js_from_value(value: float) -> float:
    """JS(p_data || p_g) ~= (V(D, G) + log 4) / 2: Theorem 1 solved for JS. Exact at D = D*, a lower
    bound for any other D (V(D) <= V(D*)). Same formula the training loop logs as ``js_estimate``."""
    return float(js_estimate(value))


def value_function_numeric(logit: Callable[[np.ndarray], np.ndarray], p_data: Density, p_g: Density,
                           bounds: Bounds, num_points: int = 2001) -> float:
    """V(D, G) = integral p_data(x) log D(x) + p_g(x) log(1 - D(x)) dx  (Goodfellow et al. 2014, eq. 1),
    by quadrature rather than on a minibatch. ``logit(x)`` is D's pre-sigmoid output; the stable forms
    log D = -softplus(-logit), log(1 - D) = -softplus(logit) are used."""
    x, vol = grid(bounds, num_points)
    s = np.asarray(logit(x), dtype=np.float64)
    log_d = -np.logaddexp(0.0, -s)
    log_1md = -np.logaddexp(0.0, s)
    return integrate(p_data(x) * log_d + p_g(x) * log_1md, vol)


def density_ratio(d: np.ndarray | float) -> np.ndarray | float:
    """r(x) = p_data(x) / p_g(x) = D(x) / (1 - D(x)) for a Bayes-optimal classifier with equal class
    priors (the density-ratio trick; Sugiyama et al. 2012, Mohamed & Lakshminarayanan 2016)."""
    d = np.asarray(d, dtype=np.float64)
    return d / (1.0 - d)


def density_ratio_with_prior(d: np.ndarray | float, pi: float) -> np.ndarray | float:
    """p_data(x) / p_g(x) = [D(x) / (1 - D(x))] * (1 - pi) / pi, where pi = p(y = 1) is the fraction of
    real samples the classifier saw (Bayes' rule: p(x|y=1)/p(x|y=0) = [p(y=1|x)/p(y=0|x)] [p(y=0)/p(y=1)]).
    With pi = 1/2 this is `density_ratio`."""
    if not 0.0 < pi < 1.0:
        raise ValueError(f"pi: got {pi!r}; allowed: a probability strictly between 0 and 1")
    return density_ratio(d) * (1.0 - pi) / pi


def density_ratio_from_logit(logit: np.ndarray | float) -> np.ndarray | float:
    """r(x) = exp(logit D(x)) with pi = 1/2: D = sigmoid(l) gives D / (1 - D) = e^l, with no division."""
    return np.exp(np.asarray(logit, dtype=np.float64))


__all__ = [
    "gaussian_density", "mixture_density", "kl_gaussians", "grid", "integrate", "optimal_discriminator",
    "optimal_discriminator_logit", "kl_divergence", "js_divergence", "optimal_value", "js_from_value",
    "value_function_numeric", "density_ratio", "density_ratio_with_prior", "density_ratio_from_logit",
]
