"""Damaged or hostile manifests (issue 15, item 4): every reader of a shard set (staged datasets: `stage
--verify`, `train`, `evaluate`'s load_numpy; sample sets: open_samples) goes through one check,
infra.data.shardset.check_manifest. Malformed JSON, a missing or ill-typed key, totals that disagree with the
shards, or a shard path outside the set give one line naming the manifest file and the field; nothing
is hashed, opened or read through such a manifest. No Ray, Prefect or MLflow is started here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from infra.data import datasets, shardset
from infra.models import batch_sampling
from pipelines.cli import main
from tests.factories import committed_sample_set

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> datasets.StagedDataset:
    """One small committed dataset version (2 shards), copied afresh by `dataset` for each test."""
    return datasets.stage("grid25", str(tmp_path_factory.mktemp("staged")), num_samples=400, rows_per_shard=200)


@pytest.fixture
def dataset(staged, tmp_path) -> Path:
    """A private copy of the staged version: <tmp>/root/datasets/grid25/<version>."""
    dst = tmp_path / "root" / "datasets" / "grid25" / staged.version
    shutil.copytree(staged.uri, dst)
    return dst


def _edit(folder: Path, change) -> Path:
    marker = folder / shardset.MANIFEST_NAME
    manifest = json.loads(marker.read_text())
    change(manifest)
    marker.write_text(json.dumps(manifest))
    return marker


def _one_line(capsys, argv: list[str]) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, captured.err[-2000:])
    assert "Traceback" not in captured.out + captured.err
    return err[0]


def _set(path: str, value):
    """A manifest edit: set (or with value=KeyError, delete) the key at a dotted path."""
    def change(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[int(p)] if isinstance(m, list) else m[p]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value
    return change


# (edit, the field the message must name)
FIELD_CASES = {
    "missing shards": (_set("shards", KeyError), "'shards'"),
    "shards not a list": (_set("shards", "part-00000.parquet"), "'shards'"),
    "shard rows a string": (_set("shards.0.rows", "200"), "'shards.0.rows'"),
    "shard rows negative": (_set("shards.0.rows", -1), "'shards.0.rows'"),
    "shard without sha256": (_set("shards.1.sha256", KeyError), "'shards.1.sha256'"),
    "sha256 not hex": (_set("shards.0.sha256", "x" * 64), "'shards.0.sha256'"),
    "shard path a number": (_set("shards.0.path", 7), "'shards.0.path'"),
    "missing shape": (_set("shape", KeyError), "'shape'"),
    "shape with a zero": (_set("shape", [0]), "'shape.0'"),
    "shape a string": (_set("shape", "2"), "'shape'"),
    "missing layout": (_set("layout", KeyError), "'layout'"),
    "layout rows_per_shard a float": (_set("layout.rows_per_shard", 2.5), "'layout.rows_per_shard'"),
    "unknown dtype": (_set("dtype", "float64"), "'dtype'"),
    "normalisation a string": (_set("normalisation", "1/8"), "'normalisation'"),
    "missing version": (_set("version", KeyError), "'version'"),
    "num_rows disagrees": (_set("num_rows", 401), "num_rows is 401 but the shards add up to 400"),
    "num_shards disagrees": (_set("num_shards", 3), "num_shards is 3 but the shards add up to 2"),
}


@pytest.mark.parametrize("case", FIELD_CASES, ids=list(FIELD_CASES))
def test_dataset_manifest_with_a_bad_field_is_one_line_naming_file_and_field(dataset, capsys, case):
    edit, field = FIELD_CASES[case]
    marker = _edit(dataset, edit)
    for ref in (str(dataset), str(dataset.parent)):  # the version itself, and "the latest version"
        with pytest.raises(datasets.DatasetError) as e:
            datasets.open_dataset(ref)
        msg = str(e.value)
        assert "\n" not in msg and str(marker) in msg and field in msg, msg
    line = _one_line(capsys, ["stage", str(dataset), "--verify"])
    assert str(marker) in line and field in line


@pytest.mark.parametrize("content, expected", [
    (b'{"format": "ganpipe.dataset/1", "shards": [', "not valid JSON"),  # cut short by a crash
    (b"", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'["part-00000.parquet"]', "not a JSON object"),
    (b'{"format": "something/else"}', "unknown manifest format"),
])
def test_dataset_manifest_not_json_or_not_ours_is_one_line(dataset, capsys, content, expected):
    marker = dataset / shardset.MANIFEST_NAME
    marker.write_bytes(content)
    for ref in (str(dataset), str(dataset.parent)):
        with pytest.raises(datasets.DatasetError, match=expected) as e:
            datasets.open_dataset(ref)
        assert str(marker) in str(e.value) and "\n" not in str(e.value)
    assert str(marker) in _one_line(capsys, ["stage", str(dataset), "--verify"])


def test_damaged_older_version_is_named_when_the_latest_is_asked_for(dataset, staged, capsys):
    """Choosing "the latest" reads every version's manifest: a damaged one is named, never a KeyError."""
    other = dataset.parent / "0000000000000000"
    shutil.copytree(dataset, other)
    marker = _edit(other, _set("created_at", KeyError))
    with pytest.raises(datasets.DatasetError, match="'created_at'") as e:
        datasets.open_dataset(str(dataset.parent))
    assert str(marker) in str(e.value)
    assert datasets.open_dataset(str(dataset)).version == staged.version  # the intact version still opens


def test_foreign_file_with_the_matching_sha256_is_refused_not_verified(dataset, tmp_path, capsys):
    """A shard path leaving the set, pointing at a byte-identical copy elsewhere: the checksum would
    match, so only the name check stands between the manifest and any file the process can read."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(dataset / "part-00000.parquet", outside / "part-00000.parquet")
    rel = "../../../../elsewhere/part-00000.parquet"
    assert (dataset / rel).resolve() == (outside / "part-00000.parquet").resolve()
    marker = _edit(dataset, _set("shards.0.path", rel))
    line = _one_line(capsys, ["stage", str(dataset), "--verify"])
    assert str(marker) in line and repr(rel) in line and "refusing" in line
    with pytest.raises(datasets.DatasetError, match="refusing"):
        datasets.load_numpy(str(dataset))  # evaluate's reader


@pytest.mark.parametrize("case", ["missing shards", "shard path", "bad JSON"])
def test_train_refuses_a_damaged_manifest_before_starting_anything(dataset, capsys, case, monkeypatch):
    import infra.train.ray_train

    def no_ray(*a, **k):
        raise AssertionError("Ray was started for a damaged dataset")

    monkeypatch.setattr(infra.train.ray_train, "ensure_ray", no_ray)
    marker = dataset / shardset.MANIFEST_NAME
    if case == "bad JSON":
        marker.write_text("{")
    else:
        _edit(dataset, _set("shards", KeyError) if case == "missing shards" else _set("shards.0.path", "../x"))
    line = _one_line(capsys, ["train", "--dataset", str(dataset), "--preset", "tiny"])
    assert str(marker) in line


# --- sample sets: the same check ------------------------------------------------------------------


def _sample_set(out: Path) -> str:
    return committed_sample_set(out, 300, rows_per_shard=200)


@pytest.mark.parametrize("edit, field", [
    (_set("shards", KeyError), "'shards'"),
    (_set("shards.0.start", "0"), "'shards.0.start'"),
    (_set("sample_format", "gif"), "'sample_format'"),
    (_set("model", KeyError), "'model'"),
    (_set("shape", [1, -2, 2]), "'shape.1'"),
    (_set("num_rows", 0), "num_rows is 0"),
])
def test_sample_set_manifest_with_a_bad_field_is_one_line(tmp_path, edit, field):
    uri = _sample_set(tmp_path / "samples")
    assert batch_sampling.open_samples(uri, verify=True).load_arrays()[0].tolist() == list(range(300))
    marker = _edit(Path(uri), edit)
    with pytest.raises(batch_sampling.SamplingError) as e:
        batch_sampling.open_samples(uri)
    assert str(marker) in str(e.value) and field in str(e.value) and "\n" not in str(e.value)


def test_sample_set_manifest_not_json_is_one_line(tmp_path):
    uri = _sample_set(tmp_path / "samples")
    (Path(uri) / shardset.MANIFEST_NAME).write_text('{"format": "ganpipe.samples/1",')
    with pytest.raises(batch_sampling.SamplingError, match="not valid JSON"):
        batch_sampling.open_samples(uri)


@pytest.mark.parametrize("field, value", [
    ("shape", [1, 2]),  # wrong shape, the same number of values
    ("normalisation.scale", 0.5),
    ("label_counts", [10 ** 7]),
    ("version", "0123456789abcdef"),
    ("fields_sha256", KeyError),  # the digests themselves removed: not a format /1 manifest
], ids=["shape", "normalisation", "labels", "version", "digests-removed"])
def test_a_hand_edited_manifest_is_refused_by_verify_and_by_train(dataset, capsys, field, value):
    """Issue 31: `stage --verify` answered ok for a hand-edited manifest (only shard checksums were
    checked) and `train` trained on it. Every field carries its digest (`fields_sha256`, format /2): the
    edit is refused by every reader, naming the field."""
    _edit(dataset, _set(field, value))
    top = field.split(".")[0]
    line = _one_line(capsys, ["stage", str(dataset), "--verify"])
    assert f"field {top!r}" in line and "_manifest.json" in line, line
    line = _one_line(capsys, ["train", "--dataset", str(dataset), "--preset", "ring8"])
    assert f"field {top!r}" in line, line


def test_an_older_manifest_without_digests_is_read_as_it_is(dataset, capsys):
    """Sets committed before the digests (format /1) still open; only the current format must carry them."""
    def downgrade(m):
        m["format"] = "ganpipe.dataset/1"
        del m["fields_sha256"]

    _edit(dataset, downgrade)
    assert main(["stage", str(dataset), "--verify"]) == 0
    assert "match their checksums" in capsys.readouterr().err
