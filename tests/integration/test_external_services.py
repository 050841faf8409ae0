"""`ganpipe run` against services it did not start, as on a cluster: a Ray head started with `ray start`
(token auth), a `prefect server start` process, an `mlflow server` process with a SQLite backend and
artifacts proxied to moto's S3 server, and `[storage] root = "s3://..."`. Afterwards the registered model
loads in a separate process through the MLflow server's URI, everything durable is in the bucket, and
nothing was written under GANPIPE_HOME except caches."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ray_head import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered: {log.read_text()[-3000:]}")


@pytest.fixture
def mlflow_server(s3_server, s3_bucket, tmp_path):
    port, log = free_port(), tmp_path / "mlflow-server.log"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
           "--artifacts-destination", f"s3://{s3_bucket}/mlflow", "--workers", "1"]
    import os

    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def prefect_server(tmp_path):
    from pipelines.services import TemporaryPrefectServer

    server = TemporaryPrefectServer(tmp_path / "prefect-server")  # `prefect server start` on 127.0.0.1
    server.start()
    try:
        server.wait_ready()
        yield server.api_url
    finally:
        server.stop()


def test_run_uses_only_the_services_it_is_given(ray_head, mlflow_server, prefect_server, s3_server, s3_bucket,
                                                tmp_path):
    import boto3

    home = tmp_path / "home"
    env = {**ray_head.env, "RAY_ADDRESS": ray_head.gcs_address, "PREFECT_API_URL": prefect_server,
           "MLFLOW_TRACKING_URI": mlflow_server, "GANPIPE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    root = f"s3://{s3_bucket}/root"
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--preset", "tiny", "--json",
                        "--log-file", str(tmp_path / "run.log"),
                        "--set", f"storage.root={root}", "--set", "train.total_steps=10",
                        "--set", "network.g_norm=layer", "--set", "registry.export=false",
                        "--set", "sampling.num_samples=16", "--set", "registry.model_name=external"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    lines = r.stdout.splitlines()  # the JSON summary, among the workers' forwarded lines
    summary = json.loads("\n".join(lines[lines.index("{"):lines.index("}") + 1]))
    assert "Prefect: temporary server" not in r.stderr  # the given Prefect server, no server of its own
    # 1. everything durable is in the bucket: the dataset, the run's checkpoints, the model's artifacts, the preview
    keys = [o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for o in page.get("Contents", [])]
    for prefix in ("root/datasets/ring8/", "root/runs/gan-ring8-", "mlflow/", "root/samples/external/v1/"):
        assert any(k.startswith(prefix) for k in keys), f"nothing under s3://{s3_bucket}/{prefix}: {keys[:20]}"
    assert summary["checkpoint_uri"].startswith(f"{root}/runs/") and summary["sample_grid"].startswith(root)
    # 2. the champion loads in a separate process through the MLflow server only
    load = ("import mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/external@champion'); "
            "x = m.predict(np.zeros((3, 8), np.float32)); print('SHAPE', x.shape)")
    out = subprocess.run([sys.executable, "-c", load], env={**env, "GANPIPE_HOME": str(tmp_path / "other")},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "SHAPE (3, 2)" in out.stdout, out.stderr[-3000:]
    # 3. nothing under GANPIPE_HOME but caches
    written = [p.relative_to(home) for p in home.rglob("*") if p.is_file()]
    assert all(p.parts[0] == "cache" for p in written), written
