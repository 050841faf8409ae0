"""A checkpoint is a directory with one plain dict of state dicts, counters, RNG states and config.

    <dir>/state.pt      G, D, G_ema, both optimisers and their lr schedules, both AMP scalers,
                        counters, RNG states
    <dir>/config.json   the resolved GANConfig
    <dir>/summary.json  step, kimg, last metrics (written last: a directory without it is incomplete)

Format "ganpipe-checkpoint/2" added the lr schedules ("sched_G", "sched_D"); /1 checkpoints, without
them, still load (the schedules are positioned at the saved step).

Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot execute code. Where the directory
is stored (local disk, S3, Ray Train's storage) is infra's business.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import GANConfig, OptimizerConfig
from .rng import capture_rng_state, restore_rng_state
from .training import TrainingState, build_training_state, lr_schedule

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or does not match the configuration."""


def save_checkpoint(state: TrainingState, directory: str | os.PathLike, metrics: dict[str, float] | None = None,
                    ) -> Path:
    """Write ``state`` to ``directory`` atomically (a sibling temp dir renamed into place)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        payload = {
            "G": state.G.state_dict(),
            "D": state.D.state_dict(),
            "G_ema": state.G_ema.state_dict(),
            "opt_G": state.opt_G.state_dict(),
            "opt_D": state.opt_D.state_dict(),
            "sched_G": state.sched_G.state_dict(),
            "sched_D": state.sched_D.state_dict(),
            "scaler_G": state.scaler_G.state_dict(),
            "scaler_D": state.scaler_D.state_dict(),
            "step": state.step,
            "images_seen": state.images_seen,
            "rng": capture_rng_state(),
        }
        torch.save(payload, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(state.config.to_json())
        summary = {"step": state.step, "kimg": state.kimg, "images_seen": state.images_seen,
                   "metrics": metrics or {}, "format": "ganpipe-checkpoint/2"}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_checkpoint_config(directory: str | os.PathLike) -> GANConfig:
    directory = Path(directory)
    _require_complete(directory)
    return GANConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))


def read_summary(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    _require_complete(directory)
    return json.loads((directory / SUMMARY_FILE).read_text())


def _require_complete(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    for name in (STATE_FILE, CONFIG_FILE, SUMMARY_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: incomplete checkpoint, {name} is missing")


def load_state_dict_file(directory: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    directory = Path(directory)
    _require_complete(directory)
    try:
        return torch.load(directory / STATE_FILE, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or tampered file
        raise CheckpointError(f"{directory / STATE_FILE}: cannot be read as a checkpoint ({e})") from e


def restore_training_state(state: TrainingState, directory: str | os.PathLike, *, restore_rng: bool = True,
                           log_changes: bool = True) -> TrainingState:
    """Load a checkpoint into an existing state whose configuration builds the same networks.

    The rule for the optimisers: the configuration of ``state`` is the request. Its d_optim and g_optim
    settings (lr, beta1, beta2) apply after the resume, whatever the checkpoint's were and whatever
    train.lr_rampdown is; the checkpoint's Adam moments and per-parameter step counts are kept. Each lr
    schedule resumes at the checkpoint's step: lr = optim.lr * lr_scale(config.train, step). With an
    unchanged configuration the run continues bitwise as if never interrupted. Each changed setting is
    logged once (a WARNING on ``gan_core.checkpoint`` naming the field, the checkpoint's value and the
    new one) unless ``log_changes`` is False (e.g. on ranks > 0). Checkpoints written before the lr
    schedules were saved (format /1) load the same way.

    Raises CheckpointError if the directory is incomplete or unreadable, if the networks or optimiser
    states do not fit, or if a saved schedule's step disagrees with the step counter.
    """
    payload = load_state_dict_file(directory, state.device)
    try:
        state.G.load_state_dict(payload["G"])
        state.D.load_state_dict(payload["D"])
        state.G_ema.load_state_dict(payload["G_ema"])
        state.opt_G.load_state_dict(payload["opt_G"])
        state.opt_D.load_state_dict(payload["opt_D"])
        state.scaler_G.load_state_dict(payload["scaler_G"])
        state.scaler_D.load_state_dict(payload["scaler_D"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{directory}: does not match the configured networks ({e})") from e
    state.step = int(payload["step"])
    state.images_seen = int(payload["images_seen"])
    # the schedules after the optimiser states: the loaded param groups carry the checkpoint's lr and
    # betas, which the config's replace (the rule above)
    cfg = state.config
    state.sched_G = _resume_schedule(directory, payload.get("sched_G"), state.opt_G, cfg.g_optim, state)
    state.sched_D = _resume_schedule(directory, payload.get("sched_D"), state.opt_D, cfg.d_optim, state)
    if log_changes:
        for line in _optimizer_changes(_saved_config_table(directory), cfg):
            log.warning("resume from %s: %s", directory, line)
    if restore_rng:
        restore_rng_state(payload["rng"])
    return state


def _resume_schedule(directory: str | os.PathLike, saved: dict[str, Any] | None, opt: torch.optim.Optimizer,
                     optim: OptimizerConfig, state: TrainingState) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule rebuilt at the saved position (``saved["last_epoch"]``; the step counter in a /1
    checkpoint, where ``saved`` is None), with the config's base rate and betas.

    Rebuilt rather than loaded with ``load_state_dict``: the rest of the saved state is the checkpoint's
    base rates, which the rule replaces, and values derived from them (the last lr), which would be stale.
    """
    step = state.step if saved is None else int(saved["last_epoch"])
    if step != state.step:
        raise CheckpointError(f"{directory}: an lr schedule is at step {step} but the counters at step "
                              f"{state.step}; the checkpoint is inconsistent")
    return lr_schedule(opt, optim, state.config.train, step)


def _saved_config_table(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json as a plain table: read, not validated, so an older config still resumes."""
    try:
        return json.loads((Path(directory) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _optimizer_changes(saved_config: dict[str, Any], config: GANConfig) -> list[str]:
    """One line per optimiser setting that ``config`` changes from ``saved_config`` (a checkpoint's
    config.json table), e.g. "d_optim.lr 0.001 -> 0.0005 (the config's value applies; Adam moments kept)".
    Settings the table lacks are not reported."""
    lines = []
    for section in ("d_optim", "g_optim"):
        saved = saved_config.get(section) or {}
        for name in ("lr", "beta1", "beta2"):
            old, new = saved.get(name), getattr(getattr(config, section), name)
            if old is not None and old != new:
                lines.append(f"{section}.{name} {old} -> {new} (the config's value applies; Adam moments kept)")
    return lines


def load_training_state(directory: str | os.PathLike, device: str | torch.device = "cpu") -> TrainingState:
    """Rebuild the networks from the checkpoint's own config and load every state."""
    state = build_training_state(read_checkpoint_config(directory), device)
    return restore_training_state(state, directory)


def load_generator(directory: str | os.PathLike, device: str | torch.device = "cpu", *, ema: bool = True):
    """(G_ema or G in eval mode, config) from a checkpoint, for sampling and evaluation."""
    from .networks import build_generator

    config = read_checkpoint_config(directory)
    payload = load_state_dict_file(directory, device)
    G = build_generator(config)
    G.load_state_dict(payload["G_ema" if ema else "G"])
    return G.to(device).eval().requires_grad_(False), config
