"""The staging flow: fingerprint a source, write its Parquet shards in parallel, commit the manifest.

    stage_dataset("digits", root="s3://bucket/ganpipe")  ->  "s3://bucket/ganpipe/datasets/digits/<version>"

Reliability comes from infra.data.datasets' content addressing plus two Prefect features:
- retries on storage I/O only (a bad image or a NaN fails at once: retrying cannot fix input);
- result caching of each shard, keyed by (version URI, shard): a retried or re-run flow run skips
  the shards it already wrote. The committed manifest makes a second staging a no-op altogether.
The tasks are the steps of infra.data.shard_writer's executor (committed, write a shard, commit); the work is in
infra.data.datasets and infra.data.shard_writer. find_committed and commit_manifest serve every shard set (the
sampling flow uses them too).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from infra.base.console import say
from infra.data import datasets, shard_writer
from infra.data.datasets import StagingPlan
from infra.data.shard_writer import ShardPlan

STORAGE_RETRIES = 3
STORAGE_RETRY_DELAYS_S = [1, 4, 10]
MAX_PARALLEL_SHARDS = 4


def is_transient_storage_error(exc: BaseException | None) -> bool:
    """Retry storage I/O failures (network, throttling, a flaky disk), never bad input: bad input
    raises ValueError subclasses (SourceError, DatasetError), and a missing file stays missing."""
    return isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError,
                                                             IsADirectoryError, NotADirectoryError))


def retry_on_storage_io(task, task_run, state) -> bool:  # Prefect's retry_condition_fn signature
    return is_transient_storage_error(state.data if isinstance(state.data, BaseException) else None)


STORAGE_IO = dict(retries=STORAGE_RETRIES, retry_delay_seconds=STORAGE_RETRY_DELAYS_S,
                  retry_condition_fn=retry_on_storage_io)


def progress_line(line: str) -> None:
    """A progress line (every ~10%) for the run's log in the Prefect UI and for the console (infra.base.console
    draws it as a bar on a terminal)."""
    get_run_logger().info(line)
    say(line)


def shard_cache_key(context, parameters: dict[str, Any]) -> str:
    """One cache entry per (destination version, shard): the version already hashes source + layout,
    and the URI keeps the same data staged to two roots apart."""
    plan: StagingPlan = parameters["plan"]
    key = f"{plan.uri}#{parameters['index']}/{plan.num_shards}"
    return "stage-shard-" + hashlib.sha256(key.encode()).hexdigest()[:32]


@task(**STORAGE_IO, persist_result=False)
def fingerprint_source(source: str, root: str, name: str | None, options: dict[str, Any]) -> StagingPlan:
    """Open and fingerprint the source; fix the version and the shard ranges."""
    return datasets.plan_staging(source, root, name, **options)


@task(**STORAGE_IO, persist_result=False)
def find_committed(plan: ShardPlan) -> dict | None:
    """The set's manifest if it is committed already (then there is nothing to write)."""
    return shard_writer.committed(plan)


@task(**STORAGE_IO, cache_key_fn=shard_cache_key, persist_result=True)
def write_shard(plan: StagingPlan, index: int) -> dict:
    """Write one shard; cached, so a re-run flow does not write it again."""
    return plan.write_shard(index)


@task(persist_result=False)
def find_missing_shards(plan: ShardPlan, shards: list[dict]) -> list[int]:
    """Shards a cache hit claims but storage lacks (someone cleaned the uncommitted folder)."""
    return shard_writer.missing_shards(plan, shards)


@task(**STORAGE_IO, persist_result=False)
def commit_manifest(plan: ShardPlan, shards: list[dict]) -> dict:
    """Write _manifest.json last: this commits the set."""
    return shard_writer.commit(plan, shards)


@task(persist_result=False)
def summarise_version(manifest: dict, version_uri: str) -> None:
    """A table artifact in the Prefect UI: what this version holds."""
    key = "dataset-" + re.sub(r"[^a-z0-9-]+", "-", manifest["name"].lower()).strip("-")
    create_table_artifact(
        key=key[:100],
        table=[{"name": manifest["name"], "version": manifest["version"], "rows": manifest["num_rows"],
                "shards": manifest["num_shards"], "bytes": manifest["num_bytes"],
                "shape": "x".join(map(str, manifest["shape"])), "dtype": manifest["dtype"],
                "labels": manifest["has_labels"], "skipped files": manifest["num_skipped"],
                "created_at": manifest["created_at"], "uri": version_uri}],
        description=f"Staged dataset `{manifest['name']}` version `{manifest['version']}`",
    )


@flow(name="stage-dataset", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_SHARDS),
      log_prints=True)
def stage_dataset(source: str, root: str, name: str | None = None, *, num_samples: int = 50_000, seed: int = 0,
                  image_size: int | None = None, grayscale: bool = False, skip_bad: bool = False,
                  labels: str | None = None, image_column: str | None = None, label_column: str | None = None,
                  rows_per_shard: int | None = None,
                  target_shard_mib: float = datasets.DEFAULT_TARGET_SHARD_MIB, row_group_rows: int | None = None,
                  compression: str = datasets.DEFAULT_COMPRESSION, show_progress: bool = False) -> str:
    """Stage `source` (digits | ring8 | grid25 | a path or s3:// URI of images, .npy/.npz, Parquet, a .zip
    of images) under `root`; return the committed version's URI."""
    options = dict(num_samples=num_samples, seed=seed, image_size=image_size, grayscale=grayscale,
                   skip_bad=skip_bad, labels=labels, image_column=image_column, label_column=label_column,
                   rows_per_shard=rows_per_shard,
                   target_shard_mib=target_shard_mib, row_group_rows=row_group_rows, compression=compression)
    # 1. Fingerprint: the version is known before anything is written.
    plan = fingerprint_source(source, root, name, options)
    # 2. Already committed? Then staging is a no-op.
    manifest = find_committed(plan)
    if manifest is not None:
        get_run_logger().info(f"{plan.uri}: already committed, nothing to write")
    else:
        # 3. Write the shards in parallel (cached ones return at once), holding the folder: it must be new or
        # the set's own, and another writer of the same version waits its turn.
        with shard_writer.writing(plan):
            futures = write_shard.map(plan, range(plan.num_shards))
            with shard_writer.progress_bar(plan.num_items, f"staging {plan.name}", bar=show_progress,
                                           log=progress_line) as bar:
                for future in as_completed(futures):
                    start, stop = plan.shard_ranges[futures.index(future)]
                    bar.update(stop - start)
            shards = [f.result() for f in futures]
            # 4. A cache hit for a shard that storage lost is rewritten before the commit.
            for i in find_missing_shards(plan, shards):
                shards[i] = write_shard.with_options(refresh_cache=True)(plan, i)
            # 5. Commit.
            manifest = commit_manifest(plan, shards)
    summarise_version(manifest, plan.uri)
    return plan.uri
