"""The whole pipeline as one Prefect flow: stage -> train -> evaluate -> register -> sample a preview.

    gan_pipeline(preset="digits")                                   # the embedded default
    gan_pipeline(config={...}, overrides=["train.total_steps=500"])  # the TOML tree as a dict

Each step is a named Prefect step, so the UI shows its state, logs and timing:

1. `stage-dataset` (sub-flow, pipelines.stage): content-addressed and cached; staging the same input
   again writes nothing ("already committed" in the log).
2. `start-ray`, `train`: Ray Train via infra.train.ray_train. The run's name is deterministic, so a rerun
   after a failure resumes from the latest checkpoint instead of starting over.
3. `load-real-data`, `fetch-checkpoint`, `evaluate`: gan_core.evaluate on G_ema, every metric beside
   its real-vs-real floor.
4. `register`: a new MLflow model version (the alias does not move yet).
5. `sample-generator` (sub-flow, pipelines.sample) + `render-preview`: a preview set drawn from the
   *registered* model by the batch sampler, rendered as a grid.
6. `promote`, last: the alias (`champion`) moves only if the new version is strictly better on the
   primary metric (ties keep the holder); a run that fails before it leaves the alias where it was.
7. `publish-report`: a markdown artifact with the metrics table, the training curves and the sample
   strip (the training run's MLflow artifacts), the grid, the version and alias, and the MLflow run link.

Retries sit on I/O steps only (reading data and checkpoints, publishing); training has Ray's own
fault tolerance, and registering twice would create two versions. A retry of the flow run (after a late
failure: sampling, the report) does not redo a finished training, evaluation or registration: their
results are persisted and cached for the flow run (`once_per_flow_run`); staging and sampling are no-ops
once committed. A new flow run does the work afresh. No maths here: the steps call infra.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE, RUN_ID, TASK_SOURCE

from infra.base.console import say
from pipelines.settings import Settings, resolve_settings
from pipelines.stage import STORAGE_RETRIES, STORAGE_RETRY_DELAYS_S, retry_on_storage_io, stage_dataset

FLOW_NAME = "gan-pipeline"
MAX_INLINE_PNG_BYTES = 512 * 1024  # larger pictures are linked, not embedded in the markdown report
# A ratio to the real-vs-real floor is printed only when the floor is at least this fraction of the value:
# a floor near zero (0.039 against an FD of 27) is sampling noise, and FD / floor = 696 meant nothing.
MIN_FLOOR_FRACTION = 0.01

io_task = dict(retries=STORAGE_RETRIES, retry_delay_seconds=STORAGE_RETRY_DELAYS_S,
               retry_condition_fn=retry_on_storage_io, cache_policy=NO_CACHE, persist_result=False)
compute_task = dict(cache_policy=NO_CACHE, persist_result=False)
# keyed on the flow run and the step's code: a retried flow run reuses the step's persisted result
once_per_flow_run = dict(cache_policy=RUN_ID + TASK_SOURCE, persist_result=True)


class RegistrationFailed(RuntimeError):
    """The register step could not reach the MLflow store; one line naming the checkpoint and the command
    that registers it later."""


# -- steps ------------------------------------------------------------------------------------------

@task(name="start-ray", **compute_task)
def start_ray(address: str) -> None:
    """Connect to the cluster (`[cluster] address`, else RAY_ADDRESS) or start Ray on this host."""
    from infra.base.ray_cluster import ensure_ray

    ensure_ray(address)


@task(name="train", **once_per_flow_run)
def train(settings: Settings, dataset_uri: str):
    """Train (or resume) on Ray Train; returns infra.train.ray_train.TrainOutcome."""
    from infra.train import ray_train
    from infra.train.plan import TrackingSpec

    tracking = TrackingSpec(experiment=settings.tracking.experiment) if settings.tracking.enabled else None
    cluster = replace(settings.cluster, storage_path=settings.run_storage)
    logger = get_run_logger()
    # the run's tick lines in this task's log (Prefect's UI), while Ray Train runs
    outcome = ray_train.launch_training(settings.gan, dataset_uri, cluster, tracking=tracking,
                                        on_progress=logger.info)
    if outcome.checkpoint_uri is None:
        raise RuntimeError(f"training run {outcome.run_name} finished without a checkpoint")
    logger.info(f"trained {outcome.run_name}: step {outcome.metrics.get('step')}, "
                          f"checkpoint {outcome.checkpoint_uri}")
    return outcome


@task(name="load-real-data", **io_task)
def load_real_data(dataset_uri: str):
    """The staged examples in model units (what G outputs) and their labels, for evaluation."""
    from infra.data.datasets import load_numpy, open_dataset

    x, labels = load_numpy(dataset_uri, normalised=True)
    return x, labels, open_dataset(dataset_uri).manifest


@task(name="fetch-checkpoint", **io_task)
def fetch_checkpoint(checkpoint_uri: str, scratch: str) -> str:
    """A local directory holding the checkpoint (copied from S3 into `scratch` when it lives there)."""
    from infra.base import storage
    from infra.train.checkpoints import fetch_checkpoint as fetch

    if Path(checkpoint_uri).is_dir():
        return checkpoint_uri
    return str(fetch(storage.resolve(checkpoint_uri), Path(scratch) / "checkpoint"))


@task(name="evaluate", **once_per_flow_run)
def evaluate(checkpoint_dir: str, real_x, real_labels, num_samples: int, seed: int,
             inception: str = "") -> tuple[dict[str, float], str]:
    """gan_core.evaluate on the checkpoint's G_ema: (metrics and, under floor/, real vs real; the feature
    space's name, e.g. the Inception weights' file and SHA-256 prefix). `inception`: `[evaluation] inception`."""
    from gan_core.checkpoint import load_generator
    from gan_core.evaluate import evaluate_generator, feature_space, format_report
    from infra.base.settings import cache_dir

    G, config = load_generator(checkpoint_dir)
    extractor, classifier = feature_space(config, inception=inception or None, cache_dir=cache_dir())
    metrics = evaluate_generator(G, config, real_x, real_labels, num_samples=num_samples or None, seed=seed,
                                 feature_extractor=extractor, classifier=classifier, progress=say)
    get_run_logger().info(format_report(metrics, extractor.name))
    return metrics, extractor.name


@task(name="register", **once_per_flow_run)
def register(settings: Settings, checkpoint_uri: str, mlflow_run_id: str | None, metrics: dict[str, float],
             manifest: dict, features: str = ""):
    """A new version of the registered model; the alias moves only for a strictly better version.
    `features`: the evaluation's feature space (a version tag, eval.features). An MLflow store that does
    not answer fails the step with one line (RegistrationFailed) naming the checkpoint, which stays where
    it is, and the command that registers it later."""
    from mlflow.exceptions import MlflowException
    from infra.models.evaluation import evaluation_of
    from gan_core.data import Normalisation
    from infra.models.registry import register_generator, store_unreachable
    from infra.base.storage import first_line

    # the evaluate step already scored this G_ema: hand the registry that result instead of recomputing it
    evaluation = evaluation_of(metrics, {"features": features} if features else None)
    try:
        reg = register_generator(
            checkpoint_uri, settings.model_name, run_id=mlflow_run_id, evaluator=lambda G, config: evaluation,
            normalisation=Normalisation.from_dict(manifest["normalisation"]), dataset_name=manifest["name"],
            dataset_version=manifest["version"], alias=settings.registry.alias, promote=False,  # promote: last step
            export_formats=("pt2", "onnx") if settings.registry.export else (),
            experiment=settings.tracking.experiment)
    except MlflowException as e:
        reason = first_line(e)
        cause, when = (("the MLflow store did not answer", "once the store is back") if store_unreachable(e)
                       else ("the MLflow store refused it", "once the cause is fixed"))
        raise RegistrationFailed(
            f"registration failed, {cause} ({reason}); the checkpoint {checkpoint_uri} is "
            f"kept: `ganpipe register --run {mlflow_run_id or checkpoint_uri} --name {settings.model_name}` "
            f"registers it {when}") from None
    get_run_logger().info(f"registered {reg.model_uri}; the champion decision comes after the preview")
    return reg


@task(name="promote", **once_per_flow_run)
def promote(settings: Settings, reg):
    """The champion decision, the pipeline's last step: a run that fails before it (a preview that cannot
    be written, an interrupt) leaves the alias where it was."""
    from infra.models.registry import decide_champion

    reg = decide_champion(reg, alias=settings.registry.alias, promote=settings.registry.promote)
    get_run_logger().info(f"{reg.model_uri}: {reg.decision}")
    return reg


@task(name="render-preview", **compute_task)
def render_preview(samples_uri: str, manifest: dict, fmt: str, out_uri: str, title: str) -> str:
    """The preview set (data units) as a grid image, or a scatter plot for 2-D data, written to `out_uri`
    (a folder or s3:// prefix; with fmt "npy" the raw array too). Returns the picture's URI."""
    import numpy as np
    import torch

    from gan_core.sampling import save_image_grid, save_scatter
    from infra.base import storage
    from infra.models.batch_sampling import open_samples
    from infra.data.datasets import normalise

    _, x = open_samples(samples_uri).load_arrays()
    model_units = torch.from_numpy(np.asarray(normalise(x, manifest), dtype=np.float32))
    out = storage.resolve(out_uri)
    with tempfile.TemporaryDirectory(prefix="ganpipe-preview-") as tmp:
        files = [save_image_grid(model_units, Path(tmp) / "samples.png") if model_units.ndim == 4
                 else save_scatter(model_units, Path(tmp) / "samples.png", title=title)]
        if fmt == "npy":
            np.save(Path(tmp) / "samples.npy", x)
            files.append(Path(tmp) / "samples.npy")
        for f in files:  # local disk or S3 alike
            storage.write_bytes(out.join(Path(f).name), Path(f).read_bytes())
    uri = out.join("samples.png").uri
    get_run_logger().info(f"preview: {uri}")
    return uri


def sample_preview(model_uri: str, manifest: dict, num_samples: int, seed: int, fmt: str, out_uri: str) -> str:
    """Sample the *registered* model with the batch sampler (pipelines.sample, a sub-flow: the version is
    pinned, the set is seed-addressed and committed with a manifest), then render the preview."""
    from infra.base import storage
    from infra.data import shard_writer
    from infra.base.storage import join_uri
    from pipelines.sample import sample_generator

    out = storage.resolve(out_uri)
    shard_writer.check_destination(out, None, storage.StorageError, "sampling.out")  # new, empty, or ganpipe's
    shard_writer.claim_folder(out, "ganpipe run (preview)")
    samples_uri = sample_generator(model_uri, num_samples, seed, join_uri(out_uri, "set"), fmt="parquet")
    return render_preview(samples_uri, manifest, fmt, out_uri, f"{model_uri} (seed {seed})")


@task(name="publish-report", retries=2, retry_delay_seconds=[2, 5], cache_policy=NO_CACHE, persist_result=False)
def publish_report(summary: dict[str, Any]) -> str:
    """The run's markdown artifact in the Prefect UI."""
    key = "gan-pipeline-" + re.sub(r"[^a-z0-9-]+", "-", summary["model_name"].lower()).strip("-")
    create_markdown_artifact(key=key[:100], markdown=report_markdown(summary),
                             description=f"ganpipe run of {summary['model_name']}")
    return key[:100]


# -- the flow ---------------------------------------------------------------------------------------

# NOTE: validate_parameters=False: `settings` is the CLI's resolved object, passed as it is (pydantic would
# rebuild it); a deployment's parameters are the request (preset, config, overrides), resolved here once.
@flow(name=FLOW_NAME, validate_parameters=False)
def gan_pipeline(preset: str | None = None, config: dict[str, Any] | None = None,
                 overrides: list[str] | None = None, dry_run: bool = False,
                 settings: Settings | None = None) -> dict[str, Any]:
    """Stage, train, evaluate, register and preview a GAN; returns a summary (see `summary_lines`).

    Either `settings`, resolved by the caller (`ganpipe run`), or the request a deployment carries:
    `preset`, `config` (the TOML config tree as a dict) and `overrides` (`section.field=value` strings),
    resolved here. `dry_run` validates and returns the resolved settings only.
    """
    # NOTE (over 60 lines): the flow is its DAG, read top to bottom as the Prefect UI shows it.
    started = time.time()
    # 0. everything is validated before any work starts (once: by the caller, or here for a deployment)
    if settings is None:
        settings = resolve_settings(preset=preset, config_data=config, overrides=list(overrides or []))
    if dry_run:
        print(settings.to_toml())
        return {"dry_run": True, "settings": settings.to_dict()}
    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(name: str):
        """A console line when a step starts and one when it ends, with its duration (infra.base.console)."""
        say(f"{name} ...")
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            say(f"{name}: failed after {time.perf_counter() - t0:.1f} s")
            raise
        seconds[name] = round(time.perf_counter() - t0, 1)
        say(f"{name}: done in {seconds[name]} s")

    def timed(name: str, fn, *args, **kwargs):
        with step(name):
            return fn(*args, **kwargs)

    # 1. stage (cached: a committed version is a no-op)
    dataset_uri = timed("staging", stage_dataset, settings.source_uri, settings.storage_root,
                        settings.source.name or None, show_progress=False, **settings.staging_options())
    # 2. train (resumable by run name)
    timed("ray start-up", start_ray, settings.cluster.address)
    outcome = timed("training", train, settings, dataset_uri)
    # 3. evaluate
    with step("evaluation"), tempfile.TemporaryDirectory(prefix="ganpipe-eval-") as scratch:
        real_x, real_labels, manifest = load_real_data(dataset_uri)
        checkpoint_dir = fetch_checkpoint(outcome.checkpoint_uri, scratch)
        metrics, features = evaluate(checkpoint_dir, real_x, real_labels, settings.evaluation.num_samples,
                                     settings.evaluation.seed, settings.evaluation.inception)
    # 4. register (champion rule)
    mlflow_run_id = getattr(outcome, "mlflow_run_id", None)
    reg = timed("registration", register, settings, outcome.checkpoint_uri, mlflow_run_id, metrics, manifest,
                features)
    # 5. preview from the registered model
    out_dir = settings.preview_uri(reg.name, reg.version)
    grid = timed("sampling", sample_preview, reg.model_uri, manifest, settings.sampling.num_samples,
                 settings.sampling.seed, settings.sampling.format, out_dir)
    # 6. the champion decision, last: a failure above leaves the alias where it was
    reg = timed("promotion", promote, settings, reg)
    # 7. report
    summary = {
        "model_name": reg.name, "model_uri": reg.model_uri, "version": reg.version,
        "alias": settings.registry.alias, "champion_version": reg.champion_version, "promoted": reg.promoted,
        "decision": reg.decision, "alias_uri": f"models:/{reg.name}@{settings.registry.alias}",
        "dataset_uri": dataset_uri, "dataset_version": outcome.dataset_version, "run_name": outcome.run_name,
        "checkpoint_uri": outcome.checkpoint_uri, "train_step": outcome.metrics.get("step"),
        "mlflow_run_id": mlflow_run_id or _model_run_id(reg.name, reg.version),
        "metrics": {k: float(v) for k, v in metrics.items()}, "features": features, "sample_grid": grid,
        "seconds": seconds, "started_at": started,
        **report_picture_uris(mlflow_run_id),
    }
    summary["mlflow_run_url"] = mlflow_run_url(summary["mlflow_run_id"])
    summary["report_key"] = publish_report(summary)
    return summary


def _model_run_id(name: str, version: str) -> str | None:
    """The run that logged a model version (the registration run when training was not tracked)."""
    from infra.base.settings import mlflow_client

    try:
        return mlflow_client().get_model_version(name, version).run_id
    except Exception:  # the link is a convenience; the registration itself succeeded
        return None


# -- reporting --------------------------------------------------------------------------------------

def mlflow_ui_base() -> str:
    """Where the MLflow UI is: the tracking server itself, or `mlflow ui`'s default address."""
    from infra.base.settings import mlflow_client

    uri = mlflow_client().tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def mlflow_run_url(run_id: str | None) -> str | None:
    if not run_id:
        return None
    from infra.base.settings import mlflow_client

    try:
        experiment_id = mlflow_client().get_run(run_id).info.experiment_id
    except Exception:
        return None
    return f"{mlflow_ui_base()}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_commands(temporary_api_url: str | None = None) -> dict[str, str]:
    """Shell commands that open the MLflow and Prefect UIs on what this run wrote; `temporary_api_url`:
    the temporary Prefect server this command started (gone once it ends), if any."""
    import shlex

    from infra.base.settings import mlflow_client

    uri = mlflow_client().tracking_uri
    mlflow_cmd = (f"open {uri}" if uri.startswith(("http://", "https://"))
                  else f"mlflow ui --backend-store-uri {shlex.quote(uri)}   # then http://127.0.0.1:5000")
    api = os.environ.get("PREFECT_API_URL")
    if api and api != temporary_api_url:  # a temporary server is gone once the command ends
        prefect_cmd = f"open {api.rstrip('/').removesuffix('/api')}"
    else:
        home = os.environ.get("PREFECT_HOME", "~/.prefect")
        prefect_cmd = f"PREFECT_HOME={shlex.quote(home)} prefect server start   # then http://127.0.0.1:4200"
    return {"mlflow": mlflow_cmd, "prefect": prefect_cmd}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.0f}" if v.is_integer() and abs(v) < 1e6 else f"{v:.4g}"
    return str(v)


def metrics_rows(metrics: dict[str, float]) -> list[tuple[str, str, str]]:
    """(metric, G_ema, real-vs-real floor) for the metrics worth a glance, in a fixed order."""
    from gan_core.metrics.catalogue import METRICS  # the one list: order, direction, display

    rows = []
    for m in METRICS:
        name = m.name
        if name in metrics:
            floor = metrics.get(f"floor/{name}")
            value = metrics[name]
            if m.scale != 1.0:
                value, floor = value * m.scale, None if floor is None else floor * m.scale
            name = name + m.suffix
            if name in ("classes_covered", "modes_covered"):
                total = metrics.get("num_classes" if name == "classes_covered" else "num_modes")
                value = f"{_fmt(value)}/{_fmt(total)}" if total is not None else _fmt(value)
                floor = f"{_fmt(floor)}/{_fmt(total)}" if floor is not None and total is not None else floor
            rows.append((name, value if isinstance(value, str) else _fmt(value),
                         "" if floor is None else (floor if isinstance(floor, str) else _fmt(floor))))
    return rows


def report_picture_uris(training_run_id: str | None) -> dict[str, str | None]:
    """The training run's end-of-run pictures (infra.train.tracking) as ``runs:/`` URIs; None when untracked."""
    from infra.train.tracking import SAMPLE_STRIP_ARTIFACT, TRAINING_CURVES_ARTIFACT

    def uri(artifact: str) -> str | None:
        return f"runs:/{training_run_id}/{artifact}" if training_run_id else None

    return {"training_curves": uri(TRAINING_CURVES_ARTIFACT), "sample_strip": uri(SAMPLE_STRIP_ARTIFACT)}


def _png_section(title: str, uri: str, png: bytes | None) -> list[str]:
    lines = ["", f"## {title} (`{uri}`)", ""]
    if png is None:
        return lines + ["_not embedded (unreachable, or the picture is too large)_"]
    return lines + [f"![{title.lower()}](data:image/png;base64,{base64.b64encode(png).decode()})"]


def report_markdown(summary: dict[str, Any]) -> str:
    m = summary["metrics"]
    lines = [f"# {summary['model_name']} version {summary['version']}", ""]
    lines += [f"**Registered** `{summary['model_uri']}`; `@{summary['alias']}` -> version "
              f"{summary['champion_version'] or '-'} ({summary['decision']})", ""]
    if summary.get("mlflow_run_url"):
        lines += [f"**MLflow run**: [{summary['mlflow_run_id']}]({summary['mlflow_run_url']})", ""]
    lines += [f"**Dataset** `{summary['dataset_uri']}`; training run `{summary['run_name']}` "
              f"(step {summary.get('train_step')})", ""]
    lines += ["| metric | G_ema | real vs real (floor) |", "|---|---:|---:|"]
    lines += [f"| {name} | {v} | {f} |" for name, v, f in metrics_rows(m)]
    from gan_core.evaluate import primary_metric

    fd = primary_metric(m)
    if fd in m and m.get(f"floor/{fd}"):
        lines += ["", f"{fd.upper()} is {m[fd] / m[f'floor/{fd}']:.2f}x its real-vs-real floor "
                      f"({int(m.get('num_samples', 0))} samples per set; features: {summary.get('features', '?')})."]
    for title, key in (("Training curves", "training_curves"), ("Samples during training", "sample_strip")):
        if summary.get(key):  # the training run was tracked
            lines += _png_section(title, summary[key], _read_run_artifact(summary[key], MAX_INLINE_PNG_BYTES))
    # small PNGs inline, so the UI shows them
    lines += _png_section("Samples", summary["sample_grid"], _read_small(summary["sample_grid"], MAX_INLINE_PNG_BYTES))
    lines += ["", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in summary["seconds"].items()]
    return "\n".join(lines) + "\n"


def _read_small(uri: str, max_bytes: int) -> bytes | None:
    """A file's bytes (local or S3) when it exists and is at most `max_bytes`, else None."""
    from infra.base import storage

    try:
        loc = storage.resolve(uri)
        info = loc.info()
        return storage.read_bytes(loc) if info.is_file and info.size <= max_bytes else None
    except (OSError, ValueError):
        return None


def _read_run_artifact(uri: str, max_bytes: int) -> bytes | None:
    """An MLflow artifact's bytes (``runs:/<run id>/<path>``) when it can be downloaded and is at most
    `max_bytes`, else None: the report is best-effort (tracking may be off or down)."""
    from mlflow.artifacts import download_artifacts

    from infra.base.settings import mlflow_client

    try:
        with tempfile.TemporaryDirectory(prefix="ganpipe-report-") as tmp:
            path = Path(download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=mlflow_client().tracking_uri))
            return path.read_bytes() if path.is_file() and path.stat().st_size <= max_bytes else None
    except Exception:  # any tracking, network or store error: the report goes out without the picture
        return None


def floor_ratio(value: float, floor: float) -> str:
    """value / floor for the summary, or why it is not shown: the floor is below MIN_FLOOR_FRACTION of the
    value (sampling noise, the ratio would mean nothing) or not positive."""
    if not floor > 0 or floor < MIN_FLOOR_FRACTION * value:
        return f"{'-':>10}  (the floor {_fmt(floor)} is near zero: compare the distance itself)"
    return f"{value / floor:>10.2f}"


def summary_lines(summary: dict[str, Any], temporary_api_url: str | None = None) -> list[str]:
    """The short summary `ganpipe run` prints at the end (`temporary_api_url`: see `ui_commands`)."""
    m = summary["metrics"]
    out = [f"registered   {summary['model_uri']}   ({summary['decision']})",
           f"champion     {summary['alias_uri']} -> version {summary['champion_version'] or '-'}",
           f"samples      {summary['sample_grid']}", "metrics      (G_ema | real-vs-real floor)"]
    out += [f"  {name:<22} {v:>10}  {f:>10}" for name, v, f in metrics_rows(m)]
    from gan_core.evaluate import primary_metric

    fd = primary_metric(m)
    if fd in m and f"floor/{fd}" in m:
        out.append(f"  {fd.upper() + ' / floor':<23}{floor_ratio(m[fd], m[f'floor/{fd}'])}")
    if summary.get("features"):
        out.append(f"features     {summary['features']}")
    if summary.get("mlflow_run_url"):
        out.append(f"mlflow run   {summary['mlflow_run_url']}")
    ui = ui_commands(temporary_api_url)
    out += [f"MLflow UI    {ui['mlflow']}", f"Prefect UI   {ui['prefect']}"]
    out.append("timings (s)  " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))
    return out
