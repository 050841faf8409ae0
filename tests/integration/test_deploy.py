"""Prefect deployments of gan_pipeline: a cron schedule read back through the API, and a run of a served
deployment (a real `ganpipe deploy` process serving it) that completes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.base.console import TICK
from tests.embedded import embedded_env

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
    """A real run of a served deployment (tiny, 5 steps): it completes with the parameters it was served
    with; the train task's log in Prefect holds the tick lines (before: one line after training); and the
    serving console shows the pipeline's own lines only, as `ganpipe run` does (before: Ray Train's
    TrainingReport dict per tick, Ray's and torchvision's warnings, Prefect's runner lines)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterTaskRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    env = {**embedded_env(tmp_path / "home"), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           # the run's result is persisted (as a file here), so the test reads back what the flow resolved
           "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results")}
    server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "deploy", "--name", "served", "--cron",
                               "0 3 * * *", "--preset", "tiny", "--set", "train.total_steps=5",
                               "--set", "train.tick_every_steps=1"],
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
        # 2. a run now: the whole pipeline, in a subprocess of the serving process
        flow_run = run_deployment("gan-pipeline/served", timeout=600, poll_interval=1)
        assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
        assert flow_run.parameters == {"preset": "tiny",
                                       "overrides": ["train.total_steps=5", "train.tick_every_steps=1"]}
        assert flow_run.state.result()["train_step"] == 5
        # 3. the train task's log: its tick lines, the last one (step 5/5) included
        with get_client(sync_client=True) as client:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
            (train,) = [t for t in tasks if t.task_key.startswith("train") or t.name.startswith("train-")]
            logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[train.id])))
        ticks = [m.message for m in logs if TICK.match(m.message)]
        assert ticks and TICK.match(ticks[-1]).groups() == ("5", "5"), [m.message for m in logs]
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: the runner pauses the schedule and exits
        try:
            out, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    # 4. the serving console: the pipeline's own lines, the log file named
    lines = out.strip().splitlines()
    assert lines[0].startswith("deploying gan-pipeline/served"), out[-3000:]
    assert lines[1].startswith("serving gan-pipeline/served from this host"), out[-3000:]
    assert lines[2].startswith("full log: ") and Path(lines[2].removeprefix("full log: ")).is_file(), out[-3000:]
    assert any(TICK.match(line) for line in lines), out[-3000:]
    assert "training: done in" in out and "promotion: done in" in out, out[-3000:]
    noise = [line for line in lines if re.search(r"warn|TrainingReport|INFO|Traceback|pid=", line, re.I)]
    assert noise == [], noise
