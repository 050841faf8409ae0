"""Coverage metrics: how many modes (2-D mixtures) or classes (labelled data) the generator produces.

- Mode coverage on the ``ring8`` / ``grid25`` mixtures follows the VEEGAN (Srivastava et al. 2017) /
  PacGAN (Lin et al. 2018) protocol; it lives in `gan_core.data.mode_coverage` and is re-exported.
- Class coverage classifies generated samples with a classifier trained on the labelled real data
  (the "number of modes" measure of Che et al. 2017 and Srivastava et al. 2017 on MNIST) and reports
  how many classes appear and KL(p_generated_classes || p_data_classes).
"""

from __future__ import annotations

import math

import numpy as np

from ..data import mode_coverage

# A class counts as produced when it receives at least this fraction of its share under the data's
# class histogram, so that a few misclassified samples of a collapsed G do not count as coverage.
MIN_SHARE_OF_EXPECTED = 0.25


def _class_frequencies(predicted: np.ndarray, data_class_hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(data_class_hist, dtype=np.float64)
    p_data = data / data.sum()
    k = len(p_data)
    counts = np.bincount(np.asarray(predicted).astype(np.int64), minlength=k)[:k].astype(np.float64)
    return counts / max(counts.sum(), 1.0), p_data


def covered_classes(predicted: np.ndarray, data_class_hist: np.ndarray,
                    min_share: float = MIN_SHARE_OF_EXPECTED) -> np.ndarray:
    """Which classes the generated samples cover: a (num_classes,) bool array, True where the fraction
    of samples predicted as c is >= ``min_share`` times the data's fraction of c (see `class_coverage`)."""
    p_gen, p_data = _class_frequencies(predicted, data_class_hist)
    return (p_gen >= min_share * p_data) & (p_gen > 0)


def class_coverage(predicted: np.ndarray, data_class_hist: np.ndarray,
                   min_share: float = MIN_SHARE_OF_EXPECTED) -> dict[str, float]:
    """Class coverage of generated samples from their predicted classes.

    ``data_class_hist`` holds the data's class counts (or frequencies). Class c is *covered* if the
    fraction of generated samples predicted as c is at least ``min_share`` times the data's fraction
    of c. ``class_kl`` = KL(p_gen || p_data) over predicted classes (0 when the histograms match; it
    stays finite under collapse, which is why this direction is used, as for the mixtures' reverse KL).
    """
    p_gen, p_data = _class_frequencies(predicted, data_class_hist)
    covered = covered_classes(predicted, data_class_hist, min_share)
    nz = p_gen > 0
    with np.errstate(divide="ignore"):
        kl = float(np.sum(p_gen[nz] * (np.log(p_gen[nz]) - np.log(p_data[nz])))) if nz.any() else math.inf
    return {"classes_covered": float(covered.sum()), "num_classes": float(len(p_data)), "class_kl": kl}


__all__ = ["mode_coverage", "class_coverage", "covered_classes", "MIN_SHARE_OF_EXPECTED"]
