"""`ganpipe run` on the embedded default, as `make run` runs it (a fresh interpreter, nothing configured):
the console shows the pipeline's own lines only — steps with durations, training ticks, the summary —
and everything else (Ray, Prefect, MLflow, dependencies' warnings) goes to the log file the summary
names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.embedded import embedded_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOISE = ("Traceback", "Warning", "TrainingReport(", "PreemptionWatcher")


def test_console_shows_only_the_pipelines_lines_and_names_the_log(tmp_path):
    home = tmp_path / "home"
    env = embedded_env(home)
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--preset", "tiny", "--set", "train.total_steps=10",
                        "--set", "registry.export=false", "--set", "sampling.num_samples=16"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    console = r.stdout + r.stderr
    assert r.returncode == 0, console[-4000:]
    for noise in NOISE:
        assert noise not in console, f"{noise!r} on the console:\n{console}"
    # the pipeline's own lines: each step with its duration, the ticks, the summary
    for step in ("staging", "training", "evaluation", "registration", "sampling"):
        assert re.search(rf"^{step}: done in \d+\.\d s$", r.stderr, re.M), r.stderr
    assert re.search(r"^step +10/10 +kimg", r.stderr, re.M), r.stderr
    assert "ganpipe run: done" in r.stdout and "registered   models:/ganpipe-ring8/1" in r.stdout
    # the log the summary names holds what the console left out
    log = Path(re.search(r"^log +(\S+)", r.stdout, re.M).group(1))
    assert log.is_file() and log.parent == home / "logs"
    text = log.read_text()
    assert "TrainingReport(" in text and "Started a local Ray instance" in text
    assert "staging: done in" in text  # the console's lines are in it too, in order
