"""Sources that can be staged: built-in datasets, ``.npy``/``.npz`` arrays, Parquet with a numeric
column ``x``, and (in infra.data.image_sources) encoded images: an image folder, Parquet with an
encoded-image column, a zip archive; on local disk or under ``s3://``. ``open_source`` picks one.

A source answers four questions, cheaply and in this order:
1. ``fingerprint()`` - what exactly is the input? (content hashes or S3 ETags, never the location)
2. ``spec``          - what does one example look like? (shape, dtype, normalisation, labels)
3. ``len()``         - how many items are there? (rows before any skipped bad file)
4. ``read(a, b)``    - items a..b-1 as a (rows, row_size) array in the stored dtype, plus labels.
``read`` is called for bounded ranges (a Parquet row group at a time), possibly from several threads
at once, so no source ever holds more than a few decoded chunks of images.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gan_core.config import MAX_NUM_CLASSES
from gan_core.data import Normalisation
from gan_core.errors import UserError
from gan_core.files import check_regular_file

from infra.base import storage
from infra.base.storage import Location, StorageError
from infra.data.shardset import SCHEMA_METADATA_KEY, column_to_numpy, content_address

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
ZIP_SUFFIX = ".zip"
ARRAY_SUFFIXES = (".npy", ".npz")
PARQUET_SUFFIX = ".parquet"
# dtypes an array source may have; everything else (ints, bools, complex, objects) is refused.
FLOAT_DTYPES = ("float16", "float32", "float64")
SUPPORTED_DTYPES = ("uint8",) + FLOAT_DTYPES
IMAGE_NORMALISATION = Normalisation(1.0 / 127.5, -1.0)  # uint8 images 0..255 -> [-1, 1]
# How --image-size resizes, recorded in the fingerprint: a different method gives other pixels, so
# another version (ImageOps.fit crops in source pixels, then resizes; earlier staging did the reverse).
RESIZE_METHOD = "ImageOps.fit/bicubic"
BUILTIN_SOURCES = ("digits", "stacked-digits", "ring8", "grid25")  # the one list (pipelines.settings uses it)


class SourceError(UserError, ValueError):
    """Bad input: printed as one line naming the file or value."""


@dataclass(frozen=True)
class ArraySpec:
    """What one example is: its shape, stored dtype and how to map stored values to model inputs
    (model_input = stored * scale + offset)."""

    shape: tuple[int, ...]
    dtype: str  # "uint8" | "float32"
    normalisation: Normalisation
    value_range: tuple[float, float] | None  # nominal range of stored values; None = observed
    has_labels: bool
    label_names: tuple[str, ...] | None = None

    @property
    def row_size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def row_bytes(self) -> int:
        return self.row_size * np.dtype(self.dtype).itemsize


@dataclass
class Chunk:
    x: np.ndarray  # (rows, row_size), spec.dtype
    labels: np.ndarray | None  # (rows,) int64
    skipped: list[str] = field(default_factory=list)  # files left out (only with skip_bad)


class Source:
    kind = "source"
    default_name = "dataset"
    where = "the source"  # what its errors name: the file, folder or URI it reads
    spec: ArraySpec

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> Chunk:
        raise NotImplementedError


def _check_labels(labels: Any, n: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise SourceError(f"{where}: labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) != n:
        raise SourceError(f"{where}: {len(labels)} labels for {n} examples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise SourceError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise SourceError(f"{where}: labels must be class indices 0, 1, ..., got {int(labels.min())}")
    if len(labels) and labels.max() >= MAX_NUM_CLASSES:
        raise SourceError(f"{where}: labels must be class indices below {MAX_NUM_CLASSES} (network.num_classes' "
                          f"bound), got {int(labels.max())}")
    return labels.astype(np.int64, copy=False)


def _check_finite(x: np.ndarray, where: str, first_row: int) -> None:
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
        if bad.any():
            raise SourceError(f"{where}: row {first_row + int(np.argmax(bad))} contains NaN or Inf")


# --- in-memory arrays: built-ins, .npy / .npz ---------------------------------------------------


class ArraySource(Source):
    """Examples already in (possibly memory-mapped) arrays: x is (N, *shape)."""

    kind = "arrays"

    def __init__(self, x: np.ndarray, labels: np.ndarray | None, spec: ArraySpec, fingerprint: dict,
                 name: str, where: str):
        if len(x) == 0:
            raise SourceError(f"{where}: empty source (0 examples)")
        self.x, self.labels, self.spec, self._fingerprint = x, labels, spec, fingerprint
        self.default_name, self.where = name, where

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.x)

    def read(self, start: int, stop: int) -> Chunk:
        x = np.asarray(self.x[start:stop])
        _check_finite(x, self.where, start)
        x = x.reshape(len(x), -1).astype(self.spec.dtype, copy=False)
        labels = None if self.labels is None else np.asarray(self.labels[start:stop], dtype=np.int64)
        return Chunk(x, labels)


def _content_sha256(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def builtin_source(name: str, num_samples: int, seed: int) -> ArraySource:
    from gan_core.data import load_digits, sample_mixture

    if name == "digits":
        x, labels = load_digits()  # float32 in [-1, 1] = pixel / 8 - 1; pixels are 0..16
        x = np.rint((x + 1.0) * 8.0).astype(np.uint8)  # exact: back to the original integers
        spec = ArraySpec(tuple(x.shape[1:]), "uint8", Normalisation(1.0 / 8.0, -1.0), (0.0, 16.0), True,
                         tuple(str(i) for i in range(10)))
        fp = {"kind": "builtin", "name": name, "content_sha256": _content_sha256(x, labels)}
        return ArraySource(x, labels, spec, fp, name, name)
    if name == "stacked-digits":  # 1000 modes: three digits as the channels (gan_core.data.stacked_digits)
        if num_samples <= 0:
            raise SourceError(f"{name}: --num-samples must be positive, got {num_samples}")
        from gan_core.data import stacked_digits

        x, labels = stacked_digits(num_samples, seed)
        x = np.rint((x + 1.0) * 8.0).astype(np.uint8)  # exact, as digits
        spec = ArraySpec(tuple(x.shape[1:]), "uint8", Normalisation(1.0 / 8.0, -1.0), (0.0, 16.0), True)
        fp = {"kind": "builtin", "name": name, "num_samples": num_samples, "seed": seed,
              "content_sha256": _content_sha256(x, labels)}
        return ArraySource(x, labels, spec, fp, name, name)
    if name in ("ring8", "grid25"):
        if num_samples <= 0:
            raise SourceError(f"{name}: --num-samples must be positive, got {num_samples}")
        x, labels = sample_mixture(name, num_samples, seed)
        spec = ArraySpec((2,), "float32", Normalisation(), None, True)
        fp = {"kind": "builtin", "name": name, "num_samples": num_samples, "seed": seed,
              "content_sha256": _content_sha256(x, labels)}
        return ArraySource(x, labels, spec, fp, name, name)
    raise SourceError(f"unknown built-in dataset {name!r}; built-ins: {' | '.join(BUILTIN_SOURCES)}")


def _array_spec(x: np.ndarray, where: str, has_labels: bool) -> ArraySpec:
    if x.dtype.name not in SUPPORTED_DTYPES:
        raise SourceError(f"{where}: unsupported dtype {x.dtype.name} (allowed: {', '.join(SUPPORTED_DTYPES)})")
    if x.ndim < 2:
        raise SourceError(f"{where}: expected an array of examples (N, ...), got shape {x.shape}")
    if x.dtype == np.uint8:  # uint8 arrays are images in 0..255
        return ArraySpec(tuple(x.shape[1:]), "uint8", IMAGE_NORMALISATION, (0.0, 255.0), has_labels)
    # float arrays are taken to be in model space already
    return ArraySpec(tuple(x.shape[1:]), "float32", Normalisation(), None, has_labels)


def _load_npy(loc: Location) -> Any:
    if isinstance(loc.fs, pafs.LocalFileSystem):
        # memory-mapped: .npy rows are read lazily, chunk by chunk
        return np.load(loc.path, mmap_mode="r", allow_pickle=False)
    return np.load(io.BytesIO(storage.read_bytes(loc)), allow_pickle=False)


def array_file_source(loc: Location, labels_loc: Location | None) -> ArraySource:
    where = loc.uri
    try:
        loaded = _load_npy(loc)
    except (ValueError, EOFError, pickle.UnpicklingError) as e:
        raise SourceError(f"{where}: not a readable .npy/.npz file ({e})") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        x_key = next((k for k in ("x", "images", "data", "arr_0") if k in keys), None)
        if x_key is None:
            raise SourceError(f"{where}: no array named x, images, data or arr_0 (found: {', '.join(keys)})")
        x = loaded[x_key]
    else:
        x = loaded
    if np.ndim(x) < 2:  # before anything takes len(x): a 0-d array has none
        raise SourceError(f"{where}: expected an array of examples (N, ...), got shape {np.shape(x)}")
    if isinstance(loaded, np.lib.npyio.NpzFile):
        y_key = next((k for k in ("label", "labels", "y") if k in keys), None)
        if y_key is not None:
            labels = _check_labels(loaded[y_key], len(x), f"{where}[{y_key}]")
    if labels_loc is not None:
        if labels is not None:
            raise SourceError(f"{where} already holds labels; drop --labels {labels_loc.uri}")
        try:
            y = _load_npy(labels_loc)
        except ValueError as e:
            raise SourceError(f"{labels_loc.uri}: not a readable .npy file ({e})") from None
        labels = _check_labels(y, len(x), f"{labels_loc.uri}")
    if len(x) == 0:
        raise SourceError(f"{where}: empty source (0 examples)")
    spec = _array_spec(x, where, labels is not None)
    files = [f for loc_ in (loc, labels_loc) if loc_ is not None
             for f in file_tokens(loc_, [storage.require_exists(loc_)], [loc_.name])]
    fp = {"kind": "arrays", "files": files}
    name = posixpath.splitext(loc.name)[0]
    return ArraySource(x, labels, spec, fp, name, where)


def file_tokens(base: Location, files: Sequence[pafs.FileInfo], names: Sequence[str]) -> list[list]:
    """[name, size, content token] per file below (or at) `base`: the ETag on S3 (one listing, nothing
    downloaded), sha256 on local disk."""
    if isinstance(base.fs, pafs.S3FileSystem):
        etags = storage.s3_etags(base)  # keyed by the path relative to base; "" = base itself
        rels = [storage.relative(base, i.path) for i in files]
        return [[n, i.size, "etag:" + etags.get("" if r == "." else r, "")] for n, i, r in zip(names, files, rels)]
    return [[n, i.size, "sha256:" + storage.sha256_of(Location(base.fs, i.path, ""))[0]] for n, i in zip(names, files)]


# --- Parquet ------------------------------------------------------------------------------------


class ParquetFiles:
    """Parquet file(s) below (or at) a location, their footers parsed once: the row groups in file order,
    read a range of rows at a time. Shared by the numeric and the encoded-image Parquet sources."""

    def __init__(self, loc: Location, files: list[pafs.FileInfo]):
        self.loc, self.files = loc, files
        self.footers: list[pq.FileMetaData] = []  # handed to every read
        # (file index, row group index, first global row, first row in its file, rows) per row group
        self.row_groups: list[tuple[int, int, int, int, int]] = []
        total = 0
        for fi, info in enumerate(files):
            try:
                footer = pq.read_metadata(loc.fs.open_input_file(info.path))
            except pa.ArrowInvalid as e:
                raise SourceError(f"{self.uri(fi)}: not a readable Parquet file ({e})") from None
            self.footers.append(footer)
            in_file = 0
            for g in range(footer.num_row_groups):
                n = footer.row_group(g).num_rows
                self.row_groups.append((fi, g, total, in_file, n))
                total, in_file = total + n, in_file + n
        self.num_rows = total
        self.schemas = [f.schema.to_arrow_schema() for f in self.footers]

    def uri(self, fi: int) -> str:
        """File `fi`'s URI, for messages."""
        return storage.join_uri(self.loc.uri, storage.relative(self.loc, self.files[fi].path)) \
            if self.files[fi].path != self.loc.path else self.loc.uri

    def tokens(self) -> list[list]:
        """[name, size, content token] per file (see file_tokens)."""
        rels = [storage.relative(self.loc, i.path) for i in self.files]
        names = [posixpath.basename(i.path) if r == "." else r for r, i in zip(rels, self.files)]
        return file_tokens(self.loc, self.files, names)

    def tables(self, start: int, stop: int, columns: list[str]) -> Iterator[tuple[int, int, pa.Table]]:
        """(file index, first row in that file, table) for each row group overlapping rows start..stop-1,
        sliced to them. Holds one row group at a time."""
        for fi, g, first, in_file, n in self.row_groups:
            if first + n <= start or first >= stop:
                continue
            lo, hi = max(start, first) - first, min(stop, first + n) - first
            table = read_row_group(self.loc.fs, self.files[fi].path, self.footers[fi], g, columns, self.uri(fi))
            yield fi, in_file + lo, table.slice(lo, hi - lo)


def read_row_group(fs: pafs.FileSystem, path: str, footer: pq.FileMetaData, group: int, columns: list[str],
                   where: str) -> pa.Table:
    """Row group `group` of a Parquet file whose footer is parsed already. SourceError for corrupt
    contents (the input is bad: retrying cannot help); storage errors propagate as OSError."""
    # NOTE: a ParquetFile per read. One shared by the staging threads races in its pre-buffer cache
    # over S3 ("ReadRangeCache did not find matching cache entry", or a crash). The footer parsed
    # once is handed in, so a fresh one costs only the open (on S3 a HEAD) per row group.
    pf = pq.ParquetFile(fs.open_input_file(path), metadata=footer)
    try:
        return pf.read_row_group(group, columns=columns)
    except pa.ArrowInvalid as e:
        raise SourceError(f"{where}: row group {group} is not readable ({e})") from None
    except OSError as e:
        # NOTE: Arrow raises a plain OSError both for undecodable pages ("Couldn't deserialize thrift",
        # "Corrupt snappy compressed data") and for storage failures. The latter name their origin
        # ("AWS Error ...", "[Errno 5] ..."); those stay OSErrors, which the staging flow retries.
        message = str(e)
        if "AWS Error" in message or "Errno" in message:
            raise
        raise SourceError(f"{where}: row group {group} is not readable ({message.splitlines()[0]})") from None


class ParquetSource(Source):
    """Existing Parquet file(s) with a column ``x`` (a list of numbers per row, all the same length)
    and optionally ``label``. Files written by ganpipe carry shape and normalisation in their schema
    metadata; for others the shape is (row_size,) and the normalisation follows from the dtype."""

    kind = "parquet"

    def __init__(self, parquet: ParquetFiles):
        self.parquet, self.loc, self.where = parquet, parquet.loc, parquet.loc.uri
        self.default_name = posixpath.splitext(self.loc.name)[0]
        uri = parquet.uri
        for fi, schema in enumerate(parquet.schemas):
            if "x" not in schema.names:
                raise SourceError(f"{uri(fi)}: no column 'x' (found: {', '.join(schema.names)})")
        if parquet.num_rows == 0:
            raise SourceError(f"{self.loc.uri}: empty source (0 rows)")
        first = parquet.schemas[0]
        has_labels = "label" in first.names
        self.columns = ["x", "label"] if has_labels else ["x"]
        for fi, schema in enumerate(parquet.schemas):
            if ("label" in schema.names) != has_labels:
                raise SourceError(f"{uri(fi)}: column 'label' present in some files but not others")
        value_type = first.field("x").type
        if not (pa.types.is_list(value_type) or pa.types.is_large_list(value_type)
                or pa.types.is_fixed_size_list(value_type)):
            raise SourceError(f"{uri(0)}: column 'x' must be a list of numbers, got {value_type}")
        dtype = np.dtype(value_type.value_type.to_pandas_dtype())
        if dtype.name not in SUPPORTED_DTYPES:
            raise SourceError(f"{uri(0)}: unsupported dtype {dtype.name} in column 'x' "
                              f"(allowed: {', '.join(SUPPORTED_DTYPES)})")
        meta = json.loads((first.metadata or {}).get(SCHEMA_METADATA_KEY, b"null"))
        _, _, sample = next(parquet.tables(0, 1, ["x"]))
        row_size = len(sample.column("x")[0].values)
        if meta:  # a staged dataset's shards (or a sample set's: data units, no normalisation)
            self.spec = ArraySpec(tuple(meta["shape"]), meta["dtype"], Normalisation.from_dict(meta.get("normalisation")),
                                  tuple(meta["value_range"]) if meta.get("value_range") else None,
                                  has_labels, tuple(meta["label_names"]) if meta.get("label_names") else None)
        elif dtype == np.uint8:
            self.spec = ArraySpec((row_size,), "uint8", IMAGE_NORMALISATION, (0.0, 255.0), has_labels)
        else:
            self.spec = ArraySpec((row_size,), "float32", Normalisation(), None, has_labels)
        if self.spec.row_size != row_size:
            raise SourceError(f"{uri(0)}: rows hold {row_size} values but the metadata says shape "
                              f"{list(self.spec.shape)}")

    def fingerprint(self) -> dict[str, Any]:
        tokens = self.parquet.tokens()
        return {"kind": self.kind, "num_files": len(tokens), "files_sha256": content_address(tokens, 64)}

    def __len__(self) -> int:
        return self.parquet.num_rows

    def read(self, start: int, stop: int) -> Chunk:
        xs, ys = [], []
        for fi, first, table in self.parquet.tables(start, stop, self.columns):
            where = self.parquet.uri(fi)
            col = table.column("x").combine_chunks()
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths != self.spec.row_size).any():
                bad = int(np.argmax(lengths != self.spec.row_size))
                raise SourceError(f"{where}: row {first + bad} holds {lengths[bad]} values, expected "
                                  f"{self.spec.row_size}")
            values = column_to_numpy(col, (self.spec.row_size,))
            _check_finite(values, where, first)
            xs.append(values.astype(self.spec.dtype, copy=False))
            if self.spec.has_labels:
                ys.append(table.column("label").to_numpy().astype(np.int64, copy=False))
        x = np.concatenate(xs) if xs else np.zeros((0, self.spec.row_size), self.spec.dtype)
        return Chunk(x, np.concatenate(ys) if self.spec.has_labels else None)


# --- entry point --------------------------------------------------------------------------------


def _refuse_special_file(loc: storage.Location, info: pafs.FileInfo, what: str) -> None:
    """SourceError for a local FIFO, device or socket (reading one can block forever or never end)."""
    if isinstance(loc.fs, pafs.LocalFileSystem) and info.type not in (pafs.FileType.File, pafs.FileType.Directory):
        try:
            check_regular_file(loc.path, what)
        except ValueError as e:
            raise SourceError(f"{e} or a folder") from None


def open_source(source: str, *, num_samples: int = 50_000, seed: int = 0, image_size: int | None = None,
                grayscale: bool = False, skip_bad: bool = False, labels: str | None = None,
                image_column: str | None = None, label_column: str | None = None) -> Source:
    """A source from its name or URI: a built-in name, or a local path / s3:// URI of an image folder,
    a .npy/.npz file, a .zip of images, or Parquet file(s). Parquet holding a column ``x`` is numeric
    unless `image_column` is given; otherwise it must hold an encoded-image column (`image_column`,
    default ``image``). SourceError (one line) for anything unusable."""
    from infra.data.image_sources import ImageFolderSource, ParquetImageSource, ZipImageSource  # they build on this module

    if source in BUILTIN_SOURCES:
        _refuse_column_options(image_column, label_column)
        return builtin_source(source, num_samples, seed)
    try:
        loc = storage.resolve(source)
        info = storage.require_exists(loc)
    except StorageError as e:
        raise SourceError(f"source: {e}") from None
    _refuse_special_file(loc, info, "source")
    labels_loc = None
    if labels is not None:
        labels_loc = storage.resolve(labels)
        try:
            _refuse_special_file(labels_loc, storage.require_exists(labels_loc), "--labels")
        except StorageError as e:
            raise SourceError(f"labels: {e}") from None
    if info.type == pafs.FileType.File:
        lower = loc.path.lower()
        if lower.endswith(ARRAY_SUFFIXES):
            _refuse_column_options(image_column, label_column)
            return array_file_source(loc, labels_loc)
        if labels_loc is not None:
            raise SourceError("--labels applies to .npy/.npz sources only")
        if lower.endswith(PARQUET_SUFFIX):
            parquets = [info]
        elif lower.endswith(ZIP_SUFFIX):
            _refuse_column_options(image_column, label_column)
            return ZipImageSource(loc, info, image_size, grayscale, skip_bad)
        else:
            raise SourceError(f"{loc.uri}: unsupported source file (expected .npy, .npz, .parquet or .zip)")
    else:
        if labels_loc is not None:
            raise SourceError("--labels applies to .npy/.npz sources only")
        files = storage.list_files(loc)
        images = [i for i in files if i.path.lower().endswith(IMAGE_SUFFIXES)]
        parquets = [i for i in files if i.path.lower().endswith(PARQUET_SUFFIX)]
        if images and parquets:
            raise SourceError(f"{loc.uri}: holds both images and Parquet files; point at one kind")
        if images:
            _refuse_column_options(image_column, label_column)
            return ImageFolderSource(loc, image_size, grayscale, skip_bad)
        if not parquets:
            raise SourceError(f"{loc.uri}: empty source (no images, .npy/.npz or Parquet files)")
    parquet = ParquetFiles(loc, parquets)
    if image_column is None and "x" in parquet.schemas[0].names:
        if label_column is not None:
            raise SourceError("--label-column applies to Parquet image sources only (numeric Parquet: column label)")
        return ParquetSource(parquet)
    return ParquetImageSource(parquet, image_size, grayscale, skip_bad, image_column, label_column)


def _refuse_column_options(image_column: str | None, label_column: str | None) -> None:
    if image_column is not None or label_column is not None:
        raise SourceError("--image-column / --label-column apply to Parquet sources only")
