"""One MLflow run per training run, fed from rank 0's ``on_snapshot`` callback.

    tracker = TrainingTracker(config, run_name="digits-2024-...", dataset=DatasetRef(...))
    tracker.start()
    result = train(config, ..., on_snapshot=tracker.on_snapshot if rank == 0 else None)
    tracker.finish(result.history)

What the run holds:
- params: the flattened resolved config (``train.total_steps``, ...), ``dataset.*`` (reference,
  version, normalisation), ``code.version``;
- metrics: every tick's snapshot metrics (``loss/D``, ``D/real``, ``js_estimate``, ``grad_norm/G``,
  ``perf/kimg_per_s``, ...) with step = images seen, one ``log_batch`` per tick (<= 1000 per call);
- artifacts: ``samples/grid-<kimg>.png`` (fixed-seed G_ema samples) per snapshot; at the end
  ``report/training_curves.png`` (every tick's metrics over kimg, gan_core.plots.save_training_curves)
  and ``report/sample_strip.png`` (a few of those fixed-seed samples per tick, side by side,
  gan_core.plots.save_sample_strip); ``dataset/_manifest.json``, and ``checkpoints.json`` listing every
  checkpoint URI;
- tags: ``ganpipe.last_checkpoint`` (the newest checkpoint URI; ``ganpipe register --run`` reads it),
  ``ganpipe.run_name``.

A tracking outage must not kill training, nor stall it. Metrics and params go through MLflow's own
asynchronous ``log_batch(synchronous=False)`` (MLflow batches, chunks to its per-call limits and
retries HTTP requests itself: MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT). What MLflow 3.17 can only do
synchronously (creating or resuming the run, tags, artifact uploads) runs on one background thread, in
order: NOTE: kept hand-written because MLflow's default HTTP retry budget is minutes long (it is sized
for rate limits), and the training thread must not wait on it. A call that still fails is dropped with
a warning. The training thread only renders pictures and enqueues; `finish` waits for the queue and the
pending asynchronous batches at most ``flush_timeout_s``, so nothing is lost at the end.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from gan_core.config import GANConfig
from gan_core.data import Normalisation
from gan_core.loop import Snapshot
from gan_core.plots import SampleStripRecorder, save_training_curves

from infra.base.settings import DEFAULT_EXPERIMENT, code_version, default_artifact_location, mlflow_tracking_uri

log = logging.getLogger(__name__)

# Names shared with infra.models.registry (which reads them back to re-register a run).
TAG_RUN_NAME = "ganpipe.run_name"
TAG_LAST_CHECKPOINT = "ganpipe.last_checkpoint"
PARAM_DATASET_NAME = "dataset.name"
PARAM_DATASET_VERSION = "dataset.version"
PARAM_SCALE = "dataset.normalisation.scale"
PARAM_OFFSET = "dataset.normalisation.offset"
PARAM_CODE_VERSION = "code.version"
CHECKPOINTS_ARTIFACT = "checkpoints.json"
REPORT_DIR = "report"  # the end-of-run pictures (pipelines.flow embeds them in the Prefect report)
TRAINING_CURVES_ARTIFACT = f"{REPORT_DIR}/training_curves.png"
SAMPLE_STRIP_ARTIFACT = f"{REPORT_DIR}/sample_strip.png"

MAX_PENDING_BATCHES = 64  # asynchronous batches in flight before the sender waits for them
RUN_RETRY_INTERVAL_S = 60.0  # after failing to create the run, try again at most this often
GRID_SEED = 2024  # the fixed seed of the per-snapshot sample grid
GRID_SAMPLES = 64
SCATTER_SAMPLES = 1024
_BAD_NAME_CHARS = re.compile(r"[^\w\-. /:]")


@dataclass(frozen=True)
class DatasetRef:
    """What the run trained on: a staged dataset reference and version, its manifest, normalisation."""

    name: str
    version: str = ""
    manifest: dict[str, Any] | None = None
    normalisation: Normalisation = Normalisation()  # stored value -> model value

    @classmethod
    def from_manifest(cls, name: str, manifest: dict[str, Any]) -> "DatasetRef":
        return cls(name=name, version=str(manifest.get("version", "")), manifest=manifest,
                   normalisation=Normalisation.from_dict(manifest.get("normalisation")))


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (artifacts next to a SQLite store by default)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_location or default_artifact_location(name, client.tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"seed": 0}} -> {"train.seed": "0"}; lists become JSON."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, ``_ - . / :`` and spaces; anything else becomes ``_``."""
    return _BAD_NAME_CHARS.sub("_", name)


@dataclass
class _Op:
    what: str
    fn: Callable[..., Any]
    args: tuple = ()
    needs_run: bool = True


@dataclass
class TrackerStats:
    sent: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)


class TrainingTracker:
    """Rank 0's MLflow adapter. Safe to use when tracking is down: it then only warns.

    ``generator``: G_ema (or a callable returning it) for the per-snapshot sample grid; when None,
    grids are drawn only at snapshots that wrote a checkpoint, from that checkpoint.
    ``checkpoint_uri``: maps a checkpoint directory to its durable URI (default: the absolute path).
    """

    def __init__(self, config: GANConfig, *, run_name: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                 dataset: DatasetRef | None = None, tracking_uri: str | None = None,
                 artifact_location: str | None = None, generator: nn.Module | Callable[[], nn.Module] | None = None,
                 checkpoint_uri: Callable[[str], str] | None = None, tags: dict[str, str] | None = None,
                 resume: bool = True, flush_timeout_s: float = 60.0, max_queue: int = 10_000):
        self.config = config
        self.run_name = run_name
        self.experiment = experiment
        self.dataset = dataset or DatasetRef(name=config.data.name)
        self.tracking_uri = tracking_uri or mlflow_tracking_uri()
        self.artifact_location = artifact_location
        self.generator = generator
        self.checkpoint_uri = checkpoint_uri or (lambda d: str(Path(d).resolve()))
        self.extra_tags = dict(tags or {})
        self.resume = resume
        self.flush_timeout_s = flush_timeout_s
        self.run_id: str | None = None
        self.stats = TrackerStats()
        self.checkpoints: list[dict[str, Any]] = []
        self._pending: list[Any] = []  # MLflow's RunOperations of asynchronous log_batch calls
        self._queue: queue.Queue[_Op | None] = queue.Queue(maxsize=max_queue)
        self._tmp = Path(tempfile.mkdtemp(prefix="ganpipe-tracking-"))
        self._client = None
        self._run_failed_at: float | None = None  # when creating the run last failed (outage at start)
        self._worker: threading.Thread | None = None
        self._finished = False
        self._strip = SampleStripRecorder()  # a few of each snapshot's grid samples

    # -- public API (training thread) ----------------------------------------------------------------
    def start(self) -> "TrainingTracker":
        """Start the background sender and create (or resume) the run. Never raises for outages."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._drain, name="ganpipe-mlflow", daemon=True)
            self._worker.start()
            self._enqueue(_Op("create run", self._create_run, needs_run=False))
        return self

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """The training loop's ``on_snapshot`` callback (rank 0 only)."""
        if self._worker is None:
            self.start()
        step = int(snapshot.images_seen)
        metrics = [(metric_name(k), float(v)) for k, v in snapshot.metrics.items() if _is_number(v)]
        self._enqueue(_Op(f"metrics at step {step}", self._log_metrics, (metrics, step)))
        try:
            grid = self._render_grid(snapshot)
        except Exception as e:  # a picture is never worth a training run
            log.warning("sample grid at kimg %.1f not drawn: %s", snapshot.kimg, e)
            grid = None
        if grid is not None:
            self._enqueue(_Op(f"sample grid {grid.name}", self._log_artifact, (grid, "samples")))
        if snapshot.checkpoint_dir:
            uri = self.checkpoint_uri(snapshot.checkpoint_dir)
            self.checkpoints.append({"step": snapshot.step, "images_seen": snapshot.images_seen, "uri": uri})
            listing = list(self.checkpoints)
            self._enqueue(_Op(f"checkpoint {uri}", self._log_checkpoint, (uri, listing)))

    def finish(self, history: list[dict[str, float]] | None = None, *, status: str = "FINISHED") -> str | None:
        """Log the report pictures (training curves of ``history``, the sample strip), end the run and wait
        (bounded) for the queue. Returns the run id or None."""
        if self._finished:
            return self.run_id
        self._finished = True
        if self._worker is None:
            self.start()
        self._log_report_pictures(history or [])
        self._enqueue(_Op("end run", self._end_run, (status,)))
        self._queue.put(None)  # sentinel: the worker exits after the queue is drained
        self._worker.join(self.flush_timeout_s)
        if self._worker.is_alive():
            log.warning("MLflow tracking did not drain within %.0f s; %d pending calls are abandoned",
                        self.flush_timeout_s, self._queue.qsize())
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self.stats.dropped:
            log.warning("MLflow tracking dropped %d of %d calls (first error: %s)", self.stats.dropped,
                        self.stats.dropped + self.stats.sent, self.stats.errors[0] if self.stats.errors else "?")
        return self.run_id

    def _log_report_pictures(self, history: list[dict[str, float]]) -> None:
        """The end-of-run pictures: drawn here (the training thread), uploaded by the sender."""
        if history:
            self._draw_and_log("training curves", TRAINING_CURVES_ARTIFACT, lambda p: save_training_curves(history, p))
        if self._strip.rows:
            self._draw_and_log("sample strip", SAMPLE_STRIP_ARTIFACT, self._strip.save)

    def _draw_and_log(self, what: str, artifact: str, draw: Callable[[Path], Path]) -> None:
        try:  # a picture is never worth a training run
            path = draw(self._tmp / artifact)
        except Exception as e:
            log.warning("%s not drawn: %s", what, e)
            return
        self._enqueue(_Op(what, self._log_artifact, (path, str(Path(artifact).parent))))

    def __enter__(self) -> "TrainingTracker":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(status="FINISHED" if exc_type is None else "FAILED")

    # -- pictures (training thread: they need the model as it is now) --------------------------------
    def _current_generator(self, snapshot: Snapshot) -> nn.Module | None:
        if self.generator is not None:
            return self.generator() if callable(self.generator) and not isinstance(self.generator, nn.Module) \
                else self.generator
        if snapshot.checkpoint_dir:
            from gan_core.checkpoint import load_generator

            return load_generator(snapshot.checkpoint_dir)[0]
        return None

    def _render_grid(self, snapshot: Snapshot) -> Path | None:
        """The same GRID_SEED latents at every snapshot, so the pictures show G_ema's progress."""
        from gan_core.networks import apply
        from gan_core.sampling import labels_for_range, latents_for_range, num_classes_of, save_image_grid, save_scatter

        G = self._current_generator(snapshot)
        if G is None:
            return None
        n = GRID_SAMPLES if self.config.data.is_image else SCATTER_SAMPLES
        K = num_classes_of(G)  # class-conditional: class-balanced labels, so each grid column is one class
        device = _device_of(G)
        was_training = G.training
        G.eval()
        try:
            with torch.no_grad():
                c = labels_for_range(0, n, K).to(device) if K else None
                x = apply(G, latents_for_range(GRID_SEED, 0, n, G.z_dim).to(device), c).float().cpu()
        finally:
            G.train(was_training)
        path = self._tmp / f"grid-{snapshot.images_seen:012d}.png"
        if self.config.data.is_image:
            self._strip.add(snapshot.kimg, x)
            return save_image_grid(x, path, ncols=K if 2 <= K <= 16 else None)  # model space [-1, 1]
        if x.shape[1] < 2:
            return None
        x = self.dataset.normalisation.to_data(x)  # back to the data's own units
        self._strip.add(snapshot.kimg, x)
        return save_scatter(x[:, :2], path, title=f"G_ema at {snapshot.kimg:.1f} kimg")

    # -- the background sender -----------------------------------------------------------------------
    def _enqueue(self, op: _Op) -> None:
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            self.stats.dropped += 1
            log.warning("MLflow tracking queue full (tracking down?); dropping %s", op.what)

    def _drain(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            if op.needs_run and self.run_id is None and (
                    self._run_failed_at is None or time.monotonic() - self._run_failed_at > RUN_RETRY_INTERVAL_S):
                self._attempt(_Op("create run", self._create_run, needs_run=False))
            if op.needs_run and self.run_id is None:
                self.stats.dropped += 1
                if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
                    log.warning("MLflow run unavailable; dropped %s (%d dropped so far)", op.what, self.stats.dropped)
                continue
            self._attempt(op)

    def _attempt(self, op: _Op) -> None:
        """Run one call once (MLflow's client retries HTTP itself); a failure drops it with a warning."""
        try:
            op.fn(*op.args)
            self.stats.sent += 1
        except Exception as e:  # any client / network / store error
            self._dropped(op.what, e)
            if op.fn == self._create_run:
                self._run_failed_at = time.monotonic()

    def _dropped(self, what: str, e: BaseException) -> None:
        err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        self.stats.dropped += 1
        self.stats.errors.append(err)
        log.warning("MLflow tracking failed for %s; dropped (%s)", what, err)

    def _wait_pending(self) -> None:
        """Wait for MLflow's asynchronous batches; a failed one counts as dropped."""
        pending, self._pending = self._pending, []
        for what, operation in pending:
            try:
                operation.wait()
            except Exception as e:
                self._dropped(what, e)

    # -- MLflow calls (background thread only) -------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _create_run(self) -> None:
        from mlflow.entities import Param

        if self.run_id is not None:
            return
        exp_id = ensure_experiment(self.client, self.experiment, self.artifact_location)
        # 1. a re-submitted job with the same deterministic run name continues its unfinished run
        if self.resume and self.run_name:
            runs = self.client.search_runs(
                [exp_id], filter_string=f"tags.`{TAG_RUN_NAME}` = '{self.run_name}' and attributes.status != "
                                        f"'FINISHED'", max_results=1, order_by=["attributes.start_time DESC"])
            if runs:
                self.run_id = runs[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                log.info("MLflow: resuming run %s (%s)", self.run_id, self.run_name)
                return
        tags = {TAG_RUN_NAME: self.run_name or "", **self.extra_tags}
        run = self.client.create_run(exp_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, self.experiment, self.tracking_uri)
        # 2. params: the resolved config, the dataset, the code
        params = flatten_params(self.config.to_dict())
        params.update({PARAM_DATASET_NAME: self.dataset.name, PARAM_DATASET_VERSION: self.dataset.version,
                       PARAM_SCALE: repr(self.dataset.normalisation.scale),
                       PARAM_OFFSET: repr(self.dataset.normalisation.offset),
                       PARAM_CODE_VERSION: code_version()})
        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        self._pending.append(("params", self.client.log_batch(self.run_id, params=items, synchronous=False)))
        self.client.set_tag(self.run_id, "mlflow.note.content", f"GAN training run {self.run_name or ''}".strip())
        # 3. the dataset manifest as it was at training time
        if self.dataset.manifest is not None:
            self.client.log_dict(self.run_id, self.dataset.manifest, "dataset/_manifest.json")

    def _log_metrics(self, metrics: list[tuple[str, float]], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics]
        operation = self.client.log_batch(self.run_id, metrics=items, synchronous=False)
        self._pending.append((f"metrics at step {step}", operation))
        if len(self._pending) > MAX_PENDING_BATCHES:  # bounded memory on long runs
            self._wait_pending()

    def _log_artifact(self, path: Path, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def _log_checkpoint(self, uri: str, listing: list[dict[str, Any]]) -> None:
        self.client.set_tag(self.run_id, TAG_LAST_CHECKPOINT, uri)
        self.client.log_dict(self.run_id, {"checkpoints": listing}, CHECKPOINTS_ARTIFACT)

    def _end_run(self, status: str) -> None:
        self._wait_pending()  # every metric lands before the run is marked finished
        self.client.set_terminated(self.run_id, status=status)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)  # NaN and Inf are stored by MLflow


def _device_of(G: nn.Module) -> torch.device:
    p = next(G.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
