"""The evaluation entry point: every metric for G_ema beside its real-vs-real floor."""

import json
import runpy
import sys

import numpy as np
import pytest
import torch
from torch import nn

from gan_core.config import get_preset
from gan_core.data import InMemoryBatches, load_digits, sample_mixture
from gan_core.evaluate import evaluate_checkpoint, evaluate_generator, main
from gan_core.loop import train
from tests.factories import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class ConstantImage(nn.Module):
    """A collapsed generator: the same digit image for every z."""

    def __init__(self, image):
        super().__init__()
        self.z_dim = 4
        self.register_buffer("image", torch.as_tensor(image))

    def forward(self, z):
        return self.image.expand(len(z), *self.image.shape)


def test_ring8_checkpoint_reports_metrics_and_floors(tmp_path, capsys):
    cfg = tiny_config({"train.total_steps": 5, "train.checkpoint_every_steps": 5})
    x, _ = sample_mixture("ring8", 256, seed=0)
    run = train(cfg, batches=InMemoryBatches(x, 32, seed=0), checkpoint_root=tmp_path, diagnostics=False)
    ckpt = run.checkpoint_dir
    result = evaluate_checkpoint(ckpt, num_samples=500, kid_num_subsets=10)
    for name in ("fd", "kid", "precision", "recall", "modes_covered", "high_quality_fraction"):
        assert name in result and f"floor/{name}" in result
    assert result["num_samples"] == 500
    # the floor is what real data scores against real data
    assert result["floor/modes_covered"] == 8 and result["floor/fd"] < 0.01
    assert result["floor/precision"] > 0.9 and result["floor/recall"] > 0.9
    # an untrained G is far from the ring
    assert result["fd"] > 10 * result["floor/fd"]
    out = capsys.readouterr().out
    assert "floor (real vs real)" in out and "modes_covered" in out
    assert_catalogued(result)


def assert_catalogued(result: dict[str, float]) -> None:
    """Every metric reported beside a floor is in the one catalogue (gan_core.metrics.catalogue), and the
    catalogue's direction agrees with the floor: real data scores at least as well as an untrained G."""
    from gan_core.metrics.catalogue import BY_NAME, COMPANIONS

    reported = {k for k in result if f"floor/{k}" in result}
    listed = set(BY_NAME) | set(COMPANIONS)
    assert reported and reported <= listed, f"not in the catalogue: {reported - listed}"
    for name in reported & {"fd", "kid", "recall", "modes_covered", "classes_covered", "class_kl"}:
        real, fake = result[f"floor/{name}"], result[name]
        assert (real >= fake) if BY_NAME[name].higher_is_better else (real <= fake), (name, real, fake)


def test_digits_single_digit_generator_covers_one_class(digits_cache):
    x, y = load_digits()
    cfg = get_preset("digits")
    result = evaluate_generator(ConstantImage(x[np.flatnonzero(y == 3)[0]]), cfg, x, y, cache_dir=digits_cache,
                                kid_num_subsets=5)
    assert result["classes_covered"] == 1 and result["floor/classes_covered"] == 10
    assert result["num_classes"] == 10
    assert result["floor/class_kl"] < 0.05 < result["class_kl"]
    assert result["recall"] < 0.1 < result["floor/recall"]
    assert result["fd"] > 10 * result["floor/fd"]
    assert_catalogued(result)


def test_cli_writes_json_and_has_help(tmp_path, digits_cache):
    cfg = get_preset("digits").with_overrides({"network.g_width": 8, "network.d_width": 8,
                                               "train.global_batch_size": 32, "train.total_steps": 2})
    x, _ = load_digits()
    run = train(cfg, batches=InMemoryBatches(x, 32, seed=0), checkpoint_root=tmp_path, diagnostics=False)
    ckpt = run.checkpoint_dir
    out = tmp_path / "metrics.json"
    assert main(["--checkpoint", ckpt, "--cache-dir", str(digits_cache), "--num-samples", "200",
                 "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["floor/classes_covered"] == 10 and "fd" in metrics and "kid" in metrics
    assert main(["--checkpoint", str(tmp_path / "nope")]) == 2



def test_python_dash_m_entry_point_has_help(monkeypatch, capsys):
    # what `python -m gan_core.evaluate --help` runs, without starting a second interpreter
    monkeypatch.setattr(sys, "argv", ["python -m gan_core.evaluate", "--help"])
    monkeypatch.delitem(sys.modules, "gan_core.evaluate", raising=False)  # run it fresh, as python -m does
    with pytest.raises(SystemExit) as e:
        runpy.run_module("gan_core.evaluate", run_name="__main__", alter_sys=False)
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "--checkpoint" in help_text and "floor" in help_text and "--feature-network" in help_text
