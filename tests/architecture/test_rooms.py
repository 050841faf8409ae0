"""infra's four rooms (infra/__init__.py; ARCHITECTURE.md section 1; issue 26 item 1): every infra module
lives in one room, a room imports only the rooms before it (base < data < train < models), no room imports
pipelines, and each room's __init__ says what it owns, what it may import and what it must never import."""

from __future__ import annotations

import ast
import importlib
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOMS = ("base", "data", "train", "models")  # each may import the ones before it


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of each import in `path` (relative ones resolved against its package)."""
    package = ".".join(path.relative_to(path.parents[2]).parent.parts)  # infra.<room>
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] if base in ("infra", *(f"infra.{r}" for r in ROOMS)) else [base]
            out.extend((node.lineno, n) for n in names)
    return out


def room_violations(root: Path = REPO) -> list[str]:
    """Modules outside a room, and imports that cross rooms the wrong way or reach pipelines."""
    infra = root / "infra"
    bad = [f"{p.relative_to(root)}: not in a room ({', '.join(ROOMS)})"
           for p in sorted(infra.glob("*.py")) if p.name != "__init__.py"]
    for i, room in enumerate(ROOMS):
        allowed = set(ROOMS[: i + 1])
        for path in sorted((infra / room).rglob("*.py")):
            for line, module in _imported_modules(path):
                parts = module.split(".")
                where = f"{path.relative_to(root)}:{line}"
                if parts[0] == "pipelines":
                    bad.append(f"{where}: imports {module} (infra never imports pipelines)")
                elif parts[0] == "infra" and len(parts) > 1 and parts[1] in ROOMS and parts[1] not in allowed:
                    bad.append(f"{where}: infra.{room} imports {module} (a later room; allowed: "
                               f"{', '.join(f'infra.{r}' for r in sorted(allowed, key=ROOMS.index))})")
                elif parts[0] == "infra" and len(parts) > 1 and parts[1] not in ROOMS:
                    bad.append(f"{where}: imports {module}, which is in no room")
    return bad


def test_each_room_imports_only_the_rooms_before_it():
    assert room_violations() == []


def test_each_room_says_what_it_owns_and_may_import():
    for i, room in enumerate(ROOMS):
        doc = importlib.import_module(f"infra.{room}").__doc__ or ""
        for heading in ("Owns:", "May import:", "Must never import:"):
            assert heading in doc, f"infra/{room}/__init__.py: no '{heading}'"
        may = doc.split("May import:", 1)[1].split("Must never import:", 1)[0]
        never = doc.split("Must never import:", 1)[1]
        assert all(f"infra.{r}" in may for r in ROOMS[:i]), f"infra.{room}: 'May import' omits an earlier room"
        assert all(f"infra.{r}" in never for r in ROOMS[i + 1:]) and "pipelines" in never, room
        modules = sorted(p.stem for p in (REPO / "infra" / room).glob("*.py") if p.stem != "__init__")
        assert all(f"`{m}`" in doc for m in modules), f"infra.{room}'s docstring names each of its modules"


def test_a_planted_import_across_rooms_fails(tmp_path):
    """The check bites: infra.data importing the registry (a later room), a relative import that climbs into
    infra.train, infra.base importing pipelines, and a module left outside the rooms are each reported."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "infra", root / "infra", ignore=shutil.ignore_patterns("__pycache__", "docker", "ray"))
    assert room_violations(root) == []
    with open(root / "infra" / "data" / "sources.py", "a") as f:
        f.write("\nfrom infra.models.registry import register_generator\n")
    with open(root / "infra" / "data" / "datasets.py", "a") as f:
        f.write("\nfrom ..train import checkpoints\n")
    with open(root / "infra" / "base" / "console.py", "a") as f:
        f.write("\nimport pipelines.settings\n")
    (root / "infra" / "helpers.py").write_text("")
    bad = "\n".join(room_violations(root))
    assert "infra/data/sources.py" in bad and "imports infra.models.registry (a later room" in bad
    assert "infra/data/datasets.py" in bad and "imports infra.train.checkpoints (a later room" in bad
    assert "infra/base/console.py" in bad and "imports pipelines.settings (infra never imports pipelines)" in bad
    assert "infra/helpers.py: not in a room" in bad
