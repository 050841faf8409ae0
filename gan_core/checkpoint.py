"""A checkpoint is a directory with one plain dict of state dicts, counters, RNG states and config.

    <dir>/state.pt      G, D, G_ema, both optimisers and their lr schedules, both AMP scalers,
                        counters, RNG states, augment.adaptive's p ("augment", when adaptive)
    <dir>/config.json   the resolved GANConfig
    <dir>/summary.json  step, kimg, last metrics
    <dir>/sha256.json   size and sha256 of the three files above (written last)

Format "ganpipe-checkpoint/2" added the lr schedules ("sched_G", "sched_D"); /1 checkpoints, without
them, still load (the schedules are positioned at the saved step). Format /3 added sha256.json, so that
whether a checkpoint is intact (`verify_checkpoint`) costs one read of its files, not a model build;
checkpoints without it (/1, /2) are verified by loading them.

Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot execute code. Where the directory
is stored (local disk, S3, Ray Train's storage) is infra's business.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Collection

import torch

from .config import GANConfig, OptimizerConfig
from .errors import UserError
from .files import sha256_file
from .rng import capture_rng_state, restore_rng_state
from .training import TrainingState, build_training_state, lr_schedule

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
FILES_MANIFEST = "sha256.json"
FORMAT = "ganpipe-checkpoint/3"
_HASHED_FILES = (STATE_FILE, CONFIG_FILE, SUMMARY_FILE)
# A run's checkpoint folders: checkpoint-<step, 9 digits>[-<n>]; sorted by name = by step, then by n. The one
# naming rule: python -m gan_core's loop and Ray Train's storage (infra.train.checkpoints) both use it.
CHECKPOINT_NAME = re.compile(r"^checkpoint-\d{9}(-\d+)?$")


def checkpoint_name(step: int, taken: Collection[str] = ()) -> str:
    """``checkpoint-<step, 9 digits>``, or with ``-1``, ``-2``... the first name not in ``taken`` (a run
    resumed past damaged checkpoints, whose names its storage still lists)."""
    name = f"checkpoint-{step:09d}"
    n = 0
    while (candidate := name if n == 0 else f"{name}-{n}") in taken:
        n += 1
    return candidate


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory is missing, incomplete or does not match the configuration."""


def save_checkpoint(state: TrainingState, directory: str | os.PathLike, metrics: dict[str, float] | None = None,
                    ) -> Path:
    """Write ``state`` to ``directory`` atomically (a sibling temp dir renamed into place); sha256.json,
    the files' sizes and digests, is written last."""
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
        if state.adaptive_p is not None:  # augment.adaptive's p and r_t sums
            payload["augment"] = state.adaptive_p.state_dict()
        torch.save(payload, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(state.config.to_json())
        summary = {"step": state.step, "kimg": state.kimg, "images_seen": state.images_seen,
                   "metrics": metrics or {}, "format": FORMAT}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
        write_files_manifest(tmp)
        if directory.is_symlink():  # never replace (or delete through) a link someone put there
            raise CheckpointError(f"{directory}: a symbolic link where a checkpoint goes; refusing to replace it")
        if directory.exists():  # a checkpoint of the same step this run wrote before (a rerun): replaced whole
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def write_files_manifest(directory: str | os.PathLike) -> None:
    """(Re)write ``<directory>/sha256.json`` from the checkpoint files as they are now."""
    directory = Path(directory)
    files = {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
             for name in _HASHED_FILES}
    (directory / FILES_MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=2, sort_keys=True))


def verify_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Check that a checkpoint directory is whole and return its summary.

    With sha256.json (format /3): every file's size and sha256 against it, one read of each file.
    Without it (formats /1, /2): config.json must be a valid config and state.pt must load.

    Raises CheckpointError naming the directory and the first missing, truncated, altered or
    unreadable file.
    """
    directory = Path(directory)
    _require_complete(directory)
    if not _check_files(directory):  # no sha256.json (an older format, or a copy that lost it): load it
        read_checkpoint_config(directory)
        load_state_dict_file(directory)
    return read_summary(directory)


LEGACY_FORMATS = ("ganpipe-checkpoint/1", "ganpipe-checkpoint/2")  # written before sha256.json existed


def _check_files(directory: Path) -> bool:
    """The files against sha256.json: True if all match; False if the checkpoint has none and its
    summary names a format older than sha256.json (LEGACY_FORMATS: then it is checked by loading it).
    Raises CheckpointError naming the first file that does not match, and when sha256.json is missing
    from any other checkpoint: deleting it must not switch the integrity check off."""
    path = directory / FILES_MANIFEST
    if not path.is_file():
        fmt = _read_json(directory / SUMMARY_FILE).get("format")
        if fmt in LEGACY_FORMATS:
            return False
        raise CheckpointError(f"{path}: missing, so the checkpoint's integrity cannot be checked (its summary says "
                              f"format {fmt!r}, which always has one); the checkpoint was altered or copied "
                              "incompletely: use another checkpoint")
    if path.is_symlink() or (directory / STATE_FILE).is_symlink():
        raise CheckpointError(f"{directory}: holds a symbolic link; a checkpoint's files are plain files")
    try:
        files = json.loads(path.read_text())["files"]
        expected = {name: (int(files[name]["bytes"]), str(files[name]["sha256"])) for name in _HASHED_FILES}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    for name, (size, digest) in expected.items():
        actual = (directory / name).stat().st_size
        if actual != size:
            raise CheckpointError(f"{directory / name}: {actual} bytes where {FILES_MANIFEST} records {size} "
                                  f"(truncated or altered)")
        if sha256_file(directory / name) != digest:
            raise CheckpointError(f"{directory / name}: its sha256 differs from {FILES_MANIFEST} (altered)")
    return True


def read_checkpoint_config(directory: str | os.PathLike) -> GANConfig:
    """The checkpoint's GANConfig. Raises CheckpointError naming config.json if it is not a valid config."""
    directory = Path(directory)
    _require_complete(directory)
    path = directory / CONFIG_FILE
    try:
        return GANConfig.from_dict(_read_json(path))
    except ValueError as e:  # ConfigError: names the field and what is allowed
        raise CheckpointError(f"{path}: {e}") from None


def read_summary(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    _require_complete(directory)
    return _read_json(directory / SUMMARY_FILE)


def _read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON object; CheckpointError naming the file if it is unreadable or not an object."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise CheckpointError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{path}: a JSON object expected, got {type(table).__name__}")
    return table


def _require_complete(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    for name in (STATE_FILE, CONFIG_FILE, SUMMARY_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: incomplete checkpoint, {name} is missing")


def load_state_dict_file(directory: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    directory = Path(directory)
    _require_complete(directory)
    _check_files(directory)
    try:
        return torch.load(directory / STATE_FILE, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or tampered file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{directory / STATE_FILE}: cannot be read as a checkpoint ({reason})") from e


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
        raise _mismatch(directory, e, "the configured networks") from e
    state.step = int(payload["step"])
    state.images_seen = int(payload["images_seen"])
    if state.adaptive_p is not None and "augment" in payload:  # else p starts afresh
        state.adaptive_p.load_state_dict(payload["augment"])
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


def _mismatch(directory: str | os.PathLike, e: Exception, what: str) -> CheckpointError:
    """The one line for weights that do not fit the networks a config builds (torch's message lists every
    key: the first size mismatch or missing key is kept)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = next((ln for ln in lines[1:] if "size mismatch" in ln or "key" in ln.lower()), lines[0] if lines else "")
    return CheckpointError(f"{directory}: its weights do not match {what} ({first.rstrip('.')}; allowed: the "
                           "config the checkpoint was written with)")


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
    try:
        G.load_state_dict(payload["G_ema" if ema else "G"])
    except (RuntimeError, KeyError, ValueError) as e:  # e.g. config.json's z_dim edited, sha256.json remade
        raise _mismatch(directory, e, f"the generator its {CONFIG_FILE} builds") from e
    return G.to(device).eval().requires_grad_(False), config
