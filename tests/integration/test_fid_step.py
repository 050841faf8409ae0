"""The pipeline's evaluate step (a Prefect task) takes the FID Inception weights from the settings."""

import math

import pytest
import torch

from gan_core.config import get_preset
from gan_core.data import InMemoryBatches
from gan_core.loop import train
from pipelines.settings import FID_INCEPTION_ENV, resolve_settings
from tests.unit.test_fid import FakeInception, photo_crops

pytestmark = pytest.mark.integration


def test_the_evaluate_step_reads_the_weights_from_the_settings(prefect_harness, tmp_path, monkeypatch):
    from prefect import flow

    from pipelines.flow import evaluate

    weights = tmp_path / "inception-2015-12-05.pt"
    torch.manual_seed(0)
    torch.jit.script(FakeInception()).save(str(weights))  # see FakeInception: not Inception-v3 itself
    real = photo_crops(200, 16)
    cfg = get_preset("dcgan32-cpu").with_overrides({"data.name": "photos", "data.shape": [3, 16, 16],
                                                    "train.total_steps": 1})
    ckpt = train(cfg, batches=InMemoryBatches(real, 32, seed=0), checkpoint_root=tmp_path / "runs",
                 diagnostics=False).checkpoint_dir

    @flow
    def evaluation(inception: str):
        return evaluate(ckpt, real, None, 100, 0, inception)

    monkeypatch.setenv(FID_INCEPTION_ENV, str(weights))
    settings = resolve_settings(preset="dcgan32-cpu", overrides=[f"source.uri={tmp_path}"])
    metrics, features = evaluation(settings.evaluation.inception)
    assert math.isfinite(metrics["fid"]) and 0 <= metrics["floor/fid"] < metrics["fid"]
    assert features.startswith("inception:inception-2015-12-05.pt@sha256:")
    # without weights: fd in the random-network features, never raw pixels
    monkeypatch.delenv(FID_INCEPTION_ENV)
    metrics, features = evaluation(resolve_settings(preset="dcgan32-cpu", overrides=[f"source.uri={tmp_path}"])
                                   .evaluation.inception)
    assert features == "random_conv256" and "fid" not in metrics and metrics["feature_dim"] == 256
