"""The `ganpipe` command line. Each sub-command lives in its own module, which defines

    def add_parser(subparsers) -> argparse.ArgumentParser   # sets `func=run` via set_defaults
    def run(args) -> int

Errors end at the one boundary every entry point shares (gan_core.errors): `UserError` and every error
family derived from it is one line on stderr and exit 2; `CommandFailed` one line and exit 1; anything
else one line naming the log that holds its traceback, exit 1. No traceback reaches the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from gan_core.errors import report

# Ray's switch between a loopback-only local instance ("0") and one bound to all interfaces ("1"); see
# set_embedded_defaults
RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def set_embedded_defaults() -> str | None:
    """The embedded default, resolved once at the edge: the process environment that every tool reads.

    - telemetry off (there is nowhere to send it), and MLflow's per-file download bars;
    - a local Ray instance started here binds 127.0.0.1 only (unless RAY_ADDRESS names a cluster, or
      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 asks for all interfaces);
    - MLflow: `MLFLOW_TRACKING_URI` = SQLite under GANPIPE_HOME when nobody set one, so that MLflow's own
      resolution (its fluent API, every client, Ray workers started later) finds the same store;
    - Prefect: with no server and no Prefect home configured, the temporary server's database lives under
      GANPIPE_HOME with everything else (so `prefect server start` there shows past runs). Must run before
      prefect is imported: Prefect reads its settings at import.

    Returns that Prefect home when it was set here (the run command then starts the temporary server
    itself, see pipelines.services), else None. This and pipelines.services are the only places that
    write os.environ.
    """
    from infra.base.settings import local_home, mlflow_tracking_uri

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # one "Downloading artifacts" bar per file MLflow fetches (37 for one `ganpipe sample`): ganpipe prints
    # its own progress; set it to true to see MLflow's
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not os.environ.get("RAY_ADDRESS"):
        # NOTE: a local Ray instance we start serves this host only. This is Ray's own switch for that:
        # off, the node IP of an instance it starts is the loopback address and every Ray process (GCS,
        # raylet, agents, workers) binds 127.0.0.1; on (Ray's default on Linux) they bind all interfaces
        # (ray.init(_node_ip_address="127.0.0.1") is turned back into the host's address). Ray reads it
        # when imported, so here, first. Set it to 1 for a local instance other hosts must reach.
        os.environ.setdefault(RAY_LOCAL_ONLY_ENV, "0")
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow_tracking_uri())
    if any(os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILES_PATH")):
        return None
    if "prefect" in sys.modules:
        return None
    # the first start migrates a fresh database: slower than Prefect's 20 s default on a busy 2-core host
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    home = local_home() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home)
    return str(home)


# (command, module, one-line help); a module that does not exist yet makes the command say so.
COMMANDS = [
    ("run", "pipelines.commands.run", "run the whole pipeline: stage, train, evaluate, register, sample"),
    ("stage", "pipelines.commands.stage", "stage a dataset into versioned Parquet shards"),
    ("train", "pipelines.commands.train", "train a GAN with Ray Train on a staged dataset"),
    ("evaluate", "pipelines.commands.evaluate", "evaluate a checkpoint's G_ema"),
    ("register", "pipelines.commands.register", "register a finished run's generator in MLflow"),
    ("sample", "pipelines.commands.sample", "batch-sample a registered generator"),
    ("deploy", "pipelines.commands.deploy", "serve or deploy the pipeline on a cron schedule"),
    ("submit", "pipelines.commands.submit", "submit training as a Ray job to a cluster"),
    ("runs", "pipelines.commands.runs", "list training runs: progress, checkpoint, MLflow link, registered versions"),
    ("models", "pipelines.commands.models", "list registered model versions and which one is @champion"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganpipe",
        description="Train GANs at scale: stage data, train on Ray, register in MLflow, sample.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'ganpipe COMMAND --help' for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p = sub.add_parser(name, help=f"{help_text} (not yet available)", description=help_text)
            p.set_defaults(func=lambda args, _n=name: _not_yet(_n))
            continue
        mod.add_parser(sub)
    return parser


def _not_yet(name: str) -> int:
    print(f"ganpipe {name}: not yet available in this version", file=sys.stderr)
    return 2


# the services each command uses, probed before it starts anything (infra.base.settings.check_service_addresses):
# a Ray cluster at RAY_ADDRESS, the Prefect API at PREFECT_API_URL, an S3 endpoint at AWS_ENDPOINT_URL
# (`submit`'s address is a Ray dashboard: it probes it itself; MLflow's store is probed by each command)
SERVICES = {
    "run": dict(ray=True, prefect=True, s3=True), "stage": dict(prefect=True, s3=True),
    "train": dict(ray=True, s3=True), "evaluate": dict(s3=True), "register": dict(s3=True),
    "sample": dict(ray=True, prefect=True, s3=True), "deploy": dict(prefect=True),
}


def check_services(command: str, argv: list[str]) -> None:
    """Probe the services `command` uses at the addresses the environment gives (SERVICES); the S3
    endpoint only when the command line names an s3:// location (a local request does not need it)."""
    from infra.base.settings import RAY_ADDRESS_ENV, check_service_addresses

    needs = SERVICES.get(command, {})
    check_service_addresses(ray_address=os.environ.get(RAY_ADDRESS_ENV) if needs.get("ray") else None,
                            prefect=needs.get("prefect", False),
                            s3=needs.get("s3", False) and any("s3://" in a for a in argv))


TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _note_signal(signum: int, frame) -> None:
    """The Python-level handler for SIGTERM/SIGHUP: it only keeps Python's C trampoline installed, which
    writes the signal to the wakeup fd the watcher reads (see unwind_on_termination)."""


@contextlib.contextmanager
def unwind_on_termination():
    """SIGTERM and SIGHUP unwind the command like Ctrl-C (SIGINT): the flow is marked crashed and the exit
    handlers stop what this process started (its local Ray instance through ray.shutdown, the temporary
    Prefect server). Python's default is to die at once, leaving those processes running.

    How: a watcher thread reads the signal wakeup fd and sends this process SIGINT, once, whose handler
    (Python's KeyboardInterrupt, or Ray Train's graceful abort during training) runs in the main
    thread. NOTE: not a handler that raises: during a flow Prefect installs its own SIGTERM handler,
    whose TerminationSignal Ray's blocking `ray.get` swallows (measured: a SIGTERM'd `ganpipe run`
    trained on until killed); a KeyboardInterrupt is what `ray.get` passes on. Yields a
    list that holds the signal number once one arrived. Main thread only (elsewhere: nothing changes);
    the caller's handlers and wakeup fd are restored afterwards. SIGKILL cannot be caught: after
    `kill -9` the local services go because they are tied to this process's life (Ray ties the processes
    of a local instance to its driver; pipelines.services ties the temporary Prefect server the same way).
    SIGINT is noted too, so that the command exits 130 whatever the KeyboardInterrupt became on its way up.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    read_end, write_end = socket.socketpair()
    write_end.setblocking(False)
    # A background job of a non-interactive shell starts with SIGINT ignored (so that the terminal's Ctrl-C
    # leaves it alone), and the SIGINT this sends itself would be ignored too: SIGTERM did nothing and the
    # command committed its work. Then SIGINT raises only once a terminating signal arrived.
    sigint_ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    noted = TERMINATING if sigint_ignored else (*TERMINATING, signal.SIGINT)

    def interrupt_if_terminating(signum: int, frame) -> None:
        if received:
            raise KeyboardInterrupt

    def watch() -> None:
        while data := read_end.recv(64):
            for signum in data:
                if received or signum not in noted:
                    continue
                received.append(signum)
                if signum != signal.SIGINT:  # SIGINT's own handler raises KeyboardInterrupt already
                    os.kill(os.getpid(), signal.SIGINT)  # the main thread runs SIGINT's handler: Ctrl-C

    previous = {s: signal.signal(s, _note_signal) for s in TERMINATING}
    if sigint_ignored:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt_if_terminating)
    previous_fd = signal.set_wakeup_fd(write_end.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="ganpipe-signal-watcher", daemon=True)
    watcher.start()
    try:
        yield received
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        write_end.close()  # the watcher's recv returns b"": it ends
        watcher.join(timeout=5)
        read_end.close()


def error_log_path(command: str) -> Path:
    """Where `ganpipe COMMAND`'s unexpected failure leaves its traceback: <local home>/logs."""
    from infra.base.settings import local_home

    return local_home() / "logs" / f"{command}-error-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.log"


def main(argv: list[str] | None = None) -> int:
    try:
        embedded_prefect_home = set_embedded_defaults()  # reads GANPIPE_HOME: may be a path that cannot be used
    except Exception as e:  # noqa: BLE001 - the boundary, before any command is known
        return report(e, prog="ganpipe")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.embedded_prefect_home = embedded_prefect_home
    with unwind_on_termination() as terminated:
        try:
            check_services(args.command, sys.argv[1:] if argv is None else argv)
            return int(args.func(args) or 0)
        except BaseException as e:  # noqa: BLE001 - the one boundary: every failure is one line and an exit code
            if terminated:  # whatever the interrupt became on its way up (Prefect's TerminationSignal, a
                # pipeline error, Ray Train's SIGINT handler's sys.exit): the exit handlers run after this
                print(f"interrupted ({signal.Signals(terminated[0]).name})", file=sys.stderr)
                return 128 + terminated[0]
            if isinstance(e, SystemExit):
                raise
            return report(e, prog=f"ganpipe {args.command}", log_path=lambda: error_log_path(args.command))


if __name__ == "__main__":
    # `python -m pipelines.cli`: run the imported module's main, so that commands raising
    # pipelines.cli.UserError are caught (this file's classes are __main__.UserError here)
    from pipelines.cli import main as _main

    sys.exit(_main())
