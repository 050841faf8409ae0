"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", sec. 4 and app. C):
the unbiased estimate of the squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets. Unlike FD it is unbiased, so it is comparable across sample sizes and
near 0 (possibly slightly negative) for samples of the same distribution.
"""

from __future__ import annotations

import numpy as np
import torch


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0) -> torch.Tensor:
    """k(x, y) = (x.y / d + coef0)^degree, d = feature dimension (Bińkowski et al. 2018, eq. in sec. 4)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with the polynomial kernel:
    1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j)."""
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
                 + (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
                 - 2.0 * k_xy.mean())


def kernel_inception_distance(features_a, features_b, *, subset_size: int = 1000, num_subsets: int = 100,
                              seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over ``num_subsets`` random subsets of ``subset_size`` from each
    set (Bińkowski et al. 2018; the reference implementation's defaults are 1000 and 100). The subset
    size shrinks to the smaller set's size if needed. Subsets come from a seeded numpy generator."""
    a = torch.as_tensor(np.asarray(features_a, dtype=np.float64).reshape(len(features_a), -1))
    b = torch.as_tensor(np.asarray(features_b, dtype=np.float64).reshape(len(features_b), -1))
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    if m == len(a) == len(b):
        num_subsets = 1  # every "subset" would be the whole of both sets: the same value each time
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))
