"""The environment of a fresh `ganpipe` process on the embedded default: nothing configured (no Prefect,
MLflow or Ray address of the test session leaks in), everything under `home`."""

from __future__ import annotations

import os
from pathlib import Path

CONFIGURED = ("PREFECT_API", "PREFECT_HOME", "PREFECT_PROFILES", "PREFECT_LOGGING_TO_API", "MLFLOW_", "RAY_ADDRESS")


def embedded_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIGURED)}
    env.update(GANPIPE_HOME=str(home), RAY_USAGE_STATS_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env
