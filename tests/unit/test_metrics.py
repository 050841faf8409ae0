"""Metrics against independent references on small inputs, and the digits classifier."""

import math

import numpy as np
import pytest
import torch

from gan_core.metrics import (DigitsClassifierFeatures, IdentityFeatures, TorchScriptFeatures, class_coverage,
                              extract_features, frechet_distance, frechet_distance_from_statistics,
                              kernel_inception_distance, load_or_train_digits_classifier, precision_recall)
from gan_core.metrics.digits import CACHE_FILE, accuracy, digits_split
from gan_core.metrics.features import FeatureNetworkError


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(n, mean, std, seed):
    rng = np.random.default_rng(seed)
    return np.asarray(mean) + np.asarray(std) * rng.standard_normal((n, len(mean)))


# -- Fréchet distance -----------------------------------------------------------------------------------

def test_frechet_distance_matches_the_closed_form_for_gaussians():
    # diagonal covariances: FD = ||mu1 - mu2||^2 + sum (s1 - s2)^2
    mu1, s1, mu2, s2 = [0.0, 1.0, -1.0], [1.0, 0.5, 2.0], [0.5, 0.0, -1.0], [1.5, 0.5, 1.0]
    closed = float(np.sum((np.array(mu1) - mu2) ** 2) + np.sum((np.array(s1) - s2) ** 2))
    assert frechet_distance_from_statistics(np.array(mu1), np.diag(np.square(s1)), np.array(mu2),
                                            np.diag(np.square(s2))) == pytest.approx(closed, abs=1e-9)
    sampled = frechet_distance(gaussian(20000, mu1, s1, 0), gaussian(20000, mu2, s2, 1))
    assert sampled == pytest.approx(closed, rel=0.05)
    # full, non-commuting covariances: the W2 form Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via eigh
    a, b = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    w, v = np.linalg.eigh(a)
    root_a = v @ np.diag(np.sqrt(w)) @ v.T
    w2, _ = np.linalg.eigh(root_a @ b @ root_a)
    reference = 1.0 + np.trace(a) + np.trace(b) - 2 * np.sum(np.sqrt(w2))
    assert frechet_distance_from_statistics(np.zeros(2), a, np.array([1.0, 0.0]), b) == pytest.approx(reference)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = gaussian(500, [0.0] * 4, [1.0] * 4, 3)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # two samples of one distribution: small, shrinking with n
    assert frechet_distance(gaussian(5000, [0.0] * 4, [1.0] * 4, 4), gaussian(5000, [0.0] * 4, [1.0] * 4, 5)) < 0.02


# -- KID ------------------------------------------------------------------------------------------------

def test_kid_is_near_zero_for_one_distribution_and_positive_when_shifted():
    a, b = gaussian(1000, [0.0] * 8, [1.0] * 8, 0), gaussian(1000, [0.0] * 8, [1.0] * 8, 1)
    shifted = gaussian(1000, [0.5] * 8, [1.0] * 8, 2)
    same, same_std = kernel_inception_distance(a, b, subset_size=500, num_subsets=20)
    diff, diff_std = kernel_inception_distance(a, shifted, subset_size=500, num_subsets=20)
    assert abs(same) < 3 * same_std + 1e-3
    assert diff > 0.1 and diff > 10 * abs(same) and diff > 3 * diff_std
    # unbiased: the mean over many small subsets agrees with one big one
    big, _ = kernel_inception_distance(a, shifted, subset_size=1000, num_subsets=1)
    assert diff == pytest.approx(big, rel=0.1)


def test_kid_uses_the_cubic_polynomial_kernel():
    # one-dimensional sets of two points: the unbiased MMD^2 by hand with k(x, y) = (x y + 1)^3
    x, y = np.array([[1.0], [2.0]]), np.array([[0.0], [-1.0]])
    k = lambda u, v: (u * v + 1.0) ** 3  # noqa: E731
    by_hand = (2 * k(1, 2)) / 2 + (2 * k(0, -1)) / 2 - 2 * np.mean([k(a, b) for a in (1, 2) for b in (0, -1)])
    assert kernel_inception_distance(x, y, subset_size=2, num_subsets=1)[0] == pytest.approx(by_hand)


# -- precision and recall -------------------------------------------------------------------------------

def test_precision_and_recall_are_one_for_identical_sets():
    x = gaussian(400, [0.0, 0.0], [1.0, 1.0], 0)
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}


def test_a_generator_covering_one_mode_of_two_has_high_precision_and_low_recall():
    rng = np.random.default_rng(0)
    modes = np.array([[-4.0, 0.0], [4.0, 0.0]])
    real = modes[rng.integers(0, 2, 1000)] + 0.5 * rng.standard_normal((1000, 2))
    one_mode = modes[0] + 0.5 * rng.standard_normal((1000, 2))
    pr = precision_recall(real, one_mode, k=3)
    assert pr["precision"] > 0.9
    assert pr["recall"] < 0.6


# -- the digits classifier and class coverage -----------------------------------------------------------

def test_digits_classifier_is_accurate_cached_and_reloaded_weights_only(digits_cache, monkeypatch):
    assert (digits_cache / CACHE_FILE).is_file()
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    model = load_or_train_digits_classifier(digits_cache)  # from the cache: no training
    assert calls and all(k.get("weights_only") is True for k in calls)
    _, _, hx, hy = digits_split()
    acc = accuracy(model, hx, hy)
    assert acc >= 0.95
    assert model.held_out_accuracy == pytest.approx(acc)


def test_class_coverage_counts_classes_a_generator_produces(digits_cache):
    clf = DigitsClassifierFeatures(load_or_train_digits_classifier(digits_cache))
    _, _, hx, hy = digits_split()
    hist = np.bincount(hy)
    real = class_coverage(clf.predict(torch.as_tensor(hx)), hist)
    assert real["classes_covered"] == 10 and real["class_kl"] < 0.05
    threes = torch.as_tensor(hx[hy == 3])
    single = class_coverage(clf.predict(threes), hist)
    assert single["classes_covered"] == 1 and single["num_classes"] == 10
    assert single["class_kl"] == pytest.approx(math.log(1 / (hist[3] / hist.sum())), rel=0.1)
    assert extract_features(clf, torch.as_tensor(hx)).shape == (len(hx), 64)


def test_torchscript_feature_network_from_a_user_file(tmp_path):
    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    path = tmp_path / "features.pt"
    torch.jit.script(Pool()).save(str(path))
    fx = TorchScriptFeatures(path)
    images = torch.full((2, 1, 8, 8), -1.0)  # black grey images -> 0 in [0, 255], 3 channels
    out = extract_features(fx, images)
    assert out.shape == (2, 3) and torch.all(out == 0)
    assert IdentityFeatures()(images).shape == (2, 64)
    with pytest.raises(FeatureNetworkError, match="nothing is downloaded"):
        TorchScriptFeatures(tmp_path / "missing.pt")


def test_frechet_distance_is_zero_for_itself_a_mean_shift_squared_and_bounded_in_dimension():
    """The one Fréchet distance (gan_core.metrics; the registry's default evaluator uses it too)."""
    from gan_core.metrics import frechet_distance

    x = np.random.default_rng(0).normal(size=(4000, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x + [1.0, 0.0, 0.0]) == pytest.approx(1.0, abs=1e-3)  # ||mu shift||^2
    # 64x64 RGB pixels (12,288-d) ran a sqrtm for minutes in 8 GB: refused at once (issue 31)
    with pytest.raises(ValueError, match="12288-d samples; allowed: at most 4096"):
        frechet_distance(np.zeros((4, 3, 64, 64)), np.zeros((4, 3, 64, 64)))
