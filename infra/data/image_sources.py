"""Sources of encoded images (PNG, JPEG, WebP), on local disk or under ``s3://``:

- ``ImageFolderSource``  a folder of image files; first-level sub-folders name the classes;
- ``ParquetImageSource`` Parquet file(s) with an encoded-image column, the ``{bytes, path}`` struct of the
  Hugging Face ``datasets`` Image feature (or plain binary), and an optional integer or string label column;
- ``ZipImageSource``     a zip archive of images with StyleGAN's optional ``dataset.json``
  (``{"labels": [[member name, integer label], ...]}`` or ``{"labels": null}``).

They differ only in where item i's bytes and label come from (``_encoded``); decoding is one path,
``EncodedImageSource.read``: Pillow decodes, converts to RGB or grayscale, and with a target size
``ImageOps.fit`` resizes (bicubic) so the shorter side fits and crops the centre square. Rows are
uint8 (C, H, W). A bad item is a one-line ``SourceError`` naming the file and row or member, or,
with ``skip_bad``, left out and listed in the chunk's ``skipped``. Without a target size every image
must have the size of the first readable one.

Memory: ``read(a, b)`` holds the encoded bytes of items a..b-1 (for Parquet: of the row groups they
lie in) and their decoded rows, never the whole dataset; a zip is read member by member through a
buffered seekable file, never extracted.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from gan_core.config import MAX_NUM_CLASSES

from infra.base import storage
from infra.data.shardset import content_address
from infra.data.sources import (IMAGE_NORMALISATION, IMAGE_SUFFIXES, RESIZE_METHOD, ArraySpec, Chunk, ParquetFiles,
                                Source, SourceError, file_tokens)
from infra.base.storage import Location

S3_FETCH_THREADS = 16  # concurrent GETs per image chunk of a folder on S3
PROBE_ITEMS = 16  # items fetched at a time while looking for the first readable image (its size)
DEFAULT_IMAGE_COLUMN = "image"  # the Hugging Face datasets Image feature's usual column name
DEFAULT_LABEL_COLUMN = "label"
# Hugging Face datasets keep their features (ClassLabel names) as JSON under this schema metadata key.
HF_METADATA_KEY = b"huggingface"
ZIP_LABELS_FILE = "dataset.json"  # StyleGAN's dataset_tool: {"labels": [[name, label], ...]} or null
# A buffered reader in front of the archive: members stored in name order are read by consecutive
# small reads (local header, name, data), which this turns into one GET per MiB on S3.
ZIP_READ_BUFFER_BYTES = 1 << 20
# A member larger than this (uncompressed, as its header states; zipfile never returns more) is a bad
# item, not a buffer to allocate: a zip bomb's members are small compressed and huge expanded.
MAX_MEMBER_BYTES = 256 << 20
# refused member names: absolute (/x, \x, C:x), Windows separators, or a '..' component
_UNSAFE_MEMBER = re.compile(r"^[/\\]|^[A-Za-z]:|\\|(^|/)\.\.(/|$)")


@dataclass(frozen=True)
class Missing:
    """An item with no bytes to decode, and why (a null Parquet cell, an unreadable zip member)."""

    reason: str


class EncodedImageSource(Source):
    """Items are encoded images; a subclass sets ``where`` and implements ``__len__`` and ``_encoded``,
    then calls ``_set_spec`` once it knows its labels."""

    where: str  # the source's URI, for messages

    def __init__(self, image_size: int | None, grayscale: bool, skip_bad: bool):
        if image_size is not None and image_size <= 0:
            raise SourceError(f"--image-size must be positive, got {image_size}")
        self.image_size, self.grayscale, self.skip_bad = image_size, grayscale, skip_bad
        self._size_from = ""  # the item the size was taken from (without a target size)

    def _encoded(self, start: int, stop: int) -> tuple[list[str], list[bytes | Missing], np.ndarray | None]:
        """Items start..stop-1: a name for each (file, 'file row r' or 'archive member m'), its encoded
        bytes or why there are none, and the labels (int64) or None."""
        raise NotImplementedError

    def _set_spec(self, has_labels: bool, label_names: tuple[str, ...] | None) -> None:
        channels = 1 if self.grayscale else 3
        height, width = (self.image_size,) * 2 if self.image_size is not None else self._first_size()
        self.spec = ArraySpec((channels, height, width), "uint8", IMAGE_NORMALISATION, (0.0, 255.0), has_labels,
                              label_names)

    def image_options(self) -> dict[str, Any]:
        """The decoding options, for the fingerprint: other options give other pixels."""
        out = {"image_size": self.image_size, "grayscale": self.grayscale, "skip_bad": self.skip_bad}
        if self.image_size is not None:
            out["resize"] = RESIZE_METHOD
        return out

    def _bad(self, where: str, reason: str) -> None:
        """None when skipping bad items, else the one-line error."""
        if not self.skip_bad:
            raise SourceError(f"{where}: {reason}")

    def _first_size(self) -> tuple[int, int]:
        """(height, width) of the first readable image, from its header. Without a target size every
        image must have it; the others are checked as they are decoded, so each is read only once."""
        from PIL import Image

        for a in range(0, len(self), PROBE_ITEMS):
            names, blobs, _ = self._encoded(a, min(a + PROBE_ITEMS, len(self)))
            for where, data in zip(names, blobs):
                if isinstance(data, Missing):
                    self._bad(where, data.reason)
                    continue
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        width, height = im.size
                except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
                    self._bad(where, f"unreadable or corrupt image ({e})")
                    continue
                self._size_from = where
                return height, width
        raise SourceError(f"{self.where}: empty source (every image is unreadable)")

    def _decode(self, data: bytes | Missing, where: str) -> np.ndarray | None:
        """One image as uint8 (C, H, W); None for a bad item when skipping."""
        from PIL import Image, ImageOps

        if isinstance(data, Missing):
            return self._bad(where, data.reason)
        try:
            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("L" if self.grayscale else "RGB")
                if self.image_size is not None:  # shorter side to image_size, centre square
                    im = ImageOps.fit(im, (self.image_size,) * 2, method=Image.Resampling.BICUBIC)
                elif (im.height, im.width) != self.spec.shape[1:]:
                    raise SourceError(f"images of mixed sizes without --image-size: {where} is "
                                      f"{im.width}x{im.height}, {self._size_from} is "
                                      f"{self.spec.shape[2]}x{self.spec.shape[1]}")
                a = np.asarray(im, dtype=np.uint8)
        except SourceError:
            raise
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
            return self._bad(where, f"unreadable or corrupt image ({e})")
        return a[None, :, :] if a.ndim == 2 else a.transpose(2, 0, 1)

    def read(self, start: int, stop: int) -> Chunk:
        names, blobs, labels = self._encoded(start, stop)
        rows, keep, skipped = [], [], []
        for k, (where, data) in enumerate(zip(names, blobs)):
            a = self._decode(data, where)
            if a is None:
                skipped.append(where)
                continue
            rows.append(a.reshape(-1))
            keep.append(k)
        x = np.stack(rows) if rows else np.zeros((0, self.spec.row_size), np.uint8)
        return Chunk(x, None if labels is None else labels[np.array(keep, dtype=np.int64)], skipped)


# --- image folders ------------------------------------------------------------------------------


class ImageFolderSource(EncodedImageSource):
    """Image files under a folder, sorted by path. If the images sit in sub-folders, the first
    sub-folder level names the class and becomes the label (sorted names -> 0, 1, ...)."""

    kind = "image_folder"

    def __init__(self, loc: Location, image_size: int | None, grayscale: bool, skip_bad: bool):
        super().__init__(image_size, grayscale, skip_bad)
        self.loc, self.where, self.default_name = loc, loc.uri, loc.name
        infos = [i for i in storage.list_files(loc) if i.path.lower().endswith(IMAGE_SUFFIXES)]
        if not infos:
            raise SourceError(f"{loc.uri}: empty source (no {'/'.join(IMAGE_SUFFIXES)} files)")
        self.files = infos
        self.rel = [storage.relative(loc, i.path) for i in infos]
        in_subdirs = ["/" in r for r in self.rel]
        if any(in_subdirs) and not all(in_subdirs):
            stray = self.rel[in_subdirs.index(False)]
            raise SourceError(f"{storage.join_uri(loc.uri, stray)}: image outside the class sub-folders "
                              "(put every image in a class folder, or none)")
        self.class_names = sorted({r.split("/", 1)[0] for r in self.rel}) if all(in_subdirs) else None
        self.labels = (np.array([self.class_names.index(r.split("/", 1)[0]) for r in self.rel], np.int64)
                       if self.class_names else None)
        self._fingerprint: dict | None = None
        self._set_spec(self.labels is not None, tuple(self.class_names) if self.class_names else None)

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            tokens = file_tokens(self.loc, self.files, self.rel)
            self._fingerprint = {"kind": self.kind, "num_files": len(tokens),
                                 "files_sha256": content_address(tokens, 64), **self.image_options()}
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.files)

    def _fetch(self, i: int) -> bytes:
        return storage.read_bytes(Location(self.loc.fs, self.files[i].path, ""))  # storage errors propagate

    def _encoded(self, start: int, stop: int) -> tuple[list[str], list[bytes | Missing], np.ndarray | None]:
        if isinstance(self.loc.fs, pafs.S3FileSystem):
            # one GET per image: overlap their latency; map keeps the order
            with ThreadPoolExecutor(max_workers=S3_FETCH_THREADS) as pool:
                blobs = list(pool.map(self._fetch, range(start, stop)))
        else:
            blobs = [self._fetch(i) for i in range(start, stop)]
        names = [storage.join_uri(self.loc.uri, r) for r in self.rel[start:stop]]
        return names, blobs, None if self.labels is None else self.labels[start:stop]


# --- Parquet with an encoded-image column -------------------------------------------------------


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _hf_class_names(schema: pa.Schema, column: str) -> tuple[str, ...] | None:
    """The ClassLabel names a Hugging Face dataset recorded for `column`, if any."""
    try:
        features = json.loads(schema.metadata[HF_METADATA_KEY])["info"]["features"]
        names = features[column]["names"] if features[column].get("_type") == "ClassLabel" else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return tuple(str(n) for n in names) if isinstance(names, list) and names else None


class ParquetImageSource(EncodedImageSource):
    """Parquet file(s) whose `image_column` holds encoded images: a struct with a ``bytes`` field (the
    Hugging Face ``datasets`` Image feature, ``{bytes, path}``) or plain binary. Labels come from
    `label_column` when the files have it: integers as they are (class names from the Hugging Face
    ClassLabel metadata when present), or strings, whose sorted distinct values become classes
    0..K-1. Rows keep the files' order (files sorted by path)."""

    kind = "parquet_images"

    def __init__(self, parquet: ParquetFiles, image_size: int | None, grayscale: bool, skip_bad: bool,
                 image_column: str | None = None, label_column: str | None = None):
        super().__init__(image_size, grayscale, skip_bad)
        self.parquet, self.loc, self.where = parquet, parquet.loc, parquet.loc.uri
        self.default_name = posixpath.splitext(self.loc.name)[0]
        self.image_column = image_column or DEFAULT_IMAGE_COLUMN
        self.label_column = label_column or DEFAULT_LABEL_COLUMN
        for fi, schema in enumerate(parquet.schemas):
            self._check_columns(fi, schema, label_column is not None)
        if parquet.num_rows == 0:
            raise SourceError(f"{self.where}: empty source (0 rows)")
        first = parquet.schemas[0]
        has_labels = self.label_column in first.names
        for fi, schema in enumerate(parquet.schemas):
            if (self.label_column in schema.names) != has_labels:
                raise SourceError(f"{parquet.uri(fi)}: column {self.label_column!r} present in some files but "
                                  "not others")
        self.columns = [self.image_column] + ([self.label_column] if has_labels else [])
        self.class_names: tuple[str, ...] | None = None  # string labels: sorted distinct values
        self.label_names: tuple[str, ...] | None = None
        if has_labels:
            label_type = first.field(self.label_column).type
            if _is_string(label_type):
                self.class_names = self.label_names = self._string_classes()
            elif pa.types.is_integer(label_type):
                self.label_names = _hf_class_names(first, self.label_column)
            else:
                raise SourceError(f"{parquet.uri(0)}: label column {self.label_column!r} must hold integers or "
                                  f"strings, got {label_type}")
        self._fingerprint: dict | None = None
        self._set_spec(has_labels, self.label_names)

    def _check_columns(self, fi: int, schema: pa.Schema, label_given: bool) -> None:
        where = self.parquet.uri(fi)
        if self.image_column not in schema.names:
            raise SourceError(f"{where}: no image column {self.image_column!r} (found: "
                              f"{', '.join(schema.names)}; name it with --image-column / source.image_column, "
                              "or give a numeric column 'x')")
        t = schema.field(self.image_column).type
        if not (_is_binary(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
                                  and _is_binary(t.field("bytes").type))):
            raise SourceError(f"{where}: column {self.image_column!r} must hold encoded images (a struct "
                              f"{{bytes, path}} or binary), got {t}")
        if label_given and self.label_column not in schema.names:
            raise SourceError(f"{where}: no label column {self.label_column!r} (found: {', '.join(schema.names)})")

    def _string_classes(self) -> tuple[str, ...]:
        """Sorted distinct values of a string label column (one pass over that column only)."""
        seen: set[str] = set()
        for fi, first, table in self.parquet.tables(0, len(self), [self.label_column]):
            col = table.column(self.label_column)
            if col.null_count:
                self._null_label(fi, first, col)
            seen.update(pc.unique(col).to_pylist())
        return tuple(sorted(seen))

    def _null_label(self, fi: int, first: int, col: pa.ChunkedArray) -> None:
        row = first + int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise SourceError(f"{self.parquet.uri(fi)} row {row}: no label (null in column {self.label_column!r})")

    def _labels(self, fi: int, first: int, col: pa.ChunkedArray) -> np.ndarray:
        if col.null_count:
            self._null_label(fi, first, col)
        if self.class_names is not None:
            index = {name: i for i, name in enumerate(self.class_names)}
            return np.array([index[v] for v in col.to_pylist()], np.int64)
        labels = col.to_numpy().astype(np.int64, copy=False)
        limit = len(self.label_names) if self.label_names else MAX_NUM_CLASSES
        bad = (labels < 0) | (labels >= limit)
        if bad.any():
            k = int(np.argmax(bad))
            allowed = f"0..{limit - 1} (the ClassLabel names)" if self.label_names else f"0..{limit - 1}"
            raise SourceError(f"{self.parquet.uri(fi)} row {first + k}: label {labels[k]} in column "
                              f"{self.label_column!r} (allowed: {allowed})")
        return labels

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            tokens = self.parquet.tokens()
            self._fingerprint = {"kind": self.kind, "num_files": len(tokens),
                                 "files_sha256": content_address(tokens, 64), "image_column": self.image_column,
                                 "label_column": self.label_column if self.spec.has_labels else None,
                                 **self.image_options()}
        return self._fingerprint

    def __len__(self) -> int:
        return self.parquet.num_rows

    def _encoded(self, start: int, stop: int) -> tuple[list[str], list[bytes | Missing], np.ndarray | None]:
        names: list[str] = []
        blobs: list[bytes | Missing] = []
        labels: list[np.ndarray] = []
        has_labels = len(self.columns) > 1  # also while the spec is being built
        for fi, first, table in self.parquet.tables(start, stop, self.columns):
            names += [f"{self.parquet.uri(fi)} row {first + k}" for k in range(table.num_rows)]
            for cell in table.column(self.image_column).to_pylist():
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                if data is None:
                    path = cell.get("path") if isinstance(cell, dict) else None
                    blobs.append(Missing(f"no image bytes (only the path {path!r}: embed the images in the file)"
                                         if path else "no image bytes (null)"))
                else:
                    blobs.append(data)
            if has_labels:
                labels.append(self._labels(fi, first, table.column(self.label_column)))
        return names, blobs, np.concatenate(labels) if has_labels else None


# --- zip archives ---------------------------------------------------------------------------------


class _RawFile(io.RawIOBase):
    """A pyarrow random-access file (local or S3) as a raw Python file for io.BufferedReader. Python
    files raise OSError for a seek before the start, and zipfile relies on it (probing for a zip64
    record in a small archive); pyarrow raises ArrowInvalid, translated here."""

    def __init__(self, f: pa.NativeFile):
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._f.readinto(b)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._f.seek(offset, whence)
        except pa.ArrowInvalid as e:
            raise OSError(f"seek to {offset} (whence {whence}): {e}") from None

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        super().close()


class ZipImageSource(EncodedImageSource):
    """Images in a zip archive, sorted by member name, read in place (never extracted). Labels come from
    ``dataset.json`` at the archive's top level when it holds them; without it, or with
    ``{"labels": null}``, the rows are unlabelled (folders inside an archive are not classes: StyleGAN's
    dataset_tool files images in numbered folders of 1,000).

    Member names are never used as paths; still, an archive with an absolute member name or one with a
    '..' component is refused as a whole, since only a tool meant to escape an extraction writes one.
    """

    kind = "zip_images"

    def __init__(self, loc: Location, info: pafs.FileInfo, image_size: int | None, grayscale: bool,
                 skip_bad: bool):
        super().__init__(image_size, grayscale, skip_bad)
        self.loc, self.info, self.where = loc, info, loc.uri
        self.default_name = posixpath.splitext(loc.name)[0]
        with self._open() as archive:
            infos = archive.infolist()
            seen: set[str] = set()
            for zi in infos:
                if _UNSAFE_MEMBER.search(zi.filename):
                    raise SourceError(f"{loc.uri}: member {zi.filename!r} is an absolute path or climbs out of the "
                                      "archive ('..'); refused")
                if zi.filename in seen:
                    raise SourceError(f"{loc.uri}: member {zi.filename!r} appears twice")
                seen.add(zi.filename)
            self.members = sorted(zi.filename for zi in infos
                                  if not zi.is_dir() and zi.filename.lower().endswith(IMAGE_SUFFIXES))
            if not self.members:
                raise SourceError(f"{loc.uri}: empty source (no {'/'.join(IMAGE_SUFFIXES)} members)")
            self.labels = self._read_labels(archive) if ZIP_LABELS_FILE in seen else None
        self._fingerprint: dict | None = None
        self._set_spec(self.labels is not None, None)

    @contextlib.contextmanager
    def _open(self) -> Iterator[zipfile.ZipFile]:
        """The archive over a buffered seekable file (local or S3); one per reader, as ZipFile is not
        meant to be shared between threads."""
        with io.BufferedReader(_RawFile(self.loc.fs.open_input_file(self.loc.path)), ZIP_READ_BUFFER_BYTES) as f:
            try:
                archive = zipfile.ZipFile(f)
            except (zipfile.BadZipFile, EOFError) as e:
                raise SourceError(f"{self.loc.uri}: not a readable zip archive ({e})") from None
            with archive:
                yield archive

    def _read_labels(self, archive: zipfile.ZipFile) -> np.ndarray | None:
        """Labels (int64, one per member in order) from dataset.json; None for {"labels": null}."""
        where = f"{self.loc.uri} member {ZIP_LABELS_FILE}"
        size = archive.getinfo(ZIP_LABELS_FILE).file_size  # from the central directory: nothing expanded yet
        if size > MAX_MEMBER_BYTES:
            raise SourceError(f"{where}: {size} bytes uncompressed, over the {MAX_MEMBER_BYTES} allowed")
        try:
            meta = json.loads(archive.read(ZIP_LABELS_FILE))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise SourceError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or "labels" not in meta:
            raise SourceError(f'{where}: expected {{"labels": [[name, label], ...]}} or {{"labels": null}}')
        entries = meta["labels"]
        if entries is None:
            return None
        if not isinstance(entries, list):
            raise SourceError(f'{where}: "labels" must be a list of [name, label] pairs or null, got '
                              f"{type(entries).__name__}")
        by_name: dict[str, int] = {}
        for k, entry in enumerate(entries):
            ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
            label = entry[1] if ok else None
            if not ok or isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < MAX_NUM_CLASSES:
                raise SourceError(f"{where}: labels[{k}] must be [member name, integer label in 0..{MAX_NUM_CLASSES - 1}]"
                                  f", got {json.dumps(entry)[:80]}")
            by_name[entry[0].replace("\\", "/")] = label  # dataset_tool may write Windows separators
        members = set(self.members)
        unknown = [n for n in by_name if n not in members]
        if unknown:
            raise SourceError(f"{where}: names {len(unknown)} file(s) that are not images in the archive, "
                              f"first {unknown[0]!r}")
        unlabelled = [m for m in self.members if m not in by_name]
        if unlabelled:
            raise SourceError(f"{where}: no label for {len(unlabelled)} image(s), first {unlabelled[0]!r}")
        return np.array([by_name[m] for m in self.members], np.int64)

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            token = file_tokens(self.loc, [self.info], [self.loc.name])
            self._fingerprint = {"kind": self.kind, "num_members": len(self.members),
                                 "files_sha256": content_address(token, 64), **self.image_options()}
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.members)

    def _encoded(self, start: int, stop: int) -> tuple[list[str], list[bytes | Missing], np.ndarray | None]:
        names = self.members[start:stop]
        blobs: list[bytes | Missing] = []
        with self._open() as archive:
            for name in names:
                size = archive.getinfo(name).file_size
                if size > MAX_MEMBER_BYTES:
                    blobs.append(Missing(f"member of {size} bytes uncompressed, over the {MAX_MEMBER_BYTES} allowed "
                                         "for one image"))
                    continue
                try:
                    blobs.append(archive.read(name))
                except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as e:
                    # a bad CRC, truncated data, encryption or an unsupported compression method
                    blobs.append(Missing(f"unreadable zip member ({e})"))
        where = [f"{self.loc.uri} member {n}" for n in names]
        return where, blobs, None if self.labels is None else self.labels[start:stop]
