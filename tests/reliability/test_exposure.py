"""Services that ganpipe starts for itself serve this host only (issue 15, item 10): the embedded
default's Ray instance (every process of it: GCS, raylet, agents, workers), the temporary Prefect server,
and the MLflow store (a SQLite file: no server at all). Checked on the real listening sockets of the
processes a fresh `ganpipe`-like process started, found by PID (psutil), not on configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}

# A fresh interpreter (Ray reads its settings at import; the test session's own Ray is another
# instance): the CLI's embedded defaults, then its service start-up as `ganpipe run` does it, a task on
# a Ray worker, then every listening socket of this process and of all it started.
PROBE = r"""
import json, psutil
from pipelines import cli
prefect_home = cli.set_embedded_defaults()
from pipelines.services import start_embedded_services
from pipelines.settings import resolve_settings
api_url = start_embedded_services(resolve_settings(preset="tiny"), prefect_home)
import ray

@ray.remote
def ping():
    return 1

assert ray.get(ping.remote()) == 1
me = psutil.Process()
rows = []
for p in [me, *me.children(recursive=True)]:
    try:
        name, cmd = p.name(), " ".join(p.cmdline())[:200]
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                rows.append({"pid": p.pid, "name": name, "cmd": cmd, "ip": c.laddr.ip, "port": c.laddr.port})
    except psutil.NoSuchProcess:
        pass
print("LISTENERS " + json.dumps({"api_url": api_url, "rows": rows}))
ray.shutdown()
"""


def _clean_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                        cli.RAY_LOCAL_ONLY_ENV)}
    env.update(GANPIPE_HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT), **extra)
    return env


def test_services_started_by_ganpipe_listen_on_loopback_only(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=_clean_env(tmp_path), capture_output=True,
                         text=True, timeout=400)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("LISTENERS ")), None)
    assert out.returncode == 0 and line, out.stderr[-3000:]
    found = json.loads(line[len("LISTENERS "):])
    rows = found["rows"]
    names = {r["name"] for r in rows}
    # the check saw the services themselves (it cannot pass on an empty list)
    assert {"gcs_server", "raylet"} <= names, names
    assert any("prefect" in r["cmd"] and "server" in r["cmd"] for r in rows), rows
    assert found["api_url"].startswith("http://127.0.0.1:")
    exposed = [r for r in rows if r["ip"] not in LOOPBACK]
    assert not exposed, "listening beyond loopback: " + "; ".join(
        f"{r['name']} (pid {r['pid']}) on {r['ip']}:{r['port']}" for r in exposed)


def test_the_loopback_default_leaves_configured_choices_alone(monkeypatch):
    """RAY_ADDRESS (a cluster: the driver's address must stay reachable) and an explicit choice win."""
    # set_embedded_defaults writes more than these variables (MLFLOW_TRACKING_URI, ...): it works on a copy
    # of the environment here, so nothing it sets outlives the test
    monkeypatch.setattr(os, "environ", os.environ.copy())
    for env, expected in (({}, "0"), ({"RAY_ADDRESS": "ray://head:10001"}, None),
                          ({cli.RAY_LOCAL_ONLY_ENV: "1"}, "1")):
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.delenv(cli.RAY_LOCAL_ONLY_ENV, raising=False)
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # no Prefect home chosen here
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cli.set_embedded_defaults()
        assert os.environ.get(cli.RAY_LOCAL_ONLY_ENV) == expected, env
