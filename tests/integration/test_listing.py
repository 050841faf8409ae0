"""`ganpipe runs` and `ganpipe models` against a real MLflow SQLite store: two tracked training runs, a
registration run from a bare checkpoint (not a training run), two versions of one model (the first is
@champion) and one of another; the empty, missing and unreachable stores; unknown names."""

from __future__ import annotations

import json
import socket

import pytest

from gan_core import train
from gan_core.data import InMemoryBatches, load_builtin
from infra.train.tracking import TAG_LAST_CHECKPOINT, DatasetRef, TrainingTracker
from infra.models.evaluation import Evaluation
from infra.models.registry import register_generator
from pipelines.cli import main
from tests.factories import tiny_config

pytestmark = pytest.mark.integration

MODEL = "listing-gen"


def fixed_score(value: float):
    """An evaluator with a chosen score, so the champion decision is known in advance."""
    def evaluate(G, config):
        return Evaluation({"score": value}, "score", True, {"evaluator": "fixed"})
    return evaluate


def _tracked_run(name: str, total_steps: int, dataset_version: str, root, status: str) -> tuple[str, str]:
    """A few tiny-preset steps tracked like a real run; returns (run id, last checkpoint directory)."""
    cfg = tiny_config({"train.total_steps": total_steps, "train.tick_every_steps": 2,
                                             "train.checkpoint_every_steps": 2})
    x, _ = load_builtin("ring8", 256, 0)
    manifest = {"version": dataset_version, "normalisation": {"scale": 1.0, "offset": 0.0}, "shards": []}
    tracker = TrainingTracker(cfg, run_name=name, dataset=DatasetRef.from_manifest("ring8", manifest)).start()
    result = train(cfg, batches=InMemoryBatches(x, cfg.train.global_batch_size, seed=0),
                   checkpoint_root=root / name, on_snapshot=tracker.on_snapshot)
    tracker.finish(status=status)
    assert tracker.stats.dropped == 0, tracker.stats.errors
    return tracker.run_id, result.checkpoint_dir


@pytest.fixture(scope="module")
def listed(store, tmp_path_factory):
    """Run ids of 'tiny-a' (finished, v1 @champion) and 'tiny-b' (failed, v2, a lower score)."""
    root = tmp_path_factory.mktemp("listing-ckpt")
    a, ckpt_a = _tracked_run("tiny-a", 4, "data-v1", root, "FINISHED")
    b, ckpt_b = _tracked_run("tiny-b", 6, "data-v2", root, "FAILED")
    register_generator(ckpt_a, MODEL, run_id=a, evaluator=fixed_score(0.5), export_formats=())
    register_generator(ckpt_b, MODEL, run_id=b, evaluator=fixed_score(0.4), export_formats=())
    # a bare checkpoint: a short 'register' run in the same experiment, which is not a training run
    register_generator(ckpt_a, "other-gen", evaluator=fixed_score(1.0), dataset_version="data-v1",
                       export_formats=())
    return {"tiny-a": a, "tiny-b": b, "ckpt-a": ckpt_a, "ckpt-b": ckpt_b}


def _json(capsys, *argv: str):
    assert main(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_runs_json_lists_training_runs_newest_first_with_progress_checkpoint_and_versions(listed, capsys):
    from mlflow import MlflowClient

    items = _json(capsys, "runs", "--json")
    assert [it["name"] for it in items] == ["tiny-b", "tiny-a"]  # the registration run is not listed
    b, a = items
    assert (a["step"], a["total_steps"], a["status"]) == (4, 4, "FINISHED")
    assert (b["step"], b["total_steps"], b["status"]) == (6, 6, "FAILED")
    assert a["dataset_version"] == "data-v1" and b["dataset_version"] == "data-v2"
    assert a["run_id"] == listed["tiny-a"] and a["link"] == listed["tiny-a"]  # SQLite: no UI, the run id
    tags = MlflowClient().get_run(listed["tiny-a"]).data.tags
    assert a["last_checkpoint"] == tags[TAG_LAST_CHECKPOINT] and a["last_checkpoint"].endswith("checkpoint-000000004")
    assert b["last_checkpoint"].endswith("checkpoint-000000006")
    assert a["versions"] == [{"name": MODEL, "version": "1", "aliases": ["champion"], "uri": f"models:/{MODEL}/1"}]
    assert b["versions"] == [{"name": MODEL, "version": "2", "aliases": [], "uri": f"models:/{MODEL}/2"}]
    assert [it["name"] for it in _json(capsys, "runs", "--json", "--limit", "1")] == ["tiny-b"]


def test_runs_table_fits_100_columns_and_shows_both_runs(listed, capsys):
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DATASET", "STEP/TOTAL", "STATUS", "REGISTERED"]
    row_a = next(line for line in lines if line.startswith("tiny-a"))
    row_b = next(line for line in lines if line.startswith("tiny-b"))
    assert row_a.split()[1:4] == ["data-v1", "4/4", "FINISHED"] and f"{MODEL} v1 @champion" in row_a
    assert row_b.split()[1:4] == ["data-v2", "6/6", "FAILED"] and row_b.endswith(f"{MODEL} v2")
    # under each row: the last checkpoint and the run (its id: a SQLite store has no UI)
    assert lines[lines.index(row_a) + 1].split() == ["checkpoint-000000004", "run", listed["tiny-a"]]
    assert max(len(line) for line in lines) <= 100


def test_run_link_is_the_mlflow_ui_page_for_a_tracking_server():
    from pipelines.commands.runs import run_link

    assert run_link("https://user:secret@mlflow.example:5000/", "7", "abc") == \
        "https://mlflow.example:5000/#/experiments/7/runs/abc"


def test_models_json_has_every_version_with_alias_score_dataset_and_training_run(listed, capsys):
    items = _json(capsys, "models", "--json")
    assert [(it["name"], it["version"]) for it in items] == [(MODEL, "2"), (MODEL, "1"), ("other-gen", "1")]
    v2, v1, other = items
    assert v1["aliases"] == ["champion"] and v1["champion"] and v1["alias_uris"] == [f"models:/{MODEL}@champion"]
    assert v2["aliases"] == [] and not v2["champion"] and v2["champion_decision"].startswith("kept v1")
    assert (v1["primary_metric"], v1["value"], v1["higher_is_better"]) == ("score", 0.5, True)
    assert v2["value"] == 0.4 and v1["dataset_version"] == "data-v1" and v2["dataset_version"] == "data-v2"
    assert (v1["training_run_id"], v1["training_run_name"]) == (listed["tiny-a"], "tiny-a")
    assert (v2["training_run_id"], v2["training_run_name"]) == (listed["tiny-b"], "tiny-b")
    assert v1["created"].endswith("Z") and v1["uri"] == f"models:/{MODEL}/1"
    assert other["training_run_name"] == "register"  # the registration run's MLflow name
    assert [it["version"] for it in _json(capsys, "models", "--json", "--name", MODEL, "--limit", "1")] == ["2"]


def test_models_table_names_the_champion_uri_first(listed, capsys):
    assert main(["models", "--name", MODEL]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{MODEL} (2 versions): models:/{MODEL}@champion -> version 1"
    assert lines[1].split()[:3] == ["VERSION", "ALIASES", "PRIMARY"]
    assert lines[2].split() == ["2", "-", "score=0.4", "(max)", "data-v2", *lines[2].split()[5:7], "tiny-b"]
    assert lines[3].split()[:5] == ["1", "@champion", "score=0.5", "(max)", "data-v1"] and lines[3].endswith("tiny-a")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"models:/{MODEL}@champion -> version 1" in out and "models:/other-gen@champion -> version 1" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_a_promotion_lock_held_meanwhile_is_not_listed_as_a_model(listed, capsys):
    from infra.models.registry import promotion_lock

    with promotion_lock(MODEL):  # exists as a registered model while an alias moves
        assert main(["models"]) == 0
        out = capsys.readouterr().out
        line = _one_line_error(capsys, "models", "--name", "nope")
    assert ".promotion-lock" not in out and f"models:/{MODEL}@champion" in out
    assert f"models: {MODEL}, other-gen" in line and "lock" not in line


def test_unknown_experiment_or_model_is_one_line_naming_what_exists(listed, capsys):
    line = _one_line_error(capsys, "runs", "--experiment", "nope")
    assert "experiment 'nope' not found" in line and "experiments: Default, ganpipe" in line
    line = _one_line_error(capsys, "models", "--name", "nope")
    assert "registered model 'nope' not found" in line and f"models: {MODEL}, other-gen" in line
    line = _one_line_error(capsys, "runs", "--limit", "0")
    assert "--limit: got 0" in line


def test_empty_and_missing_stores_say_so(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    # 1. no database yet: nothing is created by listing
    missing = tmp_path / "missing.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{missing}")
    assert main(["runs"]) == 0 and capsys.readouterr().out.startswith("no runs in experiment 'ganpipe'")
    assert main(["models"]) == 0 and capsys.readouterr().out.startswith("no models in ")
    assert "no MLflow store at" in _one_line_error(capsys, "runs", "--experiment", "x")
    assert not missing.exists()
    # 2. an empty database
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(empty, empty).search_experiments()  # creates the schema and the Default experiment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", empty)
    assert main(["runs"]) == 0 and capsys.readouterr().out.startswith("no runs in experiment 'ganpipe'")
    assert main(["models", "--json"]) == 0 and json.loads(capsys.readouterr().out) == []
    assert "experiments: Default" in _one_line_error(capsys, "runs", "--experiment", "ganpipe-nightly")
    assert "no models exist" in _one_line_error(capsys, "models", "--name", "x")


def test_unreachable_tracking_server_is_one_line_exit_2(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the socket is: connections are refused
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"http://127.0.0.1:{port}")
    for command in ("runs", "models"):
        line = _one_line_error(capsys, command)
        assert f"the MLflow server http://127.0.0.1:{port} (MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI) cannot be " \
               "reached: connection refused" in line
