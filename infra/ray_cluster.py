"""The one way this project connects to Ray.

    ensure_ray()                        # RAY_ADDRESS when set, else a fresh local instance
    ensure_ray("ray://head:10001")      # an explicit address (the settings' `[cluster] address`)

Training (infra.ray_train), batch sampling (infra.batch_sampling) and the CLI's service start-up all call
this, so the first caller cannot decide `ray.init` arguments for the others.
"""

from __future__ import annotations

import os

from .ray_hooks import SETUP_HOOK

# Environment every worker process of our jobs gets: telemetry has nowhere to go.
WORKER_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def ensure_ray(address: str | None = None) -> None:
    """Connect to `address`, else `RAY_ADDRESS`, else start a fresh local Ray instance; once per process
    (a second call is a no-op, whatever its argument).

    NOTE: "local", not None: `ray.init()` with no address joins whatever cluster /tmp/ray names (another
    user's, or a dead one it then waits on forever). Worker output reaches the driver (training's
    per-tick lines come from the rank-0 worker).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": dict(WORKER_ENV), "worker_process_setup_hook": SETUP_HOOK})
