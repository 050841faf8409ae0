"""The sampling flow: pin the model version, generate shards with Ray Data, commit the manifest.

    sample_generator("models:/digits-gen@champion", 100_000, seed=0, out="s3://bucket/samples/run1")
        -> the committed sample set's URI

The tasks are the steps of infra.data.shard_writer's executor around infra.models.batch_sampling's plan. Retries are
on storage and registry I/O only; the generation step is not retried by Prefect (Ray restarts failed
actors, and a rerun of the flow skips the shards already written and commits).
"""

from __future__ import annotations

import re

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact


from infra.data import shard_writer
from infra.models import batch_sampling
from infra.models.batch_sampling import ResolvedModel, SamplingPlan

from .stage import STORAGE_IO, commit_manifest, find_committed, progress_line


@task(**STORAGE_IO, persist_result=False)
def resolve_model_version(model_uri: str) -> ResolvedModel:
    """Pin the URI (an alias -> one concrete version) so that every actor loads the same model."""
    return batch_sampling.resolve_model(model_uri)


@task(**STORAGE_IO, persist_result=False)
def plan_samples(model: ResolvedModel, num_samples: int, seed: int, out: str, fmt: str, rows_per_shard: int | None,
                 batch_size: int, actors: int, gpus_per_actor: float, truncation: float | None = None,
                 class_label: int | None = None) -> SamplingPlan:
    return batch_sampling.plan_sampling(model, num_samples, seed, out, fmt=fmt, rows_per_shard=rows_per_shard,
                                        batch_size=batch_size, actors=actors, gpus_per_actor=gpus_per_actor,
                                        truncation=truncation, class_label=class_label)


@task(persist_result=False)
def generate_and_write_shards(plan: SamplingPlan, show_progress: bool) -> list[dict]:
    """Ray Data over the shards' seed ranges, one loaded generator per actor; progress as shards land."""
    with shard_writer.progress_bar(plan.num_items, "sampling", bar=show_progress, log=progress_line,
                               unit="samples") as bar:
        return shard_writer.write_pending(plan, bar.update)


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
                     show_progress: bool = False, truncation: float | None = None,
                     class_label: int | None = None) -> str:
    """Generate ``num_samples`` samples of seed ``seed`` from ``model_uri`` into ``out``; return the
    committed set's URI. Rerunning the same request is a no-op; an interrupted one completes."""
    # 1. pin the version: an alias moving mid-job must not mix two models
    model = resolve_model_version(model_uri)
    plan = plan_samples(model, num_samples, seed, out, fmt, rows_per_shard, batch_size, actors, gpus_per_actor,
                        truncation, class_label)
    get_run_logger().info(f"sampling {num_samples} from {model.uri} (requested {model_uri}), seed {seed}, "
                          f"into {plan.out} as {plan.num_shards} {fmt} shards")
    # 2. already committed? then nothing to do
    manifest = find_committed(plan)
    if manifest is not None:
        get_run_logger().info(f"{plan.out}: already committed, nothing to write")
    else:
        # 3. generate and write the shards (skipping any an interrupted run finished), 4. commit; holding the
        # folder: it must be new or the set's own, and another writer of the same set waits its turn
        with shard_writer.writing(plan):
            manifest = commit_manifest(plan, generate_and_write_shards(plan, show_progress))
    summarise_samples(manifest, plan.out)
    return plan.out
