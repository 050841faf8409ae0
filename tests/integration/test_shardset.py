"""The committed shard set (infra.data.shardset) under staged datasets and sample sets: manifests that name
anything but the layout's own shards are refused; a Parquet source on S3 read from many threads."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.data import datasets, shardset
from infra.data.sources import open_source
from infra.models import batch_sampling
from pipelines.cli import main
from tests.factories import committed_sample_set

pytestmark = pytest.mark.integration

FOREIGN_PATHS = ["../../etc/passwd", "/abs/path", "sub/part-00000.parquet", "part-00000.parquet/../../x"]


def _sample_set(out: Path, fmt: str = "parquet") -> str:
    return committed_sample_set(out, 1500, rows_per_shard=1024, fmt=fmt)


def _rewrite_manifest(uri: str, path: str) -> None:
    marker = Path(uri) / shardset.MANIFEST_NAME
    manifest = json.loads(marker.read_text())
    manifest["shards"][0]["path"] = path
    marker.write_text(json.dumps(manifest))


@pytest.mark.parametrize("path", FOREIGN_PATHS)
def test_dataset_manifest_naming_a_foreign_shard_is_refused(tmp_path, capsys, path):
    ds = datasets.stage("grid25", str(tmp_path), num_samples=1000, rows_per_shard=500)
    ds.verify()
    _rewrite_manifest(ds.uri, path)
    for ref in (ds.uri, str(tmp_path / "datasets" / "grid25")):  # the version, and "the latest"
        with pytest.raises(datasets.DatasetError, match="refusing") as e:
            datasets.open_dataset(ref)
        assert repr(path) in str(e.value)
        with pytest.raises(datasets.DatasetError, match="refusing"):
            datasets.open_dataset(ref, verify=True)
    assert main(["stage", ds.uri, "--verify"]) == 2
    assert repr(path) in capsys.readouterr().err
    # a set opened before its manifest entry changed: verify checks the name again before hashing
    ds.manifest["shards"][1]["path"] = path
    with pytest.raises(datasets.DatasetError, match="refusing"):
        ds.verify()


@pytest.mark.parametrize("path", FOREIGN_PATHS)
def test_sample_set_manifest_naming_a_foreign_shard_is_refused(tmp_path, path):
    uri = _sample_set(tmp_path / "samples")
    s = batch_sampling.open_samples(uri, verify=True)
    assert s.manifest["num_shards"] == 2 and s.load_arrays()[0].tolist() == list(range(1500))
    _rewrite_manifest(uri, path)
    with pytest.raises(batch_sampling.SamplingError, match="refusing"):
        batch_sampling.open_samples(uri)
    with pytest.raises(batch_sampling.SamplingError, match="refusing"):
        batch_sampling.open_samples(uri, verify=True)
    s.manifest["shards"][1]["path"] = path
    with pytest.raises(batch_sampling.SamplingError, match="refusing"):
        s.verify()


def test_png_sample_set_verifies_its_folders_and_refuses_parquet_names(tmp_path):
    uri = _sample_set(tmp_path / "png", fmt="png")
    s = batch_sampling.open_samples(uri, verify=True)
    assert [e["path"] for e in s.manifest["shards"]] == ["part-00000", "part-00001"]
    png = sorted(Path(uri, "part-00001").glob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:-1] + b"\0")
    with pytest.raises(batch_sampling.SamplingError, match="part-00001: checksum mismatch"):
        s.verify()
    _rewrite_manifest(uri, "part-00000.parquet")  # a name of the other layout
    with pytest.raises(batch_sampling.SamplingError, match="refusing"):
        batch_sampling.open_samples(uri)


def test_layout_names_and_split_rows():
    layout = shardset.Layout(1000, 100, "zstd")
    assert layout.shard_name(7) == "part-00007.parquet" and layout.is_shard_name("part-00007.parquet")
    assert not any(layout.is_shard_name(p) for p in FOREIGN_PATHS + ["part-00007", "part-7.parquet"])
    assert shardset.split_rows(1797, 500) == [(0, 449), (449, 898), (898, 1347), (1347, 1797)]
    assert shardset.split_rows(2500, 1024, balanced=False) == [(0, 1024), (1024, 2048), (2048, 2500)]
    x = np.arange(24, dtype=np.uint8).reshape(4, 2, 3)
    table = pa.table({"x": shardset.fixed_size_list(x)})
    assert np.array_equal(shardset.column_to_numpy(pa.concat_tables([table.slice(0, 1), table.slice(1)]), (2, 3)), x)


def test_parquet_source_on_s3_read_from_many_threads(s3_bucket, tmp_path):
    """Many threads reading row groups of one Parquet file on S3 at once (the staging pool does): the
    same row group (ranges inside one group) and different ones. A ParquetFile shared by the threads
    failed here with "ReadRangeCache did not find matching cache entry", or crashed."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 16)).astype(np.float32)
    labels = np.arange(4000) % 7
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": shardset.fixed_size_list(x), "label": pa.array(labels)}), buf, row_group_size=1000)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="in/vectors.parquet", Body=buf.getvalue())
    source = open_source(f"s3://{s3_bucket}/in/vectors.parquet")
    assert len(source.parquet.row_groups) == 4
    ranges = [(a, min(a + step, 4000)) for step in (25, 1000, 1500) for a in range(0, 4000, step)] * 6
    with ThreadPoolExecutor(max_workers=8) as pool:
        chunks = list(pool.map(lambda r: source.read(*r), ranges))
    for (a, b), chunk in zip(ranges, chunks):
        assert np.array_equal(chunk.x, x[a:b]) and np.array_equal(chunk.labels, labels[a:b])
    # and through the stager's own thread pool: many shards, each reading inside the same row groups
    ds = datasets.stage(f"s3://{s3_bucket}/in/vectors.parquet", str(tmp_path / "store"), rows_per_shard=100)
    assert ds.manifest["num_shards"] == 40
    got, got_labels = ds.load_arrays()
    assert np.array_equal(got, x) and np.array_equal(got_labels, labels)
