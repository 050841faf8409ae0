"""The sampling flow: pin the model version, generate shards with Ray Data, commit the manifest.

    sample_generator("models:/digits-gen@champion", 100_000, seed=0, out="s3://bucket/samples/run1")
        -> the committed sample set's URI

All the work is in infra.batch_sampling; the tasks here only name the steps. Retries are on storage
and registry I/O only; the generation step is not retried by Prefect (Ray restarts failed actors, and
a rerun of the flow skips the shards already written and commits).
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from infra import batch_sampling
from infra.batch_sampling import SamplingPlan

from .stage import STORAGE_RETRIES, STORAGE_RETRY_DELAYS_S, retry_on_storage_io


@task(retries=STORAGE_RETRIES, retry_delay_seconds=STORAGE_RETRY_DELAYS_S, retry_condition_fn=retry_on_storage_io,
      persist_result=False)
def resolve_model_version(model_uri: str) -> batch_sampling.ResolvedModel:
    """Pin the URI (an alias -> one concrete version) so that every actor loads the same model."""
    return batch_sampling.resolve_model(model_uri)


@task(retries=STORAGE_RETRIES, retry_delay_seconds=STORAGE_RETRY_DELAYS_S, retry_condition_fn=retry_on_storage_io,
      persist_result=False)
def plan_samples(model: batch_sampling.ResolvedModel, num_samples: int, seed: int, out: str, fmt: str,
                 rows_per_shard: int | None) -> SamplingPlan:
    return batch_sampling.plan_sampling(model, num_samples, seed, out, fmt=fmt, rows_per_shard=rows_per_shard)


@task(retries=STORAGE_RETRIES, retry_delay_seconds=STORAGE_RETRY_DELAYS_S, retry_condition_fn=retry_on_storage_io,
      persist_result=False)
def find_committed(plan: SamplingPlan) -> dict | None:
    return batch_sampling.existing_manifest(plan)


@task(persist_result=False)
def generate_and_write_shards(plan: SamplingPlan, batch_size: int, actors: int, gpus_per_actor: float,
                              show_progress: bool) -> list[dict]:
    """Ray Data over the shards' seed ranges, one loaded generator per actor; progress as shards land."""
    logger = get_run_logger()
    report = batch_sampling.Progress(plan, bar=show_progress, log=logger.info)
    try:
        return batch_sampling.generate_shards(plan, batch_size=batch_size, actors=actors,
                                              gpus_per_actor=gpus_per_actor, progress=report)
    finally:
        report.close()


@task(retries=STORAGE_RETRIES, retry_delay_seconds=STORAGE_RETRY_DELAYS_S, retry_condition_fn=retry_on_storage_io,
      persist_result=False)
def commit_manifest(plan: SamplingPlan, shards: list[dict], options: dict[str, Any]) -> dict:
    """Write _manifest.json last: this commits the sample set."""
    return batch_sampling.commit_samples(plan, shards, options)


@task(persist_result=False)
def summarise_samples(manifest: dict, out: str) -> None:
    """A table artifact in the Prefect UI: which model version, seed and how many samples."""
    m = manifest["model"]
    key = "samples-" + re.sub(r"[^a-z0-9-]+", "-", str(m.get("name") or "model").lower()).strip("-")
    create_table_artifact(
        key=key[:100],
        table=[{"model": m["requested_uri"], "version": m.get("version") or "", "pinned": m["uri"],
                "seed": manifest["seed"], "samples": manifest["num_rows"], "shards": manifest["num_shards"],
                "format": manifest["sample_format"], "shape": "x".join(map(str, manifest["shape"])),
                "bytes": manifest["num_bytes"], "created_at": manifest["created_at"], "uri": out}],
        description=f"Samples of `{m['uri']}`, seed {manifest['seed']}",
    )


@flow(name="sample-generator")
def sample_generator(model_uri: str, num_samples: int, seed: int, out: str, *, fmt: str = "parquet",
                     batch_size: int = batch_sampling.DEFAULT_BATCH_SIZE, actors: int = 1,
                     gpus_per_actor: float = 0.0, rows_per_shard: int | None = None,
                     show_progress: bool = False) -> str:
    """Generate ``num_samples`` samples of seed ``seed`` from ``model_uri`` into ``out``; return the
    committed set's URI. Rerunning the same request is a no-op; an interrupted one completes."""
    # 1. pin the version: an alias moving mid-job must not mix two models
    model = resolve_model_version(model_uri)
    plan = plan_samples(model, num_samples, seed, out, fmt, rows_per_shard)
    get_run_logger().info(f"sampling {num_samples} from {model.uri} (requested {model_uri}), seed {seed}, "
                          f"into {plan.out} as {plan.num_shards} {fmt} shards")
    # 2. already committed? then nothing to do
    manifest = find_committed(plan)
    if manifest is not None:
        get_run_logger().info(f"{plan.out}: already committed, nothing to write")
    else:
        # 3. generate and write the shards (skipping any an interrupted run finished)
        shards = generate_and_write_shards(plan, batch_size, actors, gpus_per_actor, show_progress)
        # 4. commit
        manifest = commit_manifest(plan, shards, {"batch_size": batch_size, "actors": actors,
                                                  "gpus_per_actor": gpus_per_actor})
    summarise_samples(manifest, plan.out)
    return plan.out
