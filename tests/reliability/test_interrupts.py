"""A `ganpipe run` stopped by a signal in the middle of training leaves nothing running: the local Ray
instance and the temporary Prefect server it started for itself go with it. A real process, signalled
mid-training; the processes it started are found by PID (its descendants), never by name. SIGKILL cannot
be caught and is not tested: after `kill -9` those services stay until stopped by hand."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.embedded import embedded_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TRAINING_PROCESS = "ray::RayTrainWorker"  # the title Ray gives a training worker: training is under way


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signalled_run_stops_the_services_it_started(tmp_path, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--preset", "tiny", "--set", "train.total_steps=1000000"],
        cwd=REPO, env=embedded_env(tmp_path / "home"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started: dict[int, psutil.Process] = {}
    try:
        # 1. wait until training runs, noting every process the command started on the way
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            kids = descendants(proc.pid)
            started.update({p.pid: p for p in kids})
            if any(TRAINING_PROCESS in " ".join(_cmdline(p)) for p in kids):
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"ganpipe run ended before training: {proc.stderr.read()[-3000:]}"
        time.sleep(3)  # a few steps in
        started.update({p.pid: p for p in descendants(proc.pid)})
        names = {_name(p) for p in started.values()}
        assert "raylet" in names and "gcs_server" in names, names  # it did start its own Ray instance
        # 2. the signal, to the command's process only (as `kill PID` or a supervisor sends it)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ganpipe run still running 90 s after {sig.name}")
        # 3. a clear exit: the signal's code, one line, no traceback
        assert proc.returncode == 128 + sig, err[-3000:]
        assert err.strip().splitlines()[-1] == f"interrupted ({sig.name})", err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        # 4. nothing it started is left
        deadline = time.monotonic() + 20
        while still_running(list(started.values())) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = still_running(list(started.values()))
        assert left == [], [(p.pid, _name(p)) for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in still_running(list(started.values())):  # by PID: only what this test's command started
            p.kill()


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
