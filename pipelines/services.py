"""The embedded default's services, started side by side before `ganpipe run`'s flow.

With nothing configured, a run needs a Prefect API, a Ray instance and an MLflow store on this host.
Started one after the other by the flow's first steps (Prefect's own temporary server first) they took
about 30 + 6 + 5 s on 2 cores, and most of the Prefect part is the server's own process importing and
migrating a fresh database. So `start_embedded_services` launches a temporary Prefect server
(`prefect server start` on a free local port, database in PREFECT_HOME) as its very first act, starts
Ray and creates the MLflow store while the server boots, then waits for it (measured: 23 s in all
instead of 33 s). The server stops when the command exits, after Prefect has sent its last logs.
Services given by address (PREFECT_API_URL or a Prefect home of the user's, RAY_ADDRESS or `[cluster]
address`, MLFLOW_TRACKING_URI) are used as they are.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEFAULT_STARTUP_TIMEOUT_S = 180.0  # a fresh database on a busy 2-core host takes about 20 s


class ServiceError(RuntimeError):
    """A service of the embedded default did not start: not the user's input (`ganpipe run` reports it as
    gan_core.errors.CommandFailed, exit 1). NOTE: not a CommandFailed itself: this module runs as the
    launcher of tied processes (`python -m pipelines.services --die-with`), which must not import torch."""


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tied_to_this_process(cmd: list[str]) -> list[str]:
    """`cmd`, run so that it receives SIGTERM when this process dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG, set by a small launcher that then execs `cmd`; the setting survives exec). Elsewhere
    `cmd` as it is. Without it a `kill -9`'d `ganpipe run` left its temporary Prefect server running."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-m", "pipelines.services", "--die-with", str(os.getpid()), "--", *cmd]


def exec_tied_to(parent_pid: int, cmd: list[str]) -> None:
    """The launcher of `tied_to_this_process` (runs in the child): ask for SIGTERM when the parent dies,
    check that it has not died already (then the request would never fire), and exec `cmd`."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        sys.exit(f"the process that started this one ({parent_pid}) has already ended")
    os.execv(cmd[0], cmd)


class TemporaryPrefectServer:
    """`prefect server start` on 127.0.0.1 (UI included, no scheduler: nothing is deployed to it) for the
    length of one command. Its database lives in `home` (PREFECT_HOME), so `prefect server start` there
    later shows the runs; its output goes to `<home>/temporary-server.log`."""

    def __init__(self, home: str | Path, port: int | None = None):
        self.home = Path(home)
        self.port = port or _free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.home / "temporary-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def start(self) -> None:
        """Launch the server process and return at once (see `wait_ready`)."""
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
               "--no-scheduler", "--no-late-runs", "--analytics-off", "--log-level", "ERROR"]
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(self.home)
        with open(self.log_path, "wb") as log:
            # its own session: the terminal's Ctrl-C reaches this command only, which then stops the server
            # after Prefect's last calls (in the terminal's process group the server died first, and the
            # Prefect client retried it for about 149 s before the command returned)
            self.process = subprocess.Popen(tied_to_this_process(cmd), env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def wait_ready(self, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> None:
        """Block until the API answers its health check; ServiceError, with the server's last output, when
        the process exits or the timeout passes first."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"the temporary Prefect server exited with code {self.process.returncode}; "
                                   f"{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:  # not listening yet (URLError, connection refused or reset, timeout)
                pass
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"the temporary Prefect server did not answer on {self.api_url} within {timeout_s:g} s "
                           f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); {self._log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            tail = []
        return f"last output ({self.log_path}): " + " | ".join(tail) if tail else f"no output in {self.log_path}"


def start_ray_and_mlflow(settings) -> None:
    """Local Ray (unless an address is configured) and the local MLflow store with the run's experiment
    (unless the tracking URI names a server): what the flow's first steps would otherwise start."""
    if not (settings.cluster.address or os.environ.get("RAY_ADDRESS")):
        from infra.base.ray_cluster import ensure_ray

        ensure_ray()
    if settings.tracking.enabled:
        from infra.base.settings import mlflow_client
        from infra.train.tracking import ensure_experiment

        client = mlflow_client()
        if not client.tracking_uri.startswith(("http://", "https://")):
            ensure_experiment(client, settings.tracking.experiment)


def start_embedded_services(settings, prefect_home: str | None = None) -> str | None:
    """Start what `settings` needs on this host, side by side; returns when all are up.

    `prefect_home`: the Prefect home the CLI chose under GANPIPE_HOME because nobody configured Prefect
    (pipelines.cli.set_embedded_defaults); then a temporary Prefect server is started there, before
    prefect is imported (Prefect reads PREFECT_API_URL at import). Otherwise Prefect's own rules apply
    (its temporary server when no API URL is set). Returns the temporary server's API URL (exported
    as PREFECT_API_URL for this process), or None when none was started.
    """
    server = None
    if prefect_home and not os.environ.get("PREFECT_API_URL") and "prefect" not in sys.modules:
        server = TemporaryPrefectServer(prefect_home)
        server.start()
        # registered before prefect is imported, so it runs after Prefect's own exit handlers (atexit is
        # last-in, first-out), which send the last logs and events to the server
        atexit.register(server.stop)
    start_ray_and_mlflow(settings)
    if server is not None:
        server.wait_ready(float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
                                or DEFAULT_STARTUP_TIMEOUT_S))
        os.environ["PREFECT_API_URL"] = server.api_url
        from infra.base.console import say

        say(f"Prefect: temporary server with its UI on {server.url} until this command ends")
        return server.api_url
    return None


if __name__ == "__main__":  # python -m pipelines.services --die-with PID -- CMD...: see tied_to_this_process
    if len(sys.argv) < 5 or sys.argv[1] != "--die-with" or sys.argv[3] != "--":
        sys.exit("usage: python -m pipelines.services --die-with PID -- COMMAND [ARG...]")
    exec_tied_to(int(sys.argv[2]), sys.argv[4:])
