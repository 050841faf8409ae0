"""Stacked digits (1000 modes) and the StackedMNIST protocol's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan_core.config import get_preset
from gan_core.data import load_builtin, load_digits, stacked_digits
from gan_core.evaluate import evaluate_generator
from gan_core.metrics import mode_statistics, stacked_modes
from gan_core.networks import build_generator


def test_stacked_digits_are_three_seeded_digits_and_their_mode():
    x, y = stacked_digits(500, seed=3)
    assert x.shape == (500, 3, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    again, _ = stacked_digits(500, seed=3)
    other, _ = stacked_digits(500, seed=4)
    assert np.array_equal(x, again) and not np.array_equal(x, other)
    digits, labels = load_digits()
    lookup = {d.tobytes(): int(c) for d, c in zip(digits[:, 0], labels)}
    for img, mode in zip(x[:50], y[:50]):  # every channel is a real digit, and the label names all three
        assert mode == 100 * lookup[img[0].tobytes()] + 10 * lookup[img[1].tobytes()] + lookup[img[2].tobytes()]
    assert len(np.unique(y)) > 350  # 500 draws over 1000 modes
    xb, yb = load_builtin("stacked-digits", 500, 3)
    assert np.array_equal(xb, x) and np.array_equal(yb, y)


def test_mode_statistics_match_hand_computed_values():
    assert mode_statistics(np.arange(1000)) == {"modes_covered": 1000.0, "mode_kl": 0.0}
    assert mode_statistics(np.full(26, 7)) == pytest.approx({"modes_covered": 1.0, "mode_kl": math.log(1000)})
    two = mode_statistics(np.array([1, 1, 1, 2]))  # q = (3/4, 1/4)
    assert two["modes_covered"] == 2.0
    assert two["mode_kl"] == pytest.approx(0.75 * math.log(750) + 0.25 * math.log(250))


class Oracle:
    """A 'classifier' that reads a channel's digit back from its exact pixels (real digits only)."""

    def __init__(self):
        digits, labels = load_digits()
        self.lookup = {d.tobytes(): int(c) for d, c in zip(digits[:, 0], labels)}

    def predict(self, x):
        return np.array([self.lookup[np.asarray(img[0], dtype=np.float32).tobytes()] for img in x])


def test_stacked_modes_reads_each_channel_and_refuses_other_shapes():
    x, y = stacked_digits(200, seed=0)
    assert np.array_equal(stacked_modes(Oracle(), torch.from_numpy(x)), y)
    with pytest.raises(ValueError, match="expected \\(3, 8, 8\\)"):
        stacked_modes(Oracle(), torch.zeros(2, 1, 8, 8))


def test_evaluation_reports_the_1000_mode_protocol_beside_its_floor(tmp_path):
    cfg = get_preset("r3gan-stacked")
    torch.manual_seed(0)
    G = build_generator(cfg).eval()  # untrained: few modes; real stacked digits: nearly all 1000
    real_x, real_y = load_builtin("stacked-digits", 4000, 1)
    m = evaluate_generator(G, cfg, real_x, real_y, num_samples=500, cache_dir=tmp_path)
    assert {"modes_covered", "mode_kl", "floor/modes_covered", "floor/mode_kl", "fd", "floor/fd"} <= set(m)
    assert m["floor/modes_covered"] > 950 and m["floor/mode_kl"] < 0.5  # 4,000 real samples over 1000 modes
    assert m["modes_covered"] < m["floor/modes_covered"] and m["mode_kl"] > m["floor/mode_kl"]
    assert m["feature_dim"] == 192.0  # three channels of the classifier's 64-d features
