"""One owner per concept (ARCHITECTURE.md, "One owner per concept"; issue 26 item 2).

A public top-level name (function, class, constant) is defined in one product module only; every other
module imports it. The exceptions are listed with their reason: entry-point conventions every command
module shares, per-format constants of distinct shard-set kinds, and Prefect tasks of pipelines/flow.py
that wrap the step function of the same name. The concepts issue 26 found with two owners are named in
`MERGED` with their one owner, so that a second definition, public or private, fails here too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("gan_core", "infra", "pipelines")

# the concepts that had two owners, and the one module that owns each now
MERGED = {
    "sha256_file": "gan_core/files.py",
    "ChecksumError": "infra/data/shardset.py",
    "CHECKPOINT_NAME": "gan_core/checkpoint.py",
    "checkpoint_name": "gan_core/checkpoint.py",
    "fetch_checkpoint": "infra/train/checkpoints.py",  # pipelines/flow.py's task of that name wraps it
    "BUILTIN_SOURCES": "infra/data/sources.py",
    "DATASET_NAME": "infra/data/datasets.py",
    "check_dataset_name": "infra/data/datasets.py",
    "label_counts": "gan_core/data.py",
    "frechet_distance": "gan_core/metrics/frechet.py",
    "s3_endpoint": "infra/base/storage.py",
}
# a copy that must stay, with the reason (a name matching a MERGED concept, private or not)
KNOWN_COPIES = {
    ("_sha256_file", "infra/models/generator_model.py"): "runs before the engine it ships is verified: it may not "
                                                  "import gan_core (infra/models/generator_model.py's NOTE)",
}
# public names several modules define on purpose, with the reason
SHARED_NAMES = {
    "main": "each entry point's (ganpipe, python -m gan_core, python -m gan_core.evaluate)",
    "build_parser": "each entry point's",
    "add_parser": "each ganpipe command module's (pipelines/cli.py COMMANDS)",
    "run": "each ganpipe command module's",
    "EPILOG": "each ganpipe command's --help examples",
    "log": "each module's logger",
    "FORMAT": "each file format's identifier (checkpoint, digits classifier, dataset, sample set, model)",
    "LAYOUT_VERSION": "each shard-set kind's own layout version (datasets, sample sets)",
    "DEFAULT_COMPRESSION": "each shard-set kind's default (datasets, sample sets)",
    "DEFAULT_TARGET_SHARD_MIB": "each shard-set kind's default (64 MiB datasets, 16 MiB sample sets)",
    "choose_layout": "each shard-set kind's layout rule over shardset.Layout (datasets, sample sets)",
    "arrow_schema": "infra.data.datasets' schema of a dataset, over shardset.arrow_schema",
    "load_real_data": "gan_core.evaluate's (a built-in or .npy) and the flow's task over a staged dataset",
}
FLOW_TASK_MODULES = ("pipelines/flow.py",)


def _definitions(path: Path) -> list[tuple[str, bool]]:
    """(name, is a Prefect @task) of each top-level def, class and assignment in `path`."""
    out = []
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            is_task = any((isinstance(d, ast.Call) and getattr(d.func, "id", "") == "task")
                          or getattr(d, "id", "") == "task" for d in getattr(node, "decorator_list", []))
            out.append((node.name, is_task))
        elif isinstance(node, ast.Assign):
            out.extend((t.id, False) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.append((node.target.id, False))
    return out


def owners(root: Path = REPO) -> dict[str, list[tuple[str, bool]]]:
    """name -> [(defining module's path, is a flow task)] over the product packages under `root`."""
    found: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            for name, is_task in _definitions(path):
                found[name].append((path.relative_to(root).as_posix(), is_task))
    return found


def second_owners(root: Path = REPO) -> list[str]:
    """The violations: public names defined in two modules (beyond SHARED_NAMES and flow tasks), and
    MERGED concepts defined anywhere but their owner (beyond KNOWN_COPIES)."""
    found = owners(root)
    bad = []
    for name, where in sorted(found.items()):
        modules = [m for m, is_task in where if not (is_task and m in FLOW_TASK_MODULES)]
        if not name.startswith("_") and name not in SHARED_NAMES and len(set(modules)) > 1:
            bad.append(f"{name}: defined in {sorted(set(modules))}")
    for concept, owner in MERGED.items():
        for name, where in found.items():
            if name.lstrip("_") != concept:
                continue
            for module, is_task in where:
                if module != owner and (name, module) not in KNOWN_COPIES and not (is_task and module in FLOW_TASK_MODULES):
                    bad.append(f"{concept}: owned by {owner}, defined again in {module} as {name}")
    return bad


def test_each_public_name_has_one_owner():
    assert not second_owners(), "concepts with two owners:\n" + "\n".join(second_owners())


def test_each_merged_concept_is_defined_by_its_owner():
    found = owners()
    for concept, owner in MERGED.items():
        assert (owner, False) in found.get(concept, []), f"{concept}: not defined in {owner}"
    for (name, module), _ in KNOWN_COPIES.items():
        assert any(m == module for m, _ in found.get(name, [])), f"KNOWN_COPIES lists {name} in {module}: gone"
    assert set(SHARED_NAMES) <= set(found), f"SHARED_NAMES lists names no module defines: {set(SHARED_NAMES) - set(found)}"


def _copy_of_product(tmp_path: Path) -> Path:
    for package in PRODUCT:
        for path in (REPO / package).rglob("*.py"):
            dest = tmp_path / path.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text())
    return tmp_path


def test_a_planted_second_definition_fails(tmp_path):
    """The check bites: a second `ChecksumError` (the double owner issue 26 found), a private copy of a merged
    concept, and a new public helper defined twice are each reported."""
    root = _copy_of_product(tmp_path)
    assert second_owners(root) == []
    with open(root / "infra" / "data" / "datasets.py", "a") as f:
        f.write("\n\nclass ChecksumError(DatasetError):\n    pass\n")
    with open(root / "infra" / "models" / "registry.py", "a") as f:
        f.write("\n\ndef _checkpoint_name(step):\n    return f'checkpoint-{step:09d}'\n")
    for module in ("gan_core/data.py", "infra/base/storage.py"):
        with open(root / module, "a") as f:
            f.write("\n\ndef clamp_unit(x):\n    return min(max(x, 0.0), 1.0)\n")
    bad = "\n".join(second_owners(root))
    assert "ChecksumError: defined in ['infra/data/datasets.py', 'infra/data/shardset.py']" in bad
    assert "checkpoint_name: owned by gan_core/checkpoint.py, defined again in infra/models/registry.py as _checkpoint_name" in bad
    assert "clamp_unit: defined in ['gan_core/data.py', 'infra/base/storage.py']" in bad
