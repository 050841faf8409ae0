"""A committed shard set: one folder of Parquet shards that a manifest, written last, commits.

    <set>/part-00000.parquet ... part-NNNNN.parquet   (a PNG layout: part-NNNNN/ folders, one PNG per row)
    <set>/_pending/part-NNNNN.json                     resumable plans: a shard an interrupted run finished
    <set>/_ganpipe.json                                written first: the folder is this set's own
    <set>/_manifest.json                               written last; its presence commits the set

Staged datasets (infra.data.datasets: source -> rows) and sample sets (infra.models.batch_sampling: model -> rows)
are both shard sets; each keeps its own rows and manifest fields, the mechanics live in two modules:
- here: the Layout (rows per shard, rows per row group, compression and a layout version, part of every
  content address; shards are named by the layout's pattern, and a manifest entry naming anything else
  (`../x`, an absolute path, a sub-folder) is refused when the set is opened or verified), the manifest's
  schema and digests, the Arrow encoding, and ShardSet: a committed set for reading (verify(): sha256 +
  size; read_table(); column_to_numpy());
- infra.data.shard_writer: the plan (ShardPlan), the folder's ownership and lock, the shard writer and the
  executor, whose steps the Prefect flows wrap in tasks and the CLI runs directly.

Ownership (what a writer may touch): a set is written only into a folder that is new, empty, or already
this kind of set's own (its _ganpipe.json or its manifest says so); clean-up deletes only exact paths
(infra.data.shard_writer).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, StringConstraints, ValidationError,
                      model_validator)

from gan_core.errors import UserError

from infra.base import storage
from infra.base.storage import Location

MANIFEST_NAME = "_manifest.json"
# Key under which each shard's data contract travels in its Parquet schema metadata.
SCHEMA_METADATA_KEY = b"ganpipe"
PNG_FOLDERS = "png"  # a layout's "compression" when each shard is a folder of one PNG per row
DEFAULT_ROW_GROUP_ROWS = 4096  # streaming readers fetch one row group at a time
ROW_GROUP_TARGET_BYTES = 16 << 20  # ...but cap a row group's uncompressed bytes for big rows


class ShardSetError(UserError, ValueError):
    """A shard set that cannot be used (nothing committed, another format, a bad manifest entry, a
    shard missing at commit); the message is one line."""


class ChecksumError(ShardSetError):
    """A shard whose bytes do not match the manifest."""


# --- layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How rows are cut into shards and row groups. Part of every content address (dataset versions,
    sampling request fingerprints): bump layout_version when the bytes of a shard change."""

    rows_per_shard: int
    row_group_rows: int
    compression: str  # a Parquet codec, or PNG_FOLDERS
    layout_version: int = 1

    @property
    def _suffix(self) -> str:
        return "" if self.compression == PNG_FOLDERS else ".parquet"

    def shard_name(self, index: int) -> str:
        return f"part-{index:05d}{self._suffix}"

    def is_shard_name(self, path: str) -> bool:
        return re.fullmatch(r"part-\d{5,}" + re.escape(self._suffix), path) is not None


# --- the manifest's schema ---------------------------------------------------------------------


class ShardEntry(BaseModel):
    """One shard as a manifest lists it (jobs may add fields)."""

    model_config = ConfigDict(extra="allow", strict=True)
    path: str
    rows: NonNegativeInt
    bytes: NonNegativeInt
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class LayoutFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    rows_per_shard: PositiveInt
    row_group_rows: PositiveInt
    compression: str
    layout_version: PositiveInt = 1


class NormalisationFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    scale: float
    offset: float


class Manifest(BaseModel):
    """What every reader of a shard set relies on (staged datasets and sample sets add their own fields
    in subclasses). A manifest is data that anyone with write access to the folder can edit: it is
    checked whole when a set is opened, so a reader never meets a missing key or a wrong type later."""

    model_config = ConfigDict(extra="allow", strict=True)
    format: str
    created_at: str
    num_rows: NonNegativeInt
    num_bytes: NonNegativeInt
    num_shards: NonNegativeInt
    shards: list[ShardEntry]
    layout: LayoutFields
    shape: Annotated[list[PositiveInt], Field(min_length=1)]
    dtype: Literal["uint8", "float32"]
    normalisation: NormalisationFields

    @model_validator(mode="after")
    def _totals_match_shards(self) -> "Manifest":
        for field, total in (("num_shards", len(self.shards)), ("num_rows", sum(s.rows for s in self.shards)),
                             ("num_bytes", sum(s.bytes for s in self.shards))):
            if getattr(self, field) != total:
                raise ValueError(f"{field} is {getattr(self, field)} but the shards add up to {total}")
        return self


def content_address(obj: Any, hex_chars: int = 16) -> str:
    """The first hex_chars of the sha256 of obj's canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:hex_chars]


def default_row_group_rows(row_bytes: int) -> int:
    """Rows per Parquet row group: DEFAULT_ROW_GROUP_ROWS, fewer for big rows, at least 256."""
    return int(min(DEFAULT_ROW_GROUP_ROWS, max(256, ROW_GROUP_TARGET_BYTES // row_bytes)))


def rows_for_bytes(row_bytes: int, target_shard_mib: float, align: int = 1) -> int:
    """Rows per shard of about target_shard_mib uncompressed: a whole number (>= 1) of align-row blocks."""
    return align * max(1, int(target_shard_mib * (1 << 20)) // (row_bytes * align))


class ShardRanges(Sequence):
    """The [start, stop) item ranges of a plan's shards, computed on access: a plan's memory does not
    grow with its shard count (a 10^9-sample request has up to ~10^6 shards). Compares equal to the
    list of the same ranges; pickles as three numbers (plans travel to Ray actors)."""

    def __init__(self, num_rows: int, rows_per_shard: int, balanced: bool = True):
        self.num_rows, self.rows_per_shard, self.balanced = int(num_rows), int(rows_per_shard), balanced
        self._len = max(1, math.ceil(self.num_rows / self.rows_per_shard))

    def __len__(self) -> int:
        return self._len

    def _bound(self, i: int) -> int:
        if self.balanced:
            return self.num_rows * i // self._len
        return min(self.num_rows, i * self.rows_per_shard)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(index)
        return self._bound(index), self._bound(index + 1)

    def __eq__(self, other) -> bool:
        if isinstance(other, ShardRanges):
            return (self.num_rows, self.rows_per_shard, self.balanced) == (other.num_rows, other.rows_per_shard,
                                                                           other.balanced)
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"ShardRanges({self.num_rows}, {self.rows_per_shard}, balanced={self.balanced})"


def split_rows(num_rows: int, rows_per_shard: int, *, balanced: bool = True) -> ShardRanges:
    """[start, stop) ranges of ceil(num_rows / rows_per_shard) shards (a lazy sequence): sizes that differ
    by at most one (balanced), else rows_per_shard rows in each but the last (boundaries stay on its
    blocks)."""
    return ShardRanges(num_rows, rows_per_shard, balanced)


# --- Arrow --------------------------------------------------------------------------------------


def x_field(shape: Sequence[int], dtype: str) -> pa.Field:
    """Column x: one example per row, a fixed-size list of prod(shape) values of `dtype`."""
    return pa.field("x", pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), math.prod(shape)), nullable=False)


def arrow_schema(fields: list[pa.Field], contract: dict[str, Any]) -> pa.Schema:
    """The shard schema, with the data contract (shape, dtype, ...) in its metadata so that a shard
    read on its own is still self-describing."""
    return pa.schema(fields, metadata={SCHEMA_METADATA_KEY: json.dumps(contract, sort_keys=True).encode()})


def fixed_size_list(x: np.ndarray) -> pa.FixedSizeListArray:
    """(rows, *shape) -> one fixed-size list of prod(shape) values per row; no copy of a contiguous array."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)), math.prod(x.shape[1:]))


def column_to_numpy(data: pa.Table | pa.ChunkedArray | pa.Array, shape: Sequence[int], column: str = "x"
                    ) -> np.ndarray:
    """A list column (a table's `column`, or the column itself) -> ndarray of shape (rows, *shape) in the
    lists' value dtype. Read-only when it is a view of Arrow's buffer (one chunk, no copy needed)."""
    col = data.column(column) if isinstance(data, pa.Table) else data
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    values = col.flatten().to_numpy(zero_copy_only=False)
    if values.size != len(col) * math.prod(shape):
        raise ShardSetError(f"column {column!r} holds {values.size / max(1, len(col)):g} values per row; the "
                            f"manifest's shape {list(shape)} needs {math.prod(shape)} (an edited manifest?)")
    return values.reshape((len(col), *shape))


# --- reading ------------------------------------------------------------------------------------


FIELD_DIGESTS = "fields_sha256"  # {field: sha256 of its canonical JSON} for every other manifest field


def field_digests(manifest: dict) -> dict[str, str]:
    """The content address of each manifest field (its canonical JSON's sha256), FIELD_DIGESTS excepted."""
    return {k: content_address(v, 64) for k, v in manifest.items() if k != FIELD_DIGESTS}


def accepted_formats(fmt: str) -> tuple[str, ...]:
    """``fmt`` ("ganpipe.dataset/2") and the format before it ("ganpipe.dataset/1"), written before
    manifests carried FIELD_DIGESTS; read as they are."""
    name, _, version = fmt.rpartition("/")
    return (fmt, f"{name}/{int(version) - 1}") if version.isdigit() and int(version) > 1 else (fmt,)


def _check_field_digests(manifest: dict, marker: str, error: type[ShardSetError]) -> None:
    """Every field against the digest recorded at commit: a hand-edited manifest (its shape, normalisation,
    labels, version, ...) is refused naming the first field that differs, or that was added or removed."""
    recorded = manifest.get(FIELD_DIGESTS)
    if not isinstance(recorded, dict):
        raise error(f"{marker}: field {FIELD_DIGESTS!r} is missing or not an object; the manifest was edited after "
                    "it was committed (stage or sample the set again)")
    actual = field_digests(manifest)
    for field in sorted(set(recorded) | set(actual)):
        if recorded.get(field) != actual.get(field):
            change = "removed" if field not in actual else "added" if field not in recorded else "changed"
            raise error(f"{marker}: field {field!r} was {change} after the set was committed (its digest in "
                        f"{FIELD_DIGESTS} differs); the manifest was edited: stage or sample the set again")


def check_manifest(manifest: Any, fmt: str, where: str, error: type[ShardSetError] = ShardSetError,
                   schema: type[Manifest] = Manifest) -> dict:
    """`manifest` (the parsed `_manifest.json` of the set at `where`) when it has format `fmt`, matches
    `schema` (keys, types, totals) and every shard entry names a shard of its layout; else `error`, one
    line naming the manifest file and the first bad field."""
    marker = storage.join_uri(where, MANIFEST_NAME)
    if not isinstance(manifest, dict):
        raise error(f"{marker}: not a JSON object (got {type(manifest).__name__}); not a shard-set manifest")
    if manifest.get("format") not in accepted_formats(fmt):
        raise error(f"{marker}: unknown manifest format {manifest.get('format')!r} (expected {fmt})")
    try:
        schema.model_validate(manifest)
    except ValidationError as e:
        first = e.errors()[0]
        field = f"field {'.'.join(str(p) for p in first['loc'])!r}: " if first["loc"] else ""
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise error(f"{marker}: {field}{first['msg']}{more}; the manifest is damaged or was not written by "
                    "ganpipe (stage or sample the set again)") from None
    layout = Layout(**manifest["layout"])
    for s in manifest["shards"]:
        _check_shard_name(layout, s["path"], where, error)
    if manifest["format"] == fmt:  # the current format carries its field digests; the one before did not
        _check_field_digests(manifest, marker, error)  # last: the checks above name the bad value itself
    return manifest


def _check_shard_name(layout: Layout, path: str, where: str, error: type[ShardSetError]) -> None:
    # a manifest is data: a path outside the set's own folder must never be read (or hashed) through it
    if not layout.is_shard_name(path):
        raise error(f"{storage.join_uri(where, MANIFEST_NAME)}: lists shard {path!r}, not a shard name of this "
                    f"set (expected {layout.shard_name(0).replace('00000', 'NNNNN')}); refusing to use it")


def load_manifest(marker: Location, error: type[ShardSetError] = ShardSetError) -> Any:
    """The parsed JSON of a manifest file, unchecked (see check_manifest); `error` when it is not JSON."""
    try:
        return json.loads(storage.read_bytes(marker).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{marker.uri}: not UTF-8 text (byte {e.start}); the manifest is damaged") from None
    except json.JSONDecodeError as e:
        raise error(f"{marker.uri}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); the manifest "
                    "is damaged") from None


def read_manifest(loc: Location, fmt: str, error: type[ShardSetError] = ShardSetError,
                  schema: type[Manifest] = Manifest) -> dict | None:
    """The manifest committed at `loc` (checked as by check_manifest), or None when nothing is committed."""
    marker = loc.join(MANIFEST_NAME)
    if not marker.exists():
        return None
    return check_manifest(load_manifest(marker, error), fmt, loc.uri, error, schema)


@dataclass
class ShardSet:
    """A committed shard set (subclassed per job, which sets the error types)."""

    uri: str  # the set's folder
    manifest: dict
    location: Location

    error: ClassVar[type[ShardSetError]] = ShardSetError
    checksum_error: ClassVar[type[ShardSetError]] = ChecksumError

    def _shard(self, entry: dict) -> Location:
        _check_shard_name(Layout(**self.manifest["layout"]), entry["path"], self.uri, self.error)
        return self.location.join(entry["path"])

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.location.fs

    @property
    def shard_paths(self) -> list[str]:
        """Shard paths inside `filesystem` (what pyarrow / Ray Data's read_parquet(filesystem=) take)."""
        return [self._shard(s).path for s in self.manifest["shards"]]

    @property
    def shard_uris(self) -> list[str]:
        return [self._shard(s).uri for s in self.manifest["shards"]]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    @property
    def num_rows(self) -> int:
        return self.manifest["num_rows"]

    def verify(self) -> None:
        """Recompute every shard's sha256 and size (a PNG shard: its files' bytes in index order); raise
        checksum_error naming the first shard that is missing or does not match."""
        for s in self.manifest["shards"]:
            shard = self._shard(s)
            if not shard.exists():
                raise self.checksum_error(f"{shard.uri}: missing (listed in the manifest)")
            files = ([Location(shard.fs, i.path, "") for i in storage.list_files(shard)] if shard.is_dir()
                     else shard)
            digest, size = storage.sha256_of(files)
            if digest != s["sha256"] or size != s["bytes"]:
                raise self.checksum_error(f"{shard.uri}: checksum mismatch (manifest sha256 {s['sha256'][:12]}…, "
                                          f"{s['bytes']} bytes; found {digest[:12]}…, {size} bytes)")

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows (of `columns`, default all), shards in manifest order (a stable order)."""
        tables = []
        for entry, path in zip(self.manifest["shards"], self.shard_paths):
            table = pq.read_table(path, columns=columns, filesystem=self.filesystem)
            x = table.schema.field("x").type if "x" in table.schema.names else None
            if isinstance(x, pa.FixedSizeListType) and x.list_size != math.prod(self.shape):
                raise self.error(f"{storage.join_uri(self.uri, MANIFEST_NAME)}: shape {list(self.shape)} "
                                 f"({math.prod(self.shape)} values per row) but shard {entry['path']} holds "
                                 f"{x.list_size} values per row; the manifest was edited or is another set's")
            tables.append(table)
        return pa.concat_tables(tables)
