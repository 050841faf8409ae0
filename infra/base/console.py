"""The pipeline's own console lines, told apart from everything else a run prints.

A pipeline run prints through many hands: the flow's steps, Ray's forwarded worker output (Ray Train's
per-report dumps, core-worker errors, Ray Data notices), Prefect's and MLflow's loggers, dependencies'
warnings. A person wants the first kind; an operator debugging wants all of it, in order.

    say("stage: done in 3.4 s")          # anywhere: the driver, a flow step, a Ray worker (rank 0)

    with ConsoleCapture(log_path) as console:   # the CLI, around the whole run
        ...                                     # every byte written to fd 1 and 2 goes to log_path;
        console.write("done")                   # lines from `say` (and this) also reach the terminal

`say` marks its line with MARK. `ConsoleCapture` points file descriptors 1 and 2 at a pipe (so output of
C extensions and of every Python stream object, whenever created, is caught too), and a reader thread
writes each line to the log file and echoes the marked ones, unmarked, to the terminal. Ray forwards a
worker's stdout to the driver with a `(RayTrainWorker pid=...)` prefix: the echo starts at the mark.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from typing import TextIO

MARK = "[ganpipe] "
_DRAIN_TIMEOUT_S = 5.0
TICK = re.compile(r"^step +(\d+)/(\d+) ")  # gan_core.loop.format_tick's lines
PROGRESS = re.compile(r"^(?P<desc>[^:]+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+) \(\d+%\)")  # shard_writer.progress_bar's


def say(line: str, stream: TextIO | None = None) -> None:
    """Write one console line of the pipeline's own (stdout by default). Not print(): Ray Train patches
    print in its workers to log *and* echo to a wrapped stdout, so printed lines reached the driver twice."""
    out = stream or sys.stdout
    out.write(f"{MARK}{line}\n")
    out.flush()


def console_text(line: str) -> str | None:
    """The part of a captured line meant for the terminal (from the mark on, unmarked), or None."""
    at = line.find(MARK)
    return None if at < 0 else line[at + len(MARK):]


class ConsoleCapture:
    """Route this process's stdout and stderr (file descriptors 1 and 2) to `log_path`; echo the lines
    written with `say` to the terminal. On exit the descriptors are restored (the reader keeps draining
    the pipe in the background, so a child process still holding it never blocks)."""

    def __init__(self, log_path: str | Path, *, progress_bar: bool | None = None):
        """`progress_bar`: draw a live training bar (steps, rate, ETA) from the tick lines; default: when
        the terminal is a TTY."""
        self.log_path = Path(log_path)
        self.progress_bar = progress_bar
        self._bar = None
        self._reader: threading.Thread | None = None
        self._drained = threading.Event()
        self._sentinel = f"\x00ganpipe-console-end-{os.getpid()}\n"

    def __enter__(self) -> "ConsoleCapture":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8", errors="replace", buffering=1)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self._terminal = os.fdopen(os.dup(self._saved[1]), "w", encoding="utf-8", errors="replace", buffering=1)
        if self.progress_bar is None:
            self.progress_bar = self._terminal.isatty()
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._reader = threading.Thread(target=self._pump, args=(read_fd,), name="ganpipe-console", daemon=True)
        self._reader.start()
        return self

    def write(self, text: str) -> None:
        """Lines for the terminal (and the log), bypassing the capture."""
        for line in text.splitlines():
            self._terminal.write(line + "\n")
            self._log.write(line + "\n")
        self._terminal.flush()

    def _pump(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                if line == self._sentinel:
                    self._drained.set()
                    continue
                self._log.write(line)
                text = console_text(line.rstrip("\n"))
                if text is not None:
                    self._show(text)

    def _show(self, text: str) -> None:
        """A line on the terminal. On a TTY, tick lines also move a training bar (the lines print above
        it) and staging/sampling progress lines become a bar; elsewhere progress lines stay in the log."""
        progress = PROGRESS.match(text)
        if progress is not None:
            if self.progress_bar:
                self._move_bar(progress["desc"], int(progress["n"]), int(progress["total"]), progress["unit"])
            return
        tick = TICK.match(text) if self.progress_bar else None
        if tick is not None:
            self._bar_write(text)
            self._move_bar("training", int(tick.group(1)), int(tick.group(2)), "step")
            return
        self._bar_write(text)

    def _move_bar(self, desc: str, n: int, total: int, unit: str) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.desc != desc or self._bar.total != total:
            self._close_bar()
            self._bar = tqdm(total=total, unit=unit, desc=desc, file=self._terminal, dynamic_ncols=True)
        self._bar.update(n - self._bar.n)
        if n >= total:
            self._close_bar()

    def _bar_write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._terminal)
        else:
            self._terminal.write(text + "\n")
            self._terminal.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(1, self._sentinel.encode())  # everything written before it is in the log once it is read
        self._drained.wait(_DRAIN_TIMEOUT_S)
        self._close_bar()
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self._log.flush()
