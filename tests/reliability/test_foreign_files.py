"""ganpipe never touches what it did not write (issue 31, item 0).

Outputs go to a new, empty or ganpipe-owned folder (its `_ganpipe.json` or a manifest says so); `/`, `''`
and the home folder are refused; clean-up deletes exact paths only (never a pattern walk, never through a
symbolic link); two writers of one set take turns; inputs are read with a size limit and only when they
are regular files; a run that fails after registering leaves the alias where it was; a checkpoint whose
sha256.json was deleted is refused, not trusted. Each test snapshots the files around the output and
asserts that nothing outside ganpipe's own changed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gan_core.files import OWNER_FILE
from infra.data import shard_writer, shardset
from infra.data.datasets import StagingPlan, open_dataset, plan_staging
from pipelines.cli import main
from tests.reliability.test_user_errors import RAY_STARTS, fresh_home, run_cli  # noqa: F401 (fixture)
from tests.factories import tiny_checkpoint, tiny_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def snapshot(*roots: Path) -> dict[str, object]:
    """Every path below the roots (not following links) -> its bytes, its link target, or "dir"."""
    out: dict[str, object] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                out[str(p)] = (f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir()
                               else p.read_bytes())
    return out


def foreign_tree(tmp: Path) -> tuple[Path, Path]:
    """The issue's folder: temporaries, a sub-folder, a `_pending/` folder and a link out to another folder."""
    v, ext = tmp / "v", tmp / "v_ext"
    (v / "sub").mkdir(parents=True)
    (v / "_pending").mkdir()
    ext.mkdir()
    (v / "r.tmp-1").write_text("a")
    (v / "sub" / "x.tmp-2").write_text("b")
    (ext / "y.tmp-3").write_text("c")
    (v / "_pending" / "k").write_text("d")
    (v / "link").symlink_to(ext)
    return v, ext


# -- output folders ---------------------------------------------------------------------------------------

def test_sample_into_a_foreign_folder_is_refused_and_deletes_nothing(fresh_home, capsys):
    v, ext = foreign_tree(fresh_home)
    before = snapshot(v, ext)
    line = run_cli(capsys, ["sample", "--model", "models:/ganpipe-digits/1", "--num-samples", "8", "--out", str(v)])
    assert f"--out {v}: an existing folder that ganpipe did not write (_pending, link, r.tmp-1 and 1 more" in line
    assert snapshot(v, ext) == before
    assert RAY_STARTS == []


@pytest.mark.parametrize("argv, expected", [
    (["sample", "--model", "models:/m/1", "--num-samples", "8", "--out", "/"], "the filesystem root or the home folder"),
    (["sample", "--model", "models:/m/1", "--num-samples", "8", "--out", "{home}"],
     "the filesystem root or the home folder"),
    (["sample", "--model", "models:/m/1", "--num-samples", "8", "--out", ""], "is empty"),
    (["stage", "", "--root", "{tmp}/store"], "is empty"),
    (["stage", "digits", "--root", ""], "--root is required"),
    (["stage", "digits", "--root", "/"], "the filesystem root or the home folder"),
    (["stage", "digits", "--root", "{home}"], "the filesystem root or the home folder"),
    (["evaluate", ""], "empty"),
    (["register", "--run", "", "--name", "m"], "empty"),
    (["run", "--preset", "tiny", "--set", "sampling.out={tmp}/v"], "sampling.out {tmp}/v: an existing folder that "
                                                                  "ganpipe did not write"),
], ids=["sample-root", "sample-home", "sample-empty", "stage-empty-source", "stage-empty-root", "stage-root-slash",
        "stage-root-home", "evaluate-empty", "register-empty", "run-preview-foreign"])
def test_the_root_the_home_folder_and_empty_paths_are_refused(fresh_home, capsys, monkeypatch, argv, expected):
    """'' would mean the current folder (it deleted notes.tmp-1 there); / and ~ are never output folders."""
    home = fresh_home / "userhome"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)  # '' resolved as the cwd would land here
    v, ext = foreign_tree(fresh_home)
    before = snapshot(home, v, ext)
    line = run_cli(capsys, [a.replace("{tmp}", str(fresh_home)).replace("{home}", str(home)) for a in argv])
    assert expected.replace("{tmp}", str(fresh_home)) in line, line
    assert snapshot(home, v, ext) == before
    assert RAY_STARTS == []


def test_gan_core_refuses_a_foreign_out_folder_and_keeps_its_own(tmp_path):
    """python -m gan_core: a folder with someone's files is refused (exit 2, nothing written); a folder it
    wrote is taken again (a rerun); '' and / are refused."""
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "summary.json").write_text("my notes")
    before = snapshot(foreign)
    for out, expected in ((str(foreign), "an existing folder that ganpipe did not write (summary.json"),
                          ("", "got an empty path"), ("/", "the filesystem root or the home folder")):
        r = subprocess.run([sys.executable, "-m", "gan_core", "--preset", "tiny", "--steps", "2", "--out", out],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert snapshot(foreign) == before
    ours = tmp_path / "ours"
    for _ in range(2):  # the second run writes into the folder the first one claimed
        r = subprocess.run([sys.executable, "-m", "gan_core", "--preset", "tiny", "--steps", "2", "--out", str(ours)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((ours / OWNER_FILE).read_text()) == {"written_by": "python -m gan_core"}


def test_checkpoint_retention_deletes_only_the_checkpoints_it_names(tmp_path):
    """The retention of `train` keeps the newest checkpoints it wrote; a folder named like a checkpoint but
    not as train names them, and a link to a folder elsewhere, are left alone."""
    root, elsewhere = tmp_path / "checkpoints", tmp_path / "elsewhere"
    (root / "checkpoint-mine").mkdir(parents=True)
    (root / "checkpoint-mine" / "notes.txt").write_text("mine")
    elsewhere.mkdir()
    (elsewhere / "data.txt").write_text("keep")
    (root / "checkpoint-000000000").symlink_to(elsewhere)
    before = snapshot(elsewhere) | {str(root / "checkpoint-mine" / "notes.txt"): b"mine"}
    from gan_core.data import InMemoryBatches, sample_mixture
    from gan_core.loop import train

    x, _ = sample_mixture("ring8", 256, seed=0)
    cfg = tiny_config({"train.total_steps": 6, "train.checkpoint_every_steps": 2,
                                             "train.num_checkpoints_to_keep": 1})
    train(cfg, batches=InMemoryBatches(x, 64, seed=0), checkpoint_root=root)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-000000000", "checkpoint-000000006",
                                                      "checkpoint-mine"]
    assert (root / "checkpoint-000000000").is_symlink()
    assert snapshot(elsewhere) | {str(root / "checkpoint-mine" / "notes.txt"):
                                  (root / "checkpoint-mine" / "notes.txt").read_bytes()} == before


# -- clean-up: exact paths only, never through a link ---------------------------------------------------------

def staging_plan(root: Path, *, resumable: bool = False) -> StagingPlan:
    plan = plan_staging("ring8", str(root), "r", num_samples=600, rows_per_shard=200)
    if not resumable:
        return plan

    @dataclasses.dataclass
    class ResumableStaging(StagingPlan):
        RESUMABLE = True

    return ResumableStaging(**{f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)})


def test_a_set_is_never_written_into_a_foreign_folder(tmp_path):
    plan = staging_plan(tmp_path / "root")
    folder = Path(plan.uri)
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(shardset.ShardSetError, match="an existing folder that ganpipe did not write \\(notes.txt"):
        shard_writer.execute(plan)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    (folder / "notes.txt").unlink()  # an empty folder is fine, and so is the set's own on a rerun
    shard_writer.execute(plan)
    assert json.loads((folder / OWNER_FILE).read_text()) == {"format": plan.FORMAT}
    assert shard_writer.execute(plan)["num_rows"] == 600


def test_a_failed_set_in_a_new_folder_leaves_no_folder(tmp_path):
    """A failure before any shard landed removes the folder the writer created (nothing half-written)."""
    plan = staging_plan(tmp_path / "root")

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), shard_writer.writing(plan):
        raise Boom()
    assert not Path(plan.uri).exists()


def test_commit_deletes_only_the_plans_own_pending_records_and_stale_temporaries(tmp_path):
    plan = staging_plan(tmp_path / "root", resumable=True)
    folder, ext = Path(plan.uri), tmp_path / "ext"
    ext.mkdir()
    folder.mkdir(parents=True)
    (folder / OWNER_FILE).write_text(json.dumps({"format": plan.FORMAT}))  # an interrupted run's folder
    stale = folder / "part-00001.parquet.tmp-0123abcd"  # its writer was killed midway
    stale.write_bytes(b"half a shard")
    kept = {ext / "part-00000.parquet.tmp-0123abcd": b"ext", folder / "notes.tmp-1": b"n",
            folder / "_pending" / "notes.txt": b"p", folder / "_pending" / "part-00099.json": b"not this plan's"}
    for p, data in kept.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (folder / "link").symlink_to(ext)
    shard_writer.execute(plan)
    assert not stale.exists()
    assert {p: p.read_bytes() for p in kept} == kept
    assert sorted(p.name for p in (folder / "_pending").iterdir()) == ["notes.txt", "part-00099.json"]
    assert open_dataset(plan.uri, verify=True).num_rows == 600


def test_a_symlinked_pending_folder_is_refused_and_nothing_is_written_through_it(tmp_path):
    plan = staging_plan(tmp_path / "root", resumable=True)
    folder, ext = Path(plan.uri), tmp_path / "ext"
    ext.mkdir()
    (ext / "part-00000.json").write_text("someone else's")
    folder.mkdir(parents=True)
    (folder / OWNER_FILE).write_text(json.dumps({"format": plan.FORMAT}))
    (folder / "_pending").symlink_to(ext)
    with pytest.raises(shardset.ShardSetError, match="_pending: a symbolic link; ganpipe writes only a folder"):
        shard_writer.execute(plan)
    assert (ext / "part-00000.json").read_text() == "someone else's"
    assert sorted(p.name for p in ext.iterdir()) == ["part-00000.json"]


# -- two writers of one set --------------------------------------------------------------------------------------

def test_two_writers_of_one_set_take_turns_and_keep_each_others_files(tmp_path):
    """Writer A holds the set and has a shard in flight; writer B waits (it deletes nothing of A's), then
    finds A's commit and writes nothing."""
    plan = staging_plan(tmp_path / "root")
    folder = Path(plan.uri)
    in_flight = folder / "part-00000.parquet.tmp-0123abcd"
    holding, release = threading.Event(), threading.Event()
    b_result: list = []

    def writer_a():
        with shard_writer.writing(plan):
            in_flight.write_bytes(b"A's shard, half written")
            holding.set()
            release.wait(60)
            in_flight.unlink()  # A's own temporary, renamed or removed by A
            shard_writer.commit(plan, shard_writer.write_pending(plan))

    a = threading.Thread(target=writer_a)
    a.start()
    assert holding.wait(60)
    b = threading.Thread(target=lambda: b_result.append(shard_writer.execute(plan)))
    b.start()
    time.sleep(1.0)
    assert b.is_alive(), "B did not wait for A"
    assert in_flight.read_bytes() == b"A's shard, half written"
    release.set()
    a.join(60)
    committed_by_a_mtime = (folder / shardset.MANIFEST_NAME).stat().st_mtime_ns
    b.join(60)
    assert not b.is_alive() and b_result and b_result[0]["num_rows"] == 600
    assert (folder / shardset.MANIFEST_NAME).stat().st_mtime_ns == committed_by_a_mtime  # B wrote nothing


def test_two_concurrent_stage_commands_both_succeed_with_one_committed_set(tmp_path):
    """Two `ganpipe stage` processes of the same dataset at once: both exit 0, one set, verified, no temporaries."""
    root = tmp_path / "root"
    cmd = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))",
           "stage", "ring8", "--root", str(root), "--num-samples", "20000", "--rows-per-shard", "1000",
           "--engine", "direct"]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    [version] = [p for p in (root / "datasets" / "ring8").iterdir()]
    assert open_dataset(str(version), verify=True).num_rows == 20000
    assert not [p for p in version.iterdir() if ".tmp-" in p.name]


# -- inputs: regular files of bounded size ------------------------------------------------------------------------

def _limited_memory():  # the child may not grow past 4 GiB of address space: a regression cannot eat the machine
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.parametrize("kind", ["dev-zero", "dev-urandom", "fifo", "folder", "huge"])
def test_config_that_is_not_a_small_regular_file_is_one_line(tmp_path, kind):
    """`run --config /dev/zero --dry-run` grew to about 21 GB; a FIFO waited forever."""
    path = {"dev-zero": "/dev/zero", "dev-urandom": "/dev/urandom", "fifo": str(tmp_path / "fifo"),
            "folder": str(tmp_path), "huge": str(tmp_path / "huge.toml")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "huge":
        Path(path).write_bytes(b"# padding\n" * 200_000)  # 2 MB of valid TOML comments
    expected = {"dev-zero": "a character device; allowed: a regular file",
                "dev-urandom": "a character device; allowed: a regular file",
                "fifo": "a FIFO; allowed: a regular file", "folder": "a folder; allowed: a regular file",
                "huge": "2,000,000 bytes; allowed: at most 1,048,576 bytes"}[kind]
    r = subprocess.run([sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))",
                        "run", "--config", path, "--dry-run"], capture_output=True, text=True, timeout=120,
                       preexec_fn=_limited_memory, cwd=REPO)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and f"--config {path}: {expected}" in lines[0], r.stderr[-2000:]


@pytest.mark.bounded_memory
@pytest.mark.parametrize("kind", ["source-device", "source-fifo", "labels-device"])
def test_a_source_or_labels_that_is_a_device_or_fifo_is_one_line(fresh_home, capsys, kind):
    """`stage /dev/zero` said 'storage failed ... run the same command again' (exit 1); a FIFO could block."""
    fifo = fresh_home / "x.npy"
    os.mkfifo(fifo)
    arrays = fresh_home / "a.npy"
    import numpy as np

    np.save(arrays, np.zeros((4, 2), np.float32))
    argv, expected = {"source-device": (["stage", "/dev/zero"], "source /dev/zero: a character device"),
                      "source-fifo": (["stage", str(fifo)], f"source {fifo}: a FIFO"),
                      "labels-device": (["stage", str(arrays), "--labels", "/dev/zero"],
                                        "--labels /dev/zero: a character device")}[kind]
    line = run_cli(capsys, argv + ["--root", str(fresh_home / "store"), "--engine", "direct"])
    assert expected in line and "allowed: a regular file or a folder" in line, line
    assert not (fresh_home / "store").exists()


# -- the champion moves last; a checkpoint without its digest file is refused ----------------------------------

def test_a_run_that_fails_after_registering_leaves_the_alias_where_it_was(
        ray_cluster, prefect_harness, mlflow_tracking, tmp_path, monkeypatch):
    """The preview step fails after the version is registered: the version exists, the alias does not move."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from prefect import task

    import pipelines.flow as flow

    @task(name="render-preview", persist_result=False)
    def failing_preview(*args, **kwargs):
        raise OSError("the preview folder went away")  # a failure after registration

    monkeypatch.setattr(flow, "render_preview", failing_preview)
    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    overrides = [f"storage.root={tmp_path / 'root'}", f"cluster.storage_path={tmp_path / 'runs'}",
                 "registry.model_name=late-failure", "registry.export=false", "sampling.num_samples=16",
                 "train.total_steps=10", "network.g_norm=layer"]
    with pytest.raises(OSError, match="the preview folder went away"):
        flow.gan_pipeline(preset="tiny", overrides=overrides)
    client = MlflowClient()
    [version] = client.search_model_versions("name = 'late-failure'")
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("late-failure", "champion")
    assert version.tags.get("champion.decision") == "not considered (promote=False)"


def test_a_checkpoint_whose_sha256_json_was_deleted_is_refused(tmp_path, fresh_home, capsys):
    """Deleting sha256.json skipped the integrity check; that checkpoint was registered and made champion."""
    from gan_core.checkpoint import CheckpointError, verify_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "run")
    (ckpt / "sha256.json").unlink()
    with pytest.raises(CheckpointError, match="sha256.json: missing, so the checkpoint's integrity cannot be checked"):
        verify_checkpoint(ckpt)
    line = run_cli(capsys, ["register", "--run", str(ckpt), "--name", "m", "--no-export"])
    assert "sha256.json: missing" in line
    db = fresh_home / "home" / "mlflow.db"
    if db.exists():  # refused before the store was opened, or at least before anything was registered
        from mlflow import MlflowClient

        assert MlflowClient(f"sqlite:///{db}").search_registered_models() == []
