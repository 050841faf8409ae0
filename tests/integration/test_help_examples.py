"""Every example in every `ganpipe COMMAND --help` runs (issue 31, item 6).

`EXAMPLES` lists each example exactly as `--help` prints it (continuation lines joined), with what this
test runs for it: the example itself, with the placeholders filled in (`<run_id>`, `5f2c0e...`,
`s3://bucket` = a bucket on the moto server, `~` = a temporary home) and, for commands that train, the
CPU sizing `SMALL` appended (later `--set`s win, so it also replaces an example's own step count); or
`NotHere` naming why it cannot run on this machine (a GPU, a remote cluster, weights that cannot be
downloaded) and the test that runs the same code path against real services. A new example in a `--help`
without a row here fails `test_the_table_lists_every_help_example`.

The examples run in order in one Prefect harness, one Ray instance, one MLflow store and one moto bucket:
staging first, then `ganpipe run` (which registers `ganpipe-digits`), training, evaluation, registration,
sampling and the listings, each example using what the earlier ones made, as a user following `--help`
would. `sample --model runs:/<run_id>/generator` exited 2 on its own manifest before (`model.name`).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS, build_parser, main

pytestmark = pytest.mark.integration

SMALL = ("--set train.total_steps=8 --set train.tick_every_steps=4 --set train.checkpoint_every_steps=8 "
         "--set train.global_batch_size=16 --set evaluation.num_samples=64 --set sampling.num_samples=16")
NARROW = "--set network.g_width=8 --set network.d_width=8"  # the 64x64 DCGAN at CPU size


@dataclass(frozen=True)
class NotHere:
    why: str
    covered_by: str = ""  # tests/...::test_name that runs the same code path here, if any


NO_GPU = "needs GPUs (this machine has none)"
REMOTE = "needs a remote Ray cluster's dashboard at http://head:8265"

# (command, example as --help prints it, what runs here: a command line or NotHere), in running order
EXAMPLES: list[tuple[str, str, str | NotHere]] = [
    ("stage", "ganpipe stage digits --root ./data", "ganpipe stage digits --root ./data"),
    ("stage", "ganpipe stage grid25 --num-samples 100000 --seed 1 --root s3://bucket/ganpipe",
     "ganpipe stage grid25 --num-samples 100000 --seed 1 --root s3://{bucket}/ganpipe"),
    ("stage", "ganpipe stage ./faces --image-size 64 --root s3://bucket/ganpipe --name faces64",
     "ganpipe stage ./faces --image-size 64 --root s3://{bucket}/ganpipe --name faces64"),
    ("stage", "ganpipe stage s3://bucket/raw/cats --image-size 32 --grayscale --skip-bad --root ./data",
     "ganpipe stage s3://{bucket}/raw/cats --image-size 32 --grayscale --skip-bad --root ./data"),
    ("stage", "ganpipe stage ./cifar10/train-00000-of-00001.parquet --image-size 32 --root ./data",
     "ganpipe stage ./cifar10/train-00000-of-00001.parquet --image-size 32 --root ./data"),
    ("stage", "ganpipe stage s3://bucket/raw/ffhq64.zip --root s3://bucket/ganpipe",
     "ganpipe stage s3://{bucket}/raw/ffhq64.zip --root s3://{bucket}/ganpipe"),
    ("stage", "ganpipe stage ./x.npy --labels ./y.npy --root ./data --rows-per-shard 10000",
     "ganpipe stage ./x.npy --labels ./y.npy --root ./data --rows-per-shard 10000"),
    ("stage", "ganpipe stage s3://bucket/ganpipe/datasets/faces64 --verify   # check the latest version's checksums",
     "ganpipe stage s3://{bucket}/ganpipe/datasets/faces64 --verify"),
    ("run", "ganpipe run                                           # digits, the embedded default",
     f"ganpipe run {SMALL}"),
    ("run", "ganpipe run --preset ring8 --set train.total_steps=2000",
     f"ganpipe run --preset ring8 --set train.total_steps=2000 {SMALL}"),  # SMALL's 8 steps win: 2000 took 80 s
    ("run", "ganpipe run --config nightly.toml --set cluster.num_workers=4 --set cluster.use_gpu=true",
     NotHere(NO_GPU, "tests/integration/test_cli.py::test_dry_run_prints_a_config_that_reads_back_to_the_same_settings")),
    ("run", "ganpipe run --config nightly.toml --dry-run           # print the resolved config (TOML) and stop",
     "ganpipe run --config nightly.toml --dry-run"),
    ("train", "ganpipe train --dataset ~/.ganpipe/data/datasets/digits --preset digits",
     f"ganpipe train --dataset ~/.ganpipe/data/datasets/digits --preset digits {SMALL}"),
    ("train", "ganpipe train --dataset s3://bucket/root/datasets/digits --workers 4 --gpus --storage s3://bucket/runs",
     NotHere(NO_GPU, "tests/integration/test_ray_train.py::test_checkpoints_on_s3_with_streamed_data")),
    ("train", "RAY_ADDRESS=http://head:8265 ray job submit --working-dir . -- ganpipe train --dataset ... "
              "--workers 8 --gpus", NotHere(REMOTE + " and GPUs",
                                            "tests/integration/test_submit.py::test_submitted_job_succeeds_and_a_retry_attaches")),
    # the S3 training the evaluate/register examples below read (the submit example's request, on one CPU worker)
    ("", "", f"ganpipe train --dataset s3://{{bucket}}/ganpipe/datasets/faces64 --preset dcgan64 "
             f"--storage s3://{{bucket}}/runs {SMALL} {NARROW}"),
    ("evaluate", "ganpipe evaluate ~/.ganpipe/ray_results/gan-digits-0123abcd/checkpoint-000003000",
     "ganpipe evaluate {checkpoint}"),
    ("evaluate", "ganpipe evaluate 5f2c0e... --dataset ~/.ganpipe/data/datasets/digits --json",
     "ganpipe evaluate {run_id} --dataset ~/.ganpipe/data/datasets/digits --json"),
    ("evaluate", "ganpipe evaluate 5f2c0e... --dataset ~/.ganpipe/data/datasets/faces64 --inception "
                 "~/models/inception-2015-12-05.pt",
     NotHere("NVIDIA's Inception weights cannot be downloaded here",
             "tests/unit/test_fid.py::test_fid_from_the_config_path_floor_near_zero_against_noise")),
    ("evaluate", "ganpipe evaluate s3://bucket/runs/gan-faces64-.../checkpoint-000050000 --dataset "
                 "s3://bucket/root/datasets/faces64",
     "ganpipe evaluate {s3_checkpoint} --dataset s3://{bucket}/ganpipe/datasets/faces64"),
    ("register", "ganpipe register --run 5f2c0e... --name ganpipe-digits",
     "ganpipe register --run {run_id} --name ganpipe-digits"),
    ("register", "ganpipe register --run ~/.ganpipe/ray_results/gan-digits-0123abcd/checkpoint-000003000 "
                 "--name digits-v2 --no-promote", "ganpipe register --run {checkpoint} --name digits-v2 --no-promote"),
    ("register", "ganpipe register --run s3://bucket/runs/gan-faces64-.../checkpoint-000050000 --name faces64 "
                 "--dataset s3://bucket/root/datasets/faces64 --scale 0.0078431 --offset -1",
     "ganpipe register --run {s3_checkpoint} --name faces64 --dataset s3://{bucket}/ganpipe/datasets/faces64 "
     "--scale 0.0078431 --offset -1"),
    # the class-conditional model the --class example samples
    ("", "", f"ganpipe run --set network.conditional=true --set registry.model_name=digits-cond {SMALL}"),
    ("sample", "ganpipe sample --model models:/ganpipe-digits@champion --num-samples 100000 --seed 0 "
               "--out ./samples/d0",
     "ganpipe sample --model models:/ganpipe-digits@champion --num-samples 100000 --seed 0 --out ./samples/d0"),
    ("sample", "ganpipe sample --model models:/ganpipe-digits/2 --num-samples 1000000 --seed 7 --out "
               "s3://bucket/samples/digits-v2-s7 --actors 8 --batch-size 8192",  # version 2: the run's, then register's
     "ganpipe sample --model models:/ganpipe-digits/2 --num-samples 40000 --seed 7 --out "
     "s3://{bucket}/samples/digits-v2-s7 --actors 2 --batch-size 8192"),  # sized for 2 cores and moto's memory
    ("sample", "ganpipe sample --model models:/faces64@champion --num-samples 50000 --seed 1 --out ./faces-png "
               "--format png --gpus 1",
     "ganpipe sample --model models:/faces64@champion --num-samples 500 --seed 1 --out ./faces-png --format png"),
    ("sample", "ganpipe sample --model runs:/<run_id>/generator --num-samples 64 --seed 0 --out ./preview",
     "ganpipe sample --model runs:/{run_id}/generator --num-samples 64 --seed 0 --out ./preview"),
    ("sample", "ganpipe sample --model models:/ganpipe-digits@champion --num-samples 10000 --seed 0 --out "
               "./d0-t1 --truncation 1.0",
     "ganpipe sample --model models:/ganpipe-digits@champion --num-samples 10000 --seed 0 --out ./d0-t1 "
     "--truncation 1.0"),
    ("sample", "ganpipe sample --model models:/digits-cond@champion --num-samples 10000 --seed 0 --out "
               "./d0-class3 --class 3",
     "ganpipe sample --model models:/digits-cond@champion --num-samples 10000 --seed 0 --out ./d0-class3 --class 3"),
    ("deploy", 'ganpipe deploy --name nightly --cron "0 3 * * *"',
     NotHere("serves until stopped", "tests/integration/test_deploy.py::test_served_deployment_runs_to_completion")),
    ("deploy", 'ganpipe deploy --name nightly --cron "0 3 * * *" --config nightly.toml --timezone Europe/Paris',
     NotHere("serves until stopped", "tests/integration/test_deploy.py::test_deployment_schedule_reads_back_through_the_api")),
    ("deploy", 'ganpipe deploy --name nightly --cron "0 3 * * *" --work-pool k8s --image '
               'registry.example/ganpipe:1.0 --set cluster.num_workers=8 --set cluster.use_gpu=true',
     NotHere("needs a Kubernetes work pool, a pushed image and GPUs")),
    ("deploy", "prefect deployment run 'gan-pipeline/nightly'        # a run now, outside the schedule",
     NotHere("Prefect's own command, for a deployment being served",
             "tests/integration/test_deploy.py::test_served_deployment_runs_to_completion")),
    ("submit", "ganpipe submit --address http://head:8265 -- --dataset s3://bucket/root/datasets/digits --workers 4",
     NotHere(REMOTE, "tests/integration/test_submit.py::test_submitted_job_succeeds_and_a_retry_attaches")),
    ("submit", "RAY_ADDRESS=http://head:8265 ganpipe submit --no-wait -- --dataset s3://bucket/root/datasets/faces64 "
               "--preset dcgan64 --workers 8 --gpus --storage s3://bucket/runs", NotHere(REMOTE + " and GPUs")),
    ("submit", "ganpipe submit --address http://head:8265 -- --dataset ...    # again: attaches and follows the same job",
     NotHere(REMOTE, "tests/integration/test_submit.py::test_submitted_job_succeeds_and_a_retry_attaches")),
    ("submit", "ray job logs JOB_ID --address http://head:8265 --follow       # after --no-wait", NotHere(REMOTE)),
    ("runs", "ganpipe runs", "ganpipe runs"),
    ("runs", "ganpipe runs --experiment ganpipe --limit 5        # the default experiment, the last 5 runs",
     "ganpipe runs --experiment ganpipe --limit 5"),
    ("runs", "MLFLOW_TRACKING_URI=http://mlflow.internal:5000 ganpipe runs --json",
     "MLFLOW_TRACKING_URI={mlflow} ganpipe runs --json"),
    ("models", "ganpipe models", "ganpipe models"),
    ("models", "ganpipe models --name ganpipe-digits --limit 5", "ganpipe models --name ganpipe-digits --limit 5"),
    ("models", "ganpipe models --json | jq '.[] | select(.champion)'", "ganpipe models --json"),
]


def readme_nightly_toml() -> str:
    """The `nightly.toml` the README shows (the TOML block after its introduction)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = text.split("`nightly.toml`, the request the deployment carries", 1)[1]
    return after.split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_readme_nightly_config_is_a_valid_request(tmp_path):
    """README item 8 of issue 31: `nightly.toml` was named by every deploy example and never shown."""
    from pipelines.settings import resolve_settings

    (tmp_path / "nightly.toml").write_text(readme_nightly_toml())
    settings = resolve_settings(config_file=str(tmp_path / "nightly.toml"))
    assert settings.preset == "digits" and settings.cluster.num_workers == 2


def help_examples(command: str) -> list[str]:
    """The examples of `ganpipe COMMAND --help`: the lines under 'examples:' that start a command (two
    spaces in), continuation lines ('\\' at the end) joined with one space."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices[command].format_help().split("examples:", 1)
    lines: list[str] = []
    for raw in (text[1] if len(text) == 2 else "").splitlines():
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1].rstrip() + " " + raw.strip()
        elif re.match(r"  \S", raw) and not raw.lstrip().startswith("-"):
            lines.append(raw.strip())
        elif raw.strip() and not raw.startswith(" "):
            break  # the next section (options:)
    return lines


def test_the_table_lists_every_help_example():
    for command, *_ in COMMANDS:
        listed = [example for c, example, _ in EXAMPLES if c == command]
        assert listed == help_examples(command), f"ganpipe {command} --help: examples without a row in EXAMPLES"
        assert listed, f"ganpipe {command} --help shows no example"
    tests = Path(__file__).resolve().parents[1]
    for _, example, here in EXAMPLES:
        if isinstance(here, NotHere) and here.covered_by:
            path, name = here.covered_by.split("::")
            assert f"def {name}(" in (tests.parent / path).read_text(), f"{example}: {here.covered_by} does not exist"


def _inputs(tmp: Path, bucket: str, photo_crops: dict) -> None:
    """The files the staging examples name, made from the photo crops: ./faces, ./cifar10/...parquet,
    ./x.npy + ./y.npy, s3://bucket/raw/cats/ and s3://bucket/raw/ffhq64.zip; and ./nightly.toml."""
    import boto3
    import numpy as np

    shutil.copytree(photo_crops["folder"], tmp / "faces")
    (tmp / "cifar10").mkdir()
    shutil.copy(photo_crops["parquet"], tmp / "cifar10" / "train-00000-of-00001.parquet")
    np.save(tmp / "x.npy", photo_crops["x"])
    np.save(tmp / "y.npy", photo_crops["labels"])
    s3 = boto3.client("s3")
    for png in sorted(Path(photo_crops["folder"]).rglob("*.png")):
        s3.upload_file(str(png), bucket, f"raw/cats/{png.relative_to(photo_crops['folder'])}")
    s3.upload_file(str(photo_crops["zip"]), bucket, "raw/ffhq64.zip")
    (tmp / "nightly.toml").write_text(readme_nightly_toml())  # the README's, as the examples name it


def _run(line: str, fields: dict, monkeypatch, capsys) -> str:
    """Run one command line as `ganpipe` would (leading VAR=value pairs set in the environment, ~ the home);
    returns its stdout; fails naming the line on a non-zero exit."""
    argv = shlex.split(line.format(**fields).replace("~", fields["home"]))
    while "=" in argv[0]:
        name, _, value = argv.pop(0).partition("=")
        monkeypatch.setenv(name, value)
    assert argv[0] == "ganpipe", line
    capsys.readouterr()
    code = main(argv[1:])
    out, err = capsys.readouterr()
    # NOTE: exit 0 is the contract; the captured stderr of an in-process run also holds Ray's forwarded worker
    # logs and, in a full session, other tests' logging noise, so no traceback is asserted on it (the one-line
    # errors are tests/reliability's)
    assert code == 0, f"{line}: exit {code}\n{err[-3000:]}"
    assert "Downloading artifacts" not in err, f"{line}: MLflow's per-file download bars"
    return out


def test_every_help_example_runs(ray_cluster, prefect_harness, mlflow_tracking, s3_bucket, photo_crops, tmp_path,
                                 monkeypatch, capsys):
    import boto3
    from mlflow import MlflowClient

    from infra.models.batch_sampling import open_samples
    from infra.train.tracking import TAG_LAST_CHECKPOINT

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GANPIPE_HOME", str(home / ".ganpipe"))
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # ganpipe's own default applies
    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path, s3_bucket, photo_crops)
    client = MlflowClient(mlflow_tracking)
    fields = {"bucket": s3_bucket, "home": str(home), "mlflow": mlflow_tracking}
    for command, example, here in EXAMPLES:
        if isinstance(here, NotHere):
            continue
        if "{run_id}" in here and "run_id" not in fields:  # the `ganpipe run` example's training run
            experiments = [e.experiment_id for e in client.search_experiments()]
            [run] = [r for r in client.search_runs(experiments)
                     if "/gan-digits-" in r.data.tags.get(TAG_LAST_CHECKPOINT, "")][-1:]
            fields["run_id"] = run.info.run_id
        if "{checkpoint}" in here and "checkpoint" not in fields:
            fields["checkpoint"] = str(sorted((home / ".ganpipe" / "ray_results").glob("gan-digits-*/checkpoint-*"))[-1])
        if "{s3_checkpoint}" in here and "s3_checkpoint" not in fields:
            keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="runs/")["Contents"]]
            folder = sorted({re.sub(r"(/checkpoint-\d+)/.*", r"\1", k) for k in keys if "/checkpoint-" in k})[-1]
            fields["s3_checkpoint"] = f"s3://{s3_bucket}/{folder}"
        out = _run(here, fields, monkeypatch, capsys)
        if example.startswith("ganpipe models --json |"):  # the jq filter, in Python
            assert [m for m in json.loads(out) if m.get("champion")], out
    # what the examples made, as they say
    assert str(client.get_model_version_by_alias("ganpipe-digits", "champion").version) in {"1", "2"}
    indices, x = open_samples(str(tmp_path / "preview"), verify=True).load_arrays()  # the runs:/ example
    assert x.shape == (64, 1, 8, 8) and list(indices) == list(range(64))
    manifest = json.loads((tmp_path / "preview" / "_manifest.json").read_text())
    assert manifest["model"]["name"] is None and manifest["model"]["requested_uri"].startswith("runs:/")
    assert len(list((tmp_path / "faces-png").rglob("*.png"))) >= 500
