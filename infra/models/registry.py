"""The generator in the MLflow model registry, and the ``champion`` alias.

    reg = register_generator(checkpoint_dir, "ganpipe-digits", run_id=run_id, normalisation=Normalisation(1/8, -1))
    # -> logs G_ema as a pyfunc (infra/models/generator_model.py, models-from-code), registers a new version,
    #    tags it, evaluates it and moves @champion only if it beats the current champion (under a
    #    promotion lock, so registrations racing each other end on the best of them).

    G = mlflow.pyfunc.load_model("models:/ganpipe-digits@champion")
    G.predict(z)                                              # z float32 (n, z_dim)
    G.predict(None, params={"num_samples": 16, "seed": 0})    # seed-addressed

Every version carries the tags ``metric.<name>``, ``eval.primary`` / ``eval.value`` /
``eval.higher_is_better`` / ``eval.evaluator``, ``dataset.name``, ``dataset.version``,
``training_run_id``, ``checkpoint_uri``, ``weights_sha256``, ``code.version`` and ``champion.decision``.
The logged model also holds the ``torch.export`` program and the ONNX file (``export/``), checked
against eager, with outputs in the same data units as ``predict``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gan_core
from gan_core.checkpoint import load_generator, read_summary
from gan_core.config import GANConfig
from gan_core.data import Normalisation
from gan_core.errors import UserError
from gan_core.files import sha256_file
from gan_core.sampling import labels_for_range, latents_for_range

from infra.base import storage
from infra.base.settings import DEFAULT_EXPERIMENT, code_version, mlflow_client
from infra.train import tracking
from infra.models.evaluation import Evaluation, Evaluator, default_evaluator
from infra.models.generator_model import FORMAT as MODEL_FORMAT
from infra.models.generator_model import code_files

log = logging.getLogger(__name__)

CHAMPION = "champion"
PYFUNC_FILE = Path(__file__).with_name("generator_model.py")
LOGGED_MODEL_NAME = "generator"
PROMOTION_LOCK_SUFFIX = ".promotion-lock"  # the registered model that exists while an alias of <name> moves
PROMOTION_LOCK_TAG = "ganpipe.lock.holder"  # host:pid:random of the holder
PROMOTION_LOCK_WAIT_S = 120.0  # a promotion holds the lock for three registry calls (well under a second)
PROMOTION_LOCK_STALE_S = 60.0  # a lock this old was left by a holder that died; it is broken


class RegistryError(UserError, RuntimeError):
    """The registry cannot do what was asked (unknown run, no checkpoint, ...); one-line message."""


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    model_uri: str  # models:/<name>/<version>
    logged_model_uri: str  # models:/<model_id>
    evaluation: Evaluation
    promoted: bool
    champion_version: str  # the version holding the alias after this call
    decision: str  # why the alias moved or stayed
    exports: dict[str, str]  # format -> path inside the model ("export/generator.pt2"), or skip reason


def model_signature(config: GANConfig):
    """Outputs x float32 (-1, *shape); params num_samples, seed, start (long, default 0) and truncation
    (double, default 0.0: off; psi > 0 for the truncation trick); for a class-conditional G also label
    (long, default -1: class-balanced; k for class k only). No input schema:
    MLflow's tensor schema makes every input required (so ``predict(None, params=...)`` would fail) and
    quotes the whole array in its dtype error; the pyfunc checks z itself (float32 (n, z_dim), one-line
    errors) and the expected z is in the model's metadata (``ganpipe.z_dim``) and its input example."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    params = [ParamSpec("num_samples", "long", 0), ParamSpec("seed", "long", 0), ParamSpec("start", "long", 0),
              ParamSpec("truncation", "double", 0.0)]
    if config.network.conditional:  # the class: k in [0, K), or -1 for class-balanced samples
        params.append(ParamSpec("label", "long", -1))
    return ModelSignature(
        inputs=None,
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *config.data.shape), "x")]),
        params=ParamSchema(params),
    )


def _code_sha256(code_dir: Path) -> dict[str, str]:
    """{path under code/ ("gan_core/config.py"): sha256} of the engine shipped in ``code_dir``: the
    model format's own listing and checksum (infra.models.generator_model), which loading checks."""
    return {rel: sha256_file(p) for rel, p in code_files(code_dir).items()}


def log_generator(G_ema: nn.Module, config: GANConfig, *, run_id: str,
                  normalisation: Normalisation = Normalisation(), exports: dict[str, Path] | None = None,
                  tags: dict[str, str] | None = None, name: str = LOGGED_MODEL_NAME):
    """Log G_ema as a models-from-code pyfunc (no pickles) from run ``run_id``; returns
    (MLflow's ``ModelInfo``, {artifact key: sha256}).

    ``exports``: extra files (``{"pt2": path, "onnx": path}``) stored next to the weights and covered by
    the same sha256 check. The engine (``code/gan_core``) is a copy of this process's ``gan_core``
    without ``__pycache__``; each of its files' sha256 is recorded too (``code_sha256``), and the pyfunc
    imports exactly those bytes under a version-private name (see infra/models/generator_model.py).
    """
    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="ganpipe-model-") as tmp:
        # 1. the two files the pyfunc needs: a weights-only state dict and the config that rebuilds G
        weights, config_file = Path(tmp) / "weights.pt", Path(tmp) / "config.json"
        torch.save({k: v.detach().cpu() for k, v in G_ema.state_dict().items()}, weights)
        config_file.write_text(config.to_json())
        artifacts = {"weights": weights, "config": config_file, **(exports or {})}
        sha = {key: sha256_file(Path(p)) for key, p in artifacts.items()}
        # the engine that ships: a copy, so that what is hashed is what MLflow copies into code/
        code_dir = Path(tmp) / "code"
        shutil.copytree(Path(gan_core.__file__).parent, code_dir / "gan_core",
                        ignore=shutil.ignore_patterns("__pycache__"))
        model_config = {"format": MODEL_FORMAT, "sha256": sha, "code_sha256": _code_sha256(code_dir),
                        "normalisation": normalisation.to_dict(), "device": "cpu"}
        metadata = {"ganpipe": {"format": MODEL_FORMAT, "z_dim": config.network.z_dim,
                                "sample_shape": list(config.data.shape), "normalisation": normalisation.to_dict(),
                                "dataset": config.data.name,
                                "num_classes": config.data.num_classes if config.network.conditional else 0}}
        # 2. models-from-code: MLflow copies generator_model.py and gan_core/ into the model
        example = latents_for_range(0, 0, 2, config.network.z_dim).numpy()
        if config.network.conditional:  # latents and one class label each
            example = {"z": example, "label": labels_for_range(0, 2, config.data.num_classes).numpy()}
        # the logged model lives in the run's experiment (Model.log alone would pick the default one)
        client = mlflow_client()
        logged = client.create_logged_model(client.get_run(run_id).info.experiment_id, name=name,
                                            source_run_id=run_id, tags=tags)
        info = Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, flavor_name="pyfunc.ModelFromCode", run_id=run_id,
            model_id=logged.model_id, python_model=str(PYFUNC_FILE),
            artifacts={k: str(p) for k, p in artifacts.items()},
            code_paths=[str(code_dir / "gan_core")], model_config=model_config, metadata=metadata,
            signature=model_signature(config), input_example=example,
            # explicit requirements: inferring them would load the model once more in a subprocess
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                              f"numpy=={np.__version__}"],
        )
    return info, sha


def resolve_checkpoint(ref: str) -> tuple[str, str | None]:
    """(checkpoint URI or directory, training run id or None) from a run id or a checkpoint reference.

    A checkpoint named directly must be intact (gan_core.checkpoint.verify_checkpoint). For a run id,
    the run's last checkpoint (tag ``ganpipe.last_checkpoint``) or, when that one is damaged, the
    newest intact checkpoint beside it, with one warning line on stderr naming both. Raises RegistryError (one
    line, naming the damaged file) when there is none.
    """
    import sys

    from gan_core.checkpoint import CheckpointError, verify_checkpoint

    from infra.train.checkpoints import local_directory, newest_intact
    from infra.base.console import say

    if not str(ref).strip():  # Path('') is the current folder: nobody asks for it by typing ''
        raise RegistryError("checkpoint reference: got an empty string; allowed: a checkpoint folder, an s3:// or "
                            "runs:/ URI, or an MLflow run id")
    if Path(ref).is_dir() or "://" in ref:
        uri = str(Path(ref).resolve()) if Path(ref).is_dir() else ref
        try:
            if storage.is_s3(uri) or not _is_remote(uri):
                with local_directory(storage.resolve(uri)) as d:
                    verify_checkpoint(d)
        except CheckpointError as e:
            raise RegistryError(f"checkpoint {uri} is damaged: {e}") from None
        return uri, None
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    try:
        run = client.get_run(ref)
    except MlflowException as e:
        if store_unreachable(e):
            raise RegistryError(f"the MLflow tracking store {client.tracking_uri} cannot be reached "
                                f"({storage.first_line(e)}); retry once it is back") from None
        if not _is_not_found(e):
            raise RegistryError(f"the MLflow tracking store {client.tracking_uri} refused run {ref!r} "
                                f"({storage.first_line(e)})") from None
        raise RegistryError(f"{ref!r} is neither a checkpoint directory nor an MLflow run id ({e.message})") from None
    uri = run.data.tags.get(tracking.TAG_LAST_CHECKPOINT)
    if not uri:
        raise RegistryError(f"MLflow run {ref} has no checkpoint recorded (tag {tracking.TAG_LAST_CHECKPOINT}); "
                            f"pass the checkpoint directory instead")
    if _is_remote(uri) and not storage.is_s3(uri):
        return uri, ref  # an MLflow artifact URI: verified when loaded
    try:
        _, used, _ = newest_intact(storage.resolve(uri), verify_checkpoint,
                                   warn=lambda line: say(f"warning: {line}", sys.stderr))
    except CheckpointError as e:
        raise RegistryError(f"MLflow run {ref}: {e}") from None
    return used.uri, ref


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


# what MLflow's REST client and SQL store say when the store itself cannot be reached (requests' and
# SQLite's wording inside the MlflowException), as opposed to an answer refusing the request
_UNREACHABLE = re.compile(r"Max retries exceeded|Connection refused|Failed to establish a new connection|"
                          r"timed out|Temporary failure in name resolution|unable to open database file", re.I)


def store_unreachable(e) -> bool:
    """Whether an MlflowException says that the tracking/registry store did not answer (retry later), not
    that it refused the request (fix the request)."""
    return (getattr(e, "error_code", "") == "TEMPORARILY_UNAVAILABLE"
            or _UNREACHABLE.search(str(getattr(e, "message", e))) is not None)


def _is_not_found(e) -> bool:
    return getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _local_checkpoint(uri: str, tmp: str) -> Path:
    if Path(uri).is_dir():
        return Path(uri)
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))


def _version_tags(evaluation: Evaluation, values: dict[str, str]) -> dict[str, str]:
    tags = {f"metric.{k}": repr(float(v)) for k, v in evaluation.metrics.items()}
    tags.update({"eval.primary": evaluation.primary, "eval.value": repr(evaluation.value),
                 "eval.higher_is_better": str(evaluation.higher_is_better).lower(),
                 **{f"eval.{k}": str(v) for k, v in evaluation.details.items()}})
    tags.update(values)
    return tags


def champion_value(name: str, alias: str = CHAMPION) -> tuple[str, float, str, bool] | None:
    """(version, primary metric value, metric name, higher_is_better) of the alias holder, or None."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    t = mv.tags
    try:
        return str(mv.version), float(t["eval.value"]), t["eval.primary"], t["eval.higher_is_better"] == "true"
    except (KeyError, ValueError):
        return str(mv.version), float("nan"), t.get("eval.primary", "?"), True


@contextlib.contextmanager
def promotion_lock(name: str, *, wait_s: float = PROMOTION_LOCK_WAIT_S, stale_s: float = PROMOTION_LOCK_STALE_S):
    """Hold the promotion lock of model ``name`` (any alias) across threads, processes and hosts.

    MLflow has no compare-and-set on aliases, so a check-then-set promotion races (a worse version won
    6 of 12 concurrent rounds). Creating a registered model is atomic on every registry backend (a
    unique name in its database, behind a tracking server too), so the lock is the registered model
    ``<name>.promotion-lock``: whoever creates it holds it, the others poll (with jitter) until it is
    deleted. A file lock would serialise only processes that share a disk; this works wherever the
    registry is reachable, with the registry's own permissions. A lock older than ``stale_s`` (its
    holder died within the few calls it is held for) is broken with a warning; its age is read against
    this machine's clock, so hosts must agree to within a fraction of ``stale_s``. Raises RegistryError
    after ``wait_s`` without the lock.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    lock = f"{name}{PROMOTION_LOCK_SUFFIX}"
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline, delay = time.monotonic() + wait_s, 0.02
    while True:
        try:
            client.create_registered_model(lock, tags={PROMOTION_LOCK_TAG: token},
                                           description=f"held while the alias of {name} moves; safe to "
                                                       f"delete when no registration is running")
            break
        except MlflowException as e:
            # RESOURCE_DOES_NOT_EXIST: the name was taken, then released before MLflow's SQL store read
            # the holder back to word its "already exists" error; the lock is free again: wait and retry
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        holder = _lock_holder(client, lock)
        if holder is not None and time.time() - holder[1] > stale_s:
            log.warning("breaking the promotion lock %s of %s: held by %s for %.0f s (more than %.0f s)",
                        lock, name, holder[0], time.time() - holder[1], stale_s)
            _delete_lock(client, lock, holder[0])
            continue
        if time.monotonic() > deadline:
            raise RegistryError(f"could not move an alias of {name}: the promotion lock (registered model "
                                f"{lock!r}, held by {holder[0] if holder else '?'}) stayed taken for {wait_s:.0f} s")
        time.sleep(delay * (0.5 + random.random()))
        delay = min(2 * delay, 0.5)
    try:
        yield
    finally:
        if not _delete_lock(client, lock, token):
            log.warning("the promotion lock %s of %s was taken over while held by %s", lock, name, token)


def _lock_holder(client, lock: str) -> tuple[str, float] | None:
    """(holder token, creation time in seconds since the epoch) of the lock model, or None if gone."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(lock)
    except MlflowException:
        return None
    return rm.tags.get(PROMOTION_LOCK_TAG, "?"), rm.creation_timestamp / 1000


def _delete_lock(client, lock: str, token: str) -> bool:
    """Delete the lock model if ``token`` holds it; whether it did."""
    from mlflow.exceptions import MlflowException

    holder = _lock_holder(client, lock)
    if holder is None or holder[0] != token:
        return False
    try:
        client.delete_registered_model(lock)
    except MlflowException:
        return False  # deleted meanwhile
    return True


def promote_if_better(name: str, version: str, evaluation: Evaluation, *, alias: str = CHAMPION,
                      force: bool = False) -> tuple[bool, str, str]:
    """Point ``alias`` at ``version`` if it strictly beats the holder (ties keep the holder).

    Returns (promoted, champion version afterwards, decision). A holder scored with another metric is
    not comparable: it keeps the alias unless ``force``. The read, the comparison and the move happen
    under `promotion_lock`, so concurrent registrations are decided one after the other and the alias
    ends on the best of them. Raises RegistryError if the lock cannot be had.
    """
    with promotion_lock(name):
        current = champion_value(name, alias)
        if current is None:
            decision = f"promoted: first {alias} ({evaluation.primary}={evaluation.value:.6g})"
        elif force:
            decision = f"promoted: forced over v{current[0]}"
        else:
            cur_version, cur_value, cur_metric, _ = current
            if cur_version == str(version):
                return True, cur_version, f"already {alias}"
            if cur_metric != evaluation.primary:
                return False, cur_version, (f"kept v{cur_version}: it was scored with {cur_metric}, not "
                                            f"{evaluation.primary} (re-register with force to replace it)")
            if not evaluation.beats(cur_value):
                better = "higher" if evaluation.higher_is_better else "lower"
                return False, cur_version, (f"kept v{cur_version}: {evaluation.primary}={evaluation.value:.6g} "
                                            f"is not {better} than {cur_value:.6g}")
            decision = f"promoted over v{cur_version}: {evaluation.primary} {cur_value:.6g} -> {evaluation.value:.6g}"
        mlflow_client().set_registered_model_alias(name, alias, str(version))
    return True, str(version), decision


def _registration_run(client, experiment: str, checkpoint: str, evaluation: Evaluation) -> str:
    """A run that records a registration made from a bare checkpoint (no training run to attach to)."""
    from mlflow.entities import Metric

    exp_id = tracking.ensure_experiment(client, experiment)
    run = client.create_run(exp_id, run_name="register", tags={"ganpipe.kind": "registration",
                                                               "checkpoint_uri": checkpoint})
    client.log_batch(run.info.run_id, metrics=[Metric(f"eval/{k}", float(v), 0, 0)
                                               for k, v in evaluation.metrics.items()])
    return run.info.run_id


def _version_values(checkpoint: str, summary: dict, run_id: str | None, run_params: dict[str, str],
                    config: GANConfig, normalisation: Normalisation, dataset_name: str | None,
                    dataset_version: str | None) -> dict[str, str]:
    """The provenance tags of a new version: dataset, training run, checkpoint, normalisation, code."""
    return {
        "dataset.name": dataset_name or run_params.get(tracking.PARAM_DATASET_NAME) or config.data.name,
        "dataset.version": dataset_version or run_params.get(tracking.PARAM_DATASET_VERSION) or "",
        "training_run_id": run_id or "", "checkpoint_uri": checkpoint,
        "checkpoint.step": str(summary.get("step", "")), "checkpoint.kimg": str(summary.get("kimg", "")),
        "normalisation": json.dumps(normalisation.to_dict()), "code.version": code_version(),
    }


def _log_eval_to_training_run(client, run_id: str, evaluation: Evaluation, summary: dict) -> None:
    """The training run shows how its generator scored (best effort: the version is registered)."""
    from mlflow.entities import Metric

    try:
        step = int(summary.get("images_seen", 0))
        client.log_batch(run_id, metrics=[Metric(f"eval/{k}", float(v), 0, step) for k, v in evaluation.metrics.items()])
    except Exception as e:
        log.warning("could not log evaluation metrics to run %s: %s", run_id, e)


def register_generator(checkpoint: str | Path, name: str, *, run_id: str | None = None,
                       evaluator: Evaluator | None = None, normalisation: Normalisation | None = None,
                       dataset_name: str | None = None, dataset_version: str | None = None,
                       alias: str = CHAMPION, promote: bool = True, force: bool = False,
                       export_formats: tuple[str, ...] = ("pt2", "onnx"), experiment: str = DEFAULT_EXPERIMENT,
                       ) -> Registration:
    """Log a checkpoint's G_ema, register it as a new version of ``name``, evaluate it, maybe promote it.

    With ``run_id`` the model is logged from that training run, and the normalisation and dataset
    default to what the run recorded; without it (e.g. tracking was down during training) a short
    ``register`` run in ``experiment`` records the registration. ``evaluator`` defaults to
    `default_evaluator()`. MLflow's URIs are its own (MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI).
    """
    import mlflow

    from infra.models.export import export_generator

    client = mlflow_client()
    run_params: dict[str, str] = client.get_run(run_id).data.params if run_id is not None else {}
    if normalisation is None:
        normalisation = Normalisation(float(run_params.get(tracking.PARAM_SCALE, 1.0)),
                                      float(run_params.get(tracking.PARAM_OFFSET, 0.0)))
    with tempfile.TemporaryDirectory(prefix="ganpipe-register-") as tmp:
        # 1. the checkpoint's G_ema and its config
        ckpt_dir = _local_checkpoint(str(checkpoint), tmp)
        G, config = load_generator(ckpt_dir)
        summary = read_summary(ckpt_dir)
        values = _version_values(str(checkpoint), summary, run_id, run_params, config, normalisation, dataset_name,
                                 dataset_version)
        # 2. evaluate (the same fixed latents for every version)
        evaluation = (evaluator or default_evaluator())(G, config)
        # 3. export for non-Python consumers, checked against eager; shipped inside the model
        exported = export_generator(G, Path(tmp) / "export", normalisation=normalisation,
                                    formats=export_formats) if export_formats else {}
        # 4. log the model from the training run (or a registration run)
        log_run_id = run_id or _registration_run(client, experiment, str(checkpoint), evaluation)
        info, sha = log_generator(G, config, normalisation=normalisation, run_id=log_run_id,
                                  exports={fmt: r.path for fmt, r in exported.items() if r.ok},
                                  tags={k: v for k, v in values.items() if v})
        if run_id is None:
            client.set_terminated(log_run_id)
    # 5. register a version with its tags
    values["weights_sha256"] = sha["weights"]
    for fmt, r in exported.items():
        values[f"export.{fmt}"] = f"ok (max abs diff {r.max_abs_diff:.2g})" if r.ok else f"skipped: {r.skipped_reason}"
    mv = mlflow.register_model(info.model_uri, name, tags=_version_tags(evaluation, values))
    if run_id is not None:
        _log_eval_to_training_run(client, run_id, evaluation, summary)
    registration = Registration(
        name=name, version=str(mv.version), model_uri=f"models:/{name}/{mv.version}",
        logged_model_uri=info.model_uri, evaluation=evaluation, promoted=False, champion_version="",
        decision="not considered (promote=False)",
        exports={f: (f"artifacts/{Path(r.path).name}" if r.ok else f"skipped: {r.skipped_reason}")
                 for f, r in exported.items()})
    # 6. the champion decision (a caller with more steps to run promotes last: decide_champion)
    registration = decide_champion(registration, alias=alias, force=force, promote=promote)
    log.info("registered %s v%s; %s", name, mv.version, registration.decision)
    return registration


def decide_champion(registration: Registration, *, alias: str = CHAMPION, force: bool = False,
                    promote: bool = True) -> Registration:
    """The champion decision for a registered version (promote_if_better, or none when not `promote`),
    recorded on the version as the tag ``champion.decision`` whichever way it goes. Returns the
    registration with promoted, champion_version and decision filled in. A pipeline calls it as its
    last step, so that a run that fails after registering leaves the alias where it was."""
    name, version = registration.name, registration.version
    if promote:
        promoted, champion, decision = promote_if_better(name, version, registration.evaluation, alias=alias,
                                                         force=force)
    else:
        current = champion_value(name, alias)
        promoted, champion, decision = False, current[0] if current else "", "not considered (promote=False)"
    mlflow_client().set_model_version_tag(name, version, "champion.decision", decision)
    return dataclasses.replace(registration, promoted=promoted, champion_version=champion, decision=decision)
