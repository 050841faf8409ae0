"""`ganpipe run` on the embedded default, as `make run` runs it (a fresh interpreter, nothing configured but
an s3:// storage root; the session's one such run, tests/fresh_run.py):
the console shows the pipeline's own lines only — steps with durations, training ticks, the summary —
and everything else (Ray, Prefect, MLflow, dependencies' warnings) goes to the log file the summary
names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


pytestmark = pytest.mark.integration

NOISE = ("Traceback", "Warning", "TrainingReport(", "PreemptionWatcher")


def test_console_shows_only_the_pipelines_lines_and_names_the_log(fresh_tiny_run):
    r, home = fresh_tiny_run.result, fresh_tiny_run.home
    console = fresh_tiny_run.console
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
    assert "Started a local Ray instance" in text and "training worker group" in text  # Ray's own lines
    assert "staging: done in" in text  # the console's lines are in it too, in order
