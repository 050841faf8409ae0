"""The embedded default's services (what `make run` relies on), in a fresh interpreter with nothing
configured: a temporary Prefect server started first and awaited last, local Ray and the MLflow store
started meanwhile; a flow runs against the server, its logs reach it, and the server stops after them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.embedded import embedded_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
from pipelines import cli
from pipelines.services import start_embedded_services
from pipelines.settings import resolve_settings

prefect_home = cli.set_embedded_defaults()  # nothing configured: Prefect's home goes under GANPIPE_HOME
temporary_api_url = start_embedded_services(resolve_settings(preset="tiny"), prefect_home)
import ray
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client

assert ray.is_initialized()

@flow(name="services-check")
def check():
    get_run_logger().info("hello from the flow")
    return 42

state = check(return_state=True)
with get_client(sync_client=True) as client:
    run = client.read_flow_run(state.state_details.flow_run_id)
print("API", temporary_api_url, "STATE", run.state.type.value, "RESULT", state.result())
"""


def test_embedded_services_start_side_by_side_and_the_server_outlives_the_last_logs(tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    env = embedded_env(home)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Prefect: temporary server with its UI on http://127.0.0.1:" in out
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("API "))
    _, api, _, state, _, result = line.split()
    assert state == "COMPLETED" and result == "42"
    # the flow's logs were sent while the server was still up, and the server is gone now
    assert "Error logging to API" not in out and "Traceback" not in out, out
    port = int(api.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"the temporary server still listens on {port}"
    # everything lives under GANPIPE_HOME: Prefect's database and the MLflow store with the experiment
    assert (home / "prefect" / "prefect.db").is_file()
    assert MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_experiment_by_name("ganpipe") is not None
