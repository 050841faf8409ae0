"""`ganpipe submit` against a real 2-node Ray cluster that the test starts as an operator would (`ray
start --head` with the dashboard's job server, `ray start --address`, token authentication): the job
runs from the uploaded working directory and succeeds with its checkpoint in storage; the same request
submitted again attaches to that job (one job); a job whose training fails gives a non-zero exit; a
client without the cluster's token gets one line naming the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ray_head import RayHead

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    from infra.data.datasets import stage

    root = tmp_path_factory.mktemp("root")
    return stage("ring8", str(root), num_samples=512).uri


def submit(head: RayHead, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", "--address", head.dashboard_url,
                           "--working-dir", str(REPO), *args], cwd=REPO, env=env or head.env, capture_output=True,
                          text=True, timeout=600)


def submitted_ids(head: RayHead) -> list[str]:
    """Submission ids of the cluster's jobs (drivers have none), asked by a client holding the token (in
    its own process: Ray reads its auth mode once per process)."""
    code = ("import json; from ray.job_submission import JobSubmissionClient; "
            f"print(json.dumps([j.submission_id for j in JobSubmissionClient({head.dashboard_url!r}).list_jobs() "
            "if j.submission_id]))")
    out = subprocess.run([sys.executable, "-c", code], env=head.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_submitted_job_succeeds_and_a_retry_attaches(ray_head, staged, tmp_path):
    storage = tmp_path / "runs"
    train = ["--", "--dataset", staged, "--preset", "tiny", "--set", "train.total_steps=10",
             "--set", "network.g_norm=layer", "--storage", str(storage), "--max-failures", "0"]
    head = ray_head
    first = submit(head, *train)
    assert first.returncode == 0, first.stderr[-4000:]
    job_id = first.stdout.strip().splitlines()[-1]
    assert job_id.startswith("ganpipe-train-") and f"submitted {job_id}" in first.stderr
    assert f"[{job_id}] SUCCEEDED" in first.stderr
    # the job trained on the cluster and its checkpoint is in storage
    assert sorted(p.name for p in storage.glob("gan-*/checkpoint-*")) == ["checkpoint-000000010"]
    # the same request again: attached to the finished job, no second job
    again = submit(head, *train)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.strip().splitlines()[-1] == job_id and f"attached to (SUCCEEDED) {job_id}" in again.stderr
    assert submitted_ids(head) == [job_id]


def test_a_failing_training_job_exits_non_zero(ray_head, tmp_path):
    missing = tmp_path / "no-such-root" / "datasets" / "ring8"
    r = submit(ray_head, "--", "--dataset", str(missing), "--preset", "tiny", "--storage", str(tmp_path / "runs"))
    assert r.returncode == 1, r.stderr[-4000:]
    assert "FAILED" in r.stderr and "no committed dataset version" in r.stderr  # the job's own error, followed


def test_a_client_without_the_token_gets_one_line(ray_head):
    env = {k: v for k, v in ray_head.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    r = submit(ray_head, "--no-wait", "--", "--dataset", "x", "--preset", "tiny", env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and "RAY_AUTH_MODE=token" in lines[0], r.stderr
