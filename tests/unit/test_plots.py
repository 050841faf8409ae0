"""The report pictures: training curves and the sample strip render readable, non-blank PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from gan_core import train
from gan_core.data import InMemoryBatches, load_builtin
from gan_core.plots import SampleStripRecorder, evenly_spaced, save_sample_strip, save_training_curves
from tests.factories import tiny_config


def _read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def _assert_drawn(path, min_size=(300, 150)):
    """A plausible size, not blank: pixel variance > 0 and more than one colour."""
    pixels = _read_png(path)
    h, w, _ = pixels.shape
    assert w >= min_size[0] and h >= min_size[1], (w, h)
    assert w <= 4000 and h <= 4000, (w, h)
    assert pixels.var() > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1
    return pixels


def _synthetic_history(ticks: int = 20) -> list[dict[str, float]]:
    return [{"step": 10 * i, "kimg": 0.64 * i, "loss/D": 1.38 - 0.02 * i, "loss/G": 0.69 + 0.03 * i,
             "D/real": 0.5 + 0.01 * i, "D/fake": 0.5 - 0.01 * i, "js_estimate": 0.02 * i,
             "grad_norm/G": 1.0 / (1 + i), "grad_norm/D": 0.5 + 0.1 * i,
             "mode_collapse/coverage": min(1.0, i / 10), "mode_collapse/diversity_ratio": 0.5 + 0.02 * i,
             "vanishing_gradient/loss_gain": 0.5 - 0.02 * i, "vanishing_gradient/grad_norm_ratio": 1.0 / (1 + i),
             "vanishing_gradient/indicator": float(i > 15)} for i in range(1, ticks + 1)]


def test_training_curves_from_a_synthetic_history(tmp_path):
    path = save_training_curves(_synthetic_history(), tmp_path / "report" / "curves.png")
    assert path == tmp_path / "report" / "curves.png"
    _assert_drawn(path, min_size=(800, 600))  # six panels in two columns


def test_training_curves_skip_missing_metrics_and_reject_an_empty_history(tmp_path):
    only_losses = [{"kimg": 0.1 * i, "loss/D": 1.0, "loss/G": 0.5 + 0.1 * i} for i in range(5)]
    full = _read_png(save_training_curves(_synthetic_history(), tmp_path / "full.png"))
    one = _read_png(save_training_curves(only_losses, tmp_path / "one.png"))
    assert one.shape[0] < full.shape[0]  # one panel instead of three rows of them
    with pytest.raises(ValueError, match="kimg"):
        save_training_curves([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="none of the plotted metrics"):
        save_training_curves([{"kimg": 1.0, "perf/kimg_per_s": 3.0}], tmp_path / "none.png")


def test_training_curves_and_strip_from_a_real_tiny_run(tmp_path, one_thread):
    cfg = tiny_config({"train.total_steps": 10, "train.tick_every_steps": 2})
    x, _ = load_builtin("ring8", 512, 0)
    strip = SampleStripRecorder(points_per_tick=256)
    from gan_core.sampling import generate
    from gan_core.training import build_training_state

    state = build_training_state(cfg)
    result = train(cfg, batches=InMemoryBatches(x, cfg.train.global_batch_size, seed=0), state=state,
                   on_snapshot=lambda s: strip.add(s.kimg, generate(state.G_ema, 256, seed=0)))
    assert len(result.history) == 5 and {"loss/D", "js_estimate", "vanishing_gradient/loss_gain",
                                         "mode_collapse/diversity_ratio"} <= set(result.history[-1])
    _assert_drawn(save_training_curves(result.history, tmp_path / "curves.png"), min_size=(800, 600))
    assert [k for k, _ in strip.rows] == [h["kimg"] for h in result.history]
    assert all(s.shape == (256, 2) for _, s in strip.rows)
    _assert_drawn(strip.save(tmp_path / "strip.png", real=x[:500]))


def test_image_strip_has_one_row_per_tick(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [(0.5 * i, torch.rand(8, 1, 8, 8, generator=g) * 2 - 1) for i in range(3)]
    short = _assert_drawn(save_sample_strip(rows, tmp_path / "three.png"), min_size=(300, 100))
    rows = [(0.5 * i, torch.rand(8, 3, 8, 8, generator=g) * 2 - 1) for i in range(6)]
    tall = _assert_drawn(save_sample_strip(rows, tmp_path / "six.png"), min_size=(300, 100))
    assert tall.shape[0] > short.shape[0] * 1.5  # height grows with the ticks


def test_strip_draws_at_most_max_rows_evenly_spaced_and_the_recorder_stays_bounded(tmp_path):
    assert evenly_spaced(list(range(100)), 5) == [0, 25, 50, 74, 99]
    assert evenly_spaced([1, 2], 5) == [1, 2]
    recorder = SampleStripRecorder(images_per_tick=4, max_rows=4)
    for i in range(100):
        recorder.add(0.1 * i, torch.zeros(16, 1, 4, 4))
    assert len(recorder.rows) <= 16 and recorder.rows[-1][0] == pytest.approx(9.9)
    assert all(s.shape == (4, 1, 4, 4) for _, s in recorder.rows)
    many = _read_png(save_sample_strip([(0.1 * i, torch.rand(4, 1, 4, 4)) for i in range(50)],
                                       tmp_path / "many.png", max_rows=4))
    four = _read_png(save_sample_strip([(0.1 * i, torch.rand(4, 1, 4, 4)) for i in range(4)],
                                       tmp_path / "four.png", max_rows=4))
    assert many.shape == four.shape


def test_strip_rejects_samples_it_cannot_draw(tmp_path):
    with pytest.raises(ValueError, match="expected images"):
        save_sample_strip([(0.0, torch.zeros(4, 1))], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no ticks"):
        save_sample_strip([], tmp_path / "x.png")


def test_js_panel_draws_its_bounds(tmp_path, monkeypatch):
    """Only the JS panel: its [0, log 2] bounds widen the y-range beyond the data's own."""
    from gan_core import plots

    history = [{"kimg": 0.1 * i, "js_estimate": 0.3 + 0.01 * i} for i in range(5)]
    captured = {}
    real_save = plots._save

    def keep_figure(fig, path):
        captured["ylim"] = fig.axes[0].get_ylim()
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_figure)
    _assert_drawn(save_training_curves(history, tmp_path / "js.png"), min_size=(300, 150))
    lo, hi = captured["ylim"]
    assert lo <= 0.0 and hi >= math.log(2)


def test_python_m_gan_core_writes_the_report_pictures(tmp_path, one_thread):
    from gan_core.__main__ import main

    assert main(["--preset", "tiny", "--steps", "6", "--set", "train.tick_every_steps=2", "--out", str(tmp_path),
                 "--threads", "1"]) == 0
    _assert_drawn(tmp_path / "training_curves.png", min_size=(800, 600))
    _assert_drawn(tmp_path / "sample_strip.png")
