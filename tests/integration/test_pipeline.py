"""The whole gan_pipeline flow on the tiny preset, through real local Ray, the Prefect test harness and
MLflow on SQLite: a champion is registered and reported; a second run reuses the staged dataset, resumes
the finished training run, registers a new version and leaves the champion where it is (a tie)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_pipeline_registers_a_champion_and_a_rerun_reuses_everything(ray_cluster, prefect_harness, mlflow_tracking,
                                                                      tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from pipelines.flow import gan_pipeline

    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    overrides = [f"storage.root={tmp_path / 'root'}", f"cluster.storage_path={tmp_path / 'runs'}",
                 "registry.model_name=e2e-tiny", "registry.export=false", "sampling.num_samples=16",
                 "train.total_steps=10", "network.g_norm=layer"]

    # 1. first run: staged, trained, evaluated, registered as the first champion, previewed, reported
    first = gan_pipeline(preset="tiny", overrides=overrides)
    assert first["version"] == "1" and first["champion_version"] == "1" and first["promoted"]
    assert first["train_step"] == 10
    assert {"fd", "floor/fd", "modes_covered", "floor/modes_covered"} <= set(first["metrics"])
    assert Path(first["sample_grid"]).is_file()
    manifest = Path(first["dataset_uri"]) / "_manifest.json"
    staged_at = manifest.stat().st_mtime_ns
    client = MlflowClient(mlflow_tracking)
    assert str(client.get_model_version_by_alias("e2e-tiny", "champion").version) == "1"
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[first["report_key"]])))
    assert artifacts, "no markdown report"
    report = artifacts[0].data
    assert "| fd |" in report and "real vs real (floor)" in report and "models:/e2e-tiny/1" in report
    assert "data:image/png;base64," in report and "@champion" in report
    # the training run's report pictures (MLflow artifacts) sit beside the metrics table, embedded
    assert first["training_curves"] == f"runs:/{first['mlflow_run_id']}/report/training_curves.png"
    assert "## Training curves" in report and "## Samples during training" in report
    assert report.count("data:image/png;base64,") == 3  # the curves, the sample strip, the preview grid

    # 2. second run: the same dataset version (not rewritten), the same training run (already finished),
    #    a new registered version with an identical score: the champion stays (ties keep the holder). This
    #    time the settings arrive resolved, as `ganpipe run` passes them (the first run resolved the request
    #    itself, as a deployment's run does): both paths give the same run
    from pipelines.settings import resolve_settings

    second = gan_pipeline(settings=resolve_settings(preset="tiny", overrides=overrides))
    assert second["dataset_uri"] == first["dataset_uri"]
    assert manifest.stat().st_mtime_ns == staged_at
    assert second["run_name"] == first["run_name"] and second["checkpoint_uri"] == first["checkpoint_uri"]
    assert second["version"] == "2" and not second["promoted"] and second["champion_version"] == "1"
    assert second["metrics"]["fd"] == first["metrics"]["fd"]
    assert "kept v1" in second["decision"]
    assert str(client.get_model_version_by_alias("e2e-tiny", "champion").version) == "1"
