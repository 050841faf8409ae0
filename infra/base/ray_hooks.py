"""Ray worker-process hooks. Imported in every worker process of a job, so this module imports nothing
heavy (no torch, no gan_core).

Ray Train V2 starts a PlacementGroupCleaner actor per run that asks the state API (served by the
dashboard) whether the controller lives; with the dashboard off it logs a warning every few seconds (121
lines in one `make run`) and can do nothing without the state API anyway.
"""

from __future__ import annotations

import logging

QUIET_WORKER_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
SETUP_HOOK = "infra.base.ray_hooks.quiet_worker_logs"  # for runtime_env["worker_process_setup_hook"]


def quiet_worker_logs() -> None:
    """Ray's `worker_process_setup_hook`: runs first in every worker process of the job."""
    for name in QUIET_WORKER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
