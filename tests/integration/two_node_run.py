"""Run by test_two_node_cluster_survives_losing_a_node in its own interpreter: a 2-node local Ray cluster
(two raylets on 127.0.0.1) trains with one worker per node, and the second node is removed mid-run.

    python -m tests.integration.two_node_run DATASET_URI STORAGE_DIR   # from the repository root

Prints one line `RESULT {json}` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from infra.train.plan import ClusterConfig  # noqa: E402
from infra.train.ray_train import launch_training  # noqa: E402
from tests.ray_checkpoints import registered_steps  # noqa: E402
from tests.factories import tiny_config  # noqa: E402

RUN = "two-nodes"
TOTAL, INTERVAL = 1500, 100


def main() -> None:
    dataset, storage = sys.argv[1], sys.argv[2]
    # head: 3 CPUs, so that after losing the second node both workers (1 CPU each) still fit beside
    # Ray Data's tasks; second node: 1 CPU, room for exactly one worker
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    cfg = tiny_config({
        "train.total_steps": TOTAL, "train.checkpoint_every_steps": INTERVAL, "train.tick_every_steps": 50,
        "train.num_checkpoints_to_keep": 50, "network.g_norm": "layer"})
    seen: dict[str, object] = {}

    def remove_second_node() -> None:
        deadline = time.time() + 600
        while time.time() < deadline:
            steps = registered_steps(Path(storage) / RUN)
            if steps and steps[-1] >= 2 * INTERVAL:
                seen["latest_before_removal"] = steps[-1]
                cluster.remove_node(second)
                seen["removed"] = True
                return
            time.sleep(0.05)

    threading.Thread(target=remove_second_node, daemon=True).start()
    out = launch_training(cfg, dataset, ClusterConfig(num_workers=2, storage_path=storage, run_name=RUN,
                                                      placement_strategy="SPREAD", max_failures=3))
    print("RESULT " + json.dumps({"step": out.metrics["step"], "removed": seen.get("removed", False),
                                  "latest_before_removal": seen.get("latest_before_removal"),
                                  "resumed_from": out.metrics["progress/resumed_from_step"],
                                  "nodes_alive": sum(n["Alive"] for n in ray.nodes())}), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
