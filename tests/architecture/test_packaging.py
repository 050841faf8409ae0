"""What ships matches what the code needs and what the docs say: every third-party package the code
imports is a declared dependency (with its Python-version marker), every package-data pattern matches a
file, and every repository path the README names exists (or is marked as planned)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("gan_core", "infra", "pipelines")  # the packages pyproject.toml installs
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_names(reqs: list[str]) -> dict[str, str]:
    """{normalised distribution name: its environment marker or ""} of PEP 508 requirement strings."""
    out = {}
    for r in reqs:
        name = re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]
        out[re.sub(r"[-_.]+", "-", name).lower()] = r.split(";", 1)[1].strip() if ";" in r else ""
    return out


def _imports(nodes) -> set[str]:
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def imported_top_level(path: Path) -> set[str]:
    """Top-level names the file imports, less optional ones (in a `try` that catches ImportError)."""
    tree = ast.parse(path.read_text())
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            optional |= _imports(n for stmt in node.body for n in ast.walk(stmt))
    return _imports(ast.walk(tree)) - optional


def test_every_imported_third_party_package_is_a_declared_dependency():
    declared = requirement_names(PYPROJECT["project"]["dependencies"])
    dists = packages_distributions()
    missing = []
    for pkg in SHIPPED:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for name in sorted(imported_top_level(path) - set(sys.stdlib_module_names) - set(SHIPPED)):
                candidates = [re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(name, [name])]
                if not any(c in declared for c in candidates):
                    missing.append(f"{path.relative_to(REPO)} imports {name} (distribution {candidates[0]})")
    assert not missing, "\n".join(missing)


def test_tomli_is_declared_for_the_pythons_without_tomllib():
    """pipelines.settings falls back to tomli below 3.11, and requires-python allows 3.10."""
    assert PYPROJECT["project"]["requires-python"].startswith(">=3.10")
    marker = requirement_names(PYPROJECT["project"]["dependencies"]).get("tomli")
    assert marker is not None and "python_version < '3.11'" in marker.replace('"', "'")


def test_every_package_data_pattern_matches_a_file():
    package_data = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    empty = [f"{pkg}: {pattern}" for pkg, patterns in package_data.items() for pattern in patterns
             if not list((REPO / pkg).glob(pattern))]
    assert not empty, f"package-data patterns that match nothing: {empty}"


README_PATH = re.compile(r"`((?:gan_core|infra|pipelines|tests|benchmarks|k8s|docs)/[\w./-]*)`")


@pytest.mark.parametrize("doc", ["README.md"])
def test_every_repository_path_the_readme_names_exists(doc):
    missing = []
    for line in (REPO / doc).read_text().splitlines():
        if "planned" in line:
            continue
        missing += [p for p in README_PATH.findall(line) if not (REPO / p).exists()]
    assert not missing, f"{doc} names paths that do not exist: {missing}"
