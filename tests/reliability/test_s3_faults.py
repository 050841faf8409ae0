"""The S3 server stopped under a running job (issue 15, Build: faults the earlier issues left out).

A private moto server on 127.0.0.1 that the test stops and starts again on the same port (moto keeps its
objects in this process, so they survive the restart), with the standard AWS variables pointing at it:
- stopped for a few seconds while staging writes shards: each S3 request's own retries
  (infra.base.storage.S3_MAX_ATTEMPTS) absorb it; the dataset commits whole and verifies;
- stopped for a few seconds while a Ray worker uploads a checkpoint the way Ray Train does
  (pyarrow.fs.copy_files to the run's storage filesystem, pickled to the worker): the upload completes,
  where pyarrow's own S3FileSystem (its retry strategy lost on pickling) fails;
- stopped for good while staging: one line on stderr, exit 1, after the retry budget; nothing committed,
  and the same command completes once the server is back.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from infra.base import storage
from infra.data import datasets
from pipelines.cli import main

pytestmark = pytest.mark.integration

OUTAGE_S = 3.0  # "a few seconds": well inside the 12.8 s budget of S3_MAX_ATTEMPTS, far beyond pyarrow's 1.3 s
BUCKET = "faults"


class RestartableS3:
    """moto's S3 server on a fixed local port that can be stopped and started again."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: ThreadedMotoServer | None = None
        self.down_since: float | None = None
        self.up_again: float | None = None
        self.start()

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.up_again = time.monotonic()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.down_since = time.monotonic()

    def outage(self, seconds: float, *, then=None) -> threading.Timer:
        """Stop now; start again after `seconds` (calling `then()` just before), on a timer thread."""
        self.stop()

        def back():
            if then is not None:
                then()
            self.start()

        timer = threading.Timer(seconds, back)
        timer.start()
        return timer

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint)


@pytest.fixture
def s3(monkeypatch):
    server = RestartableS3()
    for k, v in {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "faults", "AWS_SECRET_ACCESS_KEY": "faults",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def _keys(s3: RestartableS3, prefix: str = "") -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _after_first_shard(monkeypatch, action) -> None:
    """Run `action()` once, right after staging's first shard is written (more shards still to write)."""
    original = datasets.StagingPlan.write_shard
    fired = threading.Lock()

    def write_shard(self, index):
        record = original(self, index)
        if fired.acquire(blocking=False):
            action()
        return record

    monkeypatch.setattr(datasets.StagingPlan, "write_shard", write_shard)


STAGE = dict(num_samples=4000, rows_per_shard=250)  # 16 shards of grid25


def test_staging_rides_out_a_short_outage(s3, monkeypatch):
    root = f"s3://{BUCKET}/short"
    staged_during_outage, done = threading.Event(), threading.Event()
    timers = []
    _after_first_shard(monkeypatch, lambda: timers.append(
        s3.outage(OUTAGE_S, then=lambda: staged_during_outage.set() if not done.is_set() else None)))
    ds = datasets.stage("grid25", root, **STAGE)
    done.set()
    timers[0].join()
    assert staged_during_outage.is_set(), "staging finished before the server came back: no outage was ridden out"
    assert s3.up_again - s3.down_since >= OUTAGE_S
    again = datasets.open_dataset(ds.uri, verify=True)  # every shard whole, checksums as committed
    assert again.num_rows == 4000 and again.manifest["num_shards"] == 16
    reference = datasets.stage("grid25", str(Path(os.environ["GANPIPE_HOME"]) / "faults-ref"), **STAGE)
    assert [s["sha256"] for s in again.manifest["shards"]] == [s["sha256"] for s in reference.manifest["shards"]]


def _checkpoint_dir(tmp_path: Path) -> Path:
    ckpt = tmp_path / "checkpoint-000000010"
    ckpt.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("state.pt", 3 << 20), ("config.json", 2000), ("summary.json", 300)):
        (ckpt / name).write_bytes(rng.bytes(size))
    return ckpt


class Uploader:
    """A Ray actor standing in for a Ray Train worker (which is an actor): started before the outage."""

    def ready(self) -> bool:
        return True

    def upload(self, fs, src: str, dest: str) -> None:
        # what Ray Train's worker does with a reported checkpoint (ray.train.v2 storage: pyarrow.fs.copy_files
        # to RunConfig's storage_filesystem, which reached the worker pickled)
        pafs.copy_files(src, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def test_checkpoint_upload_from_a_ray_worker_rides_out_a_short_outage(s3, ray_cluster, tmp_path):
    ray = ray_cluster
    worker = ray.remote(Uploader).remote()
    assert ray.get(worker.ready.remote())
    ckpt = _checkpoint_dir(tmp_path)
    creds = dict(access_key="faults", secret_key="faults", endpoint_override=s3.endpoint, scheme="http",
                 region="us-east-1")  # the driver's, as ray_train's portable filesystem freezes them
    ours = storage.s3_filesystem(**creds)
    plain = pafs.S3FileSystem(**creds)  # pyarrow's own: 3 attempts, and its retry strategy is not pickled

    # the premise: with pyarrow's defaults the same outage fails the upload
    timer = s3.outage(OUTAGE_S)
    with pytest.raises(ray.exceptions.RayTaskError, match="NETWORK_CONNECTION"):
        ray.get(worker.upload.remote(plain, str(ckpt), f"{BUCKET}/runs/plain/{ckpt.name}"))
    timer.join()

    timer = s3.outage(OUTAGE_S)
    started = time.monotonic()
    ray.get(worker.upload.remote(ours, str(ckpt), f"{BUCKET}/runs/ours/{ckpt.name}"))
    assert time.monotonic() - started >= OUTAGE_S - 0.5  # it waited for the server rather than finishing first
    timer.join()
    client = s3.client()
    for f in ckpt.iterdir():
        body = client.get_object(Bucket=BUCKET, Key=f"runs/ours/{ckpt.name}/{f.name}")["Body"].read()
        assert body == f.read_bytes(), f.name
    ray.kill(worker)


def test_staging_with_the_server_gone_for_good_fails_clearly_and_commits_nothing(s3, monkeypatch, capsys):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # the standard AWS setting, honoured: a short budget here
    root = f"s3://{BUCKET}/gone"
    _after_first_shard(monkeypatch, s3.stop)
    started = time.monotonic()
    rc = main(["stage", "grid25", "--root", root, "--num-samples", str(STAGE["num_samples"]),
               "--rows-per-shard", str(STAGE["rows_per_shard"]), "--engine", "direct", "--no-progress"])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "Traceback" not in captured.err, captured.err[-3000:]
    assert err[0].startswith("error: storage failed while staging") and "nothing was committed" in err[0], err
    assert BUCKET in err[0]  # names the object it could not write
    assert elapsed < 120
    s3.start()
    assert not [k for k in _keys(s3, "gone/") if k.endswith(datasets.MANIFEST_NAME)]
    with pytest.raises(datasets.DatasetError, match="no committed dataset version|not committed"):
        datasets.open_dataset(f"{root}/datasets/grid25")
    monkeypatch.undo()  # the real write_shard and retry budget again (and the fixture's environment)
    for k, v in {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": "faults", "AWS_SECRET_ACCESS_KEY": "faults",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["stage", "grid25", "--root", root, "--num-samples", str(STAGE["num_samples"]),
                 "--rows-per-shard", str(STAGE["rows_per_shard"]), "--engine", "direct", "--no-progress"]) == 0
    assert datasets.open_dataset(f"{root}/datasets/grid25", verify=True).num_rows == STAGE["num_samples"]
