"""One way to address storage: a URI that is either a local path or ``s3://bucket/prefix``.

Everything goes through ``pyarrow.fs``; boto3 is used only where pyarrow has no operation (object
ETags). S3 settings come from the standard places: ``AWS_ENDPOINT_URL`` (MinIO, moto) and the AWS
credential chain (environment, profile, instance role). There are no custom variables.

S3 has no atomic directory write, so a folder is *committed* by writing a small marker file (a
manifest) last, in one request; readers trust only folders that have it (DESIGN.md section 3).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow.fs as pafs

S3_SCHEME = "s3://"
# Bytes per read when streaming a file through a hash; large enough to keep S3 requests few.
HASH_CHUNK_BYTES = 8 << 20


class StorageError(ValueError):
    """A storage location that cannot be used (missing path or bucket, not committed, ...)."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3FileSystem configured from the standard AWS environment.

    NOTE: pyarrow >= 16 reads AWS_ENDPOINT_URL itself; we still pass it explicitly so that older
    pyarrow versions and per-process overrides behave the same. Credentials come from the default
    AWS chain inside pyarrow's SDK.
    """
    kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            kwargs["scheme"] = "http"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A storage location: the filesystem, the path inside it, and the URI it came from."""

    fs: pafs.FileSystem
    path: str  # "bucket/key/prefix" on S3, an absolute path on local disk
    uri: str

    def join(self, *parts: str) -> "Location":
        parts = tuple(p.strip("/") for p in parts if p)
        return Location(self.fs, posixpath.join(self.path, *parts), join_uri(self.uri, *parts))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory


def join_uri(uri: str, *parts: str) -> str:
    parts = tuple(p.strip("/") for p in parts if p)
    if not parts:
        return uri
    return uri.rstrip("/") + "/" + "/".join(parts)


def resolve(uri: str) -> Location:
    """A URI (local path, ``file://`` path or ``s3://bucket/prefix``) as a Location."""
    uri = str(uri)
    if is_s3(uri):
        rest = uri[len(S3_SCHEME):].strip("/")
        if not rest:
            raise StorageError(f"storage URI {uri!r} names no bucket")
        return Location(s3_filesystem(), rest, S3_SCHEME + rest)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise StorageError(f"storage URI {uri!r}: unsupported scheme (use a local path or s3://bucket/prefix)")
    path = os.path.abspath(os.path.expanduser(uri))
    return Location(pafs.LocalFileSystem(), path, path)


def check_bucket(loc: Location) -> None:
    """Fail with one line when an S3 location's bucket does not exist (local: nothing to check)."""
    if isinstance(loc.fs, pafs.S3FileSystem):
        bucket = loc.path.split("/", 1)[0]
        if loc.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"bucket {bucket!r} does not exist ({loc.uri})")


def require_exists(loc: Location) -> pafs.FileInfo:
    check_bucket(loc)
    info = loc.info()
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"no such file or folder: {loc.uri}")
    return info


def list_files(loc: Location) -> list[pafs.FileInfo]:
    """All files below a folder, recursively, sorted by path (a stable order on every backend)."""
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def relative(loc: Location, path: str) -> str:
    return posixpath.relpath(path, loc.path)


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole object; on local disk write a temporary file and rename it, so that a reader
    (or a crash) never sees a partial file. An S3 PUT is already all-or-nothing."""
    if isinstance(loc.fs, pafs.LocalFileSystem):
        parent = posixpath.dirname(loc.path)
        loc.fs.create_dir(parent, recursive=True)
        tmp = f"{loc.path}.tmp-{uuid.uuid4().hex[:8]}"
        with loc.fs.open_output_stream(tmp) as f:
            f.write(data)
        loc.fs.move(tmp, loc.path)  # rename(2): atomic on POSIX
    else:
        with loc.fs.open_output_stream(loc.path) as f:
            f.write(data)


def make_dirs(loc: Location) -> None:
    """Create a local folder; S3 needs none (no directory markers are written there)."""
    if isinstance(loc.fs, pafs.LocalFileSystem):
        loc.fs.create_dir(loc.path, recursive=True)


def sha256_of(loc: Location) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file, streamed in chunks."""
    digest, size = hashlib.sha256(), 0
    with loc.fs.open_input_stream(loc.path) as f:
        while True:
            chunk = f.read(HASH_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class HashingWriter:
    """A file-like sink that forwards writes to a pyarrow output stream and hashes them on the way,
    so a shard's sha256 and size are known without reading it back."""

    def __init__(self, stream):  # a pyarrow NativeFile opened for writing
        self._stream = stream
        self._digest = hashlib.sha256()
        self.bytes_written = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self._stream.write(view)
        self.bytes_written += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._stream.flush()

    def tell(self) -> int:
        return self.bytes_written

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self.closed = True

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def s3_etags(loc: Location) -> dict[str, str]:
    """Object key (relative to the location) -> ETag, for every object below an S3 location.

    pyarrow's FileInfo has no ETag; boto3's ListObjectsV2 returns it with the listing, which lets a
    source be fingerprinted without downloading it.
    """
    import boto3

    bucket, _, prefix = loc.path.partition("/")
    prefix = prefix.rstrip("/")
    client = boto3.client("s3")  # endpoint and credentials from the standard AWS environment
    out: dict[str, str] = {}
    paginator = client.get_paginator("list_objects_v2")
    list_prefix = prefix + "/" if prefix else ""
    for page in paginator.paginate(Bucket=bucket, Prefix=list_prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(list_prefix):]] = obj["ETag"].strip('"')
    if not out and prefix:  # the location may be a single object rather than a prefix
        try:
            head = client.head_object(Bucket=bucket, Key=prefix)
            out[""] = head["ETag"].strip('"')
        except client.exceptions.ClientError:
            pass
    return out


# --- commit markers -----------------------------------------------------------------------------


def commit_json(loc: Location, obj: dict) -> None:
    """Write a commit marker (a manifest) in one atomic step. Call it after all data is written."""
    write_bytes(loc, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(loc: Location) -> dict:
    return json.loads(read_bytes(loc).decode())


def iter_committed(loc: Location, marker: str) -> Iterator[tuple[str, pafs.FileInfo]]:
    """(child folder name, marker FileInfo) for each direct child folder of `loc` holding `marker`."""
    for info in list_files(loc):
        rel = relative(loc, info.path)
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == marker:
            yield parts[0], info


def list_committed(loc: Location, marker: str) -> list[str]:
    """Names of the committed child folders of `loc`, oldest commit first (ties broken by name).

    A folder without its marker is an incomplete write (a crash, or a writer still at work) and is
    never listed.
    """
    found = sorted(iter_committed(loc, marker), key=lambda item: (item[1].mtime_ns or 0, item[0]))
    return [name for name, _ in found]
