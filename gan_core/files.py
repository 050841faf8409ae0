"""File helpers the engine shares (checkpoints, feature-network weights)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks. Raises OSError (missing, unreadable).

    NOTE: not hashlib.file_digest, which Python 3.10 lacks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


# A folder ganpipe writes its outputs into carries this file, written before anything else: later runs
# (a resume, a rerun) may then write there again, and nothing else is ever written into or cleaned in a
# folder without it. infra.data.shard_writer (claim_folder) marks shard sets with the same file.
OWNER_FILE = "_ganpipe.json"


def is_protected_folder(path: str | os.PathLike) -> bool:
    """True for a local folder no output may be written into or cleaned: the filesystem root and the
    user's home folder (also when reached through a symbolic link)."""
    real = os.path.realpath(path)
    return real in {os.path.realpath(os.sep), os.path.realpath(os.path.expanduser("~"))}


def claim_output_folder(path: str | os.PathLike, what: str, kind: str) -> Path:
    """Check that `path` may take the outputs of a `kind` run (e.g. "python -m gan_core") and claim it:
    a new or empty folder gets OWNER_FILE; a folder that holds one already (an earlier run's) is taken
    as it is. Returns the folder.

    Raises ValueError, one line naming `what` (e.g. "--out"), for an empty path (it would mean the
    current folder), the filesystem root or the home folder, an existing file, and an existing folder
    holding files ganpipe did not write (nothing is written there); OSError when it cannot be created."""
    if not str(path).strip():
        raise ValueError(f"{what}: got an empty path; allowed: a folder path (write ./ for the current folder)")
    folder = Path(path)
    if is_protected_folder(folder):
        raise ValueError(f"{what} {folder}: the filesystem root or the home folder; allowed: a new or empty "
                         f"folder, or one ganpipe wrote")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder}: an existing file; allowed: a folder (new, empty, or one ganpipe wrote)")
    if folder.is_dir() and not (folder / OWNER_FILE).is_file():
        names = sorted(p.name for p in folder.iterdir())
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise ValueError(f"{what} {folder}: an existing folder that ganpipe did not write ({shown}; no "
                             f"{OWNER_FILE}); allowed: a new or empty folder, or one ganpipe wrote")
    folder.mkdir(parents=True, exist_ok=True)
    owner = folder / OWNER_FILE
    if not owner.exists():
        owner.write_text(json.dumps({"written_by": kind}, sort_keys=True) + "\n")
    return folder


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> int:
    """The size in bytes of `path` when it is a regular file (a link to one is fine) of at most
    `max_bytes`. Raises ValueError, one line naming `what` and the path, for a missing path, a folder,
    a FIFO, a device or a socket (reading those can block forever or never end: /dev/zero), or a file
    over `max_bytes`."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path}: {_kind_of(st.st_mode)}; allowed: a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ValueError(f"{what} {path}: {st.st_size:,} bytes; allowed: at most {max_bytes:,} bytes")
    return st.st_size


def read_bytes_bounded(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (check_regular_file), read without ever holding
    more than max_bytes + 1 (a file that grows while it is read is refused too). ValueError as
    check_regular_file."""
    check_regular_file(path, what, max_bytes)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise ValueError(f"{what} {path}: over {max_bytes:,} bytes; allowed: at most {max_bytes:,} bytes")
    return data
