"""Layers talk only through public APIs: no module imports another module's `_private` names, nothing
but the CLI entry point and the service launcher writes `os.environ`, and nothing writes MLflow's
private state. AST scans of the project's own packages (they fail on the first offending line)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gan_core", "infra", "pipelines", "benchmarks")
# the only places allowed to write the process environment (DEVELOPERS' guide: "the CLI entry point and
# the service launcher"); the project's modules pass state as arguments
ENV_WRITERS = {"pipelines/cli.py", "pipelines/services.py"}


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def private_imports(path: Path) -> list[str]:
    """`from x import _name` and `x._name` attribute reads of *project* modules imported by name."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            is_ours = node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
            for alias in node.names:
                if is_ours and alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{where(path, node)} imports {node.module}.{alias.name}")
    return found


def environ_writes(path: Path) -> list[str]:
    """os.environ[...] = ..., os.environ.update/setdefault/pop/clear, os.putenv, del os.environ[...]."""
    tree = ast.parse(path.read_text())
    found = []

    def is_environ(n: ast.AST) -> bool:
        return isinstance(n, ast.Attribute) and n.attr == "environ" and isinstance(n.value, ast.Name) \
            and n.value.id == "os"

    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else \
            node.targets if isinstance(node, ast.Delete) else []
        for t in targets:
            if isinstance(t, ast.Subscript) and is_environ(t.value):
                found.append(f"{where(path, node)} writes os.environ[...]")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if is_environ(f.value) and f.attr in ("update", "setdefault", "pop", "popitem", "clear"):
                found.append(f"{where(path, node)} calls os.environ.{f.attr}")
            if isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr in ("putenv", "unsetenv"):
                found.append(f"{where(path, node)} calls os.{f.attr}")
    return found


def mlflow_private_access(path: Path) -> list[str]:
    """Imports of MLflow's private modules or names (`mlflow..._x`), and attribute writes on them."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for m in modules:
                if m.split(".")[0] == "mlflow" and (any(part.startswith("_") for part in m.split("."))
                                                   or any(n.startswith("_") for n in names)):
                    found.append(f"{where(path, node)} reaches into MLflow's private {m}")
    return found


@pytest.mark.parametrize("check", [private_imports, mlflow_private_access])
def test_no_private_names_across_modules(check):
    offences = [line for p in project_files() for line in check(p)]
    assert not offences, "\n".join(offences)


def test_only_the_cli_entry_point_and_the_service_launcher_write_os_environ():
    offences = [line for p in project_files() if str(p.relative_to(REPO)) not in ENV_WRITERS
                for line in environ_writes(p)]
    assert not offences, "\n".join(offences)


def test_the_scanners_find_what_they_look_for(tmp_path):
    """The checks above can fail: each scanner flags a planted offence."""
    bad = REPO / "infra" / "_planted_offence_for_test.py"
    bad.write_text("import os\nfrom mlflow.tracking._tracking_service import utils\nfrom .registry import _client\n"
                   "os.environ['X'] = '1'\nos.environ.update(Y='2')\n")
    try:
        assert len(private_imports(bad)) == 1
        assert len(mlflow_private_access(bad)) == 1
        assert len(environ_writes(bad)) == 2
    finally:
        bad.unlink()
