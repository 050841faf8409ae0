"""One error boundary for every entry point (issue 31, item 1; gan_core.errors): the tracebacks the sweep
found become one line, exit 2 for the user's input and exit 1 naming the log for anything else.

Damaged checkpoints go through every reader: their digest file is remade after the damage, so that what
is tested is the reader behind the integrity check (the check itself is tests/reliability/
test_checkpoint_faults.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gan_core.checkpoint import CONFIG_FILE, FILES_MANIFEST, STATE_FILE
from gan_core.files import sha256_file
from tests.factories import tiny_checkpoint


def remake_digests(ckpt: Path) -> None:
    table = json.loads((ckpt / FILES_MANIFEST).read_text())
    for name, entry in table["files"].items():
        entry.update(bytes=(ckpt / name).stat().st_size, sha256=sha256_file(ckpt / name))
    (ckpt / FILES_MANIFEST).write_text(json.dumps(table))


class Opaque:  # a pickled object: weights_only loading refuses it
    pass


def _edit_config(ckpt: Path, **network) -> None:
    table = json.loads((ckpt / CONFIG_FILE).read_text())
    table["network"].update(network)
    (ckpt / CONFIG_FILE).write_text(json.dumps(table))


DAMAGE = {
    "config-not-json": lambda c: (c / CONFIG_FILE).write_text("{\"network\": "),
    "pickle-payload": lambda c: torch.save({"G": Opaque()}, c / STATE_FILE),
    "truncated-state": lambda c: (c / STATE_FILE).write_bytes((c / STATE_FILE).read_bytes()[:1000]),
    "config-does-not-fit-weights": lambda c: _edit_config(c, z_dim=5),
}

ENTRY_POINTS = {
    "ganpipe evaluate": lambda c, tmp: ("ganpipe", ["evaluate", str(c)]),
    "ganpipe register": lambda c, tmp: ("ganpipe", ["register", "--run", str(c), "--name", "damaged", "--no-export"]),
    "python -m gan_core.evaluate": lambda c, tmp: ("gan_core.evaluate", ["--checkpoint", str(c)]),
    "python -m gan_core --resume": lambda c, tmp: ("gan_core", ["--preset", "tiny", "--resume", str(c),
                                                                "--out", str(tmp / "resumed")]),
}


def run_entry(kind: str, argv: list[str]) -> int:
    if kind == "ganpipe":
        from pipelines.cli import main
    elif kind == "gan_core":
        from gan_core.__main__ import main
    else:
        from gan_core.evaluate import main
    return main(argv)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("pristine"))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_from_every_reader(entry, damage, pristine, tmp_path, mlflow_tracking,
                                                            monkeypatch, capsys):
    """The sweep: register on a bad config.json, a pickle payload or a truncated state.pt printed the right
    CheckpointError as a traceback (exit 1); a config.json that no longer fits the weights ended in torch's
    `Error(s) in loading state_dict` (evaluate, register, gan_core.evaluate) or trained on (--resume)."""
    import shutil

    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(pristine, ckpt)
    DAMAGE[damage](ckpt)
    remake_digests(ckpt)
    kind, argv = ENTRY_POINTS[entry](ckpt, tmp_path)
    capsys.readouterr()
    assert run_entry(kind, argv) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.strip().splitlines() if " INFO mlflow." not in ln]  # a fresh store's notes
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(ckpt) in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "resumed" / "checkpoints").exists()  # --resume wrote nothing


def test_an_unexpected_failure_is_one_line_naming_the_log(tmp_path, monkeypatch, capsys):
    import pipelines.commands.runs

    def bug(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(pipelines.commands.runs, "run", bug)
    from pipelines.cli import main

    assert main(["runs"]) == 1
    err = capsys.readouterr().err
    [log] = list((tmp_path / "home" / "logs").glob("runs-error-*.log"))
    assert err == f"error: ganpipe runs failed unexpectedly: ZeroDivisionError: division by zero (traceback: {log})\n"
    assert "Traceback (most recent call last)" in log.read_text() and "in bug" in log.read_text()


def test_paths_under_a_regular_file_are_one_line(tmp_path, monkeypatch, capsys, pristine, mlflow_tracking):
    """GANPIPE_HOME under a regular file, `run --log-file` under a file, `gan_core.evaluate --json` into a
    folder that cannot be written: OS-error tracebacks before, one line naming the path now."""
    from gan_core.evaluate import main as evaluate_main
    from pipelines.cli import main

    (tmp_path / "file").write_text("x")
    cases = [
        (lambda: main(["models"]), {"GANPIPE_HOME": str(tmp_path / "file" / "home"),
                                    "MLFLOW_TRACKING_URI": ""}, str(tmp_path / "file" / "home")),
        (lambda: main(["run", "--preset", "tiny", "--log-file", str(tmp_path / "file" / "run.log")],),
         {"GANPIPE_HOME": str(tmp_path / "home")}, f"{tmp_path / 'file'}: a regular file where a folder is needed"),
        (lambda: evaluate_main(["--checkpoint", str(pristine), "--json", "/proc/ganpipe-x.json"]), {},
         "/proc/ganpipe-x.json"),
    ]
    for call, env, path in cases:
        for name, value in env.items():
            if value:
                monkeypatch.setenv(name, value)
            else:
                monkeypatch.delenv(name, raising=False)
        capsys.readouterr()
        assert call() == 2, path
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and path in err and "Traceback" not in err, err


def _zero_d(tmp: Path) -> list[str]:
    import numpy as np

    np.save(tmp / "zero.npy", np.array(3.0))
    return ["stage", str(tmp / "zero.npy"), "--root", str(tmp / "root")]


def _huge_label(tmp: Path) -> list[str]:
    import numpy as np

    np.save(tmp / "x.npy", np.zeros((10, 2), np.float32))
    np.save(tmp / "y.npy", np.array([0] * 9 + [2 ** 62]))
    return ["stage", str(tmp / "x.npy"), "--labels", str(tmp / "y.npy"), "--root", str(tmp / "root")]


def _damaged_store(command: str, header: bytes):
    def make(tmp: Path) -> list[str]:
        (tmp / "home").mkdir(exist_ok=True)
        (tmp / "home" / "mlflow.db").write_bytes(header + bytes(range(256)) * 20)
        return [command]
    return make


@pytest.mark.bounded_memory
@pytest.mark.parametrize("make, expected", [
    (_zero_d, "zero.npy: expected an array of examples (N, ...), got shape ()"),
    (_huge_label, "y.npy: labels must be class indices below 32768 (network.num_classes' bound), got 4611686018427387904"),
    (_damaged_store("runs", b"garbage"), "mlflow.db (MLFLOW_TRACKING_URI) is not an SQLite database"),
    (_damaged_store("models", b"garbage"), "mlflow.db (MLFLOW_TRACKING_URI) is not an SQLite database"),
    (_damaged_store("runs", b"SQLite format 3\x00"), "mlflow.db failed: (sqlite3.DatabaseError) file is not a database"),
], ids=["stage-0d-array", "stage-label-2**62", "runs-mlflow-db-garbage", "models-mlflow-db-garbage",
        "runs-mlflow-db-truncated"])
def test_the_sweeps_tracebacks_are_one_line(make, expected, tmp_path, monkeypatch, capsys):
    """`stage` of a 0-d array (TypeError: len() of unsized object), labels reaching 2**62 (numpy's 'array is
    too big'), a damaged mlflow.db under `runs` / `models` (sqlalchemy tracebacks): exit 2, one line, nothing
    staged."""
    from pipelines.cli import main

    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    argv = make(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "root").exists() or not list((tmp_path / "root").rglob("_manifest.json"))


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


SERVICE_CASES = [
    ("ray-garbage", {"RAY_ADDRESS": "not an address"}, ["train", "--dataset", "{tmp}/d", "--preset", "tiny"],
     "RAY_ADDRESS: got 'not an address'; allowed: auto, HOST:PORT"),
    ("ray-client-closed", {"RAY_ADDRESS": "ray://127.0.0.1:{port}"}, ["train", "--dataset", "{tmp}/d", "--preset", "tiny"],
     "RAY_ADDRESS: the Ray cluster at ray://127.0.0.1:{port} cannot be reached: Connection refused"),
    ("ray-gcs-closed", {"RAY_ADDRESS": "127.0.0.1:{port}"}, ["run", "--preset", "tiny"],  # hung > 5 min
     "RAY_ADDRESS: the Ray cluster at 127.0.0.1:{port} cannot be reached"),
    ("prefect-garbage", {"PREFECT_API_URL": "not a url"}, ["stage", "digits", "--root", "{tmp}/r", "--engine", "flow"],
     "PREFECT_API_URL: got 'not a url'; allowed: an http(s) URL of the Prefect API"),
    ("prefect-closed", {"PREFECT_API_URL": "http://127.0.0.1:{port}/api"},
     ["deploy", "--name", "n", "--cron", "0 3 * * *", "--preset", "tiny"],
     "PREFECT_API_URL: the Prefect API at http://127.0.0.1:{port}/api cannot be reached"),
    ("deploy-without-prefect", {"PREFECT_API_URL": ""}, ["deploy", "--name", "n", "--cron", "0 3 * * *"],
     "PREFECT_API_URL is not set: a deployment lives in a Prefect server that outlives this command"),
    ("deploy-name-empty", {}, ["deploy", "--name", "", "--cron", "0 3 * * *"],
     "--name: got ''; allowed: a non-empty name without / % & > <"),
    ("deploy-name-slash", {}, ["deploy", "--name", "a/b", "--cron", "0 3 * * *"],
     "--name: got 'a/b'; allowed: a non-empty name without / % & > <"),
    ("s3-closed", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"}, ["stage", "digits", "--root", "s3://bucket/x"],
     "AWS_ENDPOINT_URL: the S3 endpoint at http://127.0.0.1:{port} cannot be reached: Connection refused"),
]


@pytest.mark.parametrize("env, argv, expected", [c[1:] for c in SERVICE_CASES], ids=[c[0] for c in SERVICE_CASES])
def test_services_at_the_users_addresses_are_probed_first(env, argv, expected, tmp_path, monkeypatch, capsys):
    """Each address the user gave is parsed and probed before anything starts: one line in <= 10 s (the
    probe's 3 tries of 3 s), exit 2 (tracebacks before; RAY_ADDRESS=127.0.0.1:9 hung > 5 min, `deploy`
    without PREFECT_API_URL hung on Prefect's websocket)."""
    import time

    from pipelines.cli import main

    port = _closed_port()
    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    for name, value in env.items():
        if value:
            monkeypatch.setenv(name, value.format(port=port))
        else:
            monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    t0 = time.monotonic()
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected.format(port=port) in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


class _Other(torch.nn.Module):  # another calling convention: no return_features
    def forward(self, x):
        return x


class _Scalar(torch.nn.Module):
    def forward(self, x, return_features: bool = True):
        return x.sum()


class _NaN(torch.nn.Module):
    def forward(self, x, return_features: bool = True):
        return x.flatten(1) * float("nan")


class _Constant(torch.nn.Module):
    def forward(self, x, return_features: bool = True):
        return torch.ones(x.shape[0], 4)


class _Raises(torch.nn.Module):
    def forward(self, x, return_features: bool = True):
        if x.shape[0] > 0:
            raise RuntimeError("no GPU here")
        return x


class _Wide(torch.nn.Module):  # 200,000-d (the sweep's: grew past 5 GB) over MAX_FEATURE_DIM = 4096
    def forward(self, x, return_features: bool = True):
        return x.flatten(1)[:, :1].repeat(1, 200_000)


def _scripted(module):
    def make(path: Path) -> None:
        torch.jit.script(module()).save(str(path))
    return make


FEATURE_NETWORKS = {
    "text-file": (lambda p: p.write_text("not a network\n"), "not a TorchScript file"),
    "torch-save-dict": (lambda p: torch.save({"w": torch.zeros(2)}, p), "not a TorchScript file"),
    "other-signature": (_scripted(_Other), "raised RuntimeError for a batch of shape"),
    "scalar": (_scripted(_Scalar), "returned () for a batch of"),
    "nan-features": (_scripted(_NaN), "returned non-finite features"),
    "constant-features": (_scripted(_Constant), "returns the same features for all"),
    "raises": (_scripted(_Raises), "raised"),
    "too-wide": (_scripted(_Wide), "returned 200000-d features; allowed: at most 4096"),
    "a-fifo": (lambda p: __import__("os").mkfifo(p), "a FIFO"),
}


@pytest.mark.bounded_memory
@pytest.mark.parametrize("case", sorted(FEATURE_NETWORKS))
@pytest.mark.parametrize("entry", ["python -m gan_core.evaluate", "ganpipe evaluate"])
def test_a_feature_network_that_cannot_be_used_is_one_line(case, entry, pristine, tmp_path, mlflow_tracking,
                                                             monkeypatch, capsys):
    """`--feature-network` given a text file, a torch.save'd dict, a TorchScript module of another
    signature, one returning a scalar, NaN or constant features, one that raises: tracebacks before; one
    returning 200,000-d features grew past 5 GB. Now one line naming the file, exit 2."""
    make, expected = FEATURE_NETWORKS[case]
    path = tmp_path / "features.pt"
    make(path)
    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    if entry == "ganpipe evaluate":
        kind, argv = "ganpipe", ["evaluate", str(pristine), "--feature-network", str(path), "--num-samples", "64"]
    else:
        kind, argv = "gan_core.evaluate", ["--checkpoint", str(pristine), "--feature-network", str(path),
                                           "--num-samples", "64"]
    capsys.readouterr()
    assert run_entry(kind, argv) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out


def test_real_data_of_another_shape_is_one_line(tmp_path, monkeypatch, capsys):
    """`ganpipe evaluate <digits ckpt> --dataset <a ring8 dataset>` and `gan_core.evaluate --real <(N, 2)
    array>` ended in conv2d's shape error."""
    import numpy as np

    from gan_core.__main__ import main as train_main
    from gan_core.evaluate import main as evaluate_main
    from infra.data.datasets import stage
    from pipelines.cli import main

    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    assert train_main(["--preset", "digits", "--steps", "2", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    [ckpt] = (tmp_path / "run" / "checkpoints").iterdir()
    np.save(tmp_path / "points.npy", np.zeros((100, 2), np.float32))
    ring8 = stage("ring8", str(tmp_path / "root"), num_samples=200).uri
    expected = "real data of shape (100, 2) for a generator of samples (1, 8, 8); allowed: (N, 1, 8, 8)"
    for call, shape in ((lambda: evaluate_main(["--checkpoint", str(ckpt), "--real", str(tmp_path / "points.npy")]),
                         "(100, 2)"),
                        (lambda: main(["evaluate", str(ckpt), "--dataset", ring8]), "(200, 2)")):
        capsys.readouterr()
        assert call() == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error")]
        assert len(lines) == 1 and expected.replace("(100, 2)", shape) in lines[0] and "Traceback" not in err, err


@pytest.mark.bounded_memory
@pytest.mark.parametrize("where", ["config-array", "config-inline-table", "config-five-levels", "set-json"])
def test_a_config_nested_without_end_is_one_line(where, tmp_path, capsys):
    """Config nesting depth (issue 31, item 3): thousands of nested arrays or inline tables made tomllib's
    (and json's) recursion end in RecursionError; any nesting deeper than MAX_CONFIG_DEPTH is refused."""
    from pipelines.cli import main

    path = tmp_path / "deep.toml"
    argv = ["run", "--config", str(path), "--dry-run"]
    if where == "config-array":
        path.write_text("[train]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    elif where == "config-inline-table":
        path.write_text("[train]\ntotal_steps = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n")
    elif where == "config-five-levels":
        path.write_text('preset = "digits"\n[cluster]\nx = [[[[[1]]]]]\n')
    else:
        argv = ["run", "--set", "train.total_steps=" + "[" * 100_000 + "]" * 100_000, "--dry-run"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested deeper than" in err and "Traceback" not in err, err[:500]
