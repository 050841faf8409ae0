"""Staged datasets: source -> rows, each version a committed shard set (infra.data.shardset).

    <root>/datasets/<name>/<version>/part-00000.parquet ... part-NNNNN.parquet
    <root>/datasets/<name>/<version>/_manifest.json      <- written last; its presence commits

The version is a hash of the source fingerprint and the layout options, so staging the same input
twice finds the committed version and writes nothing, and a changed input gets a new version.
Shard bytes are a pure function of (source, options): pyarrow writes no timestamps, and the creation
time lives in the manifest only, so a staging killed midway and rerun produces the same bytes.

Writer (pipelines/stage.py wraps the same steps in Prefect tasks):
    plan = plan_staging(source, root, name)          # fingerprint -> version, layout, shard ranges
    plan.write_shard(i)                              # independent of the other shards: parallel-safe
    shard_writer.execute(plan)                           # committed, else write the shards on threads, commit
    stage(source, root, name)                        # plan + execute -> the StagedDataset
Reader:
    ds = open_dataset("<root>/datasets/<name>")      # latest committed; or ".../<name>/<version>"
    ds.shard_uris, ds.shard_paths, ds.filesystem, ds.manifest, ds.verify(), ds.load_arrays()
    x, labels = load_numpy(ref)                      # model-space float32 (stored * scale + offset)
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import NonNegativeInt

import numpy as np
import pyarrow as pa

from gan_core.config import check
from gan_core.data import Normalisation

from infra.base import storage
from infra.base.storage import StorageError
from infra.data import shard_writer, shardset
from infra.data.shard_writer import ShardPlan
from infra.data.shardset import MANIFEST_NAME, Layout, Manifest, ShardSet, ShardSetError
from infra.data.sources import ArraySpec, Source, SourceError, open_source

FORMAT = "ganpipe.dataset/2"  # /2: the manifest carries its field digests (/1 is read as it is)
# Bump when the shard layout or encoding changes: it is part of every version hash.
LAYOUT_VERSION = 1
DATASETS_DIR = "datasets"
DEFAULT_TARGET_SHARD_MIB = 64.0  # "tens of MB" per shard, uncompressed
DEFAULT_COMPRESSION = "zstd"
WRITE_SLICE_BYTES = 1 << 20  # stored bytes of x handed to the Parquet writer at a time (see write_shard)


class DatasetError(ShardSetError):
    """A dataset reference that cannot be used (nothing committed, another format, a bad manifest entry);
    a shard whose bytes do not match is a shardset.ChecksumError."""


class DatasetManifest(Manifest):
    """A staged dataset's own manifest fields that readers rely on (beside shardset.Manifest's)."""

    name: str
    version: str
    has_labels: bool
    num_skipped: NonNegativeInt


# A dataset's name: a folder under <root>/datasets/, and part of its run names (gan-<name>-<hash>) and of its
# default model name (ganpipe-<name>[-conditional], at most 128 characters as registry.model_name).
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,107}")


def check_dataset_name(name: Any, where: str) -> None:
    """ConfigError naming ``where`` (``--name``, ``source.name``, or the source a default name came from)
    unless ``name`` can name a dataset (DATASET_NAME, no '..'). The one rule: staging, the settings and
    the CLI all call it."""
    check(isinstance(name, str) and DATASET_NAME.fullmatch(name) is not None and ".." not in name, where, name,
          "letters, digits, '.', '-' and '_' (no '..'), starting with a letter or digit, at most 108 "
          "characters (pass --name for a source whose own name is not one)")


def dataset_uri(root: str, name: str) -> str:
    return storage.join_uri(root, DATASETS_DIR, name)


# --- the plan -----------------------------------------------------------------------------------


def choose_layout(spec: ArraySpec, *, rows_per_shard: int | None = None,
                  target_shard_mib: float = DEFAULT_TARGET_SHARD_MIB, row_group_rows: int | None = None,
                  compression: str = DEFAULT_COMPRESSION) -> Layout:
    """Shards of about target_shard_mib uncompressed unless rows_per_shard is given; SourceError for a
    non-positive size."""
    for option, value in (("rows per shard", rows_per_shard), ("rows per row group", row_group_rows)):
        if value is not None and value <= 0:
            raise SourceError(f"{option} must be positive, got {value}")
    return Layout(int(rows_per_shard or shardset.rows_for_bytes(spec.row_bytes, target_shard_mib)),
                  int(row_group_rows or shardset.default_row_group_rows(spec.row_bytes)), compression,
                  LAYOUT_VERSION)


def arrow_schema(spec: ArraySpec) -> pa.Schema:
    """Column x: fixed-size list of the stored dtype; optional label: int64; the data contract in the
    schema metadata."""
    fields = [shardset.x_field(spec.shape, spec.dtype)]
    if spec.has_labels:
        fields.append(pa.field("label", pa.int64(), nullable=False))
    return shardset.arrow_schema(fields, {
        "shape": list(spec.shape), "dtype": spec.dtype, "normalisation": spec.normalisation.to_dict(),
        "value_range": list(spec.value_range) if spec.value_range else None,
        "label_names": list(spec.label_names) if spec.label_names else None})


@dataclass
class StagingPlan(ShardPlan):
    """Everything the shard writers and the commit need; built once, cheaply, before any write."""

    FORMAT: ClassVar[str] = FORMAT
    error: ClassVar[type[ShardSetError]] = DatasetError
    MANIFEST_SCHEMA: ClassVar[type[Manifest]] = DatasetManifest

    source: Source
    root: str
    name: str
    fingerprint: dict  # the source's
    layout: Layout
    version: str
    shard_ranges: list[tuple[int, int]]
    options: dict = field(default_factory=dict)  # as given by the caller, recorded in the manifest

    @property
    def uri(self) -> str:
        """The version folder's URI."""
        return storage.join_uri(dataset_uri(self.root, self.name), self.version)

    def write_shard(self, index: int) -> dict:
        """Write shard `index`, a row group of source items decoded at a time. Returns the shard record
        plus "skipped_files" and the observed "min" / "max" (None without rows) for the manifest."""
        start, stop = self.shard_ranges[index]
        spec, step = self.source.spec, self.layout.row_group_rows
        schema = arrow_schema(spec)
        skipped, lo, hi, counts = [], math.inf, -math.inf, np.zeros(0, dtype=np.int64)

        def tables():
            nonlocal lo, hi, counts
            for a in range(start, stop, step):
                chunk = self.source.read(a, min(a + step, stop))
                skipped.extend(chunk.skipped)
                if len(chunk.x):
                    lo, hi = min(lo, float(chunk.x.min())), max(hi, float(chunk.x.max()))
                    if chunk.labels is not None and len(chunk.labels):
                        y = np.asarray(chunk.labels, dtype=np.int64)
                        if y.min() < 0:
                            raise SourceError(f"{self.source.default_name}: labels must be class indices 0, 1, "
                                              f"..., got {int(y.min())} (in items {a} to {min(a + step, stop) - 1})")
                        c = np.bincount(y)
                        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
                        counts[:len(c)] += c
                    # NOTE: one row group, handed to the writer in slices of WRITE_SLICE_BYTES: Parquet's
                    # list encoding buffers repetition/definition levels for a whole array at once (about
                    # 15 bytes per uint8 value), so slices bound the writer's memory (measured: 52 -> 21 MB
                    # for a 3 MB row group)
                    rows = max(1, WRITE_SLICE_BYTES // max(1, chunk.x[:1].nbytes))
                    x = pa.chunked_array([shardset.fixed_size_list(chunk.x[i:i + rows])
                                          for i in range(0, len(chunk.x), rows)])
                    columns = [x] + ([] if chunk.labels is None else [pa.array(chunk.labels, type=pa.int64())])
                    yield pa.Table.from_arrays(columns, schema=schema)

        # NOTE: no column statistics for x: per-page min/max of pixels serve no reader and cost about a
        # sixth of the encoding time; label keeps them (readers may filter on it).
        record = shard_writer.write_parquet_shard(self, index, schema, tables(),
                                                  statistics=["label"] if spec.has_labels else False)
        rows = record["rows"]
        return {**record, "skipped_files": skipped, "min": lo if rows else None, "max": hi if rows else None,
                "label_counts": counts.tolist()}

    def manifest_fields(self, shards: list[dict]) -> dict[str, Any]:
        spec = self.source.spec
        if not sum(s["rows"] for s in shards):
            raise SourceError(f"{self.source.default_name}: empty source (every file was skipped)")
        skipped = [f for s in shards for f in s["skipped_files"]]
        observed = [s[k] for s in shards for k in ("min", "max") if s[k] is not None]
        observed_range = [min(observed), max(observed)]
        return {
            "name": self.name,
            "version": self.version,
            "schema": {f.name: str(f.type) for f in arrow_schema(spec)},
            "shape": list(spec.shape),
            "dtype": spec.dtype,
            # NOTE: the nominal range for images (0..255, digits 0..16); the observed one for floats.
            "value_range": list(spec.value_range) if spec.value_range else observed_range,
            "observed_range": observed_range,
            "normalisation": spec.normalisation.to_dict(),
            "has_labels": spec.has_labels,
            "label_names": list(spec.label_names) if spec.label_names else None,
            # examples per class 0..K-1: the label distribution of class-conditional fakes
            "label_counts": _sum_counts(shards) if spec.has_labels else None,
            "num_skipped": len(skipped),
            "skipped_files": skipped,
            "source": self.fingerprint,
            "options": self.options,
        }


def _sum_counts(shards: list[dict]) -> list[int] | None:
    """The shard records' per-class counts summed (a shard may lack the highest classes); None when a
    record has none (written by an interrupted run of an older version: the manifest then has no counts)."""
    if any("label_counts" not in s for s in shards):
        return None
    per_shard = [s["label_counts"] for s in shards]
    total = [0] * max((len(c) for c in per_shard), default=0)
    for c in per_shard:
        for k, n in enumerate(c):
            total[k] += n
    return total


def plan_staging(source: Source | str, root: str, name: str | None = None, *, rows_per_shard: int | None = None,
                 target_shard_mib: float = DEFAULT_TARGET_SHARD_MIB, row_group_rows: int | None = None,
                 compression: str = DEFAULT_COMPRESSION, **source_options: Any) -> StagingPlan:
    """Open and fingerprint the source, check the destination, and fix version and shard ranges."""
    root_loc = storage.resolve(root)
    storage.check_bucket(root_loc)  # a missing destination bucket fails before any source work
    if isinstance(source, str):
        source = open_source(source, **source_options)
    check_dataset_name(name or source.default_name, "--name" if name else f"{source.where}: its default name")
    name = name or source.default_name
    layout = choose_layout(source.spec, rows_per_shard=rows_per_shard, target_shard_mib=target_shard_mib,
                           row_group_rows=row_group_rows, compression=compression)
    fingerprint = source.fingerprint()
    options = {"rows_per_shard": rows_per_shard, "target_shard_mib": target_shard_mib,
               "row_group_rows": row_group_rows, "compression": compression, **source_options}
    version = shardset.content_address({"source": fingerprint, "layout": asdict(layout)})  # the content address
    return StagingPlan(source, root_loc.uri, name, fingerprint, layout, version,
                       shardset.split_rows(len(source), layout.rows_per_shard), options)


def stage(source: Source | str, root: str, name: str | None = None, *,
          progress: Callable[[int], None] | None = None, **plan_options: Any) -> "StagedDataset":
    """Stage a source without Prefect: plan, write the shards on threads, commit. A no-op (nothing is
    written) when the version is already committed. `progress(items)` as shards complete."""
    plan = plan_staging(source, root, name, **plan_options)
    shard_writer.execute(plan, progress)
    return open_dataset(plan.uri)


# --- reader -------------------------------------------------------------------------------------


@dataclass
class StagedDataset(ShardSet):
    """One committed version: where its shards are, and what they hold."""

    error: ClassVar[type[ShardSetError]] = DatasetError  # its checksum errors stay shardset.ChecksumError

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation.from_dict(self.manifest["normalisation"])

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(x in the stored dtype with shape (rows, *shape), labels int64 or None). Small data only."""
        table = self.read_table()
        x = shardset.column_to_numpy(table, self.shape).astype(self.manifest["dtype"], copy=False)
        return x, (table.column("label").to_numpy() if "label" in table.column_names else None)


def list_versions(ref: str) -> list[str]:
    """Committed versions of `<root>/datasets/<name>`, oldest first."""
    loc = storage.resolve(ref)
    storage.check_bucket(loc)
    return storage.list_committed(loc, MANIFEST_NAME)


def open_dataset(ref: str, *, verify: bool = False) -> StagedDataset:
    """Resolve `<root>/datasets/<name>` (the latest committed version) or
    `<root>/datasets/<name>/<version>` to its manifest and shards; optionally verify checksums.
    Raises DatasetError (nothing committed there, another format, a manifest naming a foreign shard),
    shardset.ChecksumError (verify)."""
    loc = storage.resolve(ref)
    try:
        storage.check_bucket(loc)
    except StorageError as e:
        raise DatasetError(str(e)) from None
    manifest = shardset.read_manifest(loc, FORMAT, DatasetError, DatasetManifest)
    if manifest is None:
        versions = storage.list_committed(loc, MANIFEST_NAME)
        if not versions:
            if any(storage.relative(loc, i.path).startswith("part-") for i in storage.list_files(loc)):
                raise DatasetError(f"{loc.uri}: not committed (shards but no {MANIFEST_NAME}: an "
                                   "interrupted staging; stage it again)")
            raise DatasetError(f"{loc.uri}: no committed dataset version there")
        # latest = most recently created; created_at has microseconds where S3 mtimes have seconds
        # every version's manifest is checked: a damaged one must not decide (or break) which is latest
        manifests = {v: shardset.read_manifest(loc.join(v), FORMAT, DatasetError, DatasetManifest) for v in versions}
        latest = max(versions, key=lambda v: (manifests[v]["created_at"], v))
        loc = loc.join(latest)
        manifest = manifests[latest]
    ds = StagedDataset(loc.uri, manifest, loc)
    if verify:
        ds.verify()
    return ds


def normalise(stored: Any, manifest: dict) -> Any:
    """Stored values (numpy array or torch tensor) -> float32 model inputs, by the manifest's normalisation."""
    return Normalisation.from_dict(manifest["normalisation"]).to_model(stored)


def load_numpy(ref: str, *, normalised: bool = True, verify: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """A small staged dataset fully in memory: (x (rows, *shape), labels or None); x is float32 in
    model space when `normalised`, else in the stored dtype."""
    ds = open_dataset(ref, verify=verify)
    x, labels = ds.load_arrays()
    return (ds.normalisation.to_model(x) if normalised else x), labels
