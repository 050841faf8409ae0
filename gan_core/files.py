"""File helpers the engine shares (checkpoints, feature-network weights)."""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks. Raises OSError (missing, unreadable).

    NOTE: not hashlib.file_digest, which Python 3.10 lacks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()
