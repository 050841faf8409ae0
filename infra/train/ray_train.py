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

This module is the driver and the worker adapter; what is resolved before any cluster work (the
`ClusterConfig`, the `WorkerPlan`) is infra.train.plan's, and the worker's data feed infra.train.feed's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

from gan_core.config import ConfigError, GANConfig

from infra.base.ray_cluster import ensure_ray
from infra.train.feed import STREAM_CHUNK_BYTES, memory_batches, stream_batches, stream_chunk_bytes
from infra.train.plan import ClusterConfig, TrackingSpec, WorkerPlan, plan_training, stream_passes, worker_threads

STOP_FILE = "stopped.json"  # in the run's folder: why its workers stopped for a fault a restart cannot fix
PROGRESS_FILE = "progress.json"  # in the run's folder: rank 0's latest tick line, for the driver to follow
PROGRESS_POLL_S = 2.0


class TrainingStopped(RuntimeError):
    """Training stopped for a fault that restarting the workers cannot fix: a non-finite loss (named
    with its step; the latest checkpoint is the last good one) or no intact checkpoint to resume from.
    One-line message."""


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


def _columns(plan: WorkerPlan) -> list[str]:
    """The columns training reads: the images, and their labels for class-conditional training."""
    return ["x", "label"] if plan.config.network.conditional else ["x"]


def _ray_dataset(plan: WorkerPlan, ds, cluster: ClusterConfig):
    """Part 2: the staged dataset as a Ray Dataset (the whole table, or a stream over the shard list)."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # a stable row order: the seed alone decides batches
    ctx.enable_progress_bars = False  # training prints its own per-tick progress lines
    if plan.data_loading == "memory":
        # small enough for every worker's memory: read once here, in the manifest's shard order, and hand
        # the blocks to the object store. NOTE: read_parquet(...).materialize() cost 12 s of Ray Data
        # start-up (read-task worker processes) on 2 CPUs for a 3 MB dataset; from_arrow runs no tasks
        return ray.data.from_arrow(ds.read_table(columns=_columns(plan)))
    # streamed reads run as Ray tasks beside the workers: with every CPU held by a worker they never
    # start and training waits forever
    total_cpus = ray.cluster_resources().get("CPU", 0.0)
    if total_cpus < cluster.num_workers * cluster.cpus_per_worker + 1:
        raise ConfigError(
            f"cluster.data_loading: got 'stream' with {cluster.num_workers} workers x {cluster.cpus_per_worker} "
            f"CPUs on a Ray cluster of {total_cpus:g} CPUs; streaming needs at least 1 CPU beyond the workers' "
            "for Ray Data's read tasks (use data_loading = 'memory', fewer workers or a smaller cpus_per_worker)")
    # blocks no larger than a stream chunk: a worker maps whole blocks, so they count against its budget
    ctx.target_max_block_size = min(ctx.target_max_block_size or STREAM_CHUNK_BYTES,
                                    stream_chunk_bytes(plan.data_memory_bytes))
    ray_ds = ray.data.read_parquet(ds.shard_paths, filesystem=ds.filesystem, columns=_columns(plan),
                                   file_extensions=["parquet"])
    passes = stream_passes(plan, ds.manifest, cluster.num_workers)
    return ray_ds.union(*[ray_ds] * (passes - 1)) if passes > 1 else ray_ds


def _trainer(plan: WorkerPlan, ray_ds, cluster: ClusterConfig, storage_path: str, storage_fs):
    """Part 3: the TorchTrainer: one worker per GPU (or CPU slot), the run's durable name and storage,
    checkpoint retention (Ray's CheckpointConfig is its one owner) and fault tolerance."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cluster.cpus_per_worker, **({"GPU": 1} if cluster.use_gpu else {})}
    return TorchTrainer(
        train_worker,
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                                     resources_per_worker=resources, placement_strategy=cluster.placement_strategy),
        run_config=RunConfig(
            name=plan.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=plan.config.train.num_checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=cluster.max_failures)),
        datasets={"train": ray_ds},
        # memory: every worker reads the whole (small) dataset and slices global batches itself
        dataset_config=DataConfig(datasets_to_split=[] if plan.data_loading == "memory" else "all",
                                  # NOTE: our own options: Ray Train's default ones copy the context's
                                  # deprecated `exclude_resources` (a RayDeprecationWarning per run)
                                  execution_options=ExecutionOptions(preserve_order=True)),
    )


def launch_training(config: GANConfig, dataset_ref: str, cluster: ClusterConfig = ClusterConfig(), *,
                    tracking: TrackingSpec | None = None,
                    on_progress: Callable[[str], None] | None = None) -> TrainOutcome:
    """Train `config` on the staged dataset `dataset_ref` with Ray Train; blocks until done. `on_progress`
    receives rank 0's tick lines (gan_core.loop.format_tick) while training runs, from a thread of this
    process (e.g. a Prefect task's run logger: the task's per-tick progress in Prefect's UI).

    Re-submitting the same (config, dataset, run_name) resumes from the run's latest intact checkpoint.
    Raises ConfigError / DatasetError / StorageError (one line) before any cluster work for a bad request,
    TrainingStopped (one line) for a non-finite loss or a run without an intact checkpoint; neither is
    retried (the workers record it in the run's stopped.json and end; the MLflow run of a non-finite loss
    is marked FAILED).
    """
    t0 = time.perf_counter()
    # 1. resolve and validate everything before touching the cluster
    plan, ds, storage_path, storage_fs = plan_training(config, dataset_ref, cluster, tracking)
    # 2. Ray, then what depends on the cluster: threads per worker and the Ray Dataset
    ensure_ray(cluster.address)
    plan = replace(plan, threads_per_worker=worker_threads(cluster, plan.data_loading))
    trainer = _trainer(plan, _ray_dataset(plan, ds, cluster), cluster, storage_path, storage_fs)
    # 3. run (or resume) and describe the result
    from infra.base.storage import read_bytes

    stop_file = _stop_file(plan)
    if stop_file.exists():  # an earlier submission's: this one may get further
        stop_file.fs.delete_file(stop_file.path)
    with _following_progress(plan, on_progress):
        result = trainer.fit()
    if stop_file.exists():
        raise TrainingStopped(f"training run {plan.run_name} stopped: {json.loads(read_bytes(stop_file))['reason']}")
    checkpoint_uri = None
    if result.checkpoint is not None:
        path = result.checkpoint.path
        checkpoint_uri = f"s3://{path}" if storage_fs is not None else path
    return TrainOutcome(run_name=plan.run_name, storage_path=plan.storage_uri, checkpoint_uri=checkpoint_uri,
                        metrics=dict(result.metrics or {}), dataset_version=ds.version, config=plan.config,
                        seconds=time.perf_counter() - t0,
                        mlflow_run_id=_find_mlflow_run(plan.tracking, plan.run_name) if plan.tracking else None)


def _find_mlflow_run(spec: TrackingSpec, run_name: str) -> str | None:
    """The id of the newest MLflow run named `run_name` (rank 0's tracker created or continued it)."""
    from infra.base.settings import mlflow_client

    try:
        client = mlflow_client(spec.tracking_uri)
        exp = client.get_experiment_by_name(spec.experiment)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None
    except Exception:  # tracking down: training results stand without it
        return None


def _open_tracker(plan: WorkerPlan, state, checkpoint_name):
    """Rank 0's MLflow tracker; the run is named after the Ray run, so a restarted worker group and a
    re-submitted job continue the same MLflow run. `checkpoint_name(step)`: a checkpoint's folder name in
    the run's storage."""
    from gan_core.checkpoint import read_summary
    from infra.base.storage import join_uri
    from infra.train.tracking import DatasetRef, TrainingTracker

    return TrainingTracker(
        plan.config, run_name=plan.run_name, experiment=plan.tracking.experiment,
        tracking_uri=plan.tracking.tracking_uri, dataset=DatasetRef.from_manifest(plan.manifest["name"], plan.manifest),
        generator=state.G_ema,
        checkpoint_uri=lambda d: join_uri(plan.storage_uri, plan.run_name, checkpoint_name(read_summary(d)["step"])),
    ).start()


# -- worker side --------------------------------------------------------------------------------------


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


RAY_TRAIN_REPORTING_MODULE = "ray.train.v2._internal.execution.context"  # logs a dict per report at INFO


def _quiet_ray_train_reports() -> None:
    """Ray Train's per-report INFO lines off in this worker: "Reporting training result N:
    TrainingReport(metrics={...})" per tick drowned the tick lines (and filled `ganpipe deploy`'s console).
    NOTE: that module names its logger after its file path (logging.getLogger(__file__)), not "ray.train",
    so its level is set by that name; a Ray that moves the module leaves the lines on, nothing worse."""
    import importlib.util

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    spec = importlib.util.find_spec(RAY_TRAIN_REPORTING_MODULE)
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)


def _say(line: str) -> None:
    """One progress line on the worker's stdout (Ray forwards it to the driver), marked as the pipeline's
    own (infra.base.console)."""
    from infra.base.console import say

    say(line)


def _restore(state, plan: WorkerPlan, rank: int) -> tuple[int, list[str]]:
    """The run's latest checkpoint (after a worker-group restart or a re-submission), if any, into
    `state`; returns the step training starts from and the names of the damaged checkpoints skipped.
    A damaged latest checkpoint falls back to the newest intact one of the run (one warning line from
    rank 0, naming both); raises CheckpointError (one line) if none is intact."""
    import ray.train

    from gan_core.checkpoint import restore_training_state
    from infra.train.checkpoints import newest_intact
    from infra.base.storage import Location, join_uri

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return state.step, []
    name = os.path.basename(checkpoint.path.rstrip("/"))
    latest = Location(checkpoint.filesystem, checkpoint.path, join_uri(plan.storage_uri, plan.run_name, name))
    # restore_training_state verifies the files (sha256.json) before it changes anything in `state`
    _, used, skipped = newest_intact(latest, lambda d: restore_training_state(state, d, log_changes=rank == 0),
                                     warn=_say if rank == 0 else (lambda line: None))
    if rank == 0:
        _say(f"resuming {plan.run_name} from step {state.step} ({state.kimg:.1f} kimg, {used.name})")
    return state.step, skipped


class _DataMemory:
    """This worker's resident memory around its training data: `metrics()` gives the peak RSS so far and
    how far it rose above the RSS measured at construction (just before the data is loaded), in MiB.
    The rise bounds what in-memory data or a stream's read-ahead costs, plus a fixed cost that does not
    depend on the data (Ray Data's iterator, torch's autograd and allocator pools: about 220 MiB here)."""

    def __init__(self):
        import psutil

        self.before = psutil.Process().memory_info().rss

    def metrics(self) -> dict[str, float]:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return {"memory/peak_rss_mib": peak / 2**20, "memory/data_rss_growth_mib": (peak - self.before) / 2**20}


def _announce(plan: WorkerPlan, rank: int, world_size: int) -> None:
    """One line from rank 0: where the workers landed, their threads and data mode (an all-gather, so
    every rank calls it)."""
    import ray
    import torch

    node_id = ray.get_runtime_context().get_node_id()
    nodes: list[str | None] = [node_id]
    if world_size > 1:
        import torch.distributed as dist

        nodes = [None] * world_size
        dist.all_gather_object(nodes, node_id)
    if rank == 0:
        _say(f"worker group: {world_size} workers on {len(set(nodes))} node(s), "
             f"{torch.get_num_threads()} torch threads each, data {plan.data_loading}")


def _run_file(plan: WorkerPlan, name: str):
    """A file in the run's folder (STOP_FILE, PROGRESS_FILE), an infra.base.storage Location."""
    import pyarrow.fs as pafs

    from infra.base.storage import Location, join_uri

    fs = plan.storage_fs or pafs.LocalFileSystem()
    path = posixpath.join(plan.storage_fs_path, plan.run_name, name)
    return Location(fs, path, join_uri(plan.storage_uri, plan.run_name, name))


def _stop_file(plan: WorkerPlan):
    """The run's stop record (STOP_FILE)."""
    return _run_file(plan, STOP_FILE)


@contextlib.contextmanager
def _following_progress(plan: WorkerPlan, on_progress: Callable[[str], None] | None):
    """While the block runs (the driver blocked in trainer.fit), pass each new tick line that rank 0 left
    in the run's PROGRESS_FILE to `on_progress` (checked every PROGRESS_POLL_S; ticks closer together
    than that pass only the latest; the last one always, read once more at the end). Lines of an
    earlier submission of the run are not repeated."""
    if on_progress is None:
        yield
        return
    from infra.base.storage import read_bytes

    where = _run_file(plan, PROGRESS_FILE)

    def latest() -> str | None:
        try:
            return json.loads(read_bytes(where))["line"]
        except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being replaced
            return None

    done = threading.Event()

    def follow(seen: str | None) -> None:
        while True:
            finished = done.wait(PROGRESS_POLL_S)
            line = latest()
            if line is not None and line != seen:
                seen = line
                on_progress(line)
            if finished:
                return

    follower = threading.Thread(target=follow, args=(latest(),), name="ganpipe-progress", daemon=True)
    follower.start()
    try:
        yield
    finally:
        done.set()
        follower.join(timeout=30)  # one last read (S3 included)


def _write_progress(plan: WorkerPlan, step: int, line: str) -> None:
    """Rank 0's latest tick line in the run's folder (see _following_progress); best effort: progress is
    not worth failing a training step for."""
    from infra.base.storage import write_bytes

    with contextlib.suppress(OSError):
        write_bytes(_run_file(plan, PROGRESS_FILE), json.dumps({"step": step, "line": line}).encode())


def _stop(plan: WorkerPlan, rank: int, e: Exception) -> None:
    """Record a fault that a restart cannot fix, for the driver to raise. Every rank meets it (the same
    files, the same reduced statistics) and its worker function returns: raising would make Ray Train
    restart the group max_failures times into the same fault."""
    from infra.base.storage import first_line, write_bytes

    if rank == 0:
        reason = first_line(e)
        write_bytes(_stop_file(plan), json.dumps({"reason": f"{type(e).__name__}: {reason}"}).encode())


def train_worker(loop_config: dict[str, Any]) -> None:
    """The per-worker function: a short adapter around gan_core's loop. `loop_config["plan"]` is the
    driver's WorkerPlan, as resolved there."""
    # NOTE (over 60 lines): the worker's story in order (data, state, DDP wrap, report, the loop), whose
    # closures `wrap` and `report` share its local state; split, that state would travel as arguments.
    import ray.data
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from gan_core.checkpoint import CheckpointError
    from gan_core.diagnostics import TrainingDiagnostics
    from gan_core.loop import NonFiniteLossError, format_tick, train
    from gan_core.training import build_training_state
    from gan_core.checkpoint import checkpoint_name

    plan: WorkerPlan = loop_config["plan"]
    config = plan.config
    _quiet_ray_train_reports()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(plan.threads_per_worker)
    # 1. data: through Ray Data, as this worker's share of every global batch
    make = memory_batches if plan.data_loading == "memory" else stream_batches
    shard = ray.train.get_dataset_shard("train")
    memory = _DataMemory()  # what the data costs this worker: its peak RSS over the RSS before loading
    batches = make(shard, plan, rank, world_size)
    # 2. state: fresh, or the latest checkpoint of this run
    state = build_training_state(config, get_device())
    try:
        start_step, skipped = _restore(state, plan, rank)
    except CheckpointError as e:  # the same files on every rank: every rank stops here, without retries
        _stop(plan, rank, e)
        return
    # past skipped (damaged) checkpoints, new folder names: see infra.train.checkpoints
    next_checkpoint_name = partial(checkpoint_name, taken=skipped)
    _announce(plan, rank, world_size)
    sync = _ParameterSync(state, world_size) if plan.verify_sync and world_size > 1 else None
    if sync is not None:
        state.opt_D.register_step_post_hook(sync)
        state.opt_G.register_step_post_hook(sync)
    tracker = _open_tracker(plan, state, next_checkpoint_name) if rank == 0 and plan.tracking is not None else None

    # 3. G and D wrapped in DDP separately; SyncBatchNorm only on GPUs (it refuses CPU modules)
    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if world_size > 1 and plan.use_gpu:
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return prepare_model(module, parallel_strategy_kwargs={"broadcast_buffers": False})

    # 4. every rank reports every snapshot (report is a barrier); rank 0 attaches the checkpoint
    def report(snapshot) -> None:
        metrics = {**snapshot.metrics, "step": snapshot.step, "kimg": snapshot.kimg,
                   "progress/resumed_from_step": start_step, **memory.metrics()}
        if sync is not None:
            metrics.update({"sync/checks": sync.checks, "sync/mismatches": sync.mismatches})
        if rank == 0:
            line = format_tick(snapshot, config.train.total_steps)
            _say(line)
            _write_progress(plan, snapshot.step, line)
        if tracker is not None:
            tracker.on_snapshot(snapshot)
        # report copies the checkpoint to the run's storage, where Ray's CheckpointConfig owns retention;
        # the loop's local copies in `scratch` are pruned by the loop (num_checkpoints_to_keep) and go with it
        ckpt = ray.train.Checkpoint.from_directory(snapshot.checkpoint_dir) if snapshot.checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt,
                         checkpoint_dir_name=next_checkpoint_name(snapshot.step) if ckpt else None)

    with tempfile.TemporaryDirectory(prefix="gan-ckpt-") as scratch:
        # NOTE: on a failure that a restart may fix the MLflow run stays RUNNING, so the restarted group
        # continues it; a non-finite loss (the same on every rank: the statistics are reduced) stops the run
        try:
            result = train(config, batches=batches, rank=rank, world_size=world_size, device=get_device(),
                           wrap_model=wrap, on_snapshot=report, checkpoint_root=scratch, state=state,
                           diagnostics=TrainingDiagnostics.for_config(config, cache_dir=plan.cache_dir))
        except NonFiniteLossError as e:
            if tracker is not None:
                tracker.finish(status="FAILED")
            _stop(plan, rank, e)
            return
    if tracker is not None:
        tracker.finish(result.history)


def outcome_to_json(outcome: TrainOutcome) -> str:
    d = asdict(outcome)
    d["config"] = outcome.config.to_dict()
    return json.dumps(d, indent=2, default=str)


__all__ = ["TrainOutcome", "TrainingStopped", "launch_training", "train_worker", "outcome_to_json"]
