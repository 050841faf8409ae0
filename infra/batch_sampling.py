"""Batch sampling from a registered generator with Ray Data: shards of samples plus a manifest.

    <out>/part-00000.parquet ... part-NNNNN.parquet   columns: index int64, x fixed_size_list<float32>
    <out>/_manifest.json                              <- written last; its presence commits the set
    (--format png: <out>/part-NNNNN/<index:09d>.png instead of each Parquet shard)

Sample i depends only on (model version, seed, i): its latent comes from gan_core's seed-addressed
blocks and G runs on whole aligned blocks (gan_core.sampling.generate), so neither the batch size nor
the number of actors changes a value. The shard layout (rows per shard, row groups, compression) is
a function of the request alone, so the same request writes the same bytes however it runs.

Pipeline (the steps pipelines/sample.py composes):
    plan = plan_sampling("models:/digits-gen@champion", 100_000, seed=0, out="s3://b/samples/x")
        # resolves the alias to a concrete version once, so every actor loads the same one
    shards = generate_shards(plan, batch_size=4096, actors=4, gpus_per_actor=0)
        # Ray Data: from_items(shards) -> map_batches(ShardSampler, concurrency=actors): each actor
        # loads the model ONCE, generates its shards' seed ranges and writes each shard atomically
    manifest = commit_samples(plan, shards)            # the commit
    sample(...)                                        # all three
    open_samples(out).load_arrays()                    # reader: (index, x) of a committed set

Resume: after a shard is written, a small record ``_pending/part-NNNNN.json`` (with the request's
fingerprint) notes it; a rerun of the same request skips those shards, writes the rest and commits.
A committed set is never rewritten: rerunning the same request is a no-op, a different request into
the same folder is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import posixpath
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gan_core.sampling import LATENT_BLOCK

from . import storage
from .datasets import Layout, default_row_group_rows
from .storage import Location, StorageError

log = logging.getLogger(__name__)

FORMAT = "ganpipe.samples/1"
MODEL_FORMAT = "ganpipe-generator/1"  # infra.generator_model.FORMAT
MANIFEST_NAME = "_manifest.json"
PENDING_DIR = "_pending"
FORMATS = ("parquet", "png")
LAYOUT_VERSION = 1  # bump when shard encoding changes: part of every request fingerprint
DEFAULT_TARGET_SHARD_MIB = 16.0
MIN_SHARDS = 16  # small requests still split into enough shards to keep several actors busy
DEFAULT_COMPRESSION = "zstd"
DEFAULT_BATCH_SIZE = 4096
# Variables a sampling actor needs to reach MLflow and storage (set in the driver, perhaps after Ray
# started, so they are handed to each actor explicitly).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REQUEST_CHECKSUM_CALCULATION",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")


class SamplingError(ValueError):
    """A sampling request that cannot be served (bad model URI, bad options, a conflicting output);
    the message is one line."""


def shard_name(index: int, fmt: str = "parquet") -> str:
    return f"part-{index:05d}.parquet" if fmt == "parquet" else f"part-{index:05d}"


def _first_line(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    return str(msg).strip().splitlines()[0] if str(msg).strip() else type(e).__name__


# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to one concrete model, plus what sampling needs to know about it."""

    requested_uri: str  # as given: models:/<name>@<alias>, models:/<name>/<version>, runs:/..., models:/<id>
    uri: str  # the pinned URI every actor loads (models:/<name>/<version> for registry URIs)
    name: str | None
    version: str | None
    alias: str | None
    run_id: str | None
    z_dim: int
    sample_shape: tuple[int, ...]
    normalisation: dict[str, float]
    weights_sha256: str

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    def identity(self) -> dict[str, Any]:
        """What makes two models the same for sampling purposes."""
        return {"uri": self.uri, "name": self.name, "version": self.version, "weights_sha256": self.weights_sha256}


def _parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/<name>@<alias> -> (name, None, alias); models:/<name>/<version> -> (name, version, None)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if not name or not alias or "/" in alias:
            raise SamplingError(f"--model {uri!r}: expected models:/<name>@<alias>")
        return name, None, alias
    name, _, version = rest.rpartition("/")
    if not name:  # models:/<model_id> (a logged model, not a registry entry)
        return rest, None, None
    if not version.isdigit():
        raise SamplingError(f"--model {uri!r}: version {version!r} is not a number "
                            f"(use models:/<name>/<version> or models:/<name>@<alias>)")
    return name, version, None


def resolve_model(model_uri: str) -> ResolvedModel:
    """Pin ``model_uri`` to one concrete version (an alias is resolved now, once) and read the
    model's metadata (z_dim, sample shape, normalisation, weights sha256) without loading it.

    Raises SamplingError with a one-line message for anything unusable.
    """
    from mlflow.exceptions import MlflowException

    from .registry import _client, _configured_uris

    uri = (model_uri or "").strip()
    name = version = alias = run_id = None
    if uri.startswith("models:/"):
        name, version, alias = _parse_registry_uri(uri)
        client = _client()
        try:
            if alias is not None:
                mv = client.get_model_version_by_alias(name, alias)
            elif version is not None:
                mv = client.get_model_version(name, version)
            else:
                mv = None  # a logged model id
        except MlflowException as e:
            raise SamplingError(f"--model {uri!r}: {_first_line(e)}") from None
        except Exception as e:  # unreachable tracking server, bad database, ...
            raise SamplingError(f"--model {uri!r}: cannot reach the MLflow registry ({_first_line(e)})") from None
        if mv is not None:
            version, run_id = str(mv.version), mv.run_id
            pinned = f"models:/{name}/{version}"
        else:
            name, pinned = None, uri
    elif uri.startswith("runs:/"):
        pinned = uri
        run_id = uri[len("runs:/"):].split("/", 1)[0] or None
    else:
        raise SamplingError(f"--model {model_uri!r}: expected models:/<name>@<alias>, models:/<name>/<version> "
                            "or runs:/<run_id>/<path>")
    try:
        import mlflow

        with _configured_uris():
            info = mlflow.models.get_model_info(pinned)
    except MlflowException as e:
        raise SamplingError(f"--model {uri!r}: {_first_line(e)}") from None
    except OSError as e:
        raise SamplingError(f"--model {uri!r}: cannot read the model ({_first_line(e)})") from None
    meta = (info.metadata or {}).get("ganpipe") or {}
    pyfunc_conf = (info.flavors.get("python_function") or {}).get("config") or {}
    if meta.get("format") != MODEL_FORMAT:
        raise SamplingError(f"--model {uri!r}: not a ganpipe generator (metadata format {meta.get('format')!r}, "
                            f"expected {MODEL_FORMAT!r})")
    return ResolvedModel(
        requested_uri=uri, uri=pinned, name=name, version=version, alias=alias, run_id=run_id,
        z_dim=int(meta["z_dim"]), sample_shape=tuple(int(s) for s in meta["sample_shape"]),
        normalisation={k: float(v) for k, v in (meta.get("normalisation") or {"scale": 1.0, "offset": 0.0}).items()},
        weights_sha256=str((pyfunc_conf.get("sha256") or {}).get("weights", "")))


def load_generator_model(model_uri: str, *, device: str = "cpu"):
    """Load a pinned model URI as the pyfunc's python model (G, scale/offset), G moved to ``device``."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    pm = model.unwrap_python_model()
    if device != "cpu":
        import torch

        pm.device = torch.device(device)
        pm.G = pm.G.to(pm.device)
    return pm


def generate_range(pm, seed: int, start: int, count: int, batch_size: int) -> np.ndarray:
    """Samples [start, start + count) of ``seed`` in the data's value range, float32 (count, *shape):
    exactly ``predict(params={"num_samples": count, "seed": seed, "start": start})``."""
    from gan_core.sampling import generate

    x = generate(pm.G, count, seed, start=start, batch_size=batch_size, device=pm.device)
    return pm._to_data_range(x)


# --- the plan -------------------------------------------------------------------------------------


def choose_layout(num_samples: int, sample_shape: tuple[int, ...], fmt: str, *, rows_per_shard: int | None = None,
                  target_shard_mib: float = DEFAULT_TARGET_SHARD_MIB, compression: str = DEFAULT_COMPRESSION
                  ) -> Layout:
    """Rows per shard: a whole number of latent blocks, at most ~target_shard_mib of float32 and at
    most num_samples / MIN_SHARDS (rounded up to a block), so it depends on the request only."""
    row_bytes = 4 * math.prod(sample_shape)
    if rows_per_shard is None:
        by_bytes = max(1, int(target_shard_mib * (1 << 20)) // (row_bytes * LATENT_BLOCK))
        by_count = max(1, math.ceil(num_samples / MIN_SHARDS / LATENT_BLOCK))
        rows_per_shard = LATENT_BLOCK * min(by_bytes, by_count)
    elif rows_per_shard <= 0:
        raise SamplingError(f"--rows-per-shard must be positive; got {rows_per_shard}")
    else:  # whole blocks: no block is generated twice
        rows_per_shard = LATENT_BLOCK * math.ceil(rows_per_shard / LATENT_BLOCK)
    return Layout(int(rows_per_shard), default_row_group_rows(row_bytes), compression if fmt == "parquet" else "png",
                  layout_version=LAYOUT_VERSION)


@dataclass
class SamplingPlan:
    """Everything the shard writers and the commit need; built once, before any sample is drawn."""

    model: ResolvedModel
    num_samples: int
    seed: int
    out: str  # the output folder's URI
    format: str
    layout: Layout
    shard_ranges: list[tuple[int, int]]  # [start, stop) sample indices
    fingerprint: str  # hash of (model identity, seed, num_samples, format, layout)
    options: dict = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return len(self.shard_ranges)

    def location(self) -> Location:
        return storage.resolve(self.out)

    def shard_path(self, index: int) -> str:
        return shard_name(index, self.format)


def request_fingerprint(model: ResolvedModel, num_samples: int, seed: int, fmt: str, layout: Layout) -> str:
    blob = json.dumps({"model": model.identity(), "num_samples": num_samples, "seed": seed, "format": fmt,
                       "layout": asdict(layout)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_sampling(model: str | ResolvedModel, num_samples: int, seed: int, out: str, *, fmt: str = "parquet",
                  rows_per_shard: int | None = None, target_shard_mib: float = DEFAULT_TARGET_SHARD_MIB,
                  compression: str = DEFAULT_COMPRESSION) -> SamplingPlan:
    """Validate the request and fix the model version, shard layout and fingerprint (cheap: the model
    is not loaded here)."""
    if fmt not in FORMATS:
        raise SamplingError(f"--format: got {fmt!r}; allowed: {', '.join(FORMATS)}")
    if num_samples <= 0:
        raise SamplingError(f"--num-samples must be positive; got {num_samples}")
    if seed < 0:
        raise SamplingError(f"--seed must be >= 0; got {seed}")
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    if fmt == "png" and not resolved.is_image:
        raise SamplingError(f"--format png needs an image model (samples of shape (C, H, W)); "
                            f"{resolved.requested_uri} makes samples of shape {resolved.sample_shape}")
    if fmt == "png" and resolved.sample_shape[0] not in (1, 3, 4):
        raise SamplingError(f"--format png: {resolved.sample_shape[0]} channels cannot be a PNG (1, 3 or 4)")
    try:
        loc = storage.resolve(out)
        storage.check_bucket(loc)
    except StorageError as e:
        raise SamplingError(f"--out: {e}") from None
    layout = choose_layout(num_samples, resolved.sample_shape, fmt, rows_per_shard=rows_per_shard,
                           target_shard_mib=target_shard_mib, compression=compression)
    bounds = list(range(0, num_samples, layout.rows_per_shard)) + [num_samples]
    ranges = list(zip(bounds[:-1], bounds[1:]))
    fp = request_fingerprint(resolved, num_samples, seed, fmt, layout)
    return SamplingPlan(resolved, int(num_samples), int(seed), loc.uri, fmt, layout, ranges, fp,
                        {"rows_per_shard": rows_per_shard, "target_shard_mib": target_shard_mib,
                         "compression": compression})


# --- writing one shard ------------------------------------------------------------------------------


def arrow_schema(plan: SamplingPlan) -> pa.Schema:
    row_size = math.prod(plan.model.sample_shape)
    meta = {"shape": list(plan.model.sample_shape), "dtype": "float32", "model": plan.model.identity(),
            "seed": plan.seed, "value_space": "data"}
    return pa.schema([pa.field("index", pa.int64(), nullable=False),
                      pa.field("x", pa.list_(pa.float32(), row_size), nullable=False)],
                     metadata={b"ganpipe": json.dumps(meta, sort_keys=True).encode()})


def encode_parquet(plan: SamplingPlan, start: int, x: np.ndarray) -> bytes:
    """A shard's Parquet bytes: a pure function of (plan, start, x) (pyarrow writes no timestamps)."""
    schema = arrow_schema(plan)
    row_size = schema.field("x").type.list_size
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    table = pa.Table.from_arrays([pa.array(np.arange(start, start + len(x), dtype=np.int64)),
                                  pa.FixedSizeListArray.from_arrays(pa.array(flat), row_size)], schema=schema)
    buf = io.BytesIO()
    # NOTE: statistics on index only (readers may filter by it); none for the float payload.
    pq.write_table(table, buf, row_group_size=plan.layout.row_group_rows, compression=plan.layout.compression,
                   write_statistics=["index"])
    return buf.getvalue()


def encode_pngs(plan: SamplingPlan, x: np.ndarray) -> list[bytes]:
    """One PNG per sample: data values mapped back to the generator's [-1, 1] and then to 0..255."""
    import torch
    from PIL import Image

    from gan_core.sampling import to_uint8_images

    scale, offset = plan.model.normalisation["scale"], plan.model.normalisation["offset"]
    imgs = to_uint8_images(torch.from_numpy(x) * scale + offset)  # (n, H, W, C)
    out = []
    for img in imgs:
        buf = io.BytesIO()
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img, mode=None).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def write_shard(plan: SamplingPlan, index: int, x: np.ndarray) -> dict:
    """Write shard ``index`` (samples x of its range) atomically, then its pending record; describe it."""
    start, stop = plan.shard_ranges[index]
    assert len(x) == stop - start, (len(x), start, stop)
    loc = plan.location()
    name = plan.shard_path(index)
    if plan.format == "parquet":
        data = encode_parquet(plan, start, x)
        storage.write_bytes(loc.join(name), data)
        digest, size = hashlib.sha256(data).hexdigest(), len(data)
    else:  # a folder of PNGs; sha256 over the files' bytes in index order
        h, size = hashlib.sha256(), 0
        for i, png in zip(range(start, stop), encode_pngs(plan, x)):
            storage.write_bytes(loc.join(name, f"{i:09d}.png"), png)
            h.update(png)
            size += len(png)
        digest = h.hexdigest()
    record = {"path": name, "start": start, "rows": stop - start, "bytes": size, "sha256": digest}
    storage.write_bytes(loc.join(PENDING_DIR, f"part-{index:05d}.json"),
                        json.dumps({"fingerprint": plan.fingerprint, "shard": record}, sort_keys=True).encode())
    return record


def written_shards(plan: SamplingPlan) -> dict[int, dict]:
    """Shards a previous (interrupted) run of the same request finished, checked against storage."""
    loc = plan.location()
    done: dict[int, dict] = {}
    for info in storage.list_files(loc.join(PENDING_DIR)):
        try:
            rec = json.loads(storage.read_bytes(storage.Location(loc.fs, info.path, info.path)).decode())
            index = int(posixpath.basename(info.path).split("-")[1].split(".")[0])
        except (ValueError, KeyError, IndexError, OSError):
            continue
        if rec.get("fingerprint") != plan.fingerprint or not 0 <= index < plan.num_shards:
            continue
        shard = rec["shard"]
        if plan.format == "parquet":
            i = loc.join(shard["path"]).info()
            if i.type != pafs.FileType.File or i.size != shard["bytes"]:
                continue
        done[index] = shard
    return done


# --- Ray Data ------------------------------------------------------------------------------------


class ShardSampler:
    """Ray Data callable class: one loaded generator per actor; each input row is a shard index.

    The model is loaded once, in the constructor, from the pinned URI. ``write=False`` generates and
    discards (benchmarks: the pipeline without the writes).
    """

    def __init__(self, plan: SamplingPlan, *, batch_size: int, device: str, env: dict[str, str],
                 write: bool = True):
        os.environ.update(env)
        import warnings

        import torch

        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")

        if device == "cpu":
            torch.set_num_threads(1)  # one actor per CPU; tiny nets are fastest single-threaded
        self.plan, self.batch_size, self.write = plan, batch_size, write
        self.pm = load_generator_model(plan.model.uri, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for index in batch["shard"].tolist():
            start, stop = self.plan.shard_ranges[index]
            x = generate_range(self.pm, self.plan.seed, start, stop - start, self.batch_size)
            if self.write:
                records.append(write_shard(self.plan, index, x))
            else:
                records.append({"path": self.plan.shard_path(index), "start": start, "rows": len(x), "bytes": 0,
                                "sha256": ""})
        return {"shard": np.asarray(batch["shard"], dtype=np.int64),
                "record": np.asarray([json.dumps(r, sort_keys=True) for r in records], dtype=object)}


def ensure_ray() -> None:
    """Connect to ``RAY_ADDRESS`` when set, else start Ray locally (once per process)."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}})


def _actor_count(actors: int, gpus_per_actor: float, todo: int) -> int:
    import ray

    if actors <= 0:
        raise SamplingError(f"--actors must be positive; got {actors}")
    n = min(actors, todo)
    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        fit = int(resources.get("GPU", 0) // gpus_per_actor)
        if fit == 0:
            raise SamplingError(f"--gpus {gpus_per_actor}: the Ray cluster has {resources.get('GPU', 0):g} GPUs")
    else:
        fit = max(1, int(resources.get("CPU", 1)))
    if n > fit:
        log.warning("sampling: %d actors asked, the cluster fits %d; using %d", actors, fit, fit)
        n = fit
    return max(1, n)


def generate_shards(plan: SamplingPlan, *, batch_size: int = DEFAULT_BATCH_SIZE, actors: int = 1,
                    gpus_per_actor: float = 0.0, progress: Callable[[dict], None] | None = None,
                    write: bool = True, resume: bool = True) -> list[dict]:
    """Generate and write every shard not yet written, with Ray Data over the shard indices.

    ``progress(record)`` is called in the driver as each shard completes. Returns all shard records
    (earlier runs' included), in shard order.
    """
    import ray.data

    if batch_size <= 0:
        raise SamplingError(f"--batch-size must be positive; got {batch_size}")
    done = written_shards(plan) if (write and resume) else {}
    for rec in done.values():
        if progress is not None:
            progress(rec)
    todo = [i for i in range(plan.num_shards) if i not in done]
    if todo:
        ensure_ray()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller shows progress
        ctx.print_on_execution_start = False
        storage.make_dirs(plan.location())
        n_actors = _actor_count(actors, gpus_per_actor, len(todo))
        env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        # the embedded default (no MLFLOW_* set) resolves to SQLite under GANPIPE_HOME on the driver:
        # actors must use the same store, not MLflow's own default in their working directory
        from infra.settings import mlflow_registry_uri, mlflow_tracking_uri

        env.setdefault("MLFLOW_TRACKING_URI", mlflow_tracking_uri())
        env.setdefault("MLFLOW_REGISTRY_URI", mlflow_registry_uri())
        device = "cuda" if gpus_per_actor > 0 else "cpu"
        ds = ray.data.from_items([{"shard": i} for i in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(ShardSampler, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n_actors),
                            num_cpus=0 if gpus_per_actor > 0 else 1, num_gpus=gpus_per_actor or None,
                            fn_constructor_kwargs={"plan": plan, "batch_size": batch_size, "device": device,
                                                   "env": env, "write": write})
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            done[int(row["shard"])] = rec
            if progress is not None:
                progress(rec)
    return [done[i] for i in range(plan.num_shards)]


PROGRESS_LOG_FRACTION = 0.1  # log a progress line each 10% of the samples


class Progress:
    """Progress as shards complete: a bar (tqdm, stderr) and/or a log line every ~10%."""

    def __init__(self, plan: SamplingPlan, *, bar: bool = True, log: Callable[[str], None] | None = None):
        self._time = time.perf_counter
        self.t0 = self._time()
        self.plan, self.log, self.rows, self.next_log = plan, log, 0, PROGRESS_LOG_FRACTION
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=plan.num_samples, unit="samples", desc="sampling", file=sys.stderr)

    def __call__(self, record: dict) -> None:
        self.rows += record["rows"]
        if self.bar is not None:
            self.bar.update(record["rows"])
        frac = self.rows / self.plan.num_samples
        if self.log is not None and (frac >= self.next_log or self.rows == self.plan.num_samples):
            elapsed = self._time() - self.t0
            rate = self.rows / elapsed if elapsed > 0 else float("nan")
            eta = (self.plan.num_samples - self.rows) / rate if rate > 0 else float("nan")
            self.log(f"{self.rows}/{self.plan.num_samples} samples ({100 * frac:.0f}%), {rate:,.0f} samples/s, "
                     f"ETA {eta:.0f} s")
            while self.next_log <= frac:
                self.next_log += PROGRESS_LOG_FRACTION

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- commit and read -----------------------------------------------------------------------------


def existing_manifest(plan: SamplingPlan) -> dict | None:
    """The committed manifest at ``plan.out`` if it is this request's; SamplingError if another's."""
    marker = plan.location().join(MANIFEST_NAME)
    if not marker.exists():
        return None
    manifest = storage.read_json(marker)
    if manifest.get("fingerprint") != plan.fingerprint:
        m = manifest.get("model") or {}
        raise SamplingError(f"--out {plan.out} already holds a different committed sample set ({m.get('uri')}, "
                            f"seed {manifest.get('seed')}, {manifest.get('num_samples')} samples); "
                            f"choose another --out")
    return manifest


def build_manifest(plan: SamplingPlan, shards: list[dict], options: dict | None = None) -> dict:
    m = plan.model
    return {
        "format": FORMAT,
        "fingerprint": plan.fingerprint,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "model": {"requested_uri": m.requested_uri, "uri": m.uri, "name": m.name, "version": m.version,
                  "alias": m.alias, "run_id": m.run_id, "weights_sha256": m.weights_sha256},
        "seed": plan.seed,
        "num_samples": plan.num_samples,
        "sample_format": plan.format,
        "shape": list(m.sample_shape),
        "dtype": "float32" if plan.format == "parquet" else "uint8",
        "value_space": "data",  # the data's original value range, as predict returns
        "normalisation": m.normalisation,
        "z_dim": m.z_dim,
        "latent_block": LATENT_BLOCK,
        "num_rows": sum(s["rows"] for s in shards),
        "num_bytes": sum(s["bytes"] for s in shards),
        "num_shards": len(shards),
        "shards": shards,
        "layout": asdict(plan.layout),
        "options": {**plan.options, **(options or {})},
    }


def commit_samples(plan: SamplingPlan, shards: list[dict], options: dict | None = None) -> dict:
    """Commit by writing the manifest last, after checking every shard is in place; then drop the
    pending records. Returns the manifest (an existing one of the same request is kept)."""
    existing = existing_manifest(plan)
    if existing is not None:
        return existing
    shards = sorted(shards, key=lambda s: s["start"])
    if len(shards) != plan.num_shards or sum(s["rows"] for s in shards) != plan.num_samples:
        raise SamplingError(f"{plan.out}: {len(shards)} shards written, expected {plan.num_shards}; not committing")
    loc = plan.location()
    for s in shards:  # a shard lost after it was written must not be committed
        if plan.format == "parquet":
            info = loc.join(s["path"]).info()
            if info.type != pafs.FileType.File or info.size != s["bytes"]:
                raise SamplingError(f"{storage.join_uri(plan.out, s['path'])}: missing or not {s['bytes']} bytes; "
                                    "not committing")
    manifest = build_manifest(plan, shards, options)
    storage.commit_json(loc.join(MANIFEST_NAME), manifest)
    pending = loc.join(PENDING_DIR)
    try:  # best effort: leftovers are harmless (readers go by the manifest)
        if pending.exists():
            loc.fs.delete_dir(pending.path)
        for info in storage.list_files(loc):  # temporary files of writers killed midway (local disk)
            if ".tmp-" in posixpath.basename(info.path):
                loc.fs.delete_file(info.path)
    except OSError as e:
        log.warning("could not tidy %s: %s", plan.out, e)
    return manifest


@dataclass
class SampleSet:
    """A committed sample set."""

    uri: str
    manifest: dict
    location: Location

    @property
    def shard_uris(self) -> list[str]:
        return [storage.join_uri(self.uri, s["path"]) for s in self.manifest["shards"]]

    @property
    def num_rows(self) -> int:
        return self.manifest["num_rows"]

    def verify(self) -> None:
        """Recompute every Parquet shard's sha256; raise SamplingError naming the first mismatch."""
        for s in self.manifest["shards"]:
            if self.manifest["sample_format"] != "parquet":
                continue
            digest, size = storage.sha256_of(self.location.join(s["path"]))
            if digest != s["sha256"] or size != s["bytes"]:
                raise SamplingError(f"{storage.join_uri(self.uri, s['path'])}: checksum mismatch")

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(index int64 (n,), x float32 (n, *shape)) of a Parquet sample set, in index order."""
        if self.manifest["sample_format"] != "parquet":
            raise SamplingError(f"{self.uri}: a {self.manifest['sample_format']} sample set has no arrays")
        tables = [pq.read_table(self.location.join(s["path"]).path, filesystem=self.location.fs)
                  for s in self.manifest["shards"]]
        table = pa.concat_tables(tables)
        col = table.column("x").combine_chunks()
        x = col.flatten().to_numpy(zero_copy_only=False).reshape((len(col), *self.manifest["shape"]))
        return table.column("index").to_numpy(), x.astype(np.float32, copy=False)


def open_samples(uri: str, *, verify: bool = False) -> SampleSet:
    loc = storage.resolve(uri)
    marker = loc.join(MANIFEST_NAME)
    if not marker.exists():
        raise SamplingError(f"{loc.uri}: no committed sample set (no {MANIFEST_NAME}; an interrupted job? run it "
                            "again)")
    manifest = storage.read_json(marker)
    if manifest.get("format") != FORMAT:
        raise SamplingError(f"{loc.uri}: unknown manifest format {manifest.get('format')!r} (expected {FORMAT})")
    s = SampleSet(loc.uri, manifest, loc)
    if verify:
        s.verify()
    return s


def sample(model: str | ResolvedModel, num_samples: int, seed: int, out: str, *, fmt: str = "parquet",
           batch_size: int = DEFAULT_BATCH_SIZE, actors: int = 1, gpus_per_actor: float = 0.0,
           rows_per_shard: int | None = None, progress: Callable[[dict], None] | None = None) -> SampleSet:
    """Plan, generate with Ray Data, commit: the whole job without Prefect. A no-op when ``out``
    already holds this request's committed set."""
    plan = plan_sampling(model, num_samples, seed, out, fmt=fmt, rows_per_shard=rows_per_shard)
    if existing_manifest(plan) is None:
        shards = generate_shards(plan, batch_size=batch_size, actors=actors, gpus_per_actor=gpus_per_actor,
                                 progress=progress)
        commit_samples(plan, shards, {"batch_size": batch_size, "actors": actors, "gpus_per_actor": gpus_per_actor})
    return open_samples(plan.out)
