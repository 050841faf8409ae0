"""The `ganpipe` command line: every command's --help, one-line user errors with exit code 2, --dry-run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from pipelines.cli import COMMANDS, build_parser, main
from pipelines.settings import resolve_settings

REPO = Path(__file__).resolve().parents[2]


def ganpipe(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GANPIPE_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("command", [c[0] for c in COMMANDS])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: ganpipe {command} " in out
    assert "examples:" in out  # each of them runs: tests/integration/test_help_examples.py


def test_malformed_config_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "digits"\n[train\ntotal_steps = 10\n')
    r = ganpipe("run", "--config", str(bad), "--dry-run", home=tmp_path / "home")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("error: ") and "bad.toml: not valid TOML" in lines[0] and "line 2" in lines[0]


@pytest.mark.parametrize("body, expected", [
    ('[registry]\nmodel_nam = "x"\n', "registry.model_nam: unknown field; allowed: model_name, alias"),
    ('[sampling]\nformat = "gif"\n', "sampling.format: got 'gif'; allowed: png | npy"),
    ('[train]\ntotal_step = 10\n', "train.total_step: unknown field; allowed:"),
    ('[clutser]\nnum_workers = 2\n', "clutser: unknown field; allowed: preset, source, storage"),
    ('preset = "huge"\n', "preset: got 'huge'; allowed: tiny | digits"),
])
def test_unknown_or_invalid_field_is_one_line_exit_2(tmp_path, body, expected):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(body)
    r = ganpipe("run", "--config", str(cfg), "--dry-run", home=tmp_path / "home")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert expected in r.stderr


def test_set_override_errors_and_deploy_cron_errors_are_exit_2(tmp_path, capsys):
    assert main(["run", "--set", "cluster.num_workers=0", "--dry-run"]) == 2
    assert "cluster.num_workers: got 0; allowed: an integer from 1 to 4096" in capsys.readouterr().err
    assert main(["run", "--set", "nonsense", "--dry-run"]) == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err
    assert main(["deploy", "--name", "x", "--cron", "61 * * * *", "--preset", "tiny"]) == 2
    assert "--cron '61 * * * *'" in capsys.readouterr().err
    assert main(["submit", "--", "--dataset", "x", "--set", "train.total_steps=-1"]) == 2
    assert "train.total_steps: got -1" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_dry_run_prints_a_config_that_reads_back_to_the_same_settings(tmp_path, capsys):
    cfg = tmp_path / "nightly.toml"
    cfg.write_text('preset = "ring8"\n[train]\ntotal_steps = 123\n[cluster]\nnum_workers = 2\n'
                   '[registry]\nmodel_name = "rings"\n[sampling]\nnum_samples = 16\n')
    assert main(["run", "--config", str(cfg), "--set", "loss.r1_gamma=0.5", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    again = resolve_settings(config_data=tomllib.loads(printed))
    expected = resolve_settings(config_file=str(cfg), overrides=["loss.r1_gamma=0.5"])
    assert again == expected
    assert again.gan.train.total_steps == 123 and again.cluster.num_workers == 2
    assert again.model_name == "rings" and again.sampling.num_samples == 16 and again.gan.loss.r1_gamma == 0.5
    # the embedded defaults: everything under GANPIPE_HOME, model named after the dataset
    assert resolve_settings(preset="digits").model_name == "ganpipe-digits"
    # a class-conditional G (its predict takes labels) never takes over the unconditional model's alias
    assert resolve_settings(preset="digits-cond").model_name == "ganpipe-digits-conditional"


@pytest.mark.parametrize("command", ["train", "submit"])
def test_preset_named_in_the_config_file_is_used_when_no_flag_is_given(tmp_path, command):
    """A flag's argparse default must not count as explicit: the file's preset (ring8, an MLP for 2-D
    points) applies, so its data.shape [2] is valid; under the digits preset (a DCGAN) it is refused."""
    from pipelines.cli import build_parser
    from pipelines.commands.submit import validate_train_args
    from pipelines.commands.train import resolve_train_settings

    cfg = tmp_path / "rings.toml"
    cfg.write_text('preset = "ring8"\n[data]\nshape = [2]\n[train]\ntotal_steps = 7\n')
    if command == "train":
        settings = resolve_train_settings(build_parser().parse_args(["train", "--dataset", "x", "--config", str(cfg)]))
        assert settings.preset == "ring8" and settings.gan.network.arch == "mlp"
        assert settings.gan.train.total_steps == 7
        flagged = resolve_train_settings(build_parser().parse_args(
            ["train", "--dataset", "x", "--config", str(cfg), "--preset", "grid25"]))
        assert flagged.preset == "grid25"  # an explicit flag still wins over the file
    else:
        _, request = validate_train_args(["--", "--dataset", "x", "--config", str(cfg)])
        assert request["settings"]["preset"] == "ring8" and request["settings"]["train"]["total_steps"] == 7


@pytest.mark.parametrize("override, message", [
    # a rule across sections: found by --dry-run, before any service starts (it used to surface at launch)
    ("cluster.num_workers=3", "train.global_batch_size: got 64 for cluster.num_workers = 3; allowed: a multiple"),
    ("train.amp=fp16", "train.amp: got 'fp16' without GPUs"),
    ("train.global_batch_size=1000000000000", "train.global_batch_size: got 1000000000000; allowed: an integer from 1"),
    ("registry.model_name=../../etc", "registry.model_name: got '../../etc'; allowed: letters, digits"),
    ("registry.model_name=a/b", "registry.model_name: got 'a/b'"),
    ("registry.model_name=a..b", "registry.model_name: got 'a..b'"),
    # the registry's promotion lock for model 'faces' is a registered model of this name
    ("registry.model_name=faces.promotion-lock", "registry.model_name: got 'faces.promotion-lock'"),
])
def test_whole_request_is_validated_by_dry_run(override, message, capsys):
    assert main(["run", "--set", override, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("preset", ["dcgan32", "dcgan64"])
def test_train_takes_a_staged_image_dataset_with_the_dcgan_presets(preset, capsys):
    """Issue 31: `ganpipe train --dataset <root>/datasets/f32 --preset dcgan32` was refused with 'source.uri:
    got images' (the README's own pattern); a staged dataset needs no [source]. `run`, which stages, still
    asks for one."""
    from pipelines.commands.train import resolve_train_settings

    args = build_parser().parse_args(["train", "--dataset", "/data/datasets/f32", "--preset", preset])
    assert resolve_train_settings(args).preset == preset
    assert main(["run", "--preset", preset, "--dry-run"]) == 2
    assert "source.uri: got 'images'" in capsys.readouterr().err
