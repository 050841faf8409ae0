"""The one way this project connects to Ray.

    ensure_ray()                        # RAY_ADDRESS when set, else a fresh local instance
    ensure_ray("ray://head:10001")      # an explicit address (the settings' `[cluster] address`)

Training (infra.train.ray_train), batch sampling (infra.models.batch_sampling) and the CLI's service start-up all call
this, so the first caller cannot decide `ray.init` arguments for the others.
"""

from __future__ import annotations

import json
import os
import signal
import threading

from gan_core.errors import one_line

from infra.base.ray_hooks import SETUP_HOOK
from infra.base.settings import ServiceUnreachable, check_ray_address

# Environment every worker process of our jobs gets: telemetry has nowhere to go.
WORKER_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
# Set by Ray's job supervisor in a submitted job's driver: the job's runtime env (`ray job submit`,
# `ganpipe submit`, a KubeRay RayJob), which ray.init merges with the driver's own
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def driver_runtime_env() -> dict:
    """Our runtime env for `ray.init`, less what a submitted job's runtime env already sets: Ray refuses
    to merge the two when they name the same field or environment variable (measured: `ganpipe submit`
    failed with "Failed to merge the Job's runtime env" before this), and the submitter's values win."""
    env: dict = {"env_vars": dict(WORKER_ENV), "worker_process_setup_hook": SETUP_HOOK}
    job_env = (json.loads(os.environ[JOB_CONFIG_ENV]).get("runtime_env") or {}) if os.environ.get(JOB_CONFIG_ENV) \
        else {}
    for key in list(env):
        if key in job_env and key != "env_vars":
            del env[key]
    for var in job_env.get("env_vars") or {}:
        env["env_vars"].pop(var, None)
    return {k: v for k, v in env.items() if v}


def ensure_ray(address: str | None = None) -> None:
    """Connect to `address`, else `RAY_ADDRESS`, else start a fresh local Ray instance; once per process
    (a second call is a no-op, whatever its argument).

    NOTE: "local", not None: `ray.init()` with no address joins whatever cluster /tmp/ray names (another
    user's, or a dead one it then waits on forever). Worker output reaches the driver (training's
    per-tick lines come from the rank-0 worker). A local instance binds 127.0.0.1 only when the process
    started with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as the CLI's embedded default sets it
    (pipelines.cli.set_embedded_defaults): Ray reads it at import, so it is not an argument here.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        check_ray_address(address)  # seconds, not ray.init's minutes of waiting on a closed port
    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, runtime_env=driver_runtime_env())
    except ConnectionError as e:  # "auto" with no cluster on this host, a head that went away
        raise ServiceUnreachable(f"RAY_ADDRESS: no Ray cluster at {address!r} ({one_line(e)[:200]}); start one "
                                 "(`ray start --head`), or unset RAY_ADDRESS to use a local Ray instance") from None
    if callable(on_sigterm):
        # NOTE: the driver's core worker installs absl's failure-signal handler for SIGTERM too, over the
        # Python one: measured, a SIGTERM'd `ganpipe run` then dumped stacks and hung in training until
        # killed, never running its exit handlers (ray.shutdown, the Prefect server's stop), leaving the
        # local Ray instance running. A handler the caller installed (pipelines.cli) keeps SIGTERM.
        signal.signal(signal.SIGTERM, on_sigterm)
