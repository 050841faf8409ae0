"""Where services live when nothing says otherwise: one local home folder and the tools' own variables.

    GANPIPE_HOME         the local home (default ``~/.ganpipe``): embedded MLflow database, scratch
    MLFLOW_TRACKING_URI  MLflow's own variable; unset -> ``sqlite:///<home>/mlflow.db``
    MLFLOW_REGISTRY_URI  MLflow's own variable; unset -> the tracking URI

Every component reads its settings through these helpers, so the embedded defaults are in one place.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

DEFAULT_EXPERIMENT = "ganpipe"


def local_home() -> Path:
    """The local home folder (created on first use)."""
    home = Path(os.environ.get("GANPIPE_HOME") or Path.home() / ".ganpipe").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir() -> Path:
    """Where the pipeline caches what it can rebuild (the digits classifier): $GANPIPE_CACHE_DIR, else
    <local home>/cache. Resolved on the driver and passed to workers, never re-read there."""
    from gan_core.evaluate import CACHE_ENV

    return Path(os.environ.get(CACHE_ENV) or local_home() / "cache")


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite under the local home (MLflow 3 refuses ./mlruns)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local_home() / 'mlflow.db'}"


def mlflow_registry_uri() -> str:
    return os.environ.get("MLFLOW_REGISTRY_URI") or mlflow_tracking_uri()


def mlflow_client(tracking_uri: str | None = None, registry_uri: str | None = None):
    """The one MLflow client factory: explicit URIs, else MLflow's own resolution (MLFLOW_TRACKING_URI /
    MLFLOW_REGISTRY_URI, which the CLI entry point sets to the embedded default when nobody did).
    Returns ``mlflow.MlflowClient``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def default_artifact_location(experiment: str, tracking_uri: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts when nobody chose: next to a SQLite database
    (``<db folder>/artifacts/<experiment>``), never the working directory; None for a server, which
    decides itself (e.g. ``mlflow server --artifacts-destination s3://...``)."""
    uri = tracking_uri or mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts" / experiment).resolve().as_uri()
    return None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code's version: ``git:<sha>[-dirty]`` inside a checkout, else ``ganpipe==<version>``."""
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return f"git:{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"ganpipe=={version('ganpipe')}"
    except Exception:  # not installed as a distribution either
        return "unknown"
