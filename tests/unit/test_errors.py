"""The one error boundary (gan_core.errors, issue 31 item 1): user errors and OSErrors naming a path are one
line and exit 2, unexpected failures one line naming the log that holds their traceback and exit 1, and
every error family of the project is either a UserError or listed here with the reason it is not."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from gan_core.errors import EXIT_FAILED, EXIT_USAGE, CommandFailed, UserError, report, run_command

REPO = Path(__file__).resolve().parents[2]

# error classes that are not the user's input, each with its reason (everything else derives from UserError)
NOT_USER_ERRORS = {
    "gan_core.errors.CommandFailed": "the base of failures that are not the user's",
    "gan_core.loop.NonFiniteLossError": "training diverged: the run's failure, reported with its step (exit 1)",
    "gan_core.loop.DataExhaustedError": "a data feed that ends early: a bug or a storage failure",
    "infra.models.export.ExportMismatchError": "only raised with strict=True; registration skips the format instead",
    "infra.models.generator_model.ModelIntegrityError": "runs inside consumers' processes, which import only mlflow, numpy, "
                                                 "torch and the shipped engine; the commands convert it",
    "infra.train.ray_train.TrainingStopped": "a fault restarting the workers cannot fix (a non-finite loss); `train` "
                                       "converts it to CommandFailed",
    "pipelines.flow.RegistrationFailed": "the MLflow store failed mid-run; the command converts it (exit 2, with "
                                         "the command that finishes the registration)",
    "pipelines.services.ServiceError": "an embedded service did not start; `ganpipe run` reports it as CommandFailed",
}


def _error_classes():
    for package in ("gan_core", "infra", "pipelines"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(cls, Exception):
                    yield f"{cls.__module__}.{cls.__qualname__}", cls


def test_every_error_family_is_a_user_error_or_says_why_not():
    found = dict(_error_classes())
    assert "gan_core.config.ConfigError" in found and "infra.base.storage.StorageError" in found
    strays = sorted(name for name, cls in found.items()
                    if not issubclass(cls, UserError) and name not in NOT_USER_ERRORS and cls is not UserError)
    assert not strays, f"error classes that are neither a UserError nor listed in NOT_USER_ERRORS: {strays}"
    assert not set(NOT_USER_ERRORS) - set(found), "NOT_USER_ERRORS names classes that no longer exist"


@pytest.mark.parametrize("name", ["gan_core.config.ConfigError", "gan_core.checkpoint.CheckpointError",
                                  "infra.base.storage.StorageError", "infra.data.sources.SourceError",
                                  "infra.data.shardset.ShardSetError", "infra.data.datasets.DatasetError",
                                  "infra.models.batch_sampling.SamplingError", "infra.models.registry.RegistryError",
                                  "infra.base.settings.MlflowUnreachable"])
def test_the_user_facing_families_are_user_errors(name):
    module, _, cls = name.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), cls), UserError)


def test_a_user_error_is_one_line_exit_2(capsys):
    assert report(UserError("--out: got ''\nallowed: a folder"), prog="p") == EXIT_USAGE
    assert capsys.readouterr().err == "error: --out: got ''; allowed: a folder\n"


def test_an_os_error_naming_a_path_is_the_users(capsys, tmp_path):
    def write_into_a_file():
        (tmp_path / "f").write_text("x")
        (tmp_path / "f" / "out.json").write_text("{}")

    assert run_command(write_into_a_file, prog="p") == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'f' / 'out.json'}: Not a directory") and err.count("\n") == 1


def test_an_unexpected_failure_is_one_line_naming_the_log_with_its_traceback(capsys, tmp_path):
    def bug():
        raise KeyError("shape")

    log = tmp_path / "logs" / "x.log"
    assert run_command(bug, prog="ganpipe x", log_path=lambda: log) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == f"error: ganpipe x failed unexpectedly: KeyError: 'shape' (traceback: {log})\n"
    assert "Traceback (most recent call last)" in log.read_text() and "in bug" in log.read_text()


def test_a_log_that_cannot_be_written_falls_back_to_the_temporary_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "file").write_text("x")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    code = report(RuntimeError("boom"), prog="python -m gan_core", log_path=lambda: tmp_path / "file" / "x.log")
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    [written] = list((tmp_path / "tmp").glob("python-m-gan_core-*.log"))
    assert f"(traceback: {written})" in err and "RuntimeError: boom" in written.read_text()


def test_command_failed_is_exit_1_and_system_exit_passes(capsys):
    assert report(CommandFailed("the pipeline failed (details: /x.log)"), prog="p") == EXIT_FAILED
    assert capsys.readouterr().err == "error: the pipeline failed (details: /x.log)\n"
    with pytest.raises(SystemExit):
        run_command(lambda: (_ for _ in ()).throw(SystemExit(0)), prog="p")


@pytest.mark.parametrize("entry", ["pipelines.cli", "gan_core.__main__", "gan_core.evaluate",
                                   "benchmarks.modern_gan", "benchmarks.__main__", "benchmarks.bench_ray_train"])
def test_every_entry_point_ends_at_the_boundary(entry):
    """Each command line's main goes through gan_core.errors (run_command, or report in ganpipe's main,
    which first sorts out termination signals)."""
    source = (REPO / (entry.replace(".", "/") + ".py")).read_text()
    assert "run_command(" in source or "report(" in source, entry


def _imported_class(module: str, tree: ast.Module, name: str):
    """The class `name` refers to in `module` (imported anywhere in it, or its own), else None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    base = node.module or ""
                    if node.level:
                        base = module.rsplit(".", node.level)[0] + (f".{base}" if base else "")
                    return getattr(importlib.import_module(base), alias.name, None)
    return getattr(importlib.import_module(module), name, None)


def hand_conversions(root: Path = REPO) -> list[str]:
    """`except (A, B) as e: raise UserError(...)` in the product code where A and B are all UserError
    families already: a conversion the boundary makes anyway (issue 26 item 6: mapped in one place)."""
    found = []
    for path in sorted(p for package in ("gan_core", "infra", "pipelines") for p in (root / package).rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ExceptHandler) or node.type is None:
                continue
            caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            if not all(isinstance(c, ast.Name) for c in caught):
                continue
            converts = any(isinstance(s, ast.Raise) and isinstance(s.exc, ast.Call)
                           and getattr(s.exc.func, "id", "") == "UserError" for s in node.body)
            classes = [_imported_class(module, tree, c.id) for c in caught]
            if converts and all(isinstance(c, type) and issubclass(c, UserError) for c in classes):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_command_converts_a_user_error_by_hand(tmp_path):
    assert hand_conversions() == [], "UserError families converted to UserError by hand (the boundary does it)"
    planted = tmp_path / "pipelines" / "commands"
    planted.mkdir(parents=True)
    (planted / "train.py").write_text("from infra.base.storage import StorageError\nfrom gan_core.errors import UserError\n"
                                      "def run():\n    try:\n        pass\n    except StorageError as e:\n"
                                      "        raise UserError(str(e))\n")
    for package in ("gan_core", "infra"):
        (tmp_path / package).mkdir()
    assert hand_conversions(tmp_path) == ["pipelines/commands/train.py:6"]
