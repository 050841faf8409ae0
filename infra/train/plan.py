"""The launch plan of a training run: everything resolved and checked on the driver before any cluster work
starts, and what every worker receives.

- `ClusterConfig` (the `[cluster]` section) and `TrackingSpec`, validated on construction;
- `plan_training`: the staged dataset opened, the config completed from it (`resolve_config_for_dataset`)
  and checked against the cluster (`validate_launch`), the run's deterministic name, its storage, and
  memory-vs-stream loading (`memory_loading_bytes` against `cluster.data_memory_mib`);
- `WorkerPlan`: the resolved objects every worker receives as they are (pickled by Ray), never a re-parse.

The driver that launches the plan and the worker adapter: infra.train.ray_train; the worker's data feed:
infra.train.feed.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, replace
from typing import Any

from gan_core.config import ConfigError, GANConfig, check
from gan_core.data import Normalisation
from gan_core.training import minibatches_per_step

from infra.train.feed import stream_chunk_rows

DATA_LOADING = ("auto", "memory", "stream")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
MAX_STREAM_PASSES = 1000  # beyond this many epochs per execution the stream restarts (and pays a stall)
# The per-worker memory budget for training data (cluster.data_memory_mib): "auto" loads the dataset into
# every worker's memory when its loading peak fits (see `memory_loading_bytes`), else streams it, and a
# stream's read-ahead is sized from the same budget.
DEFAULT_DATA_MEMORY_MIB = 4096


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how training runs: the `[cluster]` section of the settings.

    `address` is the Ray cluster (default: `RAY_ADDRESS`, else a local instance started here);
    `storage_path` is a local folder or `s3://bucket/prefix`. Validated on construction (ConfigError
    naming `cluster.<field>`), like every configuration section (gan_core.config.from_dict).
    """

    address: str = ""  # e.g. "ray://head:10001" or "auto"; "" = RAY_ADDRESS, else a local Ray
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0  # torch intra-op threads per worker; 0 = auto (see `worker_threads`)
    storage_path: str | None = None  # default: <GANPIPE_HOME>/ray_results
    run_name: str | None = None  # default: derived from the config and the dataset version
    max_failures: int = 2  # worker-group restarts from the latest checkpoint; -1 = unlimited
    data_loading: str = "auto"  # memory | stream | auto: memory when it fits data_memory_mib
    data_memory_mib: int = DEFAULT_DATA_MEMORY_MIB  # per worker: in-memory data, or the stream's read-ahead
    verify_sync: bool = False  # compare parameter digests across workers after every update (debug)
    placement_strategy: str = "PACK"  # "SPREAD": one worker per node where possible

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        check(isinstance(self.address, str), "cluster.address", self.address,
              "a string such as 'ray://head:10001' or 'auto'")
        # documented bounds, far beyond any cluster: a typo is refused instead of waiting forever for resources
        check(is_int(self.num_workers) and 1 <= self.num_workers <= 4096, "cluster.num_workers", self.num_workers,
              "an integer from 1 to 4096")
        check(isinstance(self.cpus_per_worker, (int, float)) and not isinstance(self.cpus_per_worker, bool)
              and 0 < self.cpus_per_worker <= 1024, "cluster.cpus_per_worker", self.cpus_per_worker,
              "a number in (0, 1024]")
        check(is_int(self.threads_per_worker) and 0 <= self.threads_per_worker <= 1024, "cluster.threads_per_worker",
              self.threads_per_worker, "an integer from 0 to 1024 (0 = auto)")
        check(is_int(self.max_failures) and -1 <= self.max_failures <= 1000, "cluster.max_failures",
              self.max_failures, "an integer from -1 to 1000 (-1 = unlimited)")
        check(self.placement_strategy in PLACEMENT_STRATEGIES, "cluster.placement_strategy",
              self.placement_strategy, " | ".join(PLACEMENT_STRATEGIES))
        check(self.data_loading in DATA_LOADING, "cluster.data_loading", self.data_loading, " | ".join(DATA_LOADING))
        check(is_int(self.data_memory_mib) and 16 <= self.data_memory_mib <= 1 << 20, "cluster.data_memory_mib",
              self.data_memory_mib, "an integer from 16 to 1048576 (MiB per worker)")
        check(self.run_name is None or (isinstance(self.run_name, str) and bool(self.run_name.strip())
                                        and "/" not in self.run_name and len(self.run_name) <= 200),
              "cluster.run_name", self.run_name, "a non-empty name of at most 200 characters without '/'")


@dataclass(frozen=True)
class TrackingSpec:
    """MLflow tracking of a training run (rank 0 logs; an outage only warns). The tracking URI comes
    from MLFLOW_TRACKING_URI, else SQLite under the local home, resolved on the driver."""

    experiment: str = "ganpipe"
    tracking_uri: str | None = None


def resolve_config_for_dataset(config: GANConfig, manifest: dict) -> GANConfig:
    """The config with `data` filled in from the staged dataset (its name and example shape). A
    class-conditional config (network.conditional) needs a labelled dataset, with no more named or
    counted classes than data.num_classes; its fake labels follow the dataset's ``label_counts``
    (data.class_frequencies, unless set; uniform for datasets staged without counts). Raises ConfigError
    naming the dataset otherwise."""
    data = replace(config.data, name=manifest["name"], shape=tuple(manifest["shape"]))
    if config.network.conditional:
        name, K = manifest["name"], config.data.num_classes
        if not manifest.get("has_labels"):
            raise ConfigError(f"network.conditional: got true, but the staged dataset {name!r} has no labels; "
                              f"allowed: a dataset staged with labels (e.g. digits, a Parquet 'label' column, "
                              f"class folders), or network.conditional = false")
        names = manifest.get("label_names") or []
        if len(names) > K:
            raise ConfigError(f"data.num_classes: got {K}, but the staged dataset {name!r} names {len(names)} "
                              f"classes; allowed: an integer >= {len(names)}")
        counts = list(manifest.get("label_counts") or [])
        if len(counts) > K:
            raise ConfigError(f"data.num_classes: got {K}, but the staged dataset {name!r} has labels up to "
                              f"{len(counts) - 1}; allowed: an integer >= {len(counts)}")
        return replace(config, data=data).with_label_counts(counts)
    return replace(config, data=data)


def validate_launch(config: GANConfig, cluster: ClusterConfig) -> None:
    """Everything that can be checked before any cluster work starts."""
    if config.train.global_batch_size % cluster.num_workers:
        raise ConfigError(
            f"train.global_batch_size: got {config.train.global_batch_size} for cluster.num_workers = "
            f"{cluster.num_workers}; allowed: a multiple of the number of workers "
            f"(e.g. {config.train.global_batch_size // cluster.num_workers * cluster.num_workers or cluster.num_workers})")
    if config.train.amp == "fp16" and not cluster.use_gpu:
        raise ConfigError("train.amp: got 'fp16' without GPUs; allowed: 'off' or 'bf16' on CPU workers")


def deterministic_run_name(config: GANConfig, dataset_version: str) -> str:
    """`gan-<dataset>-<hash of config and dataset version>`: the same request resumes the same run."""
    digest = hashlib.sha256((config.to_json() + dataset_version).encode()).hexdigest()[:12]
    return f"gan-{config.data.name}-{digest}"


def default_storage_path() -> str:
    from infra.base.settings import local_home

    return str(local_home() / "ray_results")


def _storage_for_ray(storage_path: str):
    """(storage_path, storage_filesystem) for RunConfig: S3 URIs go through a pyarrow S3FileSystem
    built from the standard AWS variables (AWS_ENDPOINT_URL for MinIO/moto), path without s3://."""
    from infra.base import storage

    if storage.is_s3(storage_path):
        loc = storage.resolve(storage_path)
        storage.check_bucket(loc)
        return loc.path, storage.portable_s3_filesystem()
    path = os.path.abspath(os.path.expanduser(storage_path))
    os.makedirs(path, exist_ok=True)
    return path, None


def worker_threads(cluster: ClusterConfig, loading: str) -> int:
    """Torch intra-op threads per worker: `threads_per_worker`, or with 0 (auto) the worker's CPUs, and on
    a single-node cluster (Ray started on this host) this host's cores shared among the workers, less one
    for Ray Data's reads when streaming, and at most OMP_NUM_THREADS when this process has it set: a
    1-worker run on a laptop uses every core, as a plain torch process would (2 threads ran digits 1.44x
    faster than 1 on 2 cores)."""
    import ray

    if cluster.threads_per_worker:
        return cluster.threads_per_worker
    threads = max(1, int(cluster.cpus_per_worker))
    if cluster.use_gpu or sum(1 for n in ray.nodes() if n.get("Alive")) != 1:
        return threads
    host_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = min(host_cores, int(ray.cluster_resources().get("CPU", 1)))
    if loading == "stream":
        cores -= 1
    shared = cores // cluster.num_workers
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        shared = min(shared, int(cap))
    return max(threads, shared)


def memory_loading_bytes(manifest: dict) -> int:
    """Peak bytes a worker holds while loading the whole dataset into memory: per value, the float32
    model input (4 bytes) plus two copies in the stored dtype (the Arrow table and its contiguous
    numpy copy). Every worker holds the whole dataset (`memory_batches`). The compressed Parquet size
    says nothing about this: 8-bit pixels compress well and grow 4x as float32."""
    import numpy as np

    values = int(manifest["num_rows"]) * math.prod(manifest["shape"])
    return values * (4 + 2 * np.dtype(manifest["dtype"]).itemsize)


def _choose_loading(cluster: ClusterConfig, manifest: dict) -> str:
    if cluster.data_loading != "auto":
        return cluster.data_loading
    return "memory" if memory_loading_bytes(manifest) <= cluster.data_memory_mib * 2**20 else "stream"


def stream_passes(plan: WorkerPlan, manifest: dict, num_workers: int) -> int:
    """How many passes over the shards a streamed run reads in one Ray Data execution.

    NOTE: every new epoch of a split Ray Data stream starts a new execution, which stalled training
    for 13-18 s per epoch on 2 CPUs (0.23x the in-memory rate for a 50k-row dataset). The union of
    `passes` copies of the dataset is one execution for the whole run (read_parquet would drop repeated
    paths). Big datasets need few passes.

    A split that fits one stream chunk (`stream_chunk_rows`) is read once (1 pass): the worker keeps
    that chunk and cycles it (`stream_batches`). NOTE: every copy in the union is its own read branch
    (file listing, footer and read tasks); 19 of them for digits (1,797 rows, 500 steps) started 40 Ray
    worker processes on 2 CPUs and ran at 0.05x the in-memory rate.
    """
    t = plan.config.train
    per_worker = t.global_batch_size // num_workers
    if math.ceil(manifest["num_rows"] / num_workers) <= stream_chunk_rows(per_worker, plan):
        return 1
    rows_per_worker = max(1, manifest["num_rows"] // num_workers)  # an equal split of each pass
    needed_per_worker = t.total_steps * minibatches_per_step(plan.config) * per_worker
    return min(MAX_STREAM_PASSES, math.ceil(needed_per_worker / rows_per_worker) + 1)  # + 1: a spare pass


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker receives (pickled by Ray as it is): the resolved objects, never a re-parse."""

    config: GANConfig  # resolved, with `data` filled in from the dataset
    shape: tuple[int, ...]  # one example, as stored
    dtype: str  # stored dtype of column x
    normalisation: Normalisation  # stored -> model values
    data_loading: str  # "memory" | "stream" (auto resolved)
    data_memory_bytes: int  # the per-worker data budget: sizes a stream's read-ahead
    cache_dir: str  # the driver's cache folder (infra.base.settings.cache_dir): the diagnostics' digits classifier
    threads_per_worker: int
    verify_sync: bool
    use_gpu: bool
    run_name: str
    storage_uri: str
    tracking: TrackingSpec | None  # with tracking_uri resolved on the driver
    manifest: dict[str, Any]  # the dataset's manifest, for the MLflow run's params and artifact
    storage_fs: Any = None  # storage_uri's pyarrow filesystem as Ray Train uses it (S3: the driver's credentials)
    storage_fs_path: str = ""  # storage_uri's path in storage_fs


def plan_training(config: GANConfig, dataset_ref: str, cluster: ClusterConfig, tracking: TrackingSpec | None):
    """Part 1 of a launch: everything that can be resolved and checked before any cluster work starts.
    Returns (WorkerPlan without the thread count, the opened dataset, storage path and filesystem for Ray).
    Raises ConfigError / DatasetError / StorageError with one-line messages."""
    from infra.data.datasets import open_dataset
    from infra.base.settings import cache_dir, mlflow_tracking_uri

    ds = open_dataset(dataset_ref)
    config = resolve_config_for_dataset(config, ds.manifest)
    validate_launch(config, cluster)
    storage_uri = cluster.storage_path or default_storage_path()
    storage_path, storage_fs = _storage_for_ray(storage_uri)
    if tracking is not None and not tracking.tracking_uri:
        tracking = replace(tracking, tracking_uri=mlflow_tracking_uri())
    plan = WorkerPlan(
        config=config, shape=tuple(ds.manifest["shape"]), dtype=ds.manifest["dtype"],
        normalisation=Normalisation.from_dict(ds.manifest["normalisation"]),
        data_loading=_choose_loading(cluster, ds.manifest), data_memory_bytes=cluster.data_memory_mib * 2**20,
        cache_dir=str(cache_dir()),
        threads_per_worker=cluster.threads_per_worker,
        verify_sync=cluster.verify_sync, use_gpu=cluster.use_gpu,
        run_name=cluster.run_name or deterministic_run_name(config, ds.version), storage_uri=storage_uri,
        tracking=tracking, manifest=ds.manifest, storage_fs=storage_fs, storage_fs_path=storage_path)
    return plan, ds, storage_path, storage_fs
