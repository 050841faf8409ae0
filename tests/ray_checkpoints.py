"""What Ray Train has registered for a run, read from its storage folder (shared by the Ray tests)."""

from __future__ import annotations

import json
from pathlib import Path


def registered_steps(run_dir: Path) -> list[int]:
    """Checkpoints Ray Train has registered for the run (its snapshot file), not folders being copied."""
    try:
        snap = json.loads((Path(run_dir) / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    return sorted(int(r["checkpoint_dir_name"].split("-")[1]) for r in snap.get("checkpoint_results", []))
