"""Staged datasets: versioned, immutable Parquet shards plus a manifest that commits them.

    <root>/datasets/<name>/<version>/part-00000.parquet ... part-NNNNN.parquet
    <root>/datasets/<name>/<version>/_manifest.json      <- written last; its presence commits

The version is a hash of the source fingerprint and the layout options, so staging the same input
twice finds the committed version and writes nothing, and a changed input gets a new version.
Shard bytes are a pure function of (source, options): pyarrow writes no timestamps, and the creation
time lives in the manifest only, so a staging killed midway and rerun produces the same bytes.

Writer (the steps the Prefect flow in pipelines/stage.py composes):
    plan = plan_staging(source, root, name)          # fingerprint -> version, layout, shard ranges
    shards = [write_shard(plan, i) for i in range(plan.num_shards)]   # independent: parallel-safe
    manifest = commit_manifest(plan, shards)         # the commit
    stage(source, root, name)                        # all three, shards written by a thread pool
Reader:
    ds = open_dataset("<root>/datasets/<name>")      # latest committed; or ".../<name>/<version>"
    ds.shard_uris, ds.shard_paths, ds.filesystem, ds.manifest, ds.verify(), ds.load_arrays()
    x, labels = load_numpy(ref)                      # model-space float32 (stored * scale + offset)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import storage
from .sources import SCHEMA_METADATA_KEY, ArraySpec, Source, SourceError, open_source
from .storage import Location, StorageError

MANIFEST_NAME = "_manifest.json"
FORMAT = "ganpipe.dataset/1"
# Bump when the shard layout or encoding changes: it is part of every version hash.
LAYOUT_VERSION = 1  # (keep in step with write_shard's Parquet options)
DATASETS_DIR = "datasets"
DEFAULT_TARGET_SHARD_MIB = 64.0  # "tens of MB" per shard, uncompressed
DEFAULT_ROW_GROUP_ROWS = 4096  # streaming readers fetch one row group at a time
ROW_GROUP_TARGET_BYTES = 16 << 20  # ...but cap a row group's uncompressed bytes for big images
DEFAULT_COMPRESSION = "zstd"
VERSION_HEX_CHARS = 16


class DatasetError(ValueError):
    """A dataset reference that cannot be used (nothing committed, bad checksum, ...)."""


class ChecksumError(DatasetError):
    """A shard whose bytes do not match the manifest."""


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def dataset_uri(root: str, name: str) -> str:
    return storage.join_uri(root, DATASETS_DIR, name)


# --- layout and version -------------------------------------------------------------------------


def default_row_group_rows(row_bytes: int) -> int:
    """Rows per Parquet row group: DEFAULT_ROW_GROUP_ROWS, fewer for big rows, at least 256."""
    return int(min(DEFAULT_ROW_GROUP_ROWS, max(256, ROW_GROUP_TARGET_BYTES // row_bytes)))


@dataclass(frozen=True)
class Layout:
    """How rows are cut into shards and row groups; part of the version hash (of staged datasets and
    of batch-sampling requests, each with its own layout_version)."""

    rows_per_shard: int
    row_group_rows: int
    compression: str
    layout_version: int = LAYOUT_VERSION


def choose_layout(spec: ArraySpec, *, rows_per_shard: int | None = None,
                  target_shard_mib: float = DEFAULT_TARGET_SHARD_MIB, row_group_rows: int | None = None,
                  compression: str = DEFAULT_COMPRESSION) -> Layout:
    if row_group_rows is None:
        row_group_rows = default_row_group_rows(spec.row_bytes)
    if rows_per_shard is None:
        rows_per_shard = max(1, int(target_shard_mib * (1 << 20)) // spec.row_bytes)
    if rows_per_shard <= 0 or row_group_rows <= 0:
        raise SourceError(f"rows per shard ({rows_per_shard}) and rows per row group ({row_group_rows}) "
                          "must be positive")
    return Layout(int(rows_per_shard), int(row_group_rows), compression)


def dataset_version(fingerprint: dict, layout: Layout) -> str:
    """Content address of a staged dataset: sha256 of the source fingerprint and the layout."""
    blob = json.dumps({"source": fingerprint, "layout": asdict(layout)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:VERSION_HEX_CHARS]


def split_rows(num_items: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """[start, stop) item ranges of ceil(n / rows_per_shard) shards whose sizes differ by <= 1."""
    num_shards = max(1, math.ceil(num_items / rows_per_shard))
    bounds = [num_items * i // num_shards for i in range(num_shards + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


# --- writer -------------------------------------------------------------------------------------


@dataclass
class StagingPlan:
    """Everything the shard writers and the commit need; built once, cheaply, before any write."""

    source: Source
    root: str
    name: str
    fingerprint: dict
    layout: Layout
    version: str
    shard_ranges: list[tuple[int, int]]
    options: dict = field(default_factory=dict)  # as given by the caller, recorded in the manifest

    @property
    def version_uri(self) -> str:
        return storage.join_uri(dataset_uri(self.root, self.name), self.version)

    @property
    def num_shards(self) -> int:
        return len(self.shard_ranges)

    @property
    def num_items(self) -> int:
        return len(self.source)

    def location(self) -> Location:
        return storage.resolve(self.version_uri)


def plan_staging(source: Source | str, root: str, name: str | None = None, *, rows_per_shard: int | None = None,
                 target_shard_mib: float = DEFAULT_TARGET_SHARD_MIB, row_group_rows: int | None = None,
                 compression: str = DEFAULT_COMPRESSION, **source_options: Any) -> StagingPlan:
    """Open and fingerprint the source, check the destination, and fix version and shard ranges."""
    root_loc = storage.resolve(root)
    storage.check_bucket(root_loc)  # a missing destination bucket fails before any source work
    if isinstance(source, str):
        source = open_source(source, **source_options)
    name = name or source.default_name
    if not name or "/" in name or name.startswith("."):
        raise SourceError(f"--name: {name!r} is not a valid dataset name")
    layout = choose_layout(source.spec, rows_per_shard=rows_per_shard, target_shard_mib=target_shard_mib,
                           row_group_rows=row_group_rows, compression=compression)
    fingerprint = source.fingerprint()
    options = {"rows_per_shard": rows_per_shard, "target_shard_mib": target_shard_mib,
               "row_group_rows": row_group_rows, "compression": compression, **source_options}
    return StagingPlan(source, root_loc.uri, name, fingerprint, layout, dataset_version(fingerprint, layout),
                       split_rows(len(source), layout.rows_per_shard), options)


def arrow_schema(spec: ArraySpec) -> pa.Schema:
    """Column x: fixed-size list of the stored dtype; optional label: int64; the data contract in the
    schema metadata so that a shard read on its own is still self-describing."""
    fields = [pa.field("x", pa.list_(pa.from_numpy_dtype(np.dtype(spec.dtype)), spec.row_size), nullable=False)]
    if spec.has_labels:
        fields.append(pa.field("label", pa.int64(), nullable=False))
    meta = {"shape": list(spec.shape), "dtype": spec.dtype,
            "normalisation": {"scale": spec.scale, "offset": spec.offset},
            "value_range": list(spec.value_range) if spec.value_range else None,
            "label_names": list(spec.label_names) if spec.label_names else None}
    return pa.schema(fields, metadata={SCHEMA_METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})


def chunk_table(x: np.ndarray, labels: np.ndarray | None, schema: pa.Schema) -> pa.Table:
    """(rows, row_size) numpy -> Arrow table without copying the values."""
    row_size = schema.field("x").type.list_size
    columns = [pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)), row_size)]
    if labels is not None:
        columns.append(pa.array(labels, type=pa.int64()))
    return pa.Table.from_arrays(columns, schema=schema)


def write_shard(plan: StagingPlan, index: int, progress: Callable[[int], None] | None = None) -> dict:
    """Write shard `index` (a bounded number of rows decoded at a time) and describe it.

    Returns {"path", "rows", "bytes", "sha256", "skipped_files", "min", "max"}. The bytes depend only
    on the plan, so rewriting a shard after a crash reproduces it exactly.
    """
    start, stop = plan.shard_ranges[index]
    loc = plan.location()
    storage.make_dirs(loc)
    schema = arrow_schema(plan.source.spec)
    out = loc.join(shard_name(index))
    rows, skipped, lo, hi = 0, [], math.inf, -math.inf
    sink = storage.HashingWriter(out.fs.open_output_stream(out.path))
    try:
        # NOTE: no column statistics for x: per-page min/max of pixels serve no reader and cost
        # about a sixth of the encoding time; label keeps them (readers may filter on it).
        stats = ["label"] if plan.source.spec.has_labels else False
        with pq.ParquetWriter(sink, schema, compression=plan.layout.compression, write_statistics=stats) as writer:
            step = plan.layout.row_group_rows
            for a in range(start, stop, step):
                chunk = plan.source.read(a, min(a + step, stop))
                skipped += chunk.skipped
                if len(chunk.x) == 0:
                    continue
                writer.write_table(chunk_table(chunk.x, chunk.labels, schema), row_group_size=step)
                rows += len(chunk.x)
                lo, hi = min(lo, float(chunk.x.min())), max(hi, float(chunk.x.max()))
                if progress is not None:
                    progress(min(a + step, stop) - a)
    finally:
        sink.close()
    return {"path": shard_name(index), "rows": rows, "bytes": sink.bytes_written, "sha256": sink.sha256,
            "skipped_files": skipped, "min": lo if rows else None, "max": hi if rows else None}


def is_committed(version_uri: str) -> bool:
    return storage.resolve(version_uri).join(MANIFEST_NAME).exists()


def build_manifest(plan: StagingPlan, shards: list[dict]) -> dict:
    spec = plan.source.spec
    shards = sorted(shards, key=lambda s: s["path"])
    skipped = [f for s in shards for f in s["skipped_files"]]
    observed = [s[k] for s in shards for k in ("min", "max") if s[k] is not None]
    observed_range = [min(observed), max(observed)] if observed else None
    schema = arrow_schema(spec)
    return {
        "format": FORMAT,
        "name": plan.name,
        "version": plan.version,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "schema": {f.name: str(f.type) for f in schema},
        "shape": list(spec.shape),
        "dtype": spec.dtype,
        # NOTE: the nominal range for images (0..255, digits 0..16); the observed one for floats.
        "value_range": list(spec.value_range) if spec.value_range else observed_range,
        "observed_range": observed_range,
        "normalisation": {"scale": spec.scale, "offset": spec.offset},
        "has_labels": spec.has_labels,
        "label_names": list(spec.label_names) if spec.label_names else None,
        "num_rows": sum(s["rows"] for s in shards),
        "num_bytes": sum(s["bytes"] for s in shards),
        "num_shards": len(shards),
        "num_skipped": len(skipped),
        "skipped_files": skipped,
        "shards": [{"path": s["path"], "rows": s["rows"], "bytes": s["bytes"], "sha256": s["sha256"]}
                   for s in shards],
        "source": plan.fingerprint,
        "layout": asdict(plan.layout),
        "options": plan.options,
    }


def commit_manifest(plan: StagingPlan, shards: list[dict]) -> dict:
    """Commit the version by writing its manifest last, after checking every shard is in place.

    If another writer committed the same version first, its manifest is kept and returned.
    """
    loc = plan.location()
    marker = loc.join(MANIFEST_NAME)
    if marker.exists():
        return storage.read_json(marker)
    if len(shards) != plan.num_shards:
        raise DatasetError(f"{plan.version_uri}: {len(shards)} shards written, expected {plan.num_shards}")
    manifest = build_manifest(plan, shards)
    if manifest["num_rows"] == 0:
        raise SourceError(f"{plan.source.default_name}: empty source (every file was skipped)")
    for s in manifest["shards"]:  # cheap stat: a shard lost after it was written must not be committed
        info = loc.join(s["path"]).info()
        if info.type != pafs.FileType.File or info.size != s["bytes"]:
            raise DatasetError(f"{storage.join_uri(plan.version_uri, s['path'])}: missing or not "
                               f"{s['bytes']} bytes; not committing")
    storage.commit_json(marker, manifest)
    return manifest


def stage(source: Source | str, root: str, name: str | None = None, *, max_workers: int | None = None,
          progress: Callable[[int], None] | None = None, **plan_options: Any) -> "StagedDataset":
    """Stage a source without Prefect: plan, write shards on a thread pool, commit. A no-op (nothing
    is written) when the version is already committed."""
    return execute_plan(plan_staging(source, root, name, **plan_options), max_workers=max_workers,
                        progress=progress)


def execute_plan(plan: StagingPlan, *, max_workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> "StagedDataset":
    """Write a plan's shards on a thread pool (Parquet encoding and image decoding release the GIL)
    and commit; `progress(rows)` is called as row groups complete."""
    if not is_committed(plan.version_uri):
        lock = threading.Lock()

        def report(n: int) -> None:
            with lock:
                progress(n)

        workers = max_workers or min(plan.num_shards, os.cpu_count() or 1, 8)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(write_shard, plan, i, report if progress else None)
                       for i in range(plan.num_shards)]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:  # re-raise the first failure, in shard order; nothing is committed
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()
            shards = [f.result() for f in futures]
        commit_manifest(plan, shards)
    elif progress is not None:
        progress(plan.num_items)
    return open_dataset(plan.version_uri)


# --- reader -------------------------------------------------------------------------------------


@dataclass
class StagedDataset:
    """One committed version: where its shards are, and what they hold."""

    uri: str  # the version folder's URI
    manifest: dict
    location: Location

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.location.fs

    @property
    def shard_paths(self) -> list[str]:
        """Shard paths inside `filesystem` (what pyarrow / Ray Data's read_parquet(filesystem=) take)."""
        return [self.location.join(s["path"]).path for s in self.manifest["shards"]]

    @property
    def shard_uris(self) -> list[str]:
        return [storage.join_uri(self.uri, s["path"]) for s in self.manifest["shards"]]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    @property
    def num_rows(self) -> int:
        return self.manifest["num_rows"]

    def verify(self) -> None:
        """Recompute every shard's sha256 and size; raise ChecksumError naming the first mismatch."""
        for s in self.manifest["shards"]:
            shard = self.location.join(s["path"])
            if not shard.exists():
                raise ChecksumError(f"{shard.uri}: missing (listed in the manifest)")
            digest, size = storage.sha256_of(shard)
            if digest != s["sha256"] or size != s["bytes"]:
                raise ChecksumError(f"{shard.uri}: checksum mismatch (manifest sha256 {s['sha256'][:12]}…, "
                                    f"{s['bytes']} bytes; found {digest[:12]}…, {size} bytes)")

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows (of `columns`, default all), shards in manifest order (a stable order)."""
        tables = [pq.read_table(p, columns=columns, filesystem=self.filesystem) for p in self.shard_paths]
        return pa.concat_tables(tables)

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(x in the stored dtype with shape (rows, *shape), labels int64 or None). Small data only."""
        table = self.read_table()
        col = table.column("x").combine_chunks()
        x = col.flatten().to_numpy(zero_copy_only=False).reshape((len(col),) + self.shape)
        labels = table.column("label").to_numpy() if "label" in table.column_names else None
        return x.astype(self.manifest["dtype"], copy=False), labels


def list_versions(ref: str) -> list[str]:
    """Committed versions of `<root>/datasets/<name>`, oldest first."""
    loc = storage.resolve(ref)
    storage.check_bucket(loc)
    return storage.list_committed(loc, MANIFEST_NAME)


def open_dataset(ref: str, *, verify: bool = False) -> StagedDataset:
    """Resolve `<root>/datasets/<name>` (the latest committed version) or
    `<root>/datasets/<name>/<version>` to its manifest and shards; optionally verify checksums."""
    loc = storage.resolve(ref)
    try:
        storage.check_bucket(loc)
    except StorageError as e:
        raise DatasetError(str(e)) from None
    if not loc.join(MANIFEST_NAME).exists():
        versions = storage.list_committed(loc, MANIFEST_NAME)
        if not versions:
            if any(storage.relative(loc, i.path).startswith("part-") for i in storage.list_files(loc)):
                raise DatasetError(f"{loc.uri}: not committed (shards but no {MANIFEST_NAME}: an "
                                   "interrupted staging; stage it again)")
            raise DatasetError(f"{loc.uri}: no committed dataset version there")
        # latest = most recently created; created_at has microseconds where S3 mtimes have seconds
        manifests = {v: storage.read_json(loc.join(v, MANIFEST_NAME)) for v in versions}
        latest = max(versions, key=lambda v: (manifests[v]["created_at"], v))
        loc = loc.join(latest)
        manifest = manifests[latest]
    else:
        manifest = storage.read_json(loc.join(MANIFEST_NAME))
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{loc.uri}: unknown manifest format {manifest.get('format')!r} (expected {FORMAT})")
    ds = StagedDataset(loc.uri, manifest, loc)
    if verify:
        ds.verify()
    return ds


# --- normalisation ------------------------------------------------------------------------------


def normalisation(manifest: dict) -> tuple[float, float]:
    """(scale, offset) with model_input = stored_value * scale + offset."""
    n = manifest["normalisation"]
    return float(n["scale"]), float(n["offset"])


def normalise(stored: Any, manifest: dict) -> Any:
    """Stored values (uint8 or float32 numpy array or torch tensor) -> float32 model inputs."""
    scale, offset = normalisation(manifest)
    if isinstance(stored, np.ndarray):
        return (stored.astype(np.float32) * np.float32(scale) + np.float32(offset)).astype(np.float32)
    return stored.float() * scale + offset  # torch.Tensor


def denormalise(model_output: Any, manifest: dict, *, round_to_dtype: bool = False) -> Any:
    """Model outputs -> the data's original value range: (y - offset) / scale, clipped to the
    manifest's value range; with round_to_dtype, rounded and cast to the stored dtype (uint8 images)."""
    scale, offset = normalisation(manifest)
    lo, hi = manifest["value_range"] if manifest.get("value_range") else (None, None)
    y = (model_output - offset) / scale
    if isinstance(y, np.ndarray):
        y = y.astype(np.float32)
        if lo is not None:
            y = np.clip(y, lo, hi)
        if round_to_dtype:
            y = (np.rint(y) if manifest["dtype"] == "uint8" else y).astype(manifest["dtype"])
        return y
    y = y.float()  # torch.Tensor
    if lo is not None:
        y = y.clamp(lo, hi)
    if round_to_dtype and manifest["dtype"] == "uint8":
        import torch

        y = y.round().to(torch.uint8)
    return y


def load_numpy(ref: str, *, normalised: bool = True, verify: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """A small staged dataset fully in memory: (x (rows, *shape), labels or None); x is float32 in
    model space when `normalised`, else in the stored dtype."""
    ds = open_dataset(ref, verify=verify)
    x, labels = ds.load_arrays()
    return (normalise(x, ds.manifest) if normalised else x), labels
