"""Staging datasets into versioned Parquet shards, on local disk and on moto's S3 server (real HTTP)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time

import boto3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gan_core.data import load_digits, sample_mixture
from infra.data import datasets
from infra.data.datasets import open_dataset
from infra.data.sources import SourceError
from tests.staging_data import file_mtimes, make_png_folder, object_versions, upload_folder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """2,000 8x8 RGB PNGs in 4 class folders, and the arrays a stager must return for them."""
    root = tmp_path_factory.mktemp("pngs") / "shapes"
    x, labels = make_png_folder(root, num_images=2000, size_px=8)
    return root, x, labels


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path, s3_server):
    """A storage root on each backend; on S3 in a fresh versioned bucket (to count rewrites)."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    boto3.client("s3").put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return f"s3://{bucket}/ganpipe"


def test_digits_roundtrip_exact(storage_root):
    ds = datasets.stage("digits", storage_root, rows_per_shard=500)
    again = open_dataset(f"{storage_root}/datasets/digits", verify=True)  # latest committed version
    assert again.uri == ds.uri and again.version == ds.version
    m = again.manifest
    assert (m["shape"], m["dtype"], m["num_rows"], m["num_shards"]) == ([1, 8, 8], "uint8", 1797, 4)
    assert m["normalisation"] == {"scale": 0.125, "offset": -1.0} and m["value_range"] == [0.0, 16.0]
    assert [s["rows"] for s in m["shards"]] == [449, 449, 449, 450]
    assert m["has_labels"] and m["num_skipped"] == 0 and m["source"]["name"] == "digits"
    x, labels = datasets.load_numpy(again.uri)
    x_ref, labels_ref = load_digits()
    assert x.dtype == np.float32 and np.array_equal(x, x_ref) and np.array_equal(labels, labels_ref)
    assert m["label_counts"] == np.bincount(labels_ref).tolist()  # summed over the 4 shards
    stored, _ = again.load_arrays()
    assert stored.dtype == np.uint8 and stored.max() == 16
    assert np.array_equal(np.rint(again.normalisation.to_data(x)).astype(np.uint8), stored)


def test_grid25_roundtrip_and_layout(storage_root):
    ds = datasets.stage("grid25", storage_root, num_samples=12_000, seed=3, rows_per_shard=5000,
                        row_group_rows=1024)
    x, labels = ds.load_arrays()
    x_ref, labels_ref = sample_mixture("grid25", 12_000, 3)
    assert np.array_equal(x, x_ref) and np.array_equal(labels, labels_ref)
    m = ds.manifest
    assert (m["shape"], m["dtype"], m["normalisation"]) == ([2], "float32", {"scale": 1.0, "offset": 0.0})
    assert m["value_range"] == [float(x_ref.min()), float(x_ref.max())]
    assert [s["rows"] for s in m["shards"]] == [4000, 4000, 4000]
    meta = pq.ParquetFile(ds.filesystem.open_input_file(ds.shard_paths[0])).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [1024, 1024, 1024, 928]
    schema_meta = json.loads(pq.read_schema(ds.shard_paths[1], filesystem=ds.filesystem).metadata[b"ganpipe"])
    assert schema_meta["shape"] == [2] and schema_meta["dtype"] == "float32"
    # a different seed is a different input: a new version, and the old one stays readable
    other = datasets.stage("grid25", storage_root, num_samples=12_000, seed=4, rows_per_shard=5000,
                           row_group_rows=1024)
    assert other.version != ds.version
    assert sorted(datasets.list_versions(f"{storage_root}/datasets/grid25")) == sorted([ds.version, other.version])
    assert open_dataset(f"{storage_root}/datasets/grid25").version == other.version


def test_stacked_digits_roundtrip_exact(tmp_path):
    """The 1000-mode dataset stages exactly: uint8 digits per channel, the mode as the label."""
    from gan_core.data import stacked_digits

    ds = datasets.stage("stacked-digits", str(tmp_path / "store"), num_samples=600, seed=2, rows_per_shard=200)
    m = ds.manifest
    assert (m["shape"], m["dtype"], m["num_rows"], m["num_shards"]) == ([3, 8, 8], "uint8", 600, 3)
    x, labels = datasets.load_numpy(ds.uri, verify=True)
    x_ref, labels_ref = stacked_digits(600, 2)
    assert np.array_equal(x, x_ref) and np.array_equal(labels, labels_ref)
    assert len(m["label_counts"]) == labels_ref.max() + 1 and sum(m["label_counts"]) == 600


def test_png_folder_roundtrip_noop_and_new_version(storage_root, png_folder, tmp_path):
    folder, x_ref, labels_ref = png_folder
    ds = datasets.stage(str(folder), storage_root, rows_per_shard=500)
    m = ds.manifest
    assert (m["name"], m["shape"], m["num_rows"], m["num_shards"]) == ("shapes", [3, 8, 8], 2000, 4)
    assert m["label_names"] == ["a", "b", "c", "d"]
    assert m["normalisation"]["offset"] == -1.0 and abs(m["normalisation"]["scale"] * 127.5 - 1) < 1e-12
    x, labels = open_dataset(f"{storage_root}/datasets/shapes", verify=True).load_arrays()
    assert np.array_equal(x, x_ref) and np.array_equal(labels, labels_ref)
    assert m["label_counts"] == np.bincount(labels_ref, minlength=4).tolist()

    # staging again is a no-op: same version, nothing rewritten
    if storage_root.startswith("s3://"):
        bucket = storage_root[len("s3://"):].split("/")[0]
        before = object_versions(bucket, "ganpipe/")
        again = datasets.stage(str(folder), storage_root, rows_per_shard=500)
        after = object_versions(bucket, "ganpipe/")
        assert after == before and len(after) == 6 and set(after.values()) == {1}  # 4 shards, owner file, manifest
    else:
        before = file_mtimes(tmp_path / "store")
        time.sleep(0.01)
        again = datasets.stage(str(folder), storage_root, rows_per_shard=500)
        assert file_mtimes(tmp_path / "store") == before and len(before) == 6  # 4 shards, owner file, manifest
    assert again.version == ds.version and again.manifest["created_at"] == m["created_at"]

    # changing one input image gives a new version, which becomes the latest
    from PIL import Image

    copy = tmp_path / "shapes"
    shutil.copytree(folder, copy)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(copy / "b" / "img00001.png")
    new = datasets.stage(str(copy), storage_root, rows_per_shard=500)
    assert new.version != ds.version
    x_new, _ = new.load_arrays()
    assert (x_new != x_ref).any(axis=(1, 2, 3)).sum() == 1
    assert open_dataset(f"{storage_root}/datasets/shapes").version == new.version
    assert sorted(datasets.list_versions(f"{storage_root}/datasets/shapes")) == sorted([ds.version, new.version])


def test_png_folder_read_from_s3(s3_bucket, tmp_path):
    folder = tmp_path / "pets"
    x_ref, labels_ref = make_png_folder(folder, num_images=120, size_px=8, classes=("cat", "dog"), seed=5)
    upload_folder(folder, s3_bucket, "raw/pets")
    source, root = f"s3://{s3_bucket}/raw/pets", f"s3://{s3_bucket}/store"
    ds = datasets.stage(source, root, rows_per_shard=50)
    x, labels = ds.load_arrays()
    assert ds.manifest["num_shards"] == 3 and ds.manifest["source"]["kind"] == "image_folder"
    assert np.array_equal(x, x_ref) and np.array_equal(labels, labels_ref)
    assert datasets.stage(source, root, rows_per_shard=50).version == ds.version
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(buf, format="PNG")
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="raw/pets/dog/img00001.png", Body=buf.getvalue())
    assert datasets.stage(source, root, rows_per_shard=50).version != ds.version


def test_image_resize_centre_crop_grayscale(tmp_path):
    from PIL import Image

    src = tmp_path / "mixed"
    src.mkdir()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(12, 20), (16, 16), (30, 10)]]
    for i, a in enumerate(images):
        Image.fromarray(a).save(src / f"{i}.png")
    Image.fromarray(images[0]).save(src / "3.jpg", quality=95)
    ds = datasets.stage(str(src), str(tmp_path / "store"), image_size=6, grayscale=True)
    m = ds.manifest
    assert m["shape"] == [1, 6, 6] and not m["has_labels"] and m["num_rows"] == 4 and m["label_counts"] is None
    x, labels = ds.load_arrays()
    assert labels is None
    # 0.png is 20x12: resized (bicubic) to 10x6, centre 6x6 crop keeps columns 2..7
    expected = np.asarray(Image.fromarray(images[0]).convert("L").resize((10, 6), Image.Resampling.BICUBIC))[:, 2:8]
    assert np.array_equal(x[0, 0], expected)


def test_array_and_parquet_sources(tmp_path, s3_bucket):
    root = str(tmp_path / "store")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 3)).astype(np.float64)
    y = rng.integers(0, 5, 1000)
    np.save(tmp_path / "vectors.npy", vectors)
    np.save(tmp_path / "y.npy", y)
    ds = datasets.stage(str(tmp_path / "vectors.npy"), root, labels=str(tmp_path / "y.npy"))
    x, labels = ds.load_arrays()
    assert ds.manifest["dtype"] == "float32" and np.array_equal(x, vectors.astype(np.float32))
    assert np.array_equal(labels, y) and ds.manifest["label_counts"] == np.bincount(y).tolist()
    # labels are class indices: a negative one is refused before anything is staged
    np.save(tmp_path / "y_neg.npy", np.where(np.arange(1000) == 7, -1, y))
    with pytest.raises(SourceError, match=r"y_neg.npy.*labels must be class indices 0, 1, \.\.\., got -1"):
        datasets.stage(str(tmp_path / "vectors.npy"), root, name="neg", labels=str(tmp_path / "y_neg.npy"))
    assert not any(p.name == "neg" for p in (tmp_path / "store" / "datasets").iterdir())
    # the same in a numeric Parquet file's label column: refused while staging, no manifest written
    pq.write_table(pa.table({"x": pa.array(vectors.tolist(), pa.list_(pa.float64())),
                             "label": pa.array(np.where(np.arange(1000) == 7, -1, y))}), tmp_path / "neg.parquet")
    with pytest.raises(SourceError, match=r"^neg: labels must be class indices 0, 1, \.\.\., got -1 \(in items 0 to"):
        datasets.stage(str(tmp_path / "neg.parquet"), root)
    with pytest.raises(datasets.DatasetError):
        open_dataset(f"{root}/datasets/neg")

    images = rng.integers(0, 256, (300, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", x=images, labels=np.arange(300) % 3)
    ds_npz = datasets.stage(str(tmp_path / "imgs.npz"), root)
    assert ds_npz.manifest["shape"] == [1, 4, 4] and ds_npz.manifest["dtype"] == "uint8"
    assert np.array_equal(ds_npz.load_arrays()[0], images)

    # .npz read from S3, then re-staged from its own Parquet shards (shape and normalisation carried)
    boto3.client("s3").upload_file(str(tmp_path / "imgs.npz"), s3_bucket, "in/imgs.npz")
    ds_s3 = datasets.stage(f"s3://{s3_bucket}/in/imgs.npz", f"s3://{s3_bucket}/root")
    assert np.array_equal(ds_s3.load_arrays()[0], images)
    restaged = datasets.stage(ds_s3.uri, root, name="imgs-again", rows_per_shard=100)
    assert restaged.manifest["shape"] == [1, 4, 4]
    assert restaged.manifest["normalisation"] == ds_npz.manifest["normalisation"]
    x2, l2 = restaged.load_arrays()
    assert np.array_equal(x2, images) and np.array_equal(l2, np.arange(300) % 3)


def test_cli_stages_and_prints_version_uri(tmp_path, capsys):
    from pipelines.cli import main

    rc = main(["stage", "grid25", "--num-samples", "3000", "--root", str(tmp_path), "--no-progress",
               "--engine", "direct"])
    out = capsys.readouterr()
    uri = out.out.strip().splitlines()[-1]
    assert rc == 0 and uri.startswith(str(tmp_path / "datasets" / "grid25"))
    assert "3000 rows" in out.err
    assert open_dataset(uri).num_rows == 3000
    assert main(["stage", uri, "--verify"]) == 0
    assert "already committed" not in out.err
    # staging the same input again says so, as the README does, and writes nothing (issue 31)
    capsys.readouterr()
    assert main(["stage", "grid25", "--num-samples", "3000", "--root", str(tmp_path), "--no-progress",
                 "--engine", "direct"]) == 0
    again = capsys.readouterr()
    assert f"{uri}: already committed, nothing to write" in again.err and again.out.strip() == uri


def test_prefect_flow_stages_caches_and_reports(prefect_harness, tmp_path):
    from prefect.artifacts import Artifact

    from pipelines.stage import stage_dataset

    root = str(tmp_path / "store")
    uri = stage_dataset("grid25", root, num_samples=4000, seed=7, rows_per_shard=1000)
    ds = open_dataset(uri, verify=True)
    x_ref, labels_ref = sample_mixture("grid25", 4000, 7)
    x, labels = ds.load_arrays()
    assert np.array_equal(x, x_ref) and np.array_equal(labels, labels_ref) and ds.manifest["num_shards"] == 4
    artifact = Artifact.get("dataset-grid25")
    row = (json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data)[0]
    assert (row["rows"], row["shards"], row["shape"], row["version"]) == (4000, 4, "2", ds.version)

    # a run that died before its commit: the retried flow reuses the cached shards (no rewrite)
    shards_before = file_mtimes(tmp_path / "store")
    os.remove(os.path.join(ds.location.path, datasets.MANIFEST_NAME))
    assert stage_dataset("grid25", root, num_samples=4000, seed=7, rows_per_shard=1000) == uri
    after = file_mtimes(tmp_path / "store")
    assert {k: v for k, v in after.items() if "part-" in k} == {k: v for k, v in shards_before.items() if "part-" in k}
    open_dataset(uri, verify=True)
