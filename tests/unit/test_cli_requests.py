"""`python -m gan_core` and `python -m gan_core.evaluate` check the whole request (device, output
location, the checkpoint to resume, thread count) before anything starts: a bad one is one line on stderr,
exit 2, and nothing written."""

from __future__ import annotations

import pytest

from gan_core.__main__ import main as train_main
from gan_core.evaluate import main as evaluate_main
from gan_core.training import check_device


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-step run of the tiny preset (its checkpoint directory)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert train_main(["--preset", "tiny", "--steps", "2", "--threads", "1", "--out", str(out)]) == 0
    return next((out / "checkpoints").iterdir())


def one_line_refusal(capsys, message: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("device, message", [
    ("bogus", "device: got 'bogus'; allowed: cpu"),
    ("cuda:99", "device: got 'cuda:99'; allowed: cpu"),
    ("", "device: got ''; allowed: cpu"),
])
def test_training_refuses_a_device_it_cannot_use_before_writing(tmp_path, capsys, device, message):
    out = tmp_path / "run"
    assert train_main(["--preset", "tiny", "--steps", "1", "--device", device, "--out", str(out)]) == 2
    one_line_refusal(capsys, message)
    assert not out.exists()


def test_check_device_accepts_cpu():
    assert check_device("cpu").type == "cpu"


@pytest.mark.parametrize("below, message", [("", "an existing file; allowed: a folder"), ("run", "--out: cannot create")])
def test_training_refuses_an_output_folder_it_cannot_create(tmp_path, capsys, below, message):
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" / below if below else tmp_path / "taken"
    assert train_main(["--preset", "tiny", "--steps", "1", "--out", str(out)]) == 2
    one_line_refusal(capsys, message)
    assert (tmp_path / "taken").read_text() == "x"


def test_training_refuses_a_missing_or_incomplete_checkpoint_to_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--preset", "tiny", "--steps", "1", "--resume", str(tmp_path / "nope"), "--out", str(out)]) == 2
    one_line_refusal(capsys, "nope: no such checkpoint directory")
    (tmp_path / "empty").mkdir()
    assert train_main(["--preset", "tiny", "--steps", "1", "--resume", str(tmp_path / "empty"), "--out", str(out)]) == 2
    one_line_refusal(capsys, "empty")
    assert not out.exists()


def test_training_refuses_to_resume_a_checkpoint_of_other_networks(tmp_path, capsys, tiny_run):
    out = tmp_path / "run"
    argv = ["--preset", "tiny", "--steps", "3", "--threads", "1", "--set", "network.g_width=24", "--resume",
            str(tiny_run), "--out", str(out)]
    assert train_main(argv) == 2
    one_line_refusal(capsys, str(tiny_run))
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def test_training_refuses_a_thread_count_below_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--threads", "0", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "--threads: got 0; allowed: a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    (["--device", "bogus"], "device: got 'bogus'"),
    (["--json", "{tmp}/missing/m.json"], "lies in a missing one"),
    (["--json", "{tmp}"], "is a folder"),
])
def test_evaluation_refuses_a_bad_device_or_json_path_before_evaluating(tmp_path, capsys, tiny_run, extra, message):
    extra = [a.format(tmp=tmp_path) for a in extra]
    assert evaluate_main(["--checkpoint", str(tiny_run), *extra]) == 2
    one_line_refusal(capsys, message)
    assert list(tmp_path.iterdir()) == []
