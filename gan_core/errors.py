"""One error boundary for every command line: `ganpipe *`, `python -m gan_core`, `python -m
gan_core.evaluate` and the benchmarks' CLIs all end through `run_command`.

    UserError         a mistake in what the user gave (a config, a manifest, a checkpoint, a feature network,
                      a path, a service address, a name a dependency refuses): one line `error: ...` naming
                      the value and what is accepted, exit 2. Every user-facing error family derives from it
                      (gan_core.config.ConfigError, gan_core.checkpoint.CheckpointError, infra's StorageError,
                      SourceError, ShardSetError, ModelIntegrityError, RegistryError, the services' errors).
    CommandFailed     a failure that is not the user's, already explained in one line: exit 1.
    any other         an unexpected failure: its traceback goes to a log file, the terminal gets one line
                      naming that file, exit 1.

An OSError that names a file (``e.filename``: a path the user gave could not be read or written) is the
user's: one line naming the path and the reason, exit 2. Ctrl-C is exit 130. No traceback reaches the
terminal from any of these.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_FAILED = 1  # not the user's input
EXIT_USAGE = 2  # the user's input: argparse's code for usage errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class UserError(Exception):
    """A mistake in the user's input: printed as one line `error: <message>`, exit code 2. The message names
    the file, field or value and what would be accepted."""


class CommandFailed(Exception):
    """A failure that is not the user's input, whose message is already one line naming where the details
    are: printed as `error: <message>`, exit code 1."""


def one_line(e: BaseException | str) -> str:
    """A message as one terminal line: its lines joined with '; ' (tracebacks never travel in messages)."""
    return "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())


def default_log_path(prog: str) -> Path:
    """Where an unexpected failure's traceback goes when the command has no log of its own: the temporary
    folder, one file per failure, named after the program, the time (UTC) and the process."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"{re.sub(r'[^A-Za-z0-9_]+', '-', prog)}-{stamp}-{os.getpid()}.log"


def write_traceback(e: BaseException, log_path: Path, prog: str) -> Path:
    """Append ``e``'s traceback to ``log_path`` (its folder created); when that cannot be written (the path
    is under a regular file, in /proc, ...), to `default_log_path` instead. Returns the file written."""
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    for path in (log_path, default_log_path(prog)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{prog}: unexpected failure\n{text}")
            return path
        except OSError:
            continue
    return Path("(no writable log: the traceback is lost)")


def report(e: BaseException, *, prog: str, log_path: Callable[[], Path] | None = None) -> int:
    """Print ``e`` as one line on stderr and return its exit code (the table in this module's docstring).
    ``log_path`` names the command's log for unexpected failures (default: `default_log_path`)."""
    if isinstance(e, UserError):
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(e, OSError) and e.filename is not None:
        reason = e.strerror or one_line(e)
        if isinstance(e, FileExistsError) and os.path.isfile(e.filename):  # mkdir(parents=True) met a file
            reason = "a regular file where a folder is needed"
        print(f"error: {e.filename}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(e, CommandFailed):
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(e, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    path = default_log_path(prog)
    if log_path is not None:
        try:
            path = log_path()
        except Exception:  # noqa: BLE001 - the log's own folder is unusable: the temporary folder keeps it
            pass
    written = write_traceback(e, path, prog)
    print(f"error: {prog} failed unexpectedly: {type(e).__name__}: {one_line(e)[:500]} (traceback: {written})",
          file=sys.stderr)
    return EXIT_FAILED


def run_command(body: Callable[[], int | None], *, prog: str, log_path: Callable[[], Path] | None = None) -> int:
    """The boundary: ``body()``'s exit code, or `report`'s for whatever it raised (SystemExit passes:
    argparse's usage errors and --help keep their own codes)."""
    try:
        return int(body() or 0)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line and an exit code
        return report(e, prog=prog, log_path=log_path)
