"""One `ganpipe run --preset tiny` in a fresh process on the embedded default, as `make run` runs it
(nothing configured but an s3:// storage root on the session's moto server), with a planted fake AWS
secret and a fake token in its environment. Two tests examine the same run: its console
(tests/integration/test_console.py) and everything it left, for the secret
(tests/reliability/test_secrets.py); each was a run of its own (about 100 s each)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.embedded import embedded_env

REPO = Path(__file__).resolve().parents[1]
BUCKET = "fresh-run"


@dataclass(frozen=True)
class FreshRun:
    result: subprocess.CompletedProcess  # text stdout and stderr
    home: Path  # its GANPIPE_HOME
    ray_tmp: Path  # its RAY_TMPDIR: <ray_tmp>/ray/session_* holds every Ray log of the run
    bucket: str  # its storage root is s3://<bucket>/root
    secret: str  # planted as AWS_SECRET_ACCESS_KEY (the credential the run uses: moto takes any)
    token: str  # planted as GANPIPE_TEST_TOKEN

    @property
    def console(self) -> str:
        return self.result.stdout + self.result.stderr


@contextlib.contextmanager
def fresh_run(tmp: Path, s3_endpoint: str) -> Iterator[FreshRun]:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    secret, token = f"FAKESECRET-{uuid.uuid4().hex}", f"FAKETOKEN-{uuid.uuid4().hex}"
    home = tmp / "home"
    # a short root for Ray's session folders, <root>/ray/session_* (socket paths must stay under 108 bytes)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rsec-", dir="/tmp"))
    env = embedded_env(home)
    env.update(AWS_SECRET_ACCESS_KEY=secret, AWS_ACCESS_KEY_ID="FAKEKEYID", GANPIPE_TEST_TOKEN=token,
               RAY_TMPDIR=str(ray_tmp), AWS_ENDPOINT_URL=s3_endpoint)
    env.pop("AWS_SESSION_TOKEN", None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "run", "--preset", "tiny", "--set", "train.total_steps=10",
             "--set", "registry.export=false", "--set", "sampling.num_samples=16",
             "--set", f"storage.root=s3://{BUCKET}/root"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        yield FreshRun(result, home, ray_tmp, BUCKET, secret, token)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


__all__ = ["FreshRun", "fresh_run"]
