"""The one training loop. It knows nothing of who launched it (a plain process or a Ray worker).

    train(config, batches=..., rank=..., world_size=..., wrap_model=..., on_snapshot=...,
          should_stop=..., resume_from=..., checkpoint_root=...)

- ``batches``: a factory ``batches(start) -> iterator`` of this worker's real minibatches, where
  ``start`` is the number of minibatches already consumed (0, or the resumed count), or a plain
  iterable. Each item is a tensor, a (tensor, labels) pair or a dict with key "x" (and "label"); the
  labels are used when ``config.network.conditional``.
- ``wrap_model``: applied to G and to D separately (e.g. DDP); identity by default.
- ``on_snapshot(Snapshot)``: called on *every* rank at each tick, at each checkpoint and at the end,
  the same number of times on each; rank 0's snapshot carries the checkpoint directory it just wrote.
- ``should_stop()``: polled after each step; the loop then writes a checkpoint and returns.
- ``resume_from``: a checkpoint directory; the run continues exactly where it stopped (the config's
  optimiser settings apply, see `gan_core.checkpoint.restore_training_state`).
- ``diagnostics``: per-tick theory diagnostics (`gan_core.diagnostics.TrainingDiagnostics`: vanishing
  gradient and mode collapse), on by default; pass False to turn them off, or an instance built with
  the caller's real reference data or classifier. ``tick_diagnostics(state)`` adds the caller's own.

A non-finite loss raises `NonFiniteLossError` naming the step before any checkpoint containing it is
written, so the latest checkpoint stays good.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import CHECKPOINT_NAME, checkpoint_name, restore_training_state, save_checkpoint
from .config import GANConfig, TrainConfig
from .diagnostics import TrainingDiagnostics, resolve_diagnostics
from .losses import js_estimate
from .training import TrainingState, build_training_state, minibatches_per_step, train_step


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; names the step and the loss."""

    def __init__(self, step: int, name: str, value: float):
        self.step, self.name, self.value = step, name, value
        super().__init__(f"non-finite {name} = {value} at step {step}; training stopped, the latest "
                         f"checkpoint before this step is intact (try a lower learning rate or a regulariser)")


class DataExhaustedError(RuntimeError):
    """The batch iterator ended; training needs an endless stream (repeat over epochs)."""


@dataclass
class Snapshot:
    step: int
    images_seen: int
    metrics: dict[str, float]
    checkpoint_dir: str | None = None  # set on rank 0 when a checkpoint was written at this step
    is_final: bool = False

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000.0


@dataclass
class TrainResult:
    state: TrainingState
    last_snapshot: Snapshot | None
    checkpoint_dir: str | None  # the last checkpoint written by this rank (None on ranks > 0)
    history: list[dict[str, float]] = field(default_factory=list)


def _as_batch(item: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A stream item as `train_step` takes it: the images, or (images, labels) when the item carries
    labels (a (tensor, label) pair, or a dict with keys "x" and "label")."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, dict):
        x = torch.as_tensor(item["x"])
        return (x, torch.as_tensor(item["label"])) if item.get("label") is not None else x
    if isinstance(item, (tuple, list)):
        x = torch.as_tensor(item[0])
        return (x, torch.as_tensor(item[1])) if len(item) > 1 and item[1] is not None else x
    return torch.as_tensor(item)


def _open_batches(batches: Callable[[int], Iterable] | Iterable, start: int) -> Iterator:
    if callable(batches) and not hasattr(batches, "__iter__"):
        return iter(batches(start))
    return iter(batches)


def _real_minibatches(batches: Callable[[int], Iterable] | Iterable, state: TrainingState,
                      train: TrainConfig) -> Callable[[], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """``next_real()``: this worker's next real minibatch (images, or (images, labels)), from a stream opened where ``state`` left it
    (minibatches_per_step per completed step). Raises DataExhaustedError when the stream ends."""
    stream = _open_batches(batches, state.step * minibatches_per_step(state.config))

    def next_real() -> torch.Tensor:
        try:
            return _as_batch(next(stream))
        except StopIteration:
            raise DataExhaustedError(f"the batch stream ended at step {state.step}; it must repeat over "
                                     f"epochs (training needs {train.total_steps} steps)") from None

    return next_real


def _reduce_mean(stacked: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean over ranks, so every rank reports (and checks) the same numbers."""
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        stacked = stacked.clone()
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= world_size
    return stacked


@dataclass
class _Tick:
    """The steps since the last snapshot: their statistics stay on the device until the tick closes."""

    first_step: int  # state.step when the tick opened
    images_at_start: int
    started: float = field(default_factory=time.perf_counter)
    pending: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for key, v in stats.items():
            self.pending.setdefault(key, []).append(v)


def _reduce_tick(tick: _Tick, world_size: int) -> dict[str, float]:
    """The tick's statistics averaged over its steps and over ranks (one host sync per tick), plus the
    JS estimate. Raises NonFiniteLossError naming the first step with a NaN/Inf (a loss if one is)."""
    if not tick.pending:
        return {}
    names = sorted(tick.pending)
    table = _reduce_mean(torch.stack([torch.stack(tick.pending[n]).float().cpu() for n in names]), world_size)
    finite = torch.isfinite(table)
    if not bool(finite.all()):
        bad_step = int((~finite).any(dim=0).nonzero()[0])
        bad = [n for n, ok in zip(names, finite[:, bad_step].tolist()) if not ok]
        name = next((n for n in bad if n.startswith("loss/")), bad[0])
        raise NonFiniteLossError(tick.first_step + bad_step + 1, name, float(table[names.index(name), bad_step]))
    metrics = {n: float(v) for n, v in zip(names, table.mean(dim=1))}
    if "value" in metrics:  # V(D, G) is reported by the losses it means something for (not rpgan)
        metrics["js_estimate"] = float(js_estimate(metrics.pop("value")))
    return metrics


def _progress_metrics(tick: _Tick, state: TrainingState, train: TrainConfig) -> dict[str, float]:
    """Throughput over the tick (kimg/s), the estimated seconds left, and the counters."""
    elapsed = time.perf_counter() - tick.started
    rate = (state.images_seen - tick.images_at_start) / 1000.0 / elapsed if elapsed > 0 else float("nan")
    steps_left = train.total_steps - state.step
    return {
        "perf/kimg_per_s": rate,
        "perf/eta_s": steps_left * train.d_steps * train.global_batch_size / 1000.0 / rate if rate > 0 else 0.0,
        "progress/kimg": state.kimg,
        "progress/step": float(state.step),
    }


class _Checkpoints:
    """Rank 0's checkpoint directories under ``root`` (a temp dir if None), keeping the newest ``keep``."""

    def __init__(self, root: str | Path | None, keep: int):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="gan-ckpt-"))
        self.keep = keep
        # a resumed run's too: only folders named exactly as write() names them, never through a link
        self.written = sorted(p for p in self.root.glob("checkpoint-*")
                              if CHECKPOINT_NAME.match(p.name) and p.is_dir() and not p.is_symlink())

    def write(self, state: TrainingState, metrics: dict[str, float]) -> str:
        path = save_checkpoint(state, self.root / checkpoint_name(state.step), metrics)
        self.written.append(path)
        while len(self.written) > self.keep:
            shutil.rmtree(self.written.pop(0), ignore_errors=True)
        return str(path)


@dataclass
class _TickReporter:
    """Closes each tick: its metrics, rank 0's checkpoint, the snapshot to every rank's callback."""

    state: TrainingState
    train: TrainConfig
    world_size: int
    diagnose: TrainingDiagnostics | None
    tick_diagnostics: Callable[[TrainingState], dict[str, float]] | None
    on_snapshot: Callable[[Snapshot], None] | None
    checkpoints: _Checkpoints | None  # None on ranks > 0
    result: TrainResult

    def close(self, tick: _Tick, *, write_checkpoint: bool, is_final: bool) -> None:
        state = self.state
        # 1. reduce and check the statistics first: a NaN/Inf raises before any checkpoint holds it
        metrics = _reduce_tick(tick, self.world_size)
        metrics.update(_progress_metrics(tick, state, self.train))
        if self.diagnose is not None and tick.pending:
            metrics.update(self.diagnose(state, metrics))  # from reduced metrics and G_ema: same on every rank
        if self.tick_diagnostics is not None:
            metrics.update(self.tick_diagnostics(state))
        # 2. rank 0 writes the checkpoint; every rank reports the snapshot (the same number of times)
        ckpt = None
        if write_checkpoint and self.checkpoints is not None:
            ckpt = self.result.checkpoint_dir = self.checkpoints.write(state, metrics)
        snap = Snapshot(state.step, state.images_seen, metrics, ckpt, is_final)
        self.result.last_snapshot = snap
        self.result.history.append({"step": state.step, "kimg": state.kimg, **metrics})
        if self.on_snapshot is not None:
            self.on_snapshot(snap)


def format_tick(s: Snapshot, total_steps: int) -> str:
    """One progress line: step, kimg, paper-notation losses and D outputs (for rpgan: how often and by how
    much D ranks the real of a pair above its fake), the adaptive augmentation
    probability and r_t where augmenting, rate and ETA."""
    m = s.metrics
    eta = m.get("perf/eta_s", float("nan"))
    eta_txt = f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta == eta else "?"
    aug = f"  aug/p {m['aug/p']:.3f}  aug/rt {m['aug/rt']:.3f}" if "aug/p" in m and "aug/rt" in m else ""
    if "D/real>fake" in m:  # rpgan: only D's ordering of real over fake means something
        d = f"P(D(x)>D(G(z))) {m['D/real>fake']:.3f}  D(x)-D(G(z)) {m['D/real-fake']:.3f}"
    else:
        d = f"D(x) {m['D/real']:.3f}  D(G(z)) {m['D/fake']:.3f}  JS~ {m['js_estimate']:.3f}"
    return (f"step {s.step:>6}/{total_steps}  kimg {s.kimg:8.1f}  loss/D {m['loss/D']:.4f}  "
            f"loss/G {m['loss/G']:.4f}  {d}{aug}  {_rate(m['perf/kimg_per_s'])}  eta {eta_txt}")


def _rate(kimg_per_s: float) -> str:
    """kimg/s, or img/s when kimg/s would print as 0.00 (slow runs: big images, one CPU)."""
    return f"kimg/s {kimg_per_s:.2f}" if kimg_per_s >= 0.005 else f"img/s {kimg_per_s * 1000:.1f}"


def train(
    config: GANConfig,
    *,
    batches: Callable[[int], Iterable] | Iterable,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    on_snapshot: Callable[[Snapshot], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: str | Path | None = None,
    checkpoint_root: str | Path | None = None,
    tick_diagnostics: Callable[[TrainingState], dict[str, float]] | None = None,
    state: TrainingState | None = None,
    diagnostics: TrainingDiagnostics | bool = True,
) -> TrainResult:
    """Run Algorithm 1 to ``config.train.total_steps`` (or until ``should_stop()``); the arguments are
    described in the module docstring. ``state`` is a prepared state to train instead of a fresh one.

    Raises NonFiniteLossError (a NaN/Inf statistic), DataExhaustedError (the batch stream ended) and
    CheckpointError (an unusable ``resume_from``).
    """
    t = config.train
    # 1. state: fresh, or resumed from a checkpoint (same code path, different counters)
    state = state if state is not None else build_training_state(config, device)
    if resume_from is not None:
        restore_training_state(state, resume_from, log_changes=rank == 0)
    diagnose = resolve_diagnostics(diagnostics, config)
    wrap = wrap_model or (lambda m: m)
    G_train, D_train = wrap(state.G), wrap(state.D)
    # 2. data: resume the stream where the checkpoint left it
    next_real = _real_minibatches(batches, state, t)
    # 3. per tick: reduced metrics, rank 0's checkpoint, a snapshot on every rank
    checkpoints = _Checkpoints(checkpoint_root, t.num_checkpoints_to_keep) if rank == 0 else None
    reporter = _TickReporter(state, t, world_size, diagnose, tick_diagnostics, on_snapshot, checkpoints,
                             TrainResult(state, None, None))
    tick = _Tick(state.step, state.images_seen)
    # 4. Algorithm 1 until total_steps (or a stop request)
    state.G.train()
    state.D.train()
    while state.step < t.total_steps:
        tick.add(train_step(state, next_real, G_train, D_train, rank, world_size))
        done = state.step >= t.total_steps
        stop = (not done) and should_stop is not None and should_stop()
        checkpoint_due = done or stop or state.step % t.checkpoint_every_steps == 0
        if checkpoint_due or state.step % t.tick_every_steps == 0:
            reporter.close(tick, write_checkpoint=checkpoint_due, is_final=done or stop)
            tick = _Tick(state.step, state.images_seen)
        if stop:
            break
    return reporter.result
