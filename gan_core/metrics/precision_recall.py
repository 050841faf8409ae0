"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", sec. 2).

Each set's manifold is approximated by the union of balls around its samples, each ball's radius
being the distance to the sample's k-th nearest neighbour in its own set (k = 3). Precision is the
fraction of generated samples inside the real manifold (sample quality); recall is the fraction of
real samples inside the generated manifold (coverage of the data).
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x) -> torch.Tensor:
    x = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return x.double().reshape(len(x), -1)


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 2048) -> torch.Tensor:
    """Distance from each sample to its k-th nearest neighbour in the same set (itself excluded)."""
    out = []
    for chunk in features.split(batch_size):
        d = torch.cdist(chunk, features)
        # the smallest distance is the sample itself (0); the (k+1)-th smallest is the k-th neighbour
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def manifold_membership(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
                        batch_size: int = 2048) -> torch.Tensor:
    """Boolean per query: inside at least one ball B(support_j, radii_j)."""
    out = []
    for chunk in queries.split(batch_size):
        out.append((torch.cdist(chunk, support) <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real_features, fake_features, k: int = 3) -> dict[str, float]:
    """{"precision", "recall"} of generated vs real features (Kynkäänniemi et al. 2019, k = 3)."""
    real, fake = _as_tensor(real_features), _as_tensor(fake_features)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} samples per set, "
                         f"got {len(real)} real and {len(fake)} generated")
    precision = manifold_membership(fake, real, knn_radii(real, k)).double().mean()
    recall = manifold_membership(real, fake, knn_radii(fake, k)).double().mean()
    return {"precision": float(precision), "recall": float(recall)}
