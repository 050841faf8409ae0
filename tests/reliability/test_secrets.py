"""A secret in the environment stays there (issue 15, acceptance): `ganpipe run --preset tiny` in a fresh
process with a planted fake AWS secret key and a fake token in its environment, on the embedded default
(local Ray, which its workers inherit the environment from; the temporary Prefect server; MLflow on
SQLite), then a byte scan for both strings of everything the run left: GANPIPE_HOME (the MLflow store
with params, tags and artifacts, the Prefect database with flow runs, logs and artifacts, run folders and
checkpoints, datasets, samples, the console log) and the Ray instance's session folder (every Ray and
job log). The MLflow params/tags and Prefect logs/artifacts are also read through their APIs."""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.embedded import embedded_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def files_holding(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    """{needle: [files whose bytes (gunzipped for .gz) contain it]} over every file below root."""
    hits: dict[str, list[str]] = {n.decode(): [] for n in needles}
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        for n in needles:
            if n in data:
                hits[n.decode()].append(str(path))
    return hits


def test_files_holding_finds_a_planted_string(tmp_path):
    """The scanner itself can fail the test: plain, nested and gzipped files."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "log.txt").write_bytes(b"x FAKESECRET-1 y")
    (tmp_path / "z.gz").write_bytes(gzip.compress(b"FAKESECRET-1"))
    (tmp_path / "clean").write_bytes(b"nothing")
    assert sorted(files_holding(tmp_path, [b"FAKESECRET-1"])["FAKESECRET-1"]) == [
        str(tmp_path / "a" / "b" / "log.txt"), str(tmp_path / "z.gz")]


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_planted_secret_appears_in_no_store_log_or_run_folder(tmp_path, storage, request, s3_server):
    """On S3 storage the secret is the credential the run really uses (moto takes any): the checkpoint
    uploads from Ray's workers and the datasets, run folders and samples in the bucket are scanned too."""
    secret = f"FAKESECRET-{uuid.uuid4().hex}"
    token = f"FAKETOKEN-{uuid.uuid4().hex}"
    home = tmp_path / "home"
    # a short root for Ray's session folders, <root>/ray/session_* (socket paths must stay under 108 bytes)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rsec-", dir="/tmp"))
    env = embedded_env(home)
    env.update(AWS_SECRET_ACCESS_KEY=secret, AWS_ACCESS_KEY_ID="FAKEKEYID", GANPIPE_TEST_TOKEN=token,
               RAY_TMPDIR=str(ray_tmp))
    where = []
    if storage == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]  # the moto server
        where = ["--set", f"storage.root=s3://{bucket}/root"]
    try:
        r = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--preset", "tiny", "--verbose",
                            "--set", "train.total_steps=10", "--set", "registry.export=false",
                            "--set", "sampling.num_samples=16", *where],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        console = r.stdout + r.stderr
        assert r.returncode == 0, console[-4000:]
        assert secret not in console and token not in console

        # the stores were really written (a scan of empty folders would prove nothing)
        sessions = [p for p in ray_tmp.glob("ray/session_*") if p.is_dir() and not p.is_symlink()]
        assert len(sessions) == 1 and any((sessions[0] / "logs").glob("worker-*.out")), list(ray_tmp.iterdir())
        mlflow_db = home / "mlflow.db"
        prefect_db = next(home.rglob("prefect.db"))
        with sqlite3.connect(mlflow_db) as db:
            params = db.execute("SELECT key, value FROM params").fetchall()
            tags = db.execute("SELECT key, value FROM tags").fetchall()
        assert len(params) > 20 and tags
        with sqlite3.connect(prefect_db) as db:
            logs = db.execute("SELECT message FROM log").fetchall()
            artifacts = db.execute("SELECT data, description FROM artifact").fetchall()
            flow_runs = db.execute("SELECT parameters FROM flow_run").fetchall()
        assert logs and artifacts and flow_runs
        for row in [*params, *tags, *logs, *artifacts, *flow_runs]:
            text = " ".join(str(v) for v in row)
            assert secret not in text and token not in text, text[:300]

        # every byte the run left, in its home and in its Ray instance's session folder
        hits = files_holding(home, [secret.encode(), token.encode()])
        ray_hits = files_holding(sessions[0], [secret.encode(), token.encode()])
        assert not any(hits.values()) and not any(ray_hits.values()), (hits, ray_hits)
        if storage == "s3":  # every object the run wrote to the bucket
            import boto3

            s3 = boto3.client("s3")
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                    for o in page.get("Contents", [])]
            assert any(k.startswith("root/runs/") for k in keys) and any("checkpoint-" in k for k in keys), keys[:20]
            leaked = [k for k in keys if any(n in s3.get_object(Bucket=bucket, Key=k)["Body"].read()
                                             for n in (secret.encode(), token.encode()))]
            assert not leaked, leaked
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
