"""The 1000-mode StackedMNIST protocol on stacked digits (Metz et al. 2017; VEEGAN, Srivastava et al. 2017;
PacGAN, Lin et al. 2018, Table 2; R3GAN, Huang et al. 2024, Sec. 4.1).

Each of a sample's three channels is read by the digits classifier; the three digits name its mode
(100 d_R + 10 d_G + d_B). Over 26,000 samples (the protocol's count): ``modes_covered``, the modes with
at least one sample (of 1000), and ``mode_kl`` = KL(q || uniform) = sum_m q_m log(1000 q_m), q the
samples' mode histogram (0 for a perfectly even spread). Real stacked digits score a floor above 0
(classifier errors, and 26,000 draws over 1000 modes are not perfectly even).
"""

from __future__ import annotations

import numpy as np
import torch

from .digits import DigitsClassifierFeatures

STACKED_PROTOCOL_SAMPLES = 26_000
NUM_MODES = 1000


def stacked_modes(classifier: DigitsClassifierFeatures, x: torch.Tensor) -> np.ndarray:
    """x (N, 3, 8, 8) in [-1, 1] -> int64 (N,) modes in [0, 1000): each channel classified as a digit."""
    x = torch.as_tensor(x)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"stacked digits: got samples of shape {tuple(x.shape[1:])}; expected (3, 8, 8)")
    digits = [classifier.predict(x[:, k:k + 1]) for k in range(3)]
    return (100 * digits[0] + 10 * digits[1] + digits[2]).astype(np.int64)


def mode_statistics(modes: np.ndarray) -> dict[str, float]:
    """``modes_covered`` (of 1000) and ``mode_kl`` = KL(q || uniform) of int modes (N,) in [0, 1000)."""
    counts = np.bincount(np.asarray(modes, dtype=np.int64), minlength=NUM_MODES).astype(np.float64)
    q = counts / max(counts.sum(), 1.0)
    nz = q > 0
    return {"modes_covered": float(nz.sum()), "mode_kl": float(np.sum(q[nz] * np.log(q[nz] * NUM_MODES)))}


class StackedDigitsFeatures:
    """The digits classifier's penultimate features of each channel, concatenated: (N, 3, 8, 8) -> (N, 192),
    the feature space of FD, KID and precision/recall on stacked digits."""

    name = "digits_classifier_per_channel"

    def __init__(self, classifier: DigitsClassifierFeatures):
        self.classifier = classifier

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        return torch.cat([self.classifier(x[:, k:k + 1]) for k in range(x.shape[1])], dim=1)
