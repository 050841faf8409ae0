"""Memory-safe ingest (issue 14): a dataset whose decoded float32 size exceeds the per-worker budget
(cluster.data_memory_mib) is streamed to the workers, and what the data costs a worker stays within the
budget whatever the dataset's size: a worker's peak RSS on a dataset 8x larger than another rises by
less than the budget, while it reads more than the budget's worth of data. The same large dataset
loaded into memory exceeds it (so the measurement can fail).

NOTE: the comparison with a small dataset takes out the worker's fixed cost (about 220 MiB here: Ray
Data's iterator, torch's autograd and allocator pools), which does not depend on the data."""

from __future__ import annotations

import numpy as np
import pytest

from infra.data.datasets import open_dataset, stage
from infra.train.plan import ClusterConfig, memory_loading_bytes, plan_training
from infra.train.ray_train import launch_training
from tests.factories import tiny_config

pytestmark = pytest.mark.integration

SHAPE = (3, 32, 32)
SMALL, LARGE = 2000, 16000  # 24.6 MB and 197 MB as float32
BUDGET_MIB = 64
STEPS = 200  # 6,400 rows: 79 MB of float32 pass through a streaming worker, more than the budget


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Random 32x32 RGB images, SMALL and LARGE of them, staged: {rows: dataset URI}."""
    tmp = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    uris = {}
    for rows in (SMALL, LARGE):
        np.save(tmp / f"images{rows}.npy", rng.integers(0, 256, size=(rows, *SHAPE), dtype=np.uint8))
        uris[rows] = stage(str(tmp / f"images{rows}.npy"), str(tmp / "root"), rows_per_shard=1000).uri
    return uris


def config(steps: int):
    return tiny_config({
        "train.total_steps": steps, "train.tick_every_steps": steps, "train.checkpoint_every_steps": steps,
        "train.global_batch_size": 32, "network.g_width": 16, "network.d_width": 16})


def test_auto_compares_the_decoded_size_per_worker_with_the_budget(datasets):
    uri = datasets[LARGE]
    manifest = open_dataset(uri).manifest
    compressed = sum(s["bytes"] for s in manifest["shards"])
    assert memory_loading_bytes(manifest) == LARGE * int(np.prod(SHAPE)) * 6  # float32 + 2 uint8 copies
    assert compressed < 4 * BUDGET_MIB * 2**20 < memory_loading_bytes(manifest)  # Parquet bytes would fit
    budget = ClusterConfig(data_memory_mib=4 * BUDGET_MIB)
    assert plan_training(config(1), uri, budget, None)[0].data_loading == "stream"
    assert plan_training(config(1), uri, ClusterConfig(data_memory_mib=1024), None)[0].data_loading == "memory"


def test_a_streaming_worker_stays_within_its_budget(ray_cluster, datasets, tmp_path):
    def growth(rows: int, loading: str, steps: int) -> float:
        out = launch_training(config(steps), datasets[rows], ClusterConfig(
            data_memory_mib=BUDGET_MIB, data_loading=loading, storage_path=str(tmp_path / f"{rows}{loading}"),
            max_failures=0))
        assert out.metrics["step"] == steps
        return out.metrics["memory/data_rss_growth_mib"]

    small, large = growth(SMALL, "stream", STEPS), growth(LARGE, "stream", STEPS)
    assert large - small < BUDGET_MIB, (small, large)
    loaded = growth(LARGE, "memory", 2)
    assert loaded - small > BUDGET_MIB, (small, loaded)  # the whole dataset in memory: far beyond it
