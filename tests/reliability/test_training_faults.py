"""Training faults: a NaN in the data stops the run cleanly (one line naming the step, no restarts, the
MLflow run FAILED, the last good checkpoint kept and nothing newer written); an absurd learning rate is
refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gan_core.checkpoint import load_training_state, verify_checkpoint
from infra.data.datasets import open_dataset, stage
from infra.train.plan import ClusterConfig, TrackingSpec
from infra.train.ray_train import TrainingStopped, launch_training
from pipelines.cli import main
from tests.reliability.ray_output import own_lines
from tests.factories import tiny_config

pytestmark = pytest.mark.integration

RUN = "nan-run"
TINY = {"train.total_steps": 20, "train.checkpoint_every_steps": 10, "train.tick_every_steps": 5,
        "train.num_checkpoints_to_keep": 3}


def poison(dataset_uri: str) -> None:
    """Every value of every staged shard becomes NaN (staging refuses NaN input: this is a fault after it)."""
    ds = open_dataset(dataset_uri)
    for path in ds.shard_paths:
        table = pq.read_table(path)
        x = table.column("x").combine_chunks()
        flat = pa.array(np.full(len(x.values), np.nan, dtype=x.values.type.to_pandas_dtype()))
        nan_x = pa.FixedSizeListArray.from_arrays(flat, x.type.list_size)
        pq.write_table(table.set_column(table.schema.get_field_index("x"), "x", nan_x), path)


def test_nan_in_the_data_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        ray_cluster, tmp_path, mlflow_tracking, capsys):
    from infra.base.settings import mlflow_client

    dataset = stage("ring8", str(tmp_path / "root"), num_samples=512, seed=0).uri
    cluster = ClusterConfig(num_workers=1, storage_path=str(tmp_path / "runs"), run_name=RUN, max_failures=2)
    tracking = TrackingSpec(experiment="nan-test", tracking_uri=mlflow_tracking)
    launch_training(tiny_config(TINY), dataset, cluster, tracking=tracking)
    run_dir = tmp_path / "runs" / RUN
    good = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert good[-1] == "checkpoint-000000020"
    before = (run_dir / good[-1] / "state.pt").read_bytes()
    poison(dataset)
    # 1. the resumed run meets NaN batches at once: stopped at the first tick, naming step 21
    longer = tiny_config({**TINY, "train.total_steps": 40})
    with pytest.raises(TrainingStopped) as e:
        launch_training(longer, dataset, cluster, tracking=tracking)
    message = str(e.value)
    assert "\n" not in message and f"training run {RUN} stopped: NonFiniteLossError: non-finite loss/" in message
    assert "at step 21;" in message, message
    # 2. the last good checkpoint is kept, whole and finite; nothing newer was written
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == good
    assert (run_dir / good[-1] / "state.pt").read_bytes() == before
    verify_checkpoint(run_dir / good[-1])
    state = load_training_state(run_dir / good[-1])
    assert all(bool(p.isfinite().all()) for p in state.G_ema.parameters())
    # 3. the MLflow run is marked FAILED; nothing was registered
    client = mlflow_client(mlflow_tracking)
    exp = client.get_experiment_by_name("nan-test")
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{RUN}'",
                              order_by=["attributes.start_time DESC"])
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]  # the resumed run, the first one
    assert client.search_registered_models() == []
    # 4. the CLI: one line, exit 1 (the workers record the stop and return: Ray Train has nothing to restart)
    capsys.readouterr()
    rc = main(["train", "--dataset", dataset, "--preset", "tiny", "--storage", str(tmp_path / "runs"),
               "--run-name", RUN, "--max-failures", "2",
               *[a for k, v in {**TINY, "train.total_steps": 40}.items() for a in ("--set", f"{k}={v}")]])
    err = own_lines(capsys.readouterr().err)
    assert rc == 1 and len(err) == 1 and "non-finite loss/" in err[0] and "at step 21;" in err[0], err


@pytest.mark.parametrize("override", ["d_optim.lr=1e6", "g_optim.lr=1e6", "d_optim.lr=nan", "g_optim.lr=-1"])
def test_an_absurd_learning_rate_is_refused_before_anything_starts(tmp_path, capsys, override):
    rc = main(["train", "--dataset", str(tmp_path / "never-read"), "--preset", "tiny", "--set", override,
               "--storage", str(tmp_path / "runs")])
    err = own_lines(capsys.readouterr().err)
    field = override.split("=")[0]
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {field}: got "), err
    assert "allowed: a number" in err[0]
    assert not Path(tmp_path / "runs").exists()
