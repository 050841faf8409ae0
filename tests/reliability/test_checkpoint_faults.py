"""Damaged checkpoints: resuming (`ganpipe train` of the same run) and registering (`ganpipe register
--run`) use the newest intact checkpoint with one warning line naming the damaged one and the one used,
and stop with one line when none is intact. Every kind of damage: a truncated, missing or garbage
state.pt, an edited config.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gan_core.checkpoint import verify_checkpoint
from infra.data.datasets import stage
from infra.train.plan import ClusterConfig
from infra.train.ray_train import TrainingStopped, launch_training
from pipelines.cli import main
from tests.reliability.ray_output import own_lines
from tests.factories import tiny_config

pytestmark = pytest.mark.integration

RUN = "damaged-run"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xffnot a checkpoint" * 50)


def remove(path: Path) -> None:
    path.unlink()


def edit_config(path: Path) -> None:
    table = json.loads(path.read_text())
    table["network"]["z_dim"] = 3  # a valid config that builds other networks than the weights
    path.write_text(json.dumps(table))


DAMAGE = {"edited config.json": ("config.json", edit_config), "truncated state.pt": ("state.pt", truncate),
          "missing state.pt": ("state.pt", remove), "garbage state.pt": ("state.pt", garbage)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return stage("ring8", str(tmp_path_factory.mktemp("root")), num_samples=512, seed=0).uri


def tiny(total_steps: int = 30):
    return tiny_config({
        "train.total_steps": total_steps, "train.checkpoint_every_steps": 10, "train.tick_every_steps": 10,
        "train.num_checkpoints_to_keep": 3})


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("checkpoint-*") if p.is_dir())


def wait_for_line(capfd, needle: str, timeout_s: float = 10.0) -> str:
    """The first captured output line holding `needle` (workers' lines reach the driver asynchronously)."""
    seen = ""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        out, err = capfd.readouterr()
        seen += out + err
        lines = [line for line in seen.splitlines() if needle in line]
        if lines:
            return lines[0]
        time.sleep(0.2)
    raise AssertionError(f"no line with {needle!r} in:\n{seen[-3000:]}")


def test_resume_falls_back_to_the_newest_intact_checkpoint(ray_cluster, dataset, tmp_path, capfd):
    """Each kind of damage on the newest checkpoint (the first round: the two newest): the re-submitted
    run resumes from the newest intact checkpoint, says so in one line, and completes; the checkpoints
    it writes are kept (Ray Train's retention still lists the damaged ones, under their names)."""
    cluster = ClusterConfig(num_workers=1, storage_path=str(tmp_path), run_name=RUN, max_failures=0)
    run_dir = tmp_path / RUN
    launch_training(tiny(30), dataset, cluster)
    assert checkpoints(run_dir) == ["checkpoint-000000010", "checkpoint-000000020", "checkpoint-000000030"]
    total = 30
    for kind, (name, damage) in DAMAGE.items():
        names = checkpoints(run_dir)
        damaged = names[-2:][::-1] if kind == "edited config.json" else names[-1:]
        damage(run_dir / damaged[0] / name)
        if len(damaged) == 2:
            truncate(run_dir / damaged[1] / "state.pt")
        used = [n for n in names if n not in damaged][-1]
        total += 10  # each round trains on, so that the newest checkpoint is a new one
        capfd.readouterr()
        out = launch_training(tiny(total), dataset, cluster)
        line = wait_for_line(capfd, "is damaged")
        assert f"checkpoint {damaged[0]} is damaged (" in line and name in line, (kind, line)
        assert line.count(" is damaged (") == len(damaged), (kind, line)
        assert line.endswith(f"; using {run_dir / used} instead"), (kind, line)
        assert out.metrics["progress/resumed_from_step"] == int(used.split("-")[1]), kind
        assert out.metrics["step"] == total and Path(out.checkpoint_uri).name == f"checkpoint-{total:09d}", kind
        # what the resumed run wrote is whole and still there (not deleted with a damaged one's record)
        fresh = [n for n in checkpoints(run_dir) if n not in names]
        assert len(fresh) == min(3, (total - int(used.split("-")[1])) // 10), (kind, checkpoints(run_dir))
        for n in fresh:
            verify_checkpoint(run_dir / n)


def test_no_intact_checkpoint_stops_with_one_line(ray_cluster, dataset, tmp_path, capsys):
    """Every checkpoint damaged: `ganpipe train` of the run stops at once (no restarts) with one line
    naming each damaged checkpoint, exit code 1; nothing is deleted."""
    cluster = ClusterConfig(num_workers=1, storage_path=str(tmp_path), run_name=RUN, max_failures=2)
    run_dir = tmp_path / RUN
    launch_training(tiny(20), dataset, cluster)
    truncate(run_dir / "checkpoint-000000020" / "state.pt")
    garbage(run_dir / "checkpoint-000000010" / "state.pt")
    with pytest.raises(TrainingStopped, match="no intact checkpoint") as e:
        launch_training(tiny(20), dataset, cluster)
    assert "checkpoint-000000020 is damaged (state.pt" in str(e.value)
    assert "checkpoint-000000010 is damaged (state.pt" in str(e.value)
    capsys.readouterr()
    rc = main(["train", "--dataset", dataset, "--preset", "tiny", "--set", "train.total_steps=20",
               "--set", "train.checkpoint_every_steps=10", "--set", "train.tick_every_steps=10",
               "--set", "train.num_checkpoints_to_keep=3", "--workers", "1", "--storage", str(tmp_path),
               "--run-name", RUN, "--max-failures", "2"])
    err = own_lines(capsys.readouterr().err)
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: training run damaged-run stopped: "), err
    assert "no intact checkpoint" in err[0]
    assert checkpoints(run_dir) == ["checkpoint-000000010", "checkpoint-000000020"]


def test_register_uses_the_newest_intact_checkpoint_of_a_run(tmp_path, mlflow_tracking, capsys):
    """`ganpipe register --run <run id>` whose last checkpoint is damaged registers the newest intact one,
    with one warning line naming both; with none intact, one line and exit code 2, nothing registered."""
    from gan_core.data import InMemoryBatches, sample_mixture
    from gan_core.loop import train
    from infra.base.settings import mlflow_client
    from infra.train.tracking import TAG_LAST_CHECKPOINT

    run_dir = tmp_path / RUN
    x, _ = sample_mixture("ring8", 256, seed=0)
    train(tiny(30), batches=InMemoryBatches(x, 64, seed=0), checkpoint_root=run_dir)
    client = mlflow_client(mlflow_tracking)
    experiment = client.create_experiment("damaged", artifact_location=str(tmp_path / "artifacts"))  # not ./mlruns
    run = client.create_run(experiment, run_name=RUN)
    client.set_tag(run.info.run_id, TAG_LAST_CHECKPOINT, str(run_dir / "checkpoint-000000030"))
    client.set_terminated(run.info.run_id)
    truncate(run_dir / "checkpoint-000000030" / "state.pt")
    edit_config(run_dir / "checkpoint-000000020" / "config.json")
    capsys.readouterr()
    rc = main(["register", "--run", run.info.run_id, "--name", "damaged-model", "--no-export"])
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "is damaged" in line]
    assert rc == 0, err
    assert len(warnings) == 1 and "checkpoint-000000030 is damaged (state.pt" in warnings[0], err
    assert "checkpoint-000000020 is damaged (config.json" in warnings[0], err
    assert warnings[0].endswith(f"using {run_dir / 'checkpoint-000000010'} instead"), err
    [version] = client.search_model_versions("name = 'damaged-model'")
    assert version.tags["checkpoint_uri"] == str(run_dir / "checkpoint-000000010")
    assert version.tags["checkpoint.step"] == "10"
    # none intact: one line naming each, exit 2, no new version
    remove(run_dir / "checkpoint-000000010" / "state.pt")
    rc = main(["register", "--run", run.info.run_id, "--name", "damaged-model", "--no-export"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: MLflow run {run.info.run_id}: no intact "), err
    assert "checkpoint-000000010 is damaged (incomplete checkpoint, state.pt is missing)" in err[0]
    assert len(client.search_model_versions("name = 'damaged-model'")) == 1
    # a damaged checkpoint named directly: one line naming the file
    rc = main(["register", "--run", str(run_dir / "checkpoint-000000020"), "--name", "damaged-model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(run_dir / "checkpoint-000000020" / "config.json") in err[0], err


def test_resume_from_s3_storage_falls_back_and_stops_alike(ray_cluster, dataset, s3_bucket):
    """The same on S3 run storage: a truncated state.pt on the newest checkpoint falls back to the one
    before (the workers copy each candidate from S3); with every checkpoint damaged, one line."""
    import boto3

    s3 = boto3.client("s3")
    cluster = ClusterConfig(num_workers=1, storage_path=f"s3://{s3_bucket}/runs", run_name=RUN, max_failures=2)
    launch_training(tiny(20), dataset, cluster)

    def truncate_s3(name: str) -> None:
        key = f"runs/{RUN}/{name}/state.pt"
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        s3.put_object(Bucket=s3_bucket, Key=key, Body=body[: len(body) // 3])

    truncate_s3("checkpoint-000000020")
    out = launch_training(tiny(30), dataset, cluster)
    assert out.metrics["progress/resumed_from_step"] == 10 and out.metrics["step"] == 30
    assert out.checkpoint_uri == f"s3://{s3_bucket}/runs/{RUN}/checkpoint-000000030"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"runs/{RUN}/")["Contents"]}
    assert f"runs/{RUN}/checkpoint-000000020-1/sha256.json" in keys  # past the damaged one: a new name
    # every checkpoint left damaged (Ray's retention removed checkpoint-10): one line, no restarts
    truncate_s3("checkpoint-000000030")
    truncate_s3("checkpoint-000000020-1")
    with pytest.raises(TrainingStopped, match=f"no intact checkpoint in s3://{s3_bucket}/runs/{RUN}: "):
        launch_training(tiny(30), dataset, cluster)
