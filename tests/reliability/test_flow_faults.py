"""Pipeline faults: the MLflow store unreachable at registration (the step fails with one line, the
checkpoint stays, `ganpipe register --run` completes it later); a retry of the flow run after a late
failure does not redo the finished steps (training, evaluation, registration)."""

from __future__ import annotations

import socket

import pytest

from pipelines.cli import main
from tests.factories import tiny_checkpoint

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_mlflow_unreachable_at_registration_fails_in_one_line_and_register_completes_later(
        tmp_path, mlflow_tracking, monkeypatch, capsys):
    import mlflow

    from infra.base.settings import mlflow_client
    from infra.train.tracking import TAG_LAST_CHECKPOINT
    from pipelines.flow import RegistrationFailed, register
    from pipelines.settings import resolve_settings

    ckpt = tiny_checkpoint(tmp_path / "run")
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    client = mlflow_client(mlflow_tracking)
    experiment = client.create_experiment("trained", artifact_location=str(tmp_path / "artifacts"))  # not ./mlruns
    run = client.create_run(experiment, run_name="trained-run")
    client.set_tag(run.info.run_id, TAG_LAST_CHECKPOINT, str(ckpt))
    client.set_terminated(run.info.run_id)
    settings = resolve_settings(preset="tiny", overrides=["registry.model_name=late-model", "registry.export=false"])
    manifest = {"normalisation": {"scale": 1.0, "offset": 0.0}, "name": "ring8", "version": "v0"}
    # 1. the store goes away for the registration step only
    down = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", down)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own budget is minutes long
    mlflow.set_tracking_uri(down)
    mlflow.set_registry_uri(down)
    with pytest.raises(RegistrationFailed) as e:
        register.fn(settings, str(ckpt), run.info.run_id, {"fd": 1.0}, manifest)
    line = str(e.value)
    assert "\n" not in line and "the MLflow store did not answer" in line and f"the checkpoint {ckpt} is kept" in line
    assert f"`ganpipe register --run {run.info.run_id} --name late-model`" in line
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == files  # the checkpoint stays, untouched
    # 2. the store is back: the command the line names completes the registration
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, mlflow_tracking)
    mlflow.set_tracking_uri(mlflow_tracking)
    mlflow.set_registry_uri(mlflow_tracking)
    assert client.search_registered_models() == []
    capsys.readouterr()
    assert main(["register", "--run", run.info.run_id, "--name", "late-model", "--no-export"]) == 0
    [version] = client.search_model_versions("name = 'late-model'")
    assert version.tags["checkpoint_uri"] == str(ckpt) and version.run_id == run.info.run_id
    # 3. the CLI against a store that does not answer: one line, exit 2 (the preflight probe's)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    mlflow.set_tracking_uri(down)
    capsys.readouterr()
    assert main(["register", "--run", run.info.run_id, "--name", "late-model", "--no-export"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the MLflow server {down} (MLFLOW_TRACKING_URI) cannot be reached" in err[0], err
    # 4. a store that stops answering midway (after the run was found): one line, exit 2, no traceback
    from mlflow.exceptions import MlflowException

    import infra.models.registry

    def store_gone(*args, **kwargs):
        raise MlflowException("API request to endpoint /api/2.0/mlflow/model-versions/create failed with "
                              "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded\nmore")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking)
    mlflow.set_tracking_uri(mlflow_tracking)
    monkeypatch.setattr(infra.models.registry, "register_generator", store_gone)
    capsys.readouterr()
    assert main(["register", "--run", run.info.run_id, "--name", "late-model", "--no-export"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "the MLflow store did not answer (API request" in err[0], err
    assert "Traceback" not in captured.err


def test_a_flow_retry_after_a_late_failure_does_not_redo_finished_steps(
        ray_cluster, prefect_harness, mlflow_tracking, tmp_path, monkeypatch):
    """The report step fails once; the flow run's retry publishes it, reusing training, evaluation and
    registration (each ran once: one training launch, one evaluation, one model version)."""
    from mlflow import MlflowClient
    from prefect import task

    import gan_core.evaluate
    import infra.train.ray_train
    import infra.models.registry
    import pipelines.flow as flow

    calls = {"train": 0, "evaluate": 0, "register": 0, "report": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(infra.train.ray_train, "launch_training", counted("train", infra.train.ray_train.launch_training))
    monkeypatch.setattr(gan_core.evaluate, "evaluate_generator",
                        counted("evaluate", gan_core.evaluate.evaluate_generator))
    monkeypatch.setattr(infra.models.registry, "register_generator", counted("register", infra.models.registry.register_generator))
    real_report = flow.publish_report

    @task(name="publish-report", persist_result=False)
    def failing_once(summary):
        calls["report"] += 1
        if calls["report"] == 1:
            raise RuntimeError("the report store is down")  # a late failure, after registration
        return real_report.fn(summary)

    monkeypatch.setattr(flow, "publish_report", failing_once)
    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    overrides = [f"storage.root={tmp_path / 'root'}", f"cluster.storage_path={tmp_path / 'runs'}",
                 "registry.model_name=retried-model", "registry.export=false", "sampling.num_samples=16",
                 "train.total_steps=10", "network.g_norm=layer"]
    summary = flow.gan_pipeline.with_options(retries=1)(preset="tiny", overrides=overrides)
    assert calls == {"train": 1, "evaluate": 1, "register": 1, "report": 2}, calls
    assert summary["version"] == "1" and summary["train_step"] == 10
    versions = MlflowClient(mlflow_tracking).search_model_versions("name = 'retried-model'")
    assert [str(v.version) for v in versions] == ["1"]


def test_an_rgb_npy_run_registers_even_when_the_export_check_fails(
        ray_cluster, prefect_harness, mlflow_tracking, tmp_path, monkeypatch):
    """Issue 31: `run --preset digits --set source.uri=<(N, 3, 8, 8) uint8 .npy>` trained, then lost the
    training at registration on an absolute export tolerance (1.07e-4 in pixel units [0, 255]). The
    tolerance is now relative to the output's scale, and an export that still differs is skipped with a
    warning: here every check is made to fail, and the version is registered and promoted all the same."""
    import numpy as np
    from mlflow import MlflowClient

    import infra.models.export

    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.random.default_rng(0).integers(0, 256, (256, 3, 8, 8), dtype=np.uint8))
    monkeypatch.setattr(infra.models.export, "export_tolerance", lambda expected, rtol=0.0: -1.0)
    argv = ["run", "--preset", "digits", "--json", "--set", f"source.uri={rgb}",
            "--set", f"storage.root={tmp_path / 'root'}", "--set", f"cluster.storage_path={tmp_path / 'runs'}",
            "--set", "registry.model_name=rgb8"]
    for override in ("train.total_steps=8", "train.tick_every_steps=4", "train.checkpoint_every_steps=8",
                     "train.global_batch_size=16", "evaluation.num_samples=64", "sampling.num_samples=16"):
        argv += ["--set", override]
    # NOTE: exit 0 is the contract here. The captured stderr of an in-process run also holds other components'
    # noise in a full session: Ray's forwarded worker logs, and "--- Logging error ---" from handlers that an
    # earlier test bound to its own, since closed, capture. No traceback is asserted on it.
    assert main(argv) == 0
    version = MlflowClient(mlflow_tracking).get_model_version_by_alias("rgb8", "champion")
    assert str(version.version) == "1"
    for fmt in ("pt2", "onnx"):
        assert version.tags[f"export.{fmt}"].startswith(f"skipped: {fmt} export differs from the eager generator")
