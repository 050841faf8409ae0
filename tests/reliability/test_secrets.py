"""A secret in the environment stays there (issue 15, acceptance): `ganpipe run --preset tiny` in a fresh
process with a planted fake AWS secret key and a fake token in its environment, on the embedded default
(local Ray, which its workers inherit the environment from; the temporary Prefect server; MLflow on
SQLite), then a byte scan for both strings of everything the run left: GANPIPE_HOME (the MLflow store
with params, tags and artifacts, the Prefect database with flow runs, logs and artifacts, run folders and
checkpoints, datasets, samples, the console log) and the Ray instance's session folder (every Ray and
job log). The MLflow params/tags and Prefect logs/artifacts are also read through their APIs."""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import pytest


pytestmark = pytest.mark.integration



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


def test_a_planted_secret_appears_in_no_store_log_or_run_folder(fresh_tiny_run):
    """The session's fresh `ganpipe run` (tests/fresh_run.py), on S3 storage so that the secret is the
    credential the run really uses (moto takes any): its console, its log file, every store and run folder
    under its home, its Ray session's logs and every object it wrote to the bucket. (A run on local storage
    holds the same secret in the same environment and writes a subset of the same stores.)"""
    run = fresh_tiny_run
    home, ray_tmp, bucket, secret, token = run.home, run.ray_tmp, run.bucket, run.secret, run.token
    assert run.result.returncode == 0, run.console[-4000:]
    assert secret not in run.console and token not in run.console
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
    # every object the run wrote to the bucket
    import boto3

    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert any(k.startswith("root/runs/") for k in keys) and any("checkpoint-" in k for k in keys), keys[:20]
    leaked = [k for k in keys if any(n in s3.get_object(Bucket=bucket, Key=k)["Body"].read()
                                     for n in (secret.encode(), token.encode()))]
    assert not leaked, leaked
