"""Bad input to staging: each gives a one-line error naming the file or value, and nothing is committed.
Also a real SIGKILL of a staging process midway, then a rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from infra.data import datasets
from infra.data.datasets import DatasetError
from infra.data.shardset import ChecksumError
from infra.data.sources import SourceError
from pipelines.cli import main
from pipelines.stage import is_transient_storage_error
from tests.staging_data import make_png_folder

pytestmark = pytest.mark.integration


def assert_nothing_committed(root: Path) -> None:
    manifests = list(root.rglob(datasets.MANIFEST_NAME)) if root.exists() else []
    assert manifests == []


def cli_error(capsys, *argv: str) -> str:
    """Run `ganpipe stage ...` in-process; expect exit 2 and exactly one line on stderr."""
    rc = main(["stage", *argv, "--no-progress", "--engine", "direct"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- missing or empty sources ------------------------------------------------------------------


def test_missing_path_and_bucket(tmp_path, capsys, s3_bucket):
    root = tmp_path / "store"
    assert str(tmp_path / "nope") in cli_error(capsys, str(tmp_path / "nope"), "--root", str(root))
    assert "'no-such-bucket' does not exist" in cli_error(capsys, "s3://no-such-bucket/raw", "--root", str(root))
    assert "'no-such-bucket' does not exist" in cli_error(capsys, "digits", "--root", "s3://no-such-bucket/x")
    assert f"s3://{s3_bucket}/missing" in cli_error(capsys, f"s3://{s3_bucket}/missing", "--root", str(root))
    assert_nothing_committed(root)


def test_empty_sources(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    np.save(tmp_path / "none.npy", np.zeros((0, 4), np.float32))
    root = tmp_path / "store"
    assert "empty source" in cli_error(capsys, str(tmp_path / "empty"), "--root", str(root))
    assert "empty source" in cli_error(capsys, str(tmp_path / "none.npy"), "--root", str(root))
    assert_nothing_committed(root)


# --- images --------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_bad_image(tmp_path):
    folder = tmp_path / "imgs"
    make_png_folder(folder, num_images=40, size_px=8, classes=("x", "y"))
    good = (folder / "y" / "img00003.png").read_bytes()
    (folder / "y" / "img00003.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (folder / "x" / "zz-garbage.jpg").write_bytes(b"this is not a jpeg")
    return folder


def test_corrupt_image_fails_naming_it(folder_with_bad_image, tmp_path, capsys):
    root = tmp_path / "store"
    line = cli_error(capsys, str(folder_with_bad_image), "--root", str(root))
    assert "unreadable or corrupt image" in line and "x/zz-garbage.jpg" in line  # the first bad file in path order
    assert_nothing_committed(root)


def test_corrupt_images_skipped_and_counted(folder_with_bad_image, tmp_path):
    ds = datasets.stage(str(folder_with_bad_image), str(tmp_path / "store"), skip_bad=True, rows_per_shard=10)
    m = ds.manifest
    assert m["num_rows"] == 40 - 1 and m["num_skipped"] == 2
    assert sorted(Path(f).name for f in m["skipped_files"]) == ["img00003.png", "zz-garbage.jpg"]
    assert len(ds.load_arrays()[0]) == 39
    # skipping is part of the fingerprint: the strict staging of this folder would be another version
    assert m["source"]["skip_bad"] is True


def test_mixed_image_sizes_need_a_target_size(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (10, 8)).save(folder / "b.png")
    root = tmp_path / "store"
    line = cli_error(capsys, str(folder), "--root", str(root))
    assert "mixed sizes" in line and "b.png is 10x8" in line and "a.png is 8x8" in line
    assert_nothing_committed(root)
    assert datasets.stage(str(folder), str(root), image_size=8).manifest["num_rows"] == 2


# --- arrays --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, expected", [(np.nan, "row 5 contains NaN or Inf"), (np.inf, "row 5 contains NaN or Inf")])
def test_non_finite_arrays(tmp_path, capsys, bad, expected):
    x = np.ones((10, 3), np.float32)
    x[5, 1] = bad
    np.save(tmp_path / "x.npy", x)
    line = cli_error(capsys, str(tmp_path / "x.npy"), "--root", str(tmp_path / "store"))
    assert "x.npy" in line and expected in line
    assert_nothing_committed(tmp_path / "store")


def test_unsupported_dtype_and_label_count(tmp_path, capsys):
    np.save(tmp_path / "ints.npy", np.ones((10, 3), np.int32))
    line = cli_error(capsys, str(tmp_path / "ints.npy"), "--root", str(tmp_path / "store"))
    assert "ints.npy" in line and "unsupported dtype int32" in line
    np.save(tmp_path / "x.npy", np.ones((10, 3), np.float32))
    np.save(tmp_path / "y.npy", np.arange(9))
    line = cli_error(capsys, str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--root", str(tmp_path / "store"))
    assert "y.npy" in line and "9 labels for 10 examples" in line
    np.savez(tmp_path / "xy.npz", x=np.ones((10, 3), np.float32), y=np.arange(11))
    assert "11 labels for 10 examples" in cli_error(capsys, str(tmp_path / "xy.npz"), "--root", str(tmp_path / "store"))
    assert_nothing_committed(tmp_path / "store")


# --- checksums and references --------------------------------------------------------------------


def test_verify_detects_tampered_shard(tmp_path, capsys):
    ds = datasets.stage("grid25", str(tmp_path), num_samples=2000, rows_per_shard=500)
    ds.verify()
    shard = Path(ds.shard_paths[2])
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="part-00002.parquet: checksum mismatch"):
        datasets.open_dataset(ds.uri, verify=True)
    rc = main(["stage", str(tmp_path / "datasets" / "grid25"), "--verify"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "part-00002.parquet" in err[0]


def test_uncommitted_folder_is_not_a_version(tmp_path):
    ds = datasets.stage("grid25", str(tmp_path), num_samples=500)
    os.remove(os.path.join(ds.location.path, datasets.MANIFEST_NAME))
    with pytest.raises(DatasetError, match="no committed dataset version"):
        datasets.open_dataset(str(tmp_path / "datasets" / "grid25"))
    with pytest.raises(DatasetError, match="not committed"):
        datasets.open_dataset(ds.uri)
    assert datasets.list_versions(str(tmp_path / "datasets" / "grid25")) == []


def test_retries_are_for_storage_io_only():
    assert is_transient_storage_error(OSError("connection reset by peer"))
    assert not is_transient_storage_error(FileNotFoundError("gone"))
    assert not is_transient_storage_error(SourceError("x.png: unreadable or corrupt image"))
    assert not is_transient_storage_error(ChecksumError("part-00000.parquet: checksum mismatch"))


# --- a real SIGKILL midway -----------------------------------------------------------------------


def test_sigkill_midway_leaves_nothing_committed_and_rerun_is_identical(tmp_path):
    folder = tmp_path / "imgs"
    make_png_folder(folder, num_images=2000, size_px=16, seed=3)
    root = tmp_path / "store"
    options = dict(image_size=12, rows_per_shard=20)
    plan = datasets.plan_staging(str(folder), str(root), **options)
    version_dir = Path(plan.location().path)

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())", "stage", str(folder),
         "--root", str(root), "--image-size", "12", "--rows-per-shard", "20", "--engine", "direct", "--no-progress"],
        cwd=Path(__file__).resolve().parents[2], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (version_dir.exists() and any(version_dir.glob("part-*.parquet"))):
        assert proc.poll() is None, f"staging ended before it could be killed: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "staging never started writing"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    partial = sorted(p.name for p in version_dir.glob("part-*.parquet"))
    assert 0 < len(partial) < plan.num_shards  # killed midway: some shards, no manifest
    assert not (version_dir / datasets.MANIFEST_NAME).exists()
    assert datasets.list_versions(str(root / "datasets" / "imgs")) == []
    with pytest.raises(DatasetError):
        datasets.open_dataset(str(root / "datasets" / "imgs"))

    rerun = datasets.stage(str(folder), str(root), **options)
    fresh = datasets.stage(str(folder), str(tmp_path / "fresh"), **options)
    assert rerun.version == plan.version == fresh.version
    assert rerun.manifest["shards"] == fresh.manifest["shards"]  # same bytes: same sizes and sha256
    rerun.verify()
