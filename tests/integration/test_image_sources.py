"""Encoded-image sources on real photographs: the same random crops of scikit-learn's two sample
photographs as an image folder, a Hugging Face-style Parquet file and a StyleGAN zip stage to the same
rows, on local disk and on moto's S3 server, and each reruns as a cache hit."""

from __future__ import annotations

import json
import zipfile

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.data import datasets
from infra.data.image_sources import ParquetImageSource, ZipImageSource
from infra.data.sources import ParquetSource, SourceError, open_source
from pipelines.cli import main
from pipelines.settings import resolve_settings
from tests.staging_data import file_mtimes, object_versions, upload_folder

pytestmark = pytest.mark.integration

KINDS = ("folder", "parquet", "zip")


def _uri(crops: dict, kind: str, base: str | None) -> str:
    """The crops of `kind` locally, or under s3://base (uploaded by the fixture)."""
    if base is None:
        return str(crops[kind])
    return f"{base}/{crops[kind].relative_to(crops['folder'].parent).as_posix()}"


@pytest.fixture(params=["local", "s3"])
def where(request, photo_crops, tmp_path, s3_server):
    """(source base or None for local, storage root): on S3 the crops are uploaded to a fresh versioned
    bucket, and the datasets are staged there too (to count rewrites)."""
    if request.param == "local":
        return None, str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    boto3.client("s3").put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    upload_folder(photo_crops["folder"].parent, bucket, "raw")
    return f"s3://{bucket}/raw", f"s3://{bucket}/ganpipe"


def _writes(root: str) -> dict:
    """Everything written under a storage root: mtimes locally, object versions on S3."""
    if root.startswith("s3://"):
        bucket, _, prefix = root[len("s3://"):].partition("/")
        return object_versions(bucket, prefix)
    from pathlib import Path

    return file_mtimes(Path(root))


def test_folder_parquet_and_zip_stage_the_same_rows_and_rerun_as_cache_hits(photo_crops, where):
    base, root = where
    versions = {}
    for kind in KINDS:
        ds = datasets.stage(_uri(photo_crops, kind, base), root, name=f"crops-{kind}", rows_per_shard=24)
        x, labels = ds.load_arrays()
        assert np.array_equal(x, photo_crops["x"]), kind  # the same pixels, in the same order
        assert np.array_equal(labels, photo_crops["labels"]), kind
        m = ds.manifest
        assert (m["shape"], m["dtype"], m["num_skipped"], m["has_labels"]) == ([3, 32, 32], "uint8", 0, True)
        # the folder's class names, and the Parquet file's ClassLabel names; a zip's dataset.json has none
        assert m["label_names"] == (None if kind == "zip" else ["china", "flower"])
        versions[kind] = ds.version
        before = _writes(root)
        again = datasets.stage(_uri(photo_crops, kind, base), root, name=f"crops-{kind}", rows_per_shard=24)
        assert again.version == ds.version and _writes(root) == before, kind  # a cache hit: nothing rewritten
    assert len(set(versions.values())) == 3  # content addresses of three different inputs


def test_resize_and_grayscale_go_through_one_decode_path(photo_crops):
    from PIL import Image, ImageOps

    rows = {}
    for kind in KINDS:
        source = open_source(str(photo_crops[kind]), image_size=20, grayscale=True)
        assert source.spec.shape == (1, 20, 20)
        rows[kind] = source.read(0, len(source)).x
    assert np.array_equal(rows["folder"], rows["parquet"]) and np.array_equal(rows["folder"], rows["zip"])
    first = ImageOps.fit(Image.fromarray(photo_crops["x"][0].transpose(1, 2, 0)).convert("L"), (20, 20),
                         method=Image.Resampling.BICUBIC)
    assert np.array_equal(rows["zip"][0], np.asarray(first).reshape(-1))


def test_options_and_columns_are_part_of_the_version(photo_crops, tmp_path):
    parquet = str(photo_crops["parquet"])
    plain = datasets.plan_staging(parquet, str(tmp_path)).version
    assert datasets.plan_staging(parquet, str(tmp_path)).version == plain
    assert datasets.plan_staging(parquet, str(tmp_path), image_size=16).version != plain
    assert datasets.plan_staging(parquet, str(tmp_path), grayscale=True).version != plain
    assert datasets.plan_staging(parquet, str(tmp_path), skip_bad=True).version != plain
    # the same bytes under other column names: another table, another version
    table = pq.read_table(parquet).rename_columns(["img", "class"])
    pq.write_table(table, tmp_path / "renamed.parquet")
    renamed = datasets.plan_staging(str(tmp_path / "renamed.parquet"), str(tmp_path), image_column="img",
                                    label_column="class")
    assert renamed.version != plain and renamed.fingerprint["image_column"] == "img"


def test_detection_between_numeric_and_image_parquet(photo_crops, tmp_path):
    assert isinstance(open_source(str(photo_crops["parquet"])), ParquetImageSource)
    assert isinstance(open_source(str(photo_crops["zip"])), ZipImageSource)
    # a column x makes a file numeric unless an image column is named
    table = pq.read_table(photo_crops["parquet"])
    both = table.append_column("x", pa.array([[0.5, 1.0]] * len(table), pa.list_(pa.float32())))
    pq.write_table(both, tmp_path / "both.parquet")
    assert isinstance(open_source(str(tmp_path / "both.parquet")), ParquetSource)
    assert isinstance(open_source(str(tmp_path / "both.parquet"), image_column="image"), ParquetImageSource)


def test_string_labels_binary_images_and_a_folder_of_parquet_files_through_the_cli(photo_crops, tmp_path, capsys):
    """Labels as strings (sorted -> 0..K-1), images as plain binary, two files read in path order."""
    table = pq.read_table(photo_crops["parquet"])
    n = len(table)
    png = pa.array([cell["bytes"] for cell in table.column("image").to_pylist()], pa.binary())
    names = pa.array(["china", "flower"], pa.string()).take(table.column("label"))
    (tmp_path / "shards").mkdir()
    half = n // 2
    for k, (a, b) in enumerate(((0, half), (half, n))):
        part = pa.table({"photo": png[a:b], "which": names[a:b]})
        pq.write_table(part, tmp_path / "shards" / f"train-{k:05d}-of-00002.parquet", row_group_size=7)
    root = tmp_path / "store"
    rc = main(["stage", str(tmp_path / "shards"), "--root", str(root), "--image-column", "photo",
               "--label-column", "which", "--image-size", "16", "--no-progress", "--engine", "direct"])
    assert rc == 0, capsys.readouterr().err
    ds = datasets.open_dataset(capsys.readouterr().out.strip())
    x, labels = ds.load_arrays()
    assert x.shape == (n, 3, 16, 16) and np.array_equal(labels, photo_crops["labels"])
    assert ds.manifest["label_names"] == ["china", "flower"]
    assert ds.manifest["source"]["label_column"] == "which"
    expected = open_source(str(photo_crops["folder"]), image_size=16)
    assert np.array_equal(x.reshape(n, -1), expected.read(0, n).x)


def test_zip_without_labels_and_with_null_labels(photo_crops, tmp_path):
    with zipfile.ZipFile(photo_crops["zip"]) as src, zipfile.ZipFile(tmp_path / "null.zip", "w") as dst, \
            zipfile.ZipFile(tmp_path / "none.zip", "w") as bare:
        for info in src.infolist():
            if info.filename != "dataset.json":
                dst.writestr(info.filename, src.read(info))
                bare.writestr(info.filename, src.read(info))
        dst.writestr("dataset.json", json.dumps({"labels": None}))
    for name in ("null.zip", "none.zip"):
        source = open_source(str(tmp_path / name))
        chunk = source.read(0, len(source))
        assert not source.spec.has_labels and chunk.labels is None
        assert np.array_equal(chunk.x, photo_crops["x"].reshape(len(chunk.x), -1))


def test_source_columns_from_settings_reach_staging():
    settings = resolve_settings(preset="digits", overrides=["source.uri=./hf/train.parquet",
                                                            "source.image_column=img", "source.label_column=fine"])
    options = settings.staging_options()
    assert (options["image_column"], options["label_column"]) == ("img", "fine")
    defaults = resolve_settings(preset="digits").staging_options()
    assert (defaults["image_column"], defaults["label_column"]) == (None, None)


def test_parquet_and_zip_on_s3_read_from_many_threads(photo_crops, s3_bucket):
    """Staging reads ranges of a source from several threads at once: each read opens its own file
    (a ParquetFile, a ZipFile over a buffered S3 file), so concurrent reads return the right rows."""
    from concurrent.futures import ThreadPoolExecutor

    upload_folder(photo_crops["folder"].parent, s3_bucket, "raw")
    n = len(photo_crops["x"])
    ranges = [(a, min(a + step, n)) for step in (5, 16, 30) for a in range(0, n, step)] * 3
    for kind in ("parquet", "zip"):
        source = open_source(_uri(photo_crops, kind, f"s3://{s3_bucket}/raw"))
        with ThreadPoolExecutor(max_workers=8) as pool:
            chunks = list(pool.map(lambda r: source.read(*r), ranges))
        for (a, b), chunk in zip(ranges, chunks):
            assert np.array_equal(chunk.x, photo_crops["x"][a:b].reshape(b - a, -1)), (kind, a, b)
            assert np.array_equal(chunk.labels, photo_crops["labels"][a:b]), (kind, a, b)


def test_prefect_flow_passes_the_column_options(prefect_harness, photo_crops, tmp_path):
    from pipelines.stage import stage_dataset

    table = pq.read_table(photo_crops["parquet"]).rename_columns(["img", "kind"])
    pq.write_table(table, tmp_path / "renamed.parquet", row_group_size=10)
    uri = stage_dataset(str(tmp_path / "renamed.parquet"), str(tmp_path / "store"), image_column="img",
                        label_column="kind", rows_per_shard=20)
    ds = datasets.open_dataset(uri)
    x, labels = ds.load_arrays()
    assert np.array_equal(x, photo_crops["x"]) and np.array_equal(labels, photo_crops["labels"])
    assert ds.manifest["options"]["image_column"] == "img" and ds.manifest["num_shards"] == 3


def test_a_negative_integer_label_in_a_parquet_column_is_refused_and_leaves_no_dataset(photo_crops, tmp_path):
    table = pq.read_table(photo_crops["parquet"])
    labels = np.asarray(table.column("label").to_numpy(), np.int64)
    labels[3] = -2
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    pq.write_table(table, tmp_path / "named.parquet")  # with the ClassLabel names: checked against them
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "plain.parquet")  # bare integers
    root = tmp_path / "store"
    with pytest.raises(SourceError, match=r"named.parquet row 3: label -2 in column 'label' \(allowed: 0..1"):
        datasets.stage(str(tmp_path / "named.parquet"), str(root))
    with pytest.raises(SourceError, match=r"plain.parquet row 3: label -2 in column 'label' \(allowed: 0..32767\)"):
        datasets.stage(str(tmp_path / "plain.parquet"), str(root))
    for name in ("named", "plain"):
        with pytest.raises(datasets.DatasetError):
            datasets.open_dataset(f"{root}/datasets/{name}")  # nothing that reads as a dataset
