"""Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, "GANs Trained by
a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. 6).

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

With Inception pool features this is FID. `frechet_distance` is generic over the feature extractor
(the digits classifier, random-network embeddings, raw coordinates); `frechet_inception_distances`
computes the standard FID with torchmetrics' implementation when the user supplies the Inception weights.
"""

from __future__ import annotations

import warnings

from collections.abc import Mapping

import numpy as np
import scipy.linalg
import torch
from torch import nn


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (N, d) features, float64; covariance with the unbiased 1/(N-1). Raises
    ValueError for fewer than 2 rows or d > features.MAX_FEATURE_DIM (a d x d covariance and its sqrtm:
    64x64 RGB pixels, 12,288-d, ran for minutes in 8 GB)."""
    from .features import MAX_FEATURE_DIM

    f = _as_array(features)
    if len(f) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {len(f)}")
    if f.shape[1] > MAX_FEATURE_DIM:
        raise ValueError(f"a Frechet distance on {f.shape[1]}-d samples; allowed: at most {MAX_FEATURE_DIM} "
                         "dimensions: evaluate images in a feature space (infra.models.evaluation.gan_core_evaluator)")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                                     eps: float = 1e-6) -> float:
    """||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 sqrtm(S_1 S_2))  (Heusel et al. 2017).

    NOTE: like pytorch-fid, a singular product (scipy warns) gets eps * I added to both covariances before the
    square root, and the tiny imaginary part that sqrtm returns from rounding is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
    if singular or not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)  # rounding can give -1e-12 for identical statistics


def frechet_distance(features_a, features_b) -> float:
    """FD between Gaussians fitted to two (N, d) feature sets (Heusel et al. 2017)."""
    return frechet_distance_from_statistics(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


def frechet_inception_distances(network: nn.Module, reference: torch.Tensor, others: Mapping[str, torch.Tensor],
                                batch_size: int = 256) -> tuple[dict[str, float], torch.Tensor, dict[str, torch.Tensor]]:
    """FID (Heusel et al. 2017) of each image set in ``others`` against ``reference``, computed by torchmetrics'
    ``FrechetInceptionDistance`` with ``network`` as its feature extractor (e.g.
    `gan_core.metrics.features.FIDInceptionFeatures`; an nn.Module with an int ``num_features``).

    Images: (N, C, H, W) float tensors in the network's input range. The reference statistics are
    accumulated once and kept (``reset_real_features=False``) while each other set is scored. Returns
    ``({name: fid}, reference features (N, d), {name: features (N, d)})``, float32 on the CPU: the
    features the network produced (collected by a forward hook, so each image passes through it once)
    serve the other metrics (KID, precision/recall). Raises ValueError for fewer than 2 images in a set.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, x in {"reference": reference, **others}.items():
        if len(x) < 2:
            raise ValueError(f"FID: need at least 2 images per set, got {len(x)} in {name!r}")
    fid = FrechetInceptionDistance(feature=network, reset_real_features=False)
    seen: list[torch.Tensor] = []
    hook = network.register_forward_hook(lambda _module, _inputs, out: seen.append(out.detach().float().cpu()))

    def take() -> torch.Tensor:
        out = torch.cat(seen)
        seen.clear()
        return out

    try:
        for batch in reference.split(batch_size):
            fid.update(batch, real=True)
        ref_features = take()
        values, features = {}, {}
        for name, x in others.items():
            fid.reset()  # the fake statistics only: the reference's stay
            for batch in x.split(batch_size):
                fid.update(batch, real=False)
            values[name] = max(float(fid.compute()), 0.0)  # rounding can give -1e-9 for identical statistics
            features[name] = take()
    finally:
        hook.remove()
    return values, ref_features, features
