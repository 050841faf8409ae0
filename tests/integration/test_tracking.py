"""One MLflow run per training run; a tracking outage does not kill training; `ganpipe register --run`."""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pytest
from PIL import Image

from gan_core import train
from gan_core.data import InMemoryBatches, load_builtin
from gan_core.training import build_training_state
from infra.train.tracking import (SAMPLE_STRIP_ARTIFACT, TAG_LAST_CHECKPOINT, TRAINING_CURVES_ARTIFACT,
                                  DatasetRef, TrainingTracker)
from tests.factories import tiny_config

pytestmark = pytest.mark.integration

MANIFEST = {"version": "abc123", "normalisation": {"scale": 0.5, "offset": 0.25}, "shards": []}


def _config():
    return tiny_config({"train.total_steps": 10, "train.tick_every_steps": 2,
                                              "train.checkpoint_every_steps": 5})


def _train(cfg, tracker, tmp_path, state=None):
    x, _ = load_builtin("ring8", 512, 0)
    result = train(cfg, batches=InMemoryBatches(x, cfg.train.global_batch_size, seed=0), state=state,
                   checkpoint_root=tmp_path / "ckpt", on_snapshot=tracker.on_snapshot)
    tracker.finish(result.history)
    return result


def test_training_run_is_tracked_and_registrable_from_its_run_id(store, tmp_path, capsys):
    from mlflow import MlflowClient

    from pipelines.cli import main

    cfg = _config()
    state = build_training_state(cfg)
    tracker = TrainingTracker(cfg, run_name="tiny-tracked", dataset=DatasetRef.from_manifest("ring8", MANIFEST),
                              generator=state.G_ema).start()
    result = _train(cfg, tracker, tmp_path, state=state)
    assert tracker.stats.dropped == 0, tracker.stats.errors
    client = MlflowClient()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    # params: flattened config, dataset, code
    p = run.data.params
    assert p["train.total_steps"] == "10" and p["network.z_dim"] == "8" and p["data.shape"] == "[2]"
    assert p["dataset.version"] == "abc123" and p["dataset.normalisation.scale"] == "0.5"
    assert p["code.version"].startswith(("git:", "ganpipe==", "unknown"))
    # metrics every tick, step = images seen
    steps = [h["step"] * cfg.train.global_batch_size for h in result.history]
    assert steps == [64, 128, 160, 192, 256, 320]  # ticks every 2 steps, plus the checkpoint at step 5
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss/D")] == steps
    for name in ("loss/G", "D/real", "D/fake", "js_estimate", "perf/kimg_per_s"):
        assert len(client.get_metric_history(tracker.run_id, name)) == len(steps), name
    # artifacts: a grid per snapshot, the report pictures, manifest, checkpoint list; last checkpoint as a tag
    grids = [f.path for f in client.list_artifacts(tracker.run_id, "samples")]
    assert len(grids) == len(steps) and all(g.endswith(".png") for g in grids)
    top = {f.path for f in client.list_artifacts(tracker.run_id)}
    assert {"report", "checkpoints.json", "dataset"} <= top
    report = {f.path for f in client.list_artifacts(tracker.run_id, "report")}
    assert report == {TRAINING_CURVES_ARTIFACT, SAMPLE_STRIP_ARTIFACT}
    for artifact in sorted(report):
        with Image.open(client.download_artifacts(tracker.run_id, artifact, str(tmp_path))) as img:
            assert img.format == "PNG" and img.width >= 300 and img.height >= 150, artifact
            assert np.asarray(img.convert("RGB")).var() > 0, artifact  # not blank
    listing = json.loads(open(client.download_artifacts(tracker.run_id, "checkpoints.json", str(tmp_path))).read())
    assert [c["step"] for c in listing["checkpoints"]] == [5, 10]
    assert run.data.tags[TAG_LAST_CHECKPOINT] == listing["checkpoints"][-1]["uri"]
    assert listing["checkpoints"][-1]["uri"].endswith(result.checkpoint_dir.split("/")[-1])

    # re-register from the finished run: checkpoint, normalisation and dataset come from the run
    assert main(["register", "--run", tracker.run_id, "--name", "tracked-gen", "--no-export"]) == 0
    assert "@champion -> version 1" in capsys.readouterr().out
    mv = client.get_model_version("tracked-gen", "1")
    assert mv.run_id == tracker.run_id and mv.tags["training_run_id"] == tracker.run_id
    assert mv.tags["dataset.version"] == "abc123"
    assert json.loads(mv.tags["normalisation"]) == {"scale": 0.5, "offset": 0.25}
    assert client.get_run(tracker.run_id).info.status == "FINISHED"  # registering did not reopen it
    assert main(["register", "--run", "no-such-run", "--name", "x"]) == 2  # one-line user error


def test_same_run_name_resumes_an_unfinished_run(store):
    cfg = _config()
    first = TrainingTracker(cfg, run_name="resumable").start()
    first.finish(status="FAILED")
    second = TrainingTracker(cfg, run_name="resumable").start()
    second.finish()
    third = TrainingTracker(cfg, run_name="resumable").start()  # the previous one finished: a new run
    third.finish()
    assert first.run_id is not None and second.run_id == first.run_id and third.run_id != first.run_id


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: connections are refused


def test_tracking_outage_does_not_kill_training(store, tmp_path, monkeypatch, caplog):
    from infra.models.registry import register_generator

    # 1. an unreachable tracking server (MLflow's own HTTP retries shortened so the test is quick)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = _config()
    tracker = TrainingTracker(cfg, run_name="outage", tracking_uri=f"http://127.0.0.1:{_closed_port()}",
                              flush_timeout_s=60)
    with caplog.at_level(logging.WARNING, logger="infra.train.tracking"):
        result = _train(cfg, tracker.start(), tmp_path)
    assert result.state.step == 10 and result.checkpoint_dir is not None
    assert tracker.run_id is None and tracker.stats.sent == 0 and tracker.stats.dropped > 0
    assert any("dropped" in r.getMessage() for r in caplog.records)

    # 2. the run is still registrable afterwards from its checkpoint (tracking back: the SQLite store)
    reg = register_generator(result.checkpoint_dir, "after-outage", export_formats=())
    assert reg.version == "1" and reg.promoted
