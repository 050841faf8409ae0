"""One way to address storage: a URI that is either a local path or ``s3://bucket/prefix``.

Everything goes through ``pyarrow.fs``; boto3 is used only where pyarrow has no operation (object
ETags). S3 settings come from the standard places, read by pyarrow and boto3 themselves:
``AWS_ENDPOINT_URL`` (MinIO, moto) and the AWS credential chain (environment, profile, instance role).
There are no custom variables.

S3 has no atomic directory write, so a folder is *committed* by writing a small marker file (a
manifest) last, in one request; readers trust only folders that have it (ARCHITECTURE.md section 3).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from gan_core.errors import UserError
from gan_core.files import is_protected_folder

S3_SCHEME = "s3://"
# Bytes per read when streaming a file through a hash; large enough to keep S3 requests few.
HASH_CHUNK_BYTES = 8 << 20


class StorageError(UserError, ValueError):
    """A storage location that cannot be used (missing path or bucket, not committed, ...)."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


# Attempts per S3 request (the AWS SDK's own retries, inside pyarrow and boto3), unless AWS_MAX_ATTEMPTS
# says otherwise. pyarrow's default (3 attempts of its standard strategy) gives up on a stopped endpoint
# after 1.3 s; 9 attempts of the SDK's default strategy (exponential from 25 ms) after 12.8 s (measured
# with pyarrow 25), so a server restarting for a few seconds costs a pause, not the job.
S3_MAX_ATTEMPTS = 9
# boto3's "standard" mode: jittered exponential backoff from 1 s (mean budget about 15 s for 6 attempts)
S3_BOTO_MAX_ATTEMPTS = 6


def s3_max_attempts() -> int:
    """Attempts per S3 request: AWS_MAX_ATTEMPTS (the AWS SDKs' standard setting) when set, else
    S3_MAX_ATTEMPTS. StorageError naming the variable for anything but a positive integer."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    if not value:
        return S3_MAX_ATTEMPTS
    if not (value.isdigit() and int(value) > 0):
        raise StorageError(f"AWS_MAX_ATTEMPTS: got {value!r}; allowed: a positive integer (attempts per S3 request)")
    return int(value)


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3FileSystem with a retry budget that outlasts a short outage, which it keeps when
    pickled: pyarrow's own pickling drops `retry_strategy` (checked with pyarrow 25), so Ray workers and
    Ray Data tasks (checkpoint uploads, shard reads) would otherwise run with 3 attempts."""

    def __init__(self, *, max_attempts: int, **options):
        super().__init__(retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=max_attempts), **options)
        self._options = dict(options, max_attempts=max_attempts)

    def __reduce__(self):
        return _rebuild_s3, (self._options,)


def _rebuild_s3(options: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(**options)


def s3_filesystem(**overrides) -> pafs.S3FileSystem:
    """An S3FileSystem configured the standard AWS way, by pyarrow itself: endpoint from
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (MinIO, moto; http:// or https://), region from AWS_REGION /
    AWS_DEFAULT_REGION, credentials from the default AWS chain; `overrides` (S3FileSystem's arguments,
    e.g. frozen credentials) replace what it resolved. Requests are retried s3_max_attempts() times.

    NOTE: the options through ``FileSystem.from_uri`` (read back from its pickling state): pyarrow 25's
    ``S3FileSystem()`` constructor ignores AWS_ENDPOINT_URL, its URI parser does not. No bucket in the
    URI: no region lookup request.
    """
    resolved = pafs.FileSystem.from_uri(S3_SCHEME)[0]
    options = dict(resolved.__reduce__()[1][0], **overrides)
    return RetryingS3FileSystem(max_attempts=s3_max_attempts(), **options)


def portable_s3_filesystem() -> pafs.S3FileSystem:
    """An S3FileSystem that carries the driver's resolved credentials and endpoint when pickled to
    workers: Ray workers may have been started before AWS_* variables were set in this process."""
    import boto3

    fs = s3_filesystem()
    creds = boto3.Session().get_credentials()
    if creds is None:
        return fs  # instance roles / IRSA on the cluster: each worker resolves its own chain
    frozen = creds.get_frozen_credentials()
    endpoint = s3_endpoint()
    kwargs: dict[str, object] = {"access_key": frozen.access_key, "secret_key": frozen.secret_key,
                              "session_token": frozen.token}
    if endpoint:
        kwargs.update(endpoint_override=endpoint, scheme="http" if endpoint.startswith("http://") else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return s3_filesystem(**kwargs)  # with its retry budget, which survives the pickling


def s3_endpoint() -> str | None:
    """The S3 endpoint the AWS SDKs use: AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (MinIO, moto), else
    None (AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def boto3_s3_client():
    """A boto3 S3 client configured the standard AWS way (endpoint, region and credentials from the
    environment), retrying each request S3_BOTO_MAX_ATTEMPTS times unless AWS_MAX_ATTEMPTS /
    AWS_RETRY_MODE say otherwise."""
    import boto3
    from botocore.config import Config

    if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"):
        return boto3.client("s3")
    return boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": S3_BOTO_MAX_ATTEMPTS}))


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


def resolve(uri: str, s3: pafs.S3FileSystem | None = None) -> Location:
    """A URI (local path, ``file://`` path or ``s3://bucket/prefix``) as a Location; ``s3``: the
    S3FileSystem to use (e.g. `portable_s3_filesystem()`, resolved in a driver), else `s3_filesystem()`.
    StorageError for an empty or blank URI: it would otherwise mean the current folder, which nobody asks
    for by typing ''."""
    uri = str(uri)
    if not uri.strip() or uri.strip() == "file://":
        raise StorageError(f"storage URI {uri!r} is empty; allowed: a local path or s3://bucket/prefix (write ./ "
                           "for the current folder)")
    if is_s3(uri):
        rest = uri[len(S3_SCHEME):].strip("/")
        if not rest:
            raise StorageError(f"storage URI {uri!r} names no bucket")
        return Location(s3 or s3_filesystem(), rest, S3_SCHEME + rest)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise StorageError(f"storage URI {uri!r}: unsupported scheme (use a local path or s3://bucket/prefix)")
    path = os.path.abspath(os.path.expanduser(uri))
    return Location(pafs.LocalFileSystem(), path, path)


def check_bucket(loc: Location) -> None:
    """Fail with one line (StorageError) when an S3 location's bucket does not exist or S3 cannot be
    reached at all (a wrong AWS_ENDPOINT_URL, a server that is down: after pyarrow's own retries);
    local: nothing to check."""
    if isinstance(loc.fs, pafs.S3FileSystem):
        bucket = loc.path.split("/", 1)[0]
        try:
            missing = loc.fs.get_file_info(bucket).type == pafs.FileType.NotFound
        except OSError as e:
            endpoint = s3_endpoint() or "AWS S3"
            raise StorageError(f"cannot reach S3 at {endpoint} for {loc.uri} ({first_line(e)}); check "
                               "AWS_ENDPOINT_URL and the credentials") from None
        if missing:
            raise StorageError(f"bucket {bucket!r} does not exist ({loc.uri})")


def check_output_folder(loc: Location, what: str) -> None:
    """Fail with one line (StorageError naming `what`, e.g. "--out") when `loc` cannot be an output folder:
    an existing file, a local path under a file or one this user cannot create or write; an S3 bucket
    that is missing or unreachable. Cheap: no write, so it runs before any service starts."""
    try:
        check_bucket(loc)
    except StorageError as e:
        raise StorageError(f"{what}: {e}") from None
    if not isinstance(loc.fs, pafs.LocalFileSystem):
        return
    path = loc.path
    if is_protected_folder(path):
        raise StorageError(f"{what} {loc.uri}: the filesystem root or the home folder; allowed: a folder of its own "
                           f"below it (e.g. {path.rstrip('/')}/ganpipe-out)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"{what} {loc.uri}: is an existing file; allowed: a folder (new or existing)")
    parent = path
    while not os.path.exists(parent):  # the nearest existing ancestor decides whether it can be created
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StorageError(f"{what} {loc.uri}: {parent} is a file; allowed: a folder (new or existing)")
    if not os.access(parent, os.W_OK | os.X_OK) or os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise StorageError(f"{what} {loc.uri}: {parent} is not writable by this user; allowed: a writable folder")


def first_line(e: BaseException) -> str:
    """An exception's message (its `message` attribute when it has one, as MlflowException) cut to its
    first line: library errors can span many."""
    text = str(getattr(e, "message", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def require_exists(loc: Location) -> pafs.FileInfo:
    check_bucket(loc)
    info = loc.info()
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"no such file or folder: {loc.uri}")
    return info


def list_files(loc: Location) -> list[pafs.FileInfo]:
    """All files below a folder, recursively, sorted by path (a stable order on every backend).

    The symbolic-link policy of a local folder (S3 has no links): a link to a *folder* is refused with
    StorageError naming it, since a walk through folder links can loop (`cls0/up -> ..` never ended, and
    `cls0/again -> .` turned 2 images into 82 rows); a link to a *file* is read as the file it names,
    wherever that lies (the user put it there; ganpipe only reads it). Links are never written through."""
    if isinstance(loc.fs, pafs.LocalFileSystem):
        _refuse_folder_links(loc)
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def _refuse_folder_links(loc: Location) -> None:
    """StorageError naming the first symbolic link to a folder below ``loc`` (a local folder); os.walk does
    not follow links, so this walk itself cannot loop."""
    for folder, subfolders, _ in os.walk(loc.path, followlinks=False):
        for name in sorted(subfolders):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                raise StorageError(f"{path}: a symbolic link to a folder ({os.readlink(path)}); folder links are not "
                                   "followed (they can loop): copy or move the folder in, or stage its target itself")


def relative(loc: Location, path: str) -> str:
    return posixpath.relpath(path, loc.path)


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


@contextlib.contextmanager
def atomic_output(loc: Location) -> Iterator[pa.NativeFile]:
    """An output stream whose file appears whole or not at all, so that a reader (or a crash) never
    sees a partial file: on local disk a temporary file renamed at the end (rename(2) is atomic on
    POSIX); on S3 the object itself (an upload only becomes visible when it completes; an exception
    inside the block deletes what the close uploaded)."""
    local = isinstance(loc.fs, pafs.LocalFileSystem)
    path = f"{loc.path}.tmp-{uuid.uuid4().hex[:8]}" if local else loc.path
    if local:
        loc.fs.create_dir(posixpath.dirname(loc.path), recursive=True)
    stream = loc.fs.open_output_stream(path)
    try:
        yield stream
    except BaseException:
        stream.close()
        # NOTE: pyarrow has no abort for an S3 upload: closing completes it, so the partial object is
        # deleted here (best effort: the original error is the one to report)
        with contextlib.suppress(OSError):
            loc.fs.delete_file(path)
        raise
    stream.close()
    if local:
        loc.fs.move(path, loc.path)


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole object atomically (see atomic_output)."""
    with atomic_output(loc) as f:
        f.write(data)


def sha256_of(files: "Location | str | list[Location]") -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file (a Location or a URI/local path), or of several
    files' bytes one after another; streamed in chunks."""
    if isinstance(files, str):
        files = resolve(files)
    digest, size = hashlib.sha256(), 0
    for loc in [files] if isinstance(files, Location) else files:
        with loc.fs.open_input_stream(loc.path) as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


class HashingWriter:
    """A file-like sink (what pyarrow's writers take: `write` and `closed`) that forwards writes to a
    pyarrow output stream and hashes them on the way, so a file's sha256 and size are known without
    reading it back. Closing the stream is its owner's business."""

    closed = False

    def __init__(self, stream: pa.NativeFile):
        self._stream = stream
        self._digest = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self._stream.write(view)
        self.bytes_written += view.nbytes
        return view.nbytes

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def s3_etags(loc: Location) -> dict[str, str]:
    """Object key (relative to the location) -> ETag, for every object below an S3 location.

    pyarrow's FileInfo has no ETag; boto3's ListObjectsV2 returns it with the listing, which lets a
    source be fingerprinted without downloading it.
    """
    bucket, _, prefix = loc.path.partition("/")
    prefix = prefix.rstrip("/")
    client = boto3_s3_client()
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


def list_committed(loc: Location, marker: str) -> list[str]:
    """Names of the direct child folders of `loc` that hold `marker`, oldest commit first (ties broken
    by name).

    A folder without its marker is an incomplete write (a crash, or a writer still at work) and is
    never listed.
    """
    found = []
    for info in list_files(loc):
        parts = relative(loc, info.path).split("/")
        if len(parts) == 2 and parts[1] == marker:
            found.append((info.mtime_ns or 0, parts[0]))
    return [name for _, name in sorted(found)]
