"""Prefect deployments of gan_pipeline: a cron schedule read back through the API, and a run of a served
deployment (a real `ganpipe deploy` process serving it) that completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_deployment_schedule_reads_back_through_the_api(prefect_harness):
    from prefect.client.orchestration import get_client

    from pipelines.commands.deploy import make_deployment

    deployment = make_deployment("nightly", "0 3 * * *", {"preset": "tiny", "overrides": ["train.total_steps=5"]},
                                 timezone="Europe/Paris", tags=["test"])
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        d = client.read_deployment(deployment_id)
        by_name = client.read_deployment_by_name("gan-pipeline/nightly")
    assert by_name.id == d.id
    assert len(d.schedules) == 1
    assert d.schedules[0].schedule.cron == "0 3 * * *"
    assert d.schedules[0].schedule.timezone == "Europe/Paris"
    assert d.schedules[0].active
    assert d.parameters == {"preset": "tiny", "overrides": ["train.total_steps=5"]}
    assert d.entrypoint == "pipelines.flow.gan_pipeline"  # the installed package, not a file path


def test_served_deployment_runs_to_completion(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "GANPIPE_HOME": str(tmp_path / "home"),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # the run's result is persisted (as a file here), so the test reads back what the flow resolved
           "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results")}
    server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "deploy", "--name", "served", "--cron",
                               "0 3 * * *", "--preset", "tiny", "--set", "train.total_steps=5"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # 1. wait until the serving process has created its deployment
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while True:
                assert server.poll() is None, server.stdout.read()
                try:
                    d = client.read_deployment_by_name("gan-pipeline/served")
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the served deployment never appeared"
                    time.sleep(1)
        assert d.schedules[0].schedule.cron == "0 3 * * *"
        # 2. a run now (dry_run: the real flow, validated and resolved, without training)
        flow_run = run_deployment("gan-pipeline/served", parameters={"dry_run": True}, timeout=180,
                                  poll_interval=1)
        assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
        assert flow_run.parameters == {"preset": "tiny", "overrides": ["train.total_steps=5"], "dry_run": True}
        result = flow_run.state.result()
        assert result["dry_run"] is True and result["settings"]["train"]["total_steps"] == 5
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: the runner pauses the schedule and exits
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
