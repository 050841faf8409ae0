"""Ray Train (V2) adapter: run gan_core's training loop, unchanged, on N data-parallel workers.

The Ray-specific call sites are few and obvious:
- driver (`launch_training`): `ray.data.read_parquet` over the manifest's shards, `TorchTrainer` with
  `ScalingConfig`, `RunConfig(name, storage_path)`, `CheckpointConfig`, `FailureConfig`, `fit()`;
- worker (`train_worker`): `get_context`, `get_dataset_shard`, `get_checkpoint`, `prepare_model`
  (G and D wrapped in DDP *separately*), and `report` from the loop's snapshot callback.

Every D update and every G update is a synchronised data-parallel step (DDP all-reduces the
gradients of the network being updated; the other network is used unwrapped with frozen parameters).
`train.global_batch_size` is the global batch; each worker takes global / num_workers rows of every
global batch. With `data_loading="memory"` the global batch order is a pure function of the seed, so N
workers reproduce one worker's training (up to float reduction order) and a resumed run continues the
exact data stream; with `"stream"`, each worker streams its split of the shards through Ray Data with a
local shuffle buffer, the path for datasets larger than memory.

A run's name is deterministic (config + dataset version), so re-submitting it resumes from its latest
checkpoint in `storage_path` instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from gan_core.config import ConfigError, GANConfig

DATA_LOADING = ("auto", "memory", "stream")
MAX_STREAM_PASSES = 1000  # beyond this many epochs per execution the stream restarts (and pays a stall)
MEMORY_LOADING_MAX_BYTES = 2 * 1024**3  # "auto" keeps datasets up to 2 GiB of Parquet in worker memory


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how training runs. Service addresses come from the tools' own variables
    (`RAY_ADDRESS`); `storage_path` is a local folder or `s3://bucket/prefix`."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0  # torch intra-op threads per worker; 0 = auto (see `worker_threads`)
    storage_path: str | None = None  # default: <GANPIPE_HOME>/ray_results
    run_name: str | None = None  # default: derived from the config and the dataset version
    max_failures: int = 2  # worker-group restarts from the latest checkpoint; -1 = unlimited
    data_loading: str = "auto"
    verify_sync: bool = False  # compare parameter digests across workers after every update (debug)
    placement_strategy: str = "PACK"  # "SPREAD": one worker per node where possible

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"cluster.{name}: got {getattr(self, name)!r}; allowed: {allowed}")

        if not (isinstance(self.num_workers, int) and self.num_workers >= 1):
            raise bad("num_workers", "an integer >= 1")
        if not (isinstance(self.cpus_per_worker, (int, float)) and self.cpus_per_worker > 0):
            raise bad("cpus_per_worker", "a number > 0")
        if not (isinstance(self.threads_per_worker, int) and self.threads_per_worker >= 0):
            raise bad("threads_per_worker", "an integer >= 0")
        if not (isinstance(self.max_failures, int) and self.max_failures >= -1):
            raise bad("max_failures", "an integer >= -1 (-1 = unlimited)")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise bad("placement_strategy", "PACK | SPREAD | STRICT_PACK | STRICT_SPREAD")
        if self.data_loading not in DATA_LOADING:
            raise bad("data_loading", " | ".join(DATA_LOADING))
        if self.run_name is not None and not (isinstance(self.run_name, str) and self.run_name.strip()
                                              and "/" not in self.run_name):
            raise bad("run_name", "a non-empty name without '/'")


@dataclass(frozen=True)
class TrackingSpec:
    """MLflow tracking of a training run (rank 0 logs; an outage only warns). The tracking URI comes
    from MLFLOW_TRACKING_URI, else SQLite under the local home, resolved on the driver."""

    experiment: str = "ganpipe"
    tracking_uri: str | None = None


@dataclass
class TrainOutcome:
    """What a finished training run leaves behind."""

    run_name: str
    storage_path: str
    checkpoint_uri: str | None  # the latest checkpoint (a gan_core checkpoint directory)
    metrics: dict[str, Any]
    dataset_version: str
    config: GANConfig
    seconds: float
    mlflow_run_id: str | None = None


# -- driver side --------------------------------------------------------------------------------------

def resolve_config_for_dataset(config: GANConfig, manifest: dict) -> GANConfig:
    """The config with `data` filled in from the staged dataset (its name and example shape)."""
    shape = tuple(manifest["shape"])
    return replace(config, data=replace(config.data, name=manifest["name"], shape=shape))


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
    from infra.settings import local_home

    return str(local_home() / "ray_results")


def _storage_for_ray(storage_path: str):
    """(storage_path, storage_filesystem) for RunConfig: S3 URIs go through a pyarrow S3FileSystem
    built from the standard AWS variables (AWS_ENDPOINT_URL for MinIO/moto), path without s3://."""
    from infra import storage

    if storage.is_s3(storage_path):
        loc = storage.resolve(storage_path)
        storage.check_bucket(loc)
        return loc.path, _portable_s3_filesystem()
    path = os.path.abspath(os.path.expanduser(storage_path))
    os.makedirs(path, exist_ok=True)
    return path, None


def _portable_s3_filesystem():
    """An S3FileSystem that carries the driver's resolved credentials and endpoint when pickled to
    workers: Ray workers may have been started before AWS_* variables were set in this process."""
    import boto3
    import pyarrow.fs as pafs

    from infra import storage

    fs = storage.s3_filesystem()
    creds = boto3.Session().get_credentials()
    if creds is None:
        return fs  # instance roles / IRSA on the cluster: each worker resolves its own chain
    frozen = creds.get_frozen_credentials()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"access_key": frozen.access_key, "secret_key": frozen.secret_key,
                              "session_token": frozen.token}
    if endpoint:
        kwargs.update(endpoint_override=endpoint, scheme="http" if endpoint.startswith("http://") else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def ensure_ray() -> None:
    """Connect to `RAY_ADDRESS` when set, else start Ray locally (once per process)."""
    import ray

    from infra.ray_hooks import SETUP_HOOK

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # "local": a fresh instance, never whatever cluster /tmp/ray happens to name (possibly dead)
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"},
                              "worker_process_setup_hook": SETUP_HOOK})


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


def _choose_loading(cluster: ClusterConfig, manifest: dict) -> str:
    if cluster.data_loading != "auto":
        return cluster.data_loading
    total = sum(s["bytes"] for s in manifest["shards"])
    return "memory" if total <= MEMORY_LOADING_MAX_BYTES else "stream"


def _stream_passes(config: GANConfig, manifest: dict, num_workers: int) -> int:
    """How many passes over the shards a streamed run reads in one Ray Data execution.

    NOTE: every new epoch of a split Ray Data stream starts a new execution, which stalled training
    for 13-18 s per epoch on 2 CPUs (0.23x the in-memory rate for a 50k-row dataset). The union of
    `passes` copies of the dataset is one execution for the whole run (read_parquet would drop repeated
    paths). Big datasets need few passes.
    """
    t = config.train
    rows_per_worker = max(1, manifest["num_rows"] // num_workers)  # an equal split of each pass
    needed_per_worker = t.total_steps * t.d_steps * (t.global_batch_size // num_workers)
    return min(MAX_STREAM_PASSES, math.ceil(needed_per_worker / rows_per_worker) + 1)  # + 1: a spare pass


def launch_training(config: GANConfig, dataset_ref: str, cluster: ClusterConfig = ClusterConfig(), *,
                    tracking: TrackingSpec | None = None,
                    extra_loop_config: dict[str, Any] | None = None) -> TrainOutcome:
    """Train `config` on the staged dataset `dataset_ref` with Ray Train; blocks until done.

    Re-submitting the same (config, dataset, run_name) resumes from the run's latest checkpoint.
    """
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from infra.datasets import open_dataset

    t0 = time.perf_counter()
    # 1. resolve and validate everything before touching the cluster
    ds = open_dataset(dataset_ref)
    config = resolve_config_for_dataset(config, ds.manifest)
    validate_launch(config, cluster)
    run_name = cluster.run_name or deterministic_run_name(config, ds.version)
    storage_uri = cluster.storage_path or default_storage_path()
    storage_path, storage_fs = _storage_for_ray(storage_uri)
    loading = _choose_loading(cluster, ds.manifest)
    # 2. Ray, and the dataset as a Ray Dataset over the manifest's shard list
    ensure_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # a stable row order: the seed alone decides batches
    ctx.enable_progress_bars = False  # training prints its own per-tick progress lines
    if loading == "stream":
        # streamed reads run as Ray tasks beside the workers: with every CPU held by a worker they never
        # start and training waits forever
        total_cpus = ray.cluster_resources().get("CPU", 0.0)
        if total_cpus < cluster.num_workers * cluster.cpus_per_worker + 1:
            raise ConfigError(
                f"cluster.data_loading: got 'stream' with {cluster.num_workers} workers x "
                f"{cluster.cpus_per_worker} CPUs on a Ray cluster of {total_cpus:g} CPUs; streaming needs at "
                "least 1 CPU beyond the workers' for Ray Data's read tasks (use data_loading = 'memory', "
                "fewer workers or a smaller cpus_per_worker)")
        ray_ds = ray.data.read_parquet(ds.shard_paths, filesystem=ds.filesystem, columns=["x"],
                                       file_extensions=["parquet"])
        passes = _stream_passes(config, ds.manifest, cluster.num_workers)
        if passes > 1:
            ray_ds = ray_ds.union(*[ray_ds] * (passes - 1))
    else:
        # small enough for every worker's memory: read once here, in the manifest's shard order, and hand
        # the blocks to the object store. NOTE: read_parquet(...).materialize() cost 12 s of Ray Data
        # start-up (read-task worker processes) on 2 CPUs for a 3 MB dataset; from_arrow runs no tasks
        ray_ds = ray.data.from_arrow(ds.read_table(columns=["x"]))
    loop_config = {
        "config": config.to_dict(),
        "manifest": {k: ds.manifest[k] for k in ("name", "version", "shape", "dtype", "normalisation")},
        "data_loading": loading,
        "threads_per_worker": worker_threads(cluster, loading),
        "verify_sync": cluster.verify_sync,
        "use_gpu": cluster.use_gpu,
        "run_name": run_name,
        "storage_uri": storage_uri,
        "tracking": _tracking_loop_config(tracking, ds.manifest),
        **(extra_loop_config or {}),
    }
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cluster.placement_strategy),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.num_checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
        ),
        datasets={"train": ray_ds},
        # memory: every worker reads the whole (small) dataset and slices global batches itself
        dataset_config=DataConfig(datasets_to_split=[] if loading == "memory" else "all"),
    )
    # 3. run (or resume) and describe the result
    result = trainer.fit()
    checkpoint_uri = None
    if result.checkpoint is not None:
        path = result.checkpoint.path
        checkpoint_uri = f"s3://{path}" if storage_fs is not None else path
    loop_tracking = loop_config["tracking"]
    return TrainOutcome(run_name=run_name, storage_path=storage_uri, checkpoint_uri=checkpoint_uri,
                        metrics=dict(result.metrics or {}), dataset_version=ds.version, config=config,
                        seconds=time.perf_counter() - t0,
                        mlflow_run_id=_find_mlflow_run(loop_tracking, run_name) if loop_tracking else None)


def _find_mlflow_run(spec: dict[str, Any], run_name: str) -> str | None:
    """The id of the newest MLflow run named `run_name` (rank 0's tracker created or continued it)."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(spec["tracking_uri"])
        exp = client.get_experiment_by_name(spec["experiment"])
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None
    except Exception:  # tracking down: training results stand without it
        return None


def _tracking_loop_config(tracking: TrackingSpec | None, manifest: dict) -> dict[str, Any] | None:
    if tracking is None:
        return None
    from infra.settings import mlflow_tracking_uri

    return {"experiment": tracking.experiment, "tracking_uri": tracking.tracking_uri or mlflow_tracking_uri(),
            "manifest": manifest}


def _open_tracker(spec: dict[str, Any], config: GANConfig, state, run_name: str, storage_uri: str):
    """Rank 0's MLflow tracker; the run is named after the Ray run, so a restarted worker group and a
    re-submitted job continue the same MLflow run."""
    from infra.storage import join_uri
    from infra.tracking import DatasetRef, TrainingTracker

    manifest = spec["manifest"]
    return TrainingTracker(
        config, run_name=run_name, experiment=spec["experiment"], tracking_uri=spec["tracking_uri"],
        dataset=DatasetRef.from_manifest(manifest["name"], manifest), generator=state.G_ema,
        checkpoint_uri=lambda d: join_uri(storage_uri, run_name, os.path.basename(os.path.normpath(d))),
    ).start()


# -- worker side --------------------------------------------------------------------------------------

def _table_to_tensor(table, manifest: dict):
    """A pyarrow table with column x (fixed-size lists) -> float32 model inputs (rows, *shape)."""
    import numpy as np
    import torch

    col = table.column("x").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    x = torch.from_numpy(np.ascontiguousarray(flat).reshape((len(col),) + tuple(manifest["shape"])))
    n = manifest["normalisation"]
    return x.float() * float(n["scale"]) + float(n["offset"])


def _memory_batches(shard, config: GANConfig, manifest: dict, rank: int, world_size: int):
    """The whole dataset in this worker's memory, cut into seed-ordered global batches (rank slice)."""
    import pyarrow as pa
    import torch

    from gan_core.data import InMemoryBatches

    tables = list(shard.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0))
    x = _table_to_tensor(pa.concat_tables(tables), manifest) if tables else torch.empty(0)
    return InMemoryBatches(x, config.train.global_batch_size, config.train.seed, rank, world_size)


STREAM_CHUNK_BYTES = 32 * 1024**2  # rows pulled from Ray Data at a time: large reads amortise its per-batch cost
STREAM_CHUNK_BATCHES = 64  # at most this many per-worker batches per chunk
STREAM_PREFETCH_CHUNKS = 4  # chunks read ahead by a background thread, across epoch boundaries


def _stream_chunk_rows(per_worker: int, manifest: dict) -> int:
    import numpy as np

    row_bytes = int(np.prod(manifest["shape"])) * np.dtype(manifest["dtype"]).itemsize
    return per_worker * max(1, min(STREAM_CHUNK_BATCHES, STREAM_CHUNK_BYTES // max(1, row_bytes * per_worker)))


def _stream_batches(shard, config: GANConfig, manifest: dict, rank: int, world_size: int):
    """This worker's split of the dataset, streamed epoch after epoch.

    A background thread pulls large chunks from Ray Data (up to STREAM_CHUNK_BATCHES minibatches or
    STREAM_CHUNK_BYTES each), shuffles each with a seeded permutation and queues up to
    STREAM_PREFETCH_CHUNKS of them; the training loop cuts minibatches from the queue. So the per-batch
    cost is a tensor slice, and the seconds Ray Data needs to start each new epoch pass are spent
    while training consumes the chunks already queued.
    """
    import queue
    import threading

    import torch

    from gan_core.rng import generator

    per_worker = config.train.global_batch_size // world_size
    chunk_rows = _stream_chunk_rows(per_worker, manifest)

    def stream(start: int):
        # NOTE: a Ray Data stream cannot seek; a resumed run starts a fresh epoch pass.
        chunks: queue.Queue = queue.Queue(maxsize=STREAM_PREFETCH_CHUNKS)
        stop = threading.Event()

        def put(item) -> None:
            while not stop.is_set():
                try:
                    chunks.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        def read_epochs() -> None:
            try:
                epoch = 0
                while not stop.is_set():
                    rows = 0
                    for c, table in enumerate(shard.iter_batches(batch_size=chunk_rows, batch_format="pyarrow",
                                                                 prefetch_batches=1)):
                        x = _table_to_tensor(table, manifest)
                        rows += len(x)
                        put(x[torch.randperm(len(x), generator=generator(config.train.seed, "stream", rank,
                                                                          epoch, c))])
                        if stop.is_set():
                            return
                    if rows < per_worker:
                        raise RuntimeError(f"worker {rank}: its data split holds {rows} rows, fewer than "
                                           f"one per-worker batch ({per_worker})")
                    epoch += 1
            except BaseException as e:  # handed to the training thread, which raises it
                put(e)

        reader = threading.Thread(target=read_epochs, name=f"ganpipe-stream-{rank}", daemon=True)
        reader.start()
        try:
            while True:
                x = chunks.get()
                if isinstance(x, BaseException):
                    raise x
                for i in range(0, len(x) - per_worker + 1, per_worker):  # a short remainder is dropped
                    yield x[i:i + per_worker]
        finally:
            stop.set()

    return stream


class _ParameterSync:
    """Digest of G's and D's parameters after every update, gathered from all workers and compared."""

    def __init__(self, state, world_size: int):
        self.state, self.world_size = state, world_size
        self.checks = 0
        self.mismatches = 0

    def digest(self) -> str:
        h = hashlib.sha256()
        for net in (self.state.G, self.state.D):
            for p in net.parameters():
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def __call__(self, *args: Any) -> None:  # an optimizer step post-hook
        import torch.distributed as dist

        digests: list[str | None] = [None] * self.world_size
        dist.all_gather_object(digests, self.digest())
        self.checks += 1
        self.mismatches += int(len(set(digests)) != 1)


def _say(line: str) -> None:
    """One progress line on the worker's stdout (Ray forwards it to the driver).

    NOTE: not print(): Ray Train patches print in its workers to log *and* echo to a wrapped stdout,
    so every printed line reached the driver twice.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train_worker(loop_config: dict[str, Any]) -> None:
    """The per-worker function: a short adapter around gan_core's loop."""
    import ray
    import ray.data
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from gan_core.checkpoint import restore_training_state
    from gan_core.loop import format_tick, train
    from gan_core.training import build_training_state

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # per-report INFO lines drown the ticks
    ray.data.DataContext.get_current().enable_progress_bars = False
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    config = GANConfig.from_dict(loop_config["config"])
    manifest = loop_config["manifest"]
    torch.set_num_threads(int(loop_config["threads_per_worker"]))
    device = get_device()
    # 1. data: through Ray Data, as this worker's share of every global batch
    shard = ray.train.get_dataset_shard("train")
    make = _memory_batches if loop_config["data_loading"] == "memory" else _stream_batches
    batches = make(shard, config, manifest, rank, world_size)
    # 2. state: fresh, or the latest checkpoint of this run (after a failure or a re-submission)
    state = build_training_state(config, device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            restore_training_state(state, d)
        if rank == 0:
            _say(f"resuming {ctx.get_experiment_name()} from step {state.step} ({state.kimg:.1f} kimg)")
    start_step = state.step
    node_id = ray.get_runtime_context().get_node_id()
    nodes: list[str | None] = [node_id]
    if world_size > 1:  # where the workers landed: one line, from rank 0
        import torch.distributed as dist

        nodes = [None] * world_size
        dist.all_gather_object(nodes, node_id)
    if rank == 0:
        _say(f"worker group: {world_size} workers on {len(set(nodes))} node(s), "
             f"{torch.get_num_threads()} torch threads each, data {loop_config['data_loading']}")
    sync = _ParameterSync(state, world_size) if loop_config.get("verify_sync") and world_size > 1 else None
    if sync is not None:
        state.opt_D.register_step_post_hook(sync)
        state.opt_G.register_step_post_hook(sync)

    tracker = None
    if rank == 0 and loop_config.get("tracking"):
        tracker = _open_tracker(loop_config["tracking"], config, state, loop_config["run_name"],
                                loop_config["storage_uri"])

    # 3. G and D wrapped in DDP separately; SyncBatchNorm only on GPUs (it refuses CPU modules)
    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if world_size > 1 and loop_config.get("use_gpu"):
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return prepare_model(module, parallel_strategy_kwargs={"broadcast_buffers": False})

    # 4. every rank reports every snapshot (report is a barrier); rank 0 attaches the checkpoint
    def report(snapshot) -> None:
        metrics = {**snapshot.metrics, "step": snapshot.step, "kimg": snapshot.kimg,
                   "progress/resumed_from_step": start_step}
        if sync is not None:
            metrics.update({"sync/checks": sync.checks, "sync/mismatches": sync.mismatches})
        if rank == 0:
            _say(format_tick(snapshot, config.train.total_steps))
        if tracker is not None:
            tracker.on_snapshot(snapshot)
        ckpt = ray.train.Checkpoint.from_directory(snapshot.checkpoint_dir) if snapshot.checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt,
                         checkpoint_dir_name=f"checkpoint-{snapshot.step:09d}" if ckpt else None)
        if snapshot.checkpoint_dir:
            shutil.rmtree(snapshot.checkpoint_dir, ignore_errors=True)

    with tempfile.TemporaryDirectory(prefix="gan-ckpt-") as scratch:
        # NOTE: on failure the MLflow run stays RUNNING, so the restarted group continues it
        result = train(config, batches=batches, rank=rank, world_size=world_size, device=device,
                       wrap_model=wrap, on_snapshot=report, checkpoint_root=scratch, state=state)
    if tracker is not None:
        tracker.finish(result.history)


def outcome_to_json(outcome: TrainOutcome) -> str:
    d = asdict(outcome)
    d["config"] = outcome.config.to_dict()
    return json.dumps(d, indent=2, default=str)


__all__ = ["ClusterConfig", "TrackingSpec", "TrainOutcome", "launch_training", "train_worker", "deterministic_run_name",
           "validate_launch", "resolve_config_for_dataset", "ensure_ray", "outcome_to_json"]
