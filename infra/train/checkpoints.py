"""Which of a run's checkpoints to use: the newest intact one, on local disk or S3.

    used, loc = newest_intact(storage.resolve(".../gan-ring8-1a2b/checkpoint-000000300"), use=verify_checkpoint)

A run's storage folder holds ``checkpoint-<step, 9 digits>[-<n>]`` folders (gan_core.checkpoint
directories, written by Ray Train's ``report``). When the newest is damaged (a truncated upload, a disk
fault, an edited file), resuming and registering fall back to the next older intact one, with one warning
line naming both; with none intact they stop with one line (CheckpointError). A run resumed past damaged
checkpoints writes its next ones under new names (gan_core.checkpoint.checkpoint_name): Ray Train still
lists the damaged ones, and its retention deletes a listed checkpoint's folder, whatever was written there since.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import tempfile
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pyarrow.fs as pafs

from gan_core.checkpoint import CHECKPOINT_NAME, CheckpointError

from infra.base.storage import Location, first_line

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_checkpoints(run_dir: Location) -> list[Location]:
    """The ``checkpoint-<step>`` folders of a run's storage folder, newest (highest step) first."""
    infos = run_dir.fs.get_file_info(pafs.FileSelector(run_dir.path, allow_not_found=True))
    names = sorted((posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory
                    and CHECKPOINT_NAME.match(posixpath.basename(i.path))), reverse=True)
    return [run_dir.join(n) for n in names]


def parent(loc: Location) -> Location:
    """The folder holding ``loc``."""
    path, uri = loc.path.rstrip("/"), loc.uri.rstrip("/")
    return Location(loc.fs, posixpath.dirname(path), uri[: len(uri) - len(posixpath.basename(path)) - 1])


def fetch_checkpoint(loc: Location, dest: Path) -> Path:
    """A local folder holding the checkpoint at ``loc``: the folder itself on local disk, else a copy of
    it into ``dest`` (created; a failed copy from S3 raises OSError). The one place a remote checkpoint
    is brought local: the flow's fetch-checkpoint task and `local_directory` call it."""
    if isinstance(loc.fs, pafs.LocalFileSystem):
        return Path(loc.path)
    dest.mkdir(parents=True, exist_ok=True)  # pyarrow's local filesystem creates no parent folders for copies
    pafs.copy_files(loc.path, str(dest), source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


@contextlib.contextmanager
def local_directory(loc: Location) -> Iterator[Path]:
    """A local directory holding the checkpoint at ``loc``: the folder itself on local disk, else a
    temporary copy (removed on exit)."""
    if isinstance(loc.fs, pafs.LocalFileSystem):  # no temporary folder for a checkpoint already local
        yield fetch_checkpoint(loc, Path(loc.path))
        return
    with tempfile.TemporaryDirectory(prefix="ganpipe-checkpoint-") as tmp:
        yield fetch_checkpoint(loc, Path(tmp))


def newest_intact(latest: Location, use: Callable[[Path], T], *,
                  warn: Callable[[str], None] | None = None) -> tuple[T, Location, list[str]]:
    """``use(local directory)`` on ``latest``, else on each other checkpoint of the same run folder,
    newest first, until one does not raise CheckpointError; returns (its result, its location, the
    names of the damaged checkpoints tried before it).

    ``use`` verifies (e.g. ``gan_core.checkpoint.verify_checkpoint``) or loads the checkpoint. When
    ``latest`` is not the one used, one line naming the damaged checkpoint(s) and the one used goes to
    ``warn`` (default: a WARNING on this module's logger). Raises CheckpointError (one line: each damaged
    checkpoint's first fault) if none is intact. A failed copy from S3 (OSError) is raised as it is.
    """
    run_dir = parent(latest)
    others = [c for c in run_checkpoints(run_dir) if c.name != latest.name]
    damaged: list[tuple[str, str]] = []  # (checkpoint name, its first fault)
    for candidate in [latest, *others]:
        with local_directory(candidate) as d:
            try:
                result = use(d)
            except CheckpointError as e:  # named by the local (maybe temporary) path: drop that prefix
                damaged.append((candidate.name, first_line(e).replace(f"{d}/", "").replace(f"{d}: ", "")))
                continue
        if damaged:
            (warn or log.warning)(f"checkpoint {_describe(damaged)}; using {candidate.uri} instead")
        return result, candidate, [name for name, _ in damaged]
    raise CheckpointError(f"no intact checkpoint in {run_dir.uri}: {_describe(damaged)}")


def _describe(damaged: list[tuple[str, str]]) -> str:
    """'<name> is damaged (<first fault>)', one clause per checkpoint, on one line."""
    return "; ".join(f"{name} is damaged ({fault})" for name, fault in damaged)


