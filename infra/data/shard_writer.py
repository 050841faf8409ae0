"""Writing a shard set (infra.data.shardset): the plan, the folder's ownership and lock, the shard writer
and the executor, whose steps the Prefect flows wrap in tasks and the CLI runs directly:

    execute(plan) = committed(plan) or (with writing(plan): commit(plan, write_pending(plan)))

- ShardPlan: a job's plan (subclassed: infra.data.datasets' StagingPlan, infra.models.batch_sampling's
  SamplingPlan) fixes the shard ranges before anything is written; a shard's bytes depend on the plan
  alone, so rewriting one after a crash reproduces it.

Ownership (what a writer may touch): a set is written only into a folder that is new, empty, or already
this kind of set's own (its _ganpipe.json or its manifest says so); a folder holding anything else is
refused before a byte is written (check_destination). Clean-up deletes only exact paths: the shards this
process wrote after a failure, the plan's own pending records after the commit, and, on local disk, the
temporary files of this set's writers killed midway, found by their exact name in the set's own folder,
never through a symbolic link, and only while this process holds the set's lock (so no live writer owns
them). Writers of one set on one host take turns on that lock (`writing`); on S3 two writers of one set
write the same bytes (a shard is a function of the plan), and neither deletes what the other wrote.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import posixpath
import re
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gan_core.files import OWNER_FILE, is_protected_folder

from infra.base import storage
from infra.base.storage import Location
from infra.data.shardset import (FIELD_DIGESTS, MANIFEST_NAME, PNG_FOLDERS, Layout, Manifest, ShardSetError,
                                 accepted_formats, field_digests, read_manifest)

log = logging.getLogger(__name__)

PENDING_DIR = "_pending"
# OWNER_FILE (gan_core.files) is written before the first shard: this folder is a shard set's own
# a temporary file of storage.atomic_output (<name>.tmp-<8 hex>) for a shard, or a PNG inside a shard folder
TEMPORARY_SHARD_FILE = re.compile(r"part-\d{5,}(\.parquet)?\.tmp-[0-9a-f]{8}")
TEMPORARY_PNG_FILE = re.compile(r"\d{9}\.png\.tmp-[0-9a-f]{8}")
MAX_WRITER_THREADS = 8
PROGRESS_LOG_FRACTION = 0.1  # without a bar, a progress line each 10% of the items


class ShardPlan:
    """A job's plan as the executor sees it. Subclasses are dataclasses that provide `uri` (the set's
    folder), `layout`, `shard_ranges` ([start, stop) items, one range per shard) and, when RESUMABLE,
    `fingerprint` (what a pending record must match); they implement the hooks below."""

    FORMAT: ClassVar[str]  # the manifest's "format"
    RESUMABLE: ClassVar[bool] = False  # record each finished shard under _pending/ for a rerun to skip
    SHARD_KEYS: ClassVar[tuple[str, ...]] = ("path", "rows", "bytes", "sha256")  # per shard, in the manifest
    error: ClassVar[type[ShardSetError]] = ShardSetError
    MANIFEST_SCHEMA: ClassVar[type[Manifest]] = Manifest  # the job's manifest fields, checked on reading

    uri: str
    layout: Layout
    shard_ranges: list[tuple[int, int]]

    @property
    def num_shards(self) -> int:
        return len(self.shard_ranges)

    @property
    def num_items(self) -> int:
        return self.shard_ranges[-1][1]

    def location(self) -> Location:
        return storage.resolve(self.uri)

    def write_shard(self, index: int) -> dict:
        """Write shard `index`; return its record ({"path", "rows", "bytes", "sha256"} and any extras)."""
        raise NotImplementedError

    def write_shards(self, indices: list[int]) -> Iterator[tuple[int, dict]]:
        """Write these shards, yielding (index, record) in this thread as each completes. Here: write_shard
        on a thread pool (Parquet encoding and image decoding release the GIL)."""
        pool = ThreadPoolExecutor(max_workers=min(len(indices), os.cpu_count() or 1, MAX_WRITER_THREADS))
        futures = {pool.submit(self.write_shard, i): i for i in indices}
        try:
            for f in as_completed(futures):
                if f.exception() is not None:
                    break
                yield futures[f], f.result()
            else:
                return
        except BaseException:  # the caller failed or was interrupted while we were writing
            pool.shutdown(wait=True, cancel_futures=True)
            discard_written(self, [f.result() for f in futures if f.done() and not f.cancelled()
                                   and f.exception() is None])
            raise
        finally:  # a failure, or a caller that stopped early: start no further shard
            pool.shutdown(wait=True, cancel_futures=True)
        discard_written(self, [f.result() for f in futures if not f.cancelled() and f.exception() is None])
        # the first failure in shard order, not in time: the same bad input names the same file
        raise next(f.exception() for f in futures if not f.cancelled() and f.exception() is not None)

    def manifest_fields(self, shards: list[dict]) -> dict[str, Any]:
        """The job's own manifest fields; raise self.error (or the job's input error) to refuse a commit."""
        return {}

    def check_committed(self, manifest: dict) -> None:
        """Raise self.error when the manifest committed at `uri` is another request's."""


def check_destination(loc: Location, fmt: str | None, error: type[ValueError], what: str) -> None:
    """Refuse (`error`, one line naming `what`, the folder and what is accepted) a folder that a set of
    format `fmt` must not be written into: the filesystem root or the home folder, an existing file, or
    an existing folder holding anything but such a set (neither its OWNER_FILE nor a manifest). New and
    empty folders pass, and so do this kind of set's own (to resume or to find it committed); with
    `fmt` None, any folder ganpipe claimed (claim_folder). Reads one listing of the folder itself (not
    below it); writes nothing."""
    if isinstance(loc.fs, pafs.LocalFileSystem) and is_protected_folder(loc.path):
        raise error(f"{what} {loc.uri}: the filesystem root or the home folder; allowed: a new or empty folder, "
                    "or one ganpipe wrote")
    info = loc.info()
    if info.type == pafs.FileType.NotFound:
        return
    if info.type != pafs.FileType.Directory:
        raise error(f"{what} {loc.uri}: an existing file; allowed: a new or empty folder, or one ganpipe wrote")
    names = sorted(posixpath.basename(i.path) for i in
                   loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)))
    if not names:
        return
    if OWNER_FILE in names:
        owner_format = _owner_format(loc.join(OWNER_FILE))
        if fmt is None or owner_format in (*accepted_formats(fmt), None):
            return
        raise error(f"{what} {loc.uri}: holds a set of another kind ({OWNER_FILE} says {owner_format!r}, not "
                    f"{fmt!r}); allowed: a new or empty folder, or one of {fmt}")
    if MANIFEST_NAME in names:  # committed before sets carried OWNER_FILE: its manifest decides (committed())
        return
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise error(f"{what} {loc.uri}: an existing folder that ganpipe did not write ({shown}; no {OWNER_FILE}); "
                "allowed: a new or empty folder, or one ganpipe wrote. Nothing was written or deleted there")


def claim_folder(loc: Location, written_by: str) -> None:
    """Mark a folder (check_destination passed) as ganpipe's own: OWNER_FILE, unless it has one."""
    owner = loc.join(OWNER_FILE)
    if not owner.exists():
        storage.write_bytes(owner, json.dumps({"written_by": written_by}, sort_keys=True).encode())


def _owner_format(owner: Location) -> str | None:
    """The format an OWNER_FILE names; None for an empty one (its writer was killed before writing it)."""
    try:
        with owner.fs.open_input_stream(owner.path) as f:
            text = f.read(4096)
        return str(json.loads(text)["format"]) if text else None
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"


@contextlib.contextmanager
def writing(plan: "ShardPlan") -> Iterator[None]:
    """Hold the plan's folder while its shards are written and committed (execute() and the Prefect flows
    run both steps inside). On entry: check the folder (check_destination), claim it (OWNER_FILE, created
    once, never replaced), and on local disk take its lock, waiting while another process of this host
    writes the same set, then delete the temporary files of its writers killed midway. On a failure, a
    folder this call created and nothing else wrote into is removed again."""
    loc = plan.location()
    check_destination(loc, plan.FORMAT, plan.error, plan.uri)
    owner = loc.join(OWNER_FILE)
    body = json.dumps({"format": plan.FORMAT}, sort_keys=True).encode()
    if not isinstance(loc.fs, pafs.LocalFileSystem):
        created = not owner.exists()
        if created:
            storage.write_bytes(owner, body)
        try:
            yield
        except BaseException:
            if created:
                _remove_claim(loc)
            raise
        return
    created_folder = not os.path.isdir(loc.path)
    os.makedirs(loc.path, exist_ok=True)
    try:  # O_EXCL: two writers never replace each other's file (a replaced file would split the lock)
        with os.fdopen(os.open(owner.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as f:
            f.write(body)
    except FileExistsError:
        pass
    try:
        fd = os.open(owner.path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise plan.error(f"{owner.uri}: cannot be opened ({os.strerror(e.errno) if e.errno else e}; "
                         f"{'a symbolic link' if e.errno == errno.ELOOP else 'not a file'}); refusing to write the "
                         "set there") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another ganpipe process is writing this set; waiting for it to finish", plan.uri)
            fcntl.flock(fd, fcntl.LOCK_EX)
        pending = loc.join(PENDING_DIR).path
        if os.path.islink(pending) or (os.path.lexists(pending) and not os.path.isdir(pending)):
            raise plan.error(f"{loc.join(PENDING_DIR).uri}: {'a symbolic link' if os.path.islink(pending) else 'a file'}"
                             "; ganpipe writes only a folder of its own there (remove it, or write the set "
                             "elsewhere)")
        delete_stale_temporaries(loc.path)
        try:
            yield
        except BaseException:
            if created_folder:
                _remove_claim(loc)
            raise
    finally:
        os.close(fd)  # releases the lock


def _remove_claim(loc: Location) -> None:
    """Remove OWNER_FILE (and the folder, on local disk) when nothing else is in the folder."""
    with contextlib.suppress(OSError):
        entries = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False, allow_not_found=True))
        if [posixpath.basename(i.path) for i in entries] == [OWNER_FILE]:
            loc.fs.delete_file(loc.join(OWNER_FILE).path)
            if isinstance(loc.fs, pafs.LocalFileSystem):
                os.rmdir(loc.path)


def delete_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files that killed writers of a local set left in `folder`: only names a
    shard writer gives them (TEMPORARY_SHARD_FILE in the folder, TEMPORARY_PNG_FILE in its shard
    folders), only regular files, never through a symbolic link. Call it only holding the set's lock
    (`writing`): then no live writer owns them. Returns the deleted paths."""
    deleted = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if TEMPORARY_SHARD_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                candidates = [entry]
            elif re.fullmatch(r"part-\d{5,}", entry.name) and entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inner:
                    candidates = [e for e in inner
                                  if TEMPORARY_PNG_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
            else:
                continue
            for c in candidates:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(c.path)
                    deleted.append(c.path)
    if deleted:
        log.info("deleted %d temporary files of interrupted writers in %s", len(deleted), folder)
    return deleted


def delete_pending_records(plan: "ShardPlan") -> None:
    """After the commit: delete the plan's own pending records (`_pending/part-NNNNN.json` for its shard
    indices, files only), then the folder when empty. Never through a symbolically linked folder."""
    pending = plan.location().join(PENDING_DIR)
    if isinstance(pending.fs, pafs.LocalFileSystem) and os.path.islink(pending.path):
        return
    for info in pending.fs.get_file_info(pafs.FileSelector(pending.path, recursive=False, allow_not_found=True)):
        m = re.fullmatch(r"part-(\d{5,})\.json", posixpath.basename(info.path))
        if m and int(m[1]) < plan.num_shards and info.type == pafs.FileType.File:
            pending.fs.delete_file(info.path)
    if isinstance(pending.fs, pafs.LocalFileSystem):
        with contextlib.suppress(OSError):
            os.rmdir(pending.path)  # only when empty


def discard_written(plan: ShardPlan, records: list[dict]) -> None:
    """After a failed job, delete the shards it wrote, so that nothing is left behind in the uncommitted
    folder (then the folder itself when it is empty, on local disk). A resumable plan keeps them: its
    rerun skips them (see write_pending). Best effort: the job's own error is the one to report."""
    if plan.RESUMABLE or not records:
        return
    loc = plan.location()
    if loc.join(MANIFEST_NAME).exists():  # committed meanwhile by another run of the same plan: keep
        return
    for record in records:
        shard = loc.join(record["path"])
        try:
            if shard.is_dir():
                loc.fs.delete_dir(shard.path)
            else:
                loc.fs.delete_file(shard.path)
        except OSError as e:
            log.warning("could not delete %s after the failure: %s", shard.uri, e)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        with contextlib.suppress(OSError):
            os.rmdir(loc.path)  # only when empty


def write_parquet_shard(plan: ShardPlan, index: int, schema: pa.Schema, tables: Iterable[pa.Table], *,
                        statistics: list[str] | bool) -> dict:
    """Write `tables` as shard `index` of `plan` (row groups of layout.row_group_rows, column statistics
    only for `statistics`), whole or not at all, hashing while writing so that nothing is read back.

    Returns {"path", "rows", "bytes", "sha256"}; the bytes are a pure function of the tables and the
    layout (pyarrow writes no timestamps).
    """
    name = plan.layout.shard_name(index)
    rows = 0
    with storage.atomic_output(plan.location().join(name)) as stream:
        sink = storage.HashingWriter(stream)
        with pq.ParquetWriter(sink, schema, compression=plan.layout.compression,
                              write_statistics=statistics) as writer:
            for table in tables:
                writer.write_table(table, row_group_size=plan.layout.row_group_rows)
                rows += table.num_rows
    return {"path": name, "rows": rows, "bytes": sink.bytes_written, "sha256": sink.sha256}


def committed(plan: ShardPlan) -> dict | None:
    """The manifest committed in the plan's folder, or None; plan.error when it is another request's."""
    manifest = read_manifest(plan.location(), plan.FORMAT, plan.error, plan.MANIFEST_SCHEMA)
    if manifest is not None:
        plan.check_committed(manifest)
    return manifest


def missing_shards(plan: ShardPlan, shards: list[dict]) -> list[int]:
    """Positions in `shards` whose shard is not in place: a file of the recorded size (a folder for PNGs)."""
    loc = plan.location()
    missing = []
    for k, s in enumerate(shards):
        info = loc.join(s["path"]).info()
        if plan.layout.compression == PNG_FOLDERS:
            in_place = info.type == pafs.FileType.Directory
        else:
            in_place = info.type == pafs.FileType.File and info.size == s["bytes"]
        if not in_place:
            missing.append(k)
    return missing


def written_shards(plan: ShardPlan) -> dict[int, dict]:
    """{index: record} of the shards an interrupted run of the same plan finished: pending records with
    the plan's fingerprint whose shard is still in place."""
    pending = plan.location().join(PENDING_DIR)
    done: dict[int, dict] = {}
    for info in storage.list_files(pending):
        try:
            index = int(re.fullmatch(r"part-(\d+)\.json", posixpath.basename(info.path))[1])
            rec = storage.read_json(Location(pending.fs, info.path, info.path))
            shard = rec["shard"]
        except (TypeError, ValueError, KeyError, OSError):  # not a record, or one cut short by a kill
            continue
        if (rec.get("fingerprint") == plan.fingerprint and index < plan.num_shards
                and shard.get("path") == plan.layout.shard_name(index) and not missing_shards(plan, [shard])):
            done[index] = shard
    return done


def write_pending(plan: ShardPlan, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Write every shard not yet written (a resumable plan skips those an interrupted run finished);
    return all shard records in shard order. `progress(items)` is called here as shards complete."""
    done = written_shards(plan) if plan.RESUMABLE else {}
    todo = [i for i in range(plan.num_shards) if i not in done]
    if progress is not None and done:
        progress(sum(plan.shard_ranges[i][1] - plan.shard_ranges[i][0] for i in done))
    for index, record in plan.write_shards(todo) if todo else ():
        if plan.RESUMABLE:
            storage.write_bytes(plan.location().join(PENDING_DIR, f"part-{index:05d}.json"),
                                json.dumps({"fingerprint": plan.fingerprint, "shard": record}, sort_keys=True).encode())
        done[index] = record
        if progress is not None:
            progress(plan.shard_ranges[index][1] - plan.shard_ranges[index][0])
    return [done[i] for i in range(plan.num_shards)]


def commit(plan: ShardPlan, shards: list[dict]) -> dict:
    """Commit the set: check every shard is in place, write the manifest last, then tidy up. Returns the
    manifest (one the same plan committed first is kept)."""
    existing = committed(plan)
    if existing is not None:
        return existing
    if len(shards) != plan.num_shards:
        raise plan.error(f"{plan.uri}: {len(shards)} shards written, expected {plan.num_shards}; not committing")
    for k in missing_shards(plan, shards):  # a shard lost after it was written must not be committed
        raise plan.error(f"{storage.join_uri(plan.uri, shards[k]['path'])}: missing or not {shards[k]['bytes']} "
                         "bytes; not committing")
    manifest = {
        "format": plan.FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(),
        **plan.manifest_fields(shards),
        "num_rows": sum(s["rows"] for s in shards),
        "num_bytes": sum(s["bytes"] for s in shards),
        "num_shards": len(shards),
        "shards": [{k: s[k] for k in plan.SHARD_KEYS} for s in shards],
        "layout": asdict(plan.layout),
    }
    manifest[FIELD_DIGESTS] = field_digests(manifest)
    loc = plan.location()
    storage.commit_json(loc.join(MANIFEST_NAME), manifest)
    try:  # best effort: leftovers are harmless, readers go by the manifest
        if plan.RESUMABLE:
            delete_pending_records(plan)
    except OSError as e:
        log.warning("could not tidy %s: %s", plan.uri, e)
    return manifest


def execute(plan: ShardPlan, progress: Callable[[int], None] | None = None) -> dict:
    """The whole job: nothing to do when the set is committed, else write the pending shards and commit.
    Returns the manifest."""
    manifest = committed(plan)
    if manifest is None:
        with writing(plan):
            manifest = committed(plan)  # committed by another writer while this one waited for the lock?
            if manifest is None:
                return commit(plan, write_pending(plan, progress))
    if progress is not None:
        progress(plan.num_items)
    return manifest


def progress_bar(total: int, desc: str, *, bar: bool = True, log: Callable[[str], None] | None = None,
                 unit: str = "rows"):
    """A tqdm over `total` items: a bar on stderr; without one, a line each ~10% handed to `log` (nothing
    without a log). Its `update(items)` is execute()'s `progress`; use it as a context manager."""
    from tqdm import tqdm

    if bar or log is None:
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not bar)
    # NOTE: plain counts (no unit_scale): infra.base.console turns these lines back into a bar on a terminal
    return tqdm(total=total, desc=desc, unit=unit, file=_LogLines(log), leave=False,
                miniters=max(1, round(total * PROGRESS_LOG_FRACTION)), mininterval=0,
                bar_format="{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, ETA {remaining}")


class _LogLines:
    """A tqdm "file" that hands each refresh to a log function as one line."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def write(self, text: str) -> None:
        if text.strip():
            self.log(text.strip())

    def flush(self) -> None:
        pass
