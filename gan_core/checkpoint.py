"""A checkpoint is a directory with one plain dict of state dicts, counters, RNG states and config.

    <dir>/state.pt      G, D, G_ema, both optimisers, both AMP scalers, counters, RNG states
    <dir>/config.json   the resolved GANConfig
    <dir>/summary.json  step, kimg, last metrics (written last: a directory without it is incomplete)

Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot execute code. Where the directory
is stored (local disk, S3, Ray Train's storage) is infra's business.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import GANConfig
from .rng import capture_rng_state, restore_rng_state
from .training import TrainingState, build_training_state

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
            "scaler_G": state.scaler_G.state_dict(),
            "scaler_D": state.scaler_D.state_dict(),
            "step": state.step,
            "images_seen": state.images_seen,
            "rng": capture_rng_state(),
        }
        torch.save(payload, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(state.config.to_json())
        summary = {"step": state.step, "kimg": state.kimg, "images_seen": state.images_seen,
                   "metrics": metrics or {}, "format": "ganpipe-checkpoint/1"}
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


def restore_training_state(state: TrainingState, directory: str | os.PathLike, *,
                           restore_rng: bool = True) -> TrainingState:
    """Load a checkpoint into an existing state built from the same configuration."""
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
    if restore_rng:
        restore_rng_state(payload["rng"])
    return state


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
