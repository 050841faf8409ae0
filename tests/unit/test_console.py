"""infra.base.console: marked lines reach the terminal, everything reaches the log, tick lines drive a bar."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from infra.base.console import MARK, console_text


def test_console_text_starts_at_the_mark():
    assert console_text(f"\x1b[36m(RayTrainWorker pid=12)\x1b[0m {MARK}step 5/20  kimg 0.2") == "step 5/20  kimg 0.2"
    assert console_text("(TrainController pid=3) Requesting resources") is None


def run_captured(tmp_path, body: str, progress_bar: bool) -> tuple[str, str]:
    """A fresh interpreter whose fds 1 and 2 are captured; returns (its terminal, the log)."""
    code = textwrap.dedent(f"""
        import os, sys, warnings
        from infra.base.console import ConsoleCapture, say
        with ConsoleCapture({str(tmp_path / 'run.log')!r}, progress_bar={progress_bar}) as c:
        """) + textwrap.indent(textwrap.dedent(body), "    ") + "\nprint('after the capture')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr, (tmp_path / "run.log").read_text()


def test_only_marked_lines_reach_the_terminal_and_the_log_holds_everything(tmp_path):
    terminal, log = run_captured(tmp_path, """
        say("staging: done in 1.0 s")
        print("a dependency's chatter")
        warnings.warn("a dependency's warning")
        os.write(2, b"a C extension's line\\n")
        c.write("the summary")
    """, progress_bar=False)
    assert "staging: done in 1.0 s" in terminal and "the summary" in terminal and "after the capture" in terminal
    assert "chatter" not in terminal and "Warning" not in terminal and "C extension" not in terminal
    for text in ("staging: done in 1.0 s", "chatter", "UserWarning", "C extension", "the summary"):
        assert text in log


def test_tick_lines_drive_a_training_bar(tmp_path):
    terminal, _ = run_captured(tmp_path, """
        for step in (5, 10, 15, 20):
            say(f"step {step:>6}/20  kimg 0.1  loss/D 1.0")
    """, progress_bar=True)
    assert "training: 100%" in terminal and "20/20" in terminal
    assert terminal.count("step     20/20") == 1  # each tick line printed once, above the bar


def test_progress_lines_become_a_bar_on_a_terminal_and_stay_in_the_log_elsewhere(tmp_path):
    body = """
        for n in (16, 32, 48, 64):
            say(f"sampling: {n}/64 samples ({100 * n // 64}%), 800.00samples/s, ETA 00:00")
        say("sampling: done in 1.0 s")
    """
    terminal, log = run_captured(tmp_path, body, progress_bar=True)
    assert "sampling: 100%" in terminal and "64/64" in terminal and "sampling: done in 1.0 s" in terminal
    plain, log = run_captured(tmp_path, body, progress_bar=False)
    assert "samples (" not in plain and "sampling: done in 1.0 s" in plain
    assert "sampling: 48/64 samples (75%)" in log
