"""Batch sampling from a registered generator: model -> rows, written as a committed shard set
(infra.data.shardset) by Ray Data actors.

    <out>/part-00000.parquet ... part-NNNNN.parquet   columns: index int64, x fixed_size_list<float32>
    <out>/_manifest.json                              <- written last; its presence commits the set
    (--format png: <out>/part-NNNNN/<index:09d>.png instead of each Parquet shard)

Sample i depends only on (model version, seed, i): its latent comes from gan_core's seed-addressed
blocks and G runs on whole aligned blocks (gan_core.sampling.generate), so neither the batch size nor
the number of actors changes a value. The shard layout (rows per shard, row groups, compression) is
a function of the request alone, so the same request writes the same bytes however it runs.

Pipeline (pipelines/sample.py wraps the same steps in Prefect tasks):
    plan = plan_sampling("models:/digits-gen@champion", 100_000, seed=0, out="s3://b/samples/x", actors=4)
        # resolves the alias to a concrete version once, so every actor loads the same one
    shard_writer.execute(plan)
        # plan.write_shards: Ray Data from_items(shards) -> map_batches(ShardSampler) on an actor pool:
        # each actor loads the model ONCE and generates and writes its shards' seed ranges; then commit
    sample(...)                                        # plan + execute -> the SampleSet
    open_samples(out).load_arrays()                    # reader: (index, x) of a committed set

Resume: the plan is resumable: each finished shard is noted in ``_pending/part-NNNNN.json`` (with the
request's fingerprint); a rerun of the same request skips those shards, writes the rest and commits.
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
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, NonNegativeInt

from gan_core.data import Normalisation
from gan_core.sampling import LATENT_BLOCK, MAX_NUM_SAMPLES, check_truncation

from infra.base import storage
from infra.base.settings import mlflow_client, mlflow_registry_uri, mlflow_tracking_uri
from infra.base.storage import StorageError, first_line
from infra.data import shard_writer, shardset
from infra.data.shard_writer import ShardPlan
from infra.data.shardset import MANIFEST_NAME, PNG_FOLDERS, Layout, Manifest, ShardEntry, ShardSet, ShardSetError

log = logging.getLogger(__name__)

FORMAT = "ganpipe.samples/2"  # /2: the manifest carries its field digests (/1 is read as it is)
MODEL_FORMAT = "ganpipe-generator/1"  # infra.models.generator_model.FORMAT
FORMATS = ("parquet", "png")
LAYOUT_VERSION = 1  # bump when shard encoding changes: part of every request fingerprint
DEFAULT_TARGET_SHARD_MIB = 16.0
MIN_SHARDS = 16  # small requests still split into enough shards to keep several actors busy
DEFAULT_COMPRESSION = "zstd"
DEFAULT_BATCH_SIZE = 4096
# Documented bounds of one request (beside gan_core.sampling.MAX_NUM_SAMPLES), checked before anything
# starts: latents per forward pass, actors, and the float32 bytes of one shard (an actor holds one whole).
MAX_BATCH_SIZE = 1 << 20
MAX_ACTORS = 1024
MAX_SHARD_BYTES = 1 << 30
# Variables a sampling actor needs to reach MLflow and storage, handed over in its runtime_env: they
# may have been set in the driver after Ray started. MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI too,
# always (see actor_env). NOTE: never credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ...): Ray
# writes every runtime_env, env_vars included, into its session logs (runtime_env_agent.log; found by
# tests/reliability/test_secrets.py). Actors take credentials from their own environment, as every Ray
# worker does: inherited from the process that started a local instance, the cluster's own chain
# (instance role, IRSA, mounted secrets) on a cluster.
FORWARDED_ENV = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_REQUEST_CHECKSUM_CALCULATION",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")


class SamplingError(ShardSetError):
    """A sampling request that cannot be served (bad model URI, bad options, a conflicting output);
    the message is one line."""


class SampleShard(ShardEntry):
    start: NonNegativeInt  # the index of its first sample


class SampledModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    requested_uri: str
    uri: str
    name: str | None  # None: a runs:/ or models:/<model_id> URI, not a registry entry
    version: str | None


class SampleManifest(Manifest):
    """A sample set's own manifest fields that readers rely on (beside shardset.Manifest's)."""

    shards: list[SampleShard]
    fingerprint: str
    model: SampledModel
    seed: NonNegativeInt
    num_samples: NonNegativeInt
    sample_format: Literal["parquet", "png"]
    truncation: float | None = None  # the truncation threshold psi; None (absent in older sets): off
    class_label: NonNegativeInt | None = None  # the one class drawn (--class); absent: class-balanced or unconditional


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
    normalisation: Normalisation
    weights_sha256: str
    # the version's pyfunc takes params truncation (its signature lists it): versions registered before
    # truncated sampling existed do not, and their shipped code would ignore it
    supports_truncation: bool = False
    # K for a class-conditional generator (metadata ganpipe.num_classes), 0 for an unconditional one (and for
    # versions registered before class-conditional sampling, which lack the field)
    num_classes: int = 0
    # the version's pyfunc takes params label (its signature lists it only for class-conditional versions)
    supports_class_label: bool = False

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
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = (model_uri or "").strip()
    name = version = alias = run_id = None
    if uri.startswith("models:/"):
        name, version, alias = _parse_registry_uri(uri)
        client = mlflow_client()
        try:
            if alias is not None:
                mv = client.get_model_version_by_alias(name, alias)
            elif version is not None:
                mv = client.get_model_version(name, version)
            else:
                mv = None  # a logged model id
        except MlflowException as e:
            raise SamplingError(f"--model {uri!r}: {first_line(e)}") from None
        except Exception as e:  # unreachable tracking server, bad database, ...
            raise SamplingError(f"--model {uri!r}: cannot reach the MLflow registry ({first_line(e)})") from None
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
        info = mlflow.models.get_model_info(pinned)
    except MlflowException as e:
        raise SamplingError(f"--model {uri!r}: {first_line(e)}") from None
    except OSError as e:
        raise SamplingError(f"--model {uri!r}: cannot read the model ({first_line(e)})") from None
    meta = (info.metadata or {}).get("ganpipe") or {}
    signature_params = {p.name for p in getattr(getattr(info.signature, "params", None), "params", None) or []}
    pyfunc_conf = (info.flavors.get("python_function") or {}).get("config") or {}
    if meta.get("format") != MODEL_FORMAT:
        raise SamplingError(f"--model {uri!r}: not a ganpipe generator (metadata format {meta.get('format')!r}, "
                            f"expected {MODEL_FORMAT!r})")
    return ResolvedModel(
        requested_uri=uri, uri=pinned, name=name, version=version, alias=alias, run_id=run_id,
        z_dim=int(meta["z_dim"]), sample_shape=tuple(int(s) for s in meta["sample_shape"]),
        normalisation=Normalisation.from_dict(meta.get("normalisation")),
        weights_sha256=str((pyfunc_conf.get("sha256") or {}).get("weights", "")),
        supports_truncation="truncation" in signature_params, num_classes=int(meta.get("num_classes") or 0),
        supports_class_label="label" in signature_params)


def load_generator_model(model_uri: str, *, device: str = "cpu"):
    """Load a pinned model URI as the pyfunc's python model (G, normalisation), G moved to ``device``."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    pm = model.unwrap_python_model()
    if device != "cpu":
        import torch

        pm.device = torch.device(device)
        pm.G = pm.G.to(pm.device)
    return pm


def generate_range(pm, seed: int, start: int, count: int, batch_size: int, truncation: float | None = None,
                   class_label: int | None = None) -> np.ndarray:
    """Samples [start, start + count) of ``seed`` in the data's value range, float32 (count, *shape):
    exactly ``predict(params={"num_samples": count, "seed": seed, "start": start, "truncation": ...,
    "label": ...})``, drawn with the version's own shipped engine (its latents and forward passes, never
    this process's gan_core). ``truncation`` None or 0: off. ``class_label``: one class k of a
    class-conditional version, or None (its default: class-balanced). Raises SamplingError (one line)
    for a truncation or a class the version cannot do (registered before truncated or class-conditional
    sampling: its code would ignore it)."""
    psi = check_truncation(truncation)
    if psi is not None and not getattr(pm, "SUPPORTS_TRUNCATION", False):
        raise SamplingError(truncation_refusal(truncation))
    if class_label is not None and not getattr(pm, "SUPPORTS_CLASS_LABEL", False):
        raise SamplingError(class_refusal(class_label, int(getattr(pm, "num_classes", 0) or 0),
                                          supports_class_label=False))
    if psi is not None or class_label is not None:
        kwargs = {} if class_label is None else {"class_label": class_label}
        return pm.sample(count, seed, start=start, batch_size=batch_size, truncation=truncation, **kwargs)
    if hasattr(pm, "sample"):
        return pm.sample(count, seed, start=start, batch_size=batch_size)
    if not hasattr(pm, "to_data_range"):
        # a version registered before the mapping was public runs its own shipped code: its public predict
        # gives the same samples (seed-addressed), at predict's own batch size
        return pm.predict(None, None, params={"num_samples": count, "seed": seed, "start": start})
    from gan_core.sampling import generate  # versions between the two: this process's latents, their G

    x = generate(pm.G, count, seed, start=start, batch_size=batch_size, device=pm.device)
    return pm.to_data_range(x)


def truncation_refusal(truncation: float) -> str:
    return (f"--truncation {truncation:g}: this model version was registered before truncated sampling "
            f"existed (its pyfunc has no 'truncation' param); register it again to sample it truncated, "
            f"or leave --truncation out")


def class_refusal(class_label: int, num_classes: int, *, supports_class_label: bool) -> str | None:
    """The one-line refusal of ``--class class_label`` for a version with ``num_classes`` classes whose
    pyfunc does (``supports_class_label``) or does not take params label; None when it can be drawn."""
    if num_classes > 0 and not supports_class_label:
        return (f"--class {class_label}: this model version was registered before class-conditional sampling "
                f"existed (its pyfunc has no 'label' param); register it again to sample one class, or leave "
                f"--class out")
    if not supports_class_label or num_classes == 0:
        return (f"--class {class_label}: this model version has no classes (an unconditional generator, or one "
                f"registered before class-conditional sampling: its pyfunc has no 'label' param); leave --class "
                f"out, or train with network.conditional = true")
    if not 0 <= class_label < num_classes:
        return (f"--class: got {class_label}; allowed: an integer from 0 to {num_classes - 1} (this model's "
                f"{num_classes} classes)")
    return None


# --- the plan -------------------------------------------------------------------------------------


def choose_layout(num_samples: int, sample_shape: tuple[int, ...], fmt: str, *, rows_per_shard: int | None = None,
                  target_shard_mib: float = DEFAULT_TARGET_SHARD_MIB, compression: str = DEFAULT_COMPRESSION
                  ) -> Layout:
    """Rows per shard: a whole number of latent blocks (no block is generated twice), at most
    ~target_shard_mib of float32 and at most num_samples / MIN_SHARDS (rounded up to a block), so it
    depends on the request only."""
    row_bytes = 4 * math.prod(sample_shape)
    if rows_per_shard is None:
        rows_per_shard = min(shardset.rows_for_bytes(row_bytes, target_shard_mib, LATENT_BLOCK),
                             LATENT_BLOCK * max(1, math.ceil(num_samples / MIN_SHARDS / LATENT_BLOCK)))
    elif rows_per_shard <= 0:
        raise SamplingError(f"--rows-per-shard: got {rows_per_shard}; allowed: a positive integer")
    else:
        rows_per_shard = LATENT_BLOCK * math.ceil(rows_per_shard / LATENT_BLOCK)
        # an actor holds one shard's samples at once: bound its memory, whatever N
        if rows_per_shard * row_bytes > MAX_SHARD_BYTES:
            raise SamplingError(f"--rows-per-shard: got {rows_per_shard:,} for samples of shape {sample_shape} "
                                f"({rows_per_shard * row_bytes / 2**20:,.0f} MiB per shard); allowed: at most "
                                f"{MAX_SHARD_BYTES >> 20} MiB per shard ({MAX_SHARD_BYTES // row_bytes:,} rows)")
    return Layout(int(rows_per_shard), shardset.default_row_group_rows(row_bytes),
                  compression if fmt == "parquet" else PNG_FOLDERS, layout_version=LAYOUT_VERSION)


def actor_env() -> dict[str, str]:
    """The environment of a sampling actor, resolved here in the driver: the forwarded variables that
    are set, and MLflow's URIs (the embedded default when unset: an actor's own default would be a
    store in its working directory)."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    return {**env, "MLFLOW_TRACKING_URI": mlflow_tracking_uri(), "MLFLOW_REGISTRY_URI": mlflow_registry_uri()}


@dataclass
class SamplingPlan(ShardPlan):
    """Everything the actors and the commit need; built once, before any sample is drawn."""

    FORMAT: ClassVar[str] = FORMAT
    RESUMABLE: ClassVar[bool] = True
    MANIFEST_SCHEMA: ClassVar[type[Manifest]] = SampleManifest
    SHARD_KEYS: ClassVar[tuple[str, ...]] = ("path", "start", "rows", "bytes", "sha256")
    error: ClassVar[type[ShardSetError]] = SamplingError

    model: ResolvedModel
    num_samples: int
    seed: int
    out: str  # the output folder's URI
    format: str
    layout: Layout
    shard_ranges: list[tuple[int, int]]  # [start, stop) sample indices
    fingerprint: str  # hash of (model identity, seed, num_samples, format, layout, truncation if on, class if given)
    batch_size: int = DEFAULT_BATCH_SIZE  # latents per forward pass: memory only, values unchanged
    actors: int = 1
    gpus_per_actor: float = 0.0
    options: dict = field(default_factory=dict)
    truncation: float | None = None  # the truncation threshold psi (None: off), part of the fingerprint
    class_label: int | None = None  # the one class drawn (None: class-balanced or unconditional); fingerprinted if set
    # an s3:// output: the driver's S3 filesystem with its resolved credentials and endpoint, so that actors
    # started before AWS_* were set in the driver write with them (anonymous writes were stored with
    # aws-chunked framing by moto, and the commit found every shard the wrong size)
    s3: Any = None

    def location(self) -> storage.Location:
        return storage.resolve(self.out, s3=self.s3)

    @property
    def uri(self) -> str:
        return self.out

    def write_samples(self, index: int, x: np.ndarray) -> dict:
        """Write shard `index` from its samples x (float32 (rows, *shape), data units); its record."""
        start, stop = self.shard_ranges[index]
        assert len(x) == stop - start, (len(x), start, stop)
        if self.format == "parquet":
            schema = shardset.arrow_schema(
                [pa.field("index", pa.int64(), nullable=False), shardset.x_field(self.model.sample_shape, "float32")],
                {"shape": list(self.model.sample_shape), "dtype": "float32", "model": self.model.identity(),
                 "seed": self.seed, "value_space": "data"})
            table = pa.Table.from_arrays([pa.array(np.arange(start, stop, dtype=np.int64)),
                                          shardset.fixed_size_list(x.astype(np.float32, copy=False))], schema=schema)
            # NOTE: statistics on index only (readers may filter by it); none for the float payload.
            record = shard_writer.write_parquet_shard(self, index, schema, [table], statistics=["index"])
        else:  # a folder of PNGs; sha256 over the files' bytes in index order (what verify recomputes)
            name, h, size = self.layout.shard_name(index), hashlib.sha256(), 0
            for i, png in zip(range(start, stop), encode_pngs(self.model.normalisation, x)):
                storage.write_bytes(self.location().join(name, f"{i:09d}.png"), png)
                h.update(png)
                size += len(png)
            record = {"path": name, "rows": stop - start, "bytes": size, "sha256": h.hexdigest()}
        return {**record, "start": start}

    def write_shards(self, indices: list[int], *, write: bool = True) -> Iterator[tuple[int, dict]]:
        """Generate and write these shards with Ray Data: from_items(indices) -> map_batches(ShardSampler)
        on a pool of actors, each with one loaded generator; yields (index, record) in the driver as shards
        complete. ``write=False`` generates and discards (benchmarks: the pipeline without the writes)."""
        import ray.data

        from infra.base.ray_cluster import ensure_ray

        ensure_ray()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller shows progress
        ctx.print_on_execution_start = False
        n_actors = _actor_count(self.actors, self.gpus_per_actor, len(indices))
        ds = ray.data.from_items([{"shard": i} for i in indices], override_num_blocks=len(indices))
        ds = ds.map_batches(ShardSampler, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n_actors),
                            num_cpus=0 if self.gpus_per_actor > 0 else 1, num_gpus=self.gpus_per_actor or None,
                            # NOTE: Ray merges these env_vars into the job's (the setup hook stays)
                            runtime_env={"env_vars": actor_env()},
                            fn_constructor_kwargs={"plan": self, "write": write})
        for row in ds.iter_rows():
            yield int(row["shard"]), json.loads(row["record"])

    def manifest_fields(self, shards: list[dict]) -> dict[str, Any]:
        if sum(s["rows"] for s in shards) != self.num_samples:
            raise SamplingError(f"{self.out}: {sum(s['rows'] for s in shards)} samples written, expected "
                                f"{self.num_samples}; not committing")
        m = self.model
        return {
            "fingerprint": self.fingerprint,
            "model": {"requested_uri": m.requested_uri, "uri": m.uri, "name": m.name, "version": m.version,
                      "alias": m.alias, "run_id": m.run_id, "weights_sha256": m.weights_sha256},
            "seed": self.seed,
            "num_samples": self.num_samples,
            "sample_format": self.format,
            "truncation": self.truncation,
            # NOTE: only when given, like the fingerprint's key
            **({"class_label": self.class_label} if self.class_label is not None else {}),
            "shape": list(m.sample_shape),
            "dtype": "float32" if self.format == "parquet" else "uint8",
            "value_space": "data",  # the data's original value range, as predict returns
            "normalisation": m.normalisation.to_dict(),
            "z_dim": m.z_dim,
            "latent_block": LATENT_BLOCK,
            "options": {**self.options, "batch_size": self.batch_size, "actors": self.actors,
                        "gpus_per_actor": self.gpus_per_actor},
        }

    def check_committed(self, manifest: dict) -> None:
        if manifest.get("fingerprint") != self.fingerprint:
            m = manifest.get("model") or {}
            trunc = f", truncation {manifest['truncation']:g}" if manifest.get("truncation") else ""
            klass = f", class {manifest['class_label']}" if manifest.get("class_label") is not None else ""
            raise SamplingError(f"--out {self.out} already holds a different committed sample set ({m.get('uri')}, "
                                f"seed {manifest.get('seed')}{trunc}{klass}, {manifest.get('num_samples')} samples); "
                                f"choose another --out")


def check_request(num_samples: int, seed: int, out: str, *, fmt: str = "parquet", rows_per_shard: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, actors: int = 1, gpus_per_actor: float = 0.0,
                  truncation: float | None = None, class_label: int | None = None) -> storage.Location:
    """Every check on a sampling request that needs neither the model nor Ray: the sizes against their
    documented bounds (MAX_NUM_SAMPLES, MAX_BATCH_SIZE, MAX_ACTORS), `truncation` (None, or a finite
    number > 0), `class_label` (None, or an integer >= 0; its upper bound is the model's, checked by
    plan_sampling), and `out`, which must be a folder
    that can be written (not an existing file; the S3 bucket reachable). The CLI calls it before any
    service starts; plan_sampling again. Returns out's Location; SamplingError names the option."""
    if fmt not in FORMATS:
        raise SamplingError(f"--format: got {fmt!r}; allowed: {', '.join(FORMATS)}")
    for option, value, ok, allowed in (
            ("--num-samples", num_samples, 0 < num_samples <= MAX_NUM_SAMPLES,
             f"an integer from 1 to {MAX_NUM_SAMPLES:,} (gan_core.sampling.MAX_NUM_SAMPLES)"),
            ("--seed", seed, seed >= 0, "an integer >= 0"),
            ("--batch-size", batch_size, 0 < batch_size <= MAX_BATCH_SIZE, f"an integer from 1 to {MAX_BATCH_SIZE}"),
            ("--actors", actors, 0 < actors <= MAX_ACTORS, f"an integer from 1 to {MAX_ACTORS}"),
            ("--gpus", gpus_per_actor, 0 <= gpus_per_actor <= 8, "a number from 0 to 8"),
            ("--rows-per-shard", rows_per_shard, rows_per_shard is None or 0 < rows_per_shard <= MAX_NUM_SAMPLES,
             "a positive integer")):
        if not ok:
            raise SamplingError(f"{option}: got {value:,}; allowed: {allowed}")
    if truncation is not None and (isinstance(truncation, bool) or not isinstance(truncation, (int, float))
                                   or not math.isfinite(truncation) or truncation <= 0):
        raise SamplingError(f"--truncation: got {truncation!r}; allowed: a finite number > 0 (the threshold psi "
                            f"on |z_j|; leave it out for no truncation)")
    if class_label is not None and (isinstance(class_label, bool) or not isinstance(class_label, (int, np.integer))
                                    or class_label < 0):
        raise SamplingError(f"--class: got {class_label!r}; allowed: an integer >= 0 (a class of a class-conditional "
                            f"model; leave it out for class-balanced samples)")
    try:
        loc = storage.resolve(out)
        storage.check_output_folder(loc, "--out")
    except StorageError as e:
        raise SamplingError(str(e) if str(e).startswith("--out") else f"--out: {e}") from None
    shard_writer.check_destination(loc, FORMAT, SamplingError, "--out")  # new, empty, or a sample set's own
    return loc


def plan_sampling(model: str | ResolvedModel, num_samples: int, seed: int, out: str, *, fmt: str = "parquet",
                  rows_per_shard: int | None = None, target_shard_mib: float = DEFAULT_TARGET_SHARD_MIB,
                  compression: str = DEFAULT_COMPRESSION, batch_size: int = DEFAULT_BATCH_SIZE, actors: int = 1,
                  gpus_per_actor: float = 0.0, truncation: float | None = None, class_label: int | None = None
                  ) -> SamplingPlan:
    """Validate the request (check_request) and fix the model version, shard layout and fingerprint
    (cheap: the model is not loaded, and the shard ranges are computed on access, so planning takes
    the same memory for any request). ``truncation``: None (off) or psi > 0, recorded in the manifest
    and the fingerprint (a different truncation is a different sample set); refused for a version
    registered before truncated sampling. ``class_label``: None (a class-conditional version's samples
    are class-balanced: sample i has class i mod K) or one class k in [0, K), recorded in the manifest and
    the fingerprint only when given; refused for an unconditional version, a k outside [0, K) and a
    version registered before class-conditional sampling (read from its signature and metadata, the
    model is not loaded). Raises SamplingError naming the option."""
    loc = check_request(num_samples, seed, out, fmt=fmt, rows_per_shard=rows_per_shard, batch_size=batch_size,
                        actors=actors, gpus_per_actor=gpus_per_actor, truncation=truncation, class_label=class_label)
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    truncation = None if truncation is None else float(truncation)
    if truncation is not None and not resolved.supports_truncation:
        raise SamplingError(f"{truncation_refusal(truncation)} ({resolved.requested_uri})")
    class_label = None if class_label is None else int(class_label)
    if class_label is not None:
        refusal = class_refusal(class_label, resolved.num_classes, supports_class_label=resolved.supports_class_label)
        if refusal is not None:
            raise SamplingError(f"{refusal} ({resolved.requested_uri})")
    if fmt == "png" and not resolved.is_image:
        raise SamplingError(f"--format png needs an image model (samples of shape (C, H, W)); "
                            f"{resolved.requested_uri} makes samples of shape {resolved.sample_shape}")
    if fmt == "png" and resolved.sample_shape[0] not in (1, 3, 4):
        raise SamplingError(f"--format png: {resolved.sample_shape[0]} channels cannot be a PNG (1, 3 or 4)")
    layout = choose_layout(num_samples, resolved.sample_shape, fmt, rows_per_shard=rows_per_shard,
                           target_shard_mib=target_shard_mib, compression=compression)
    return SamplingPlan(resolved, int(num_samples), int(seed), loc.uri, fmt, layout,
                        shardset.split_rows(num_samples, layout.rows_per_shard, balanced=False),
                        # NOTE: truncation only when on and the class only when given, so that requests without
                        # them keep their fingerprints
                        shardset.content_address({"model": resolved.identity(), "num_samples": num_samples,
                                                  "seed": seed, "format": fmt, "layout": asdict(layout),
                                                  **({"truncation": truncation} if truncation else {}),
                                                  **({"class_label": class_label} if class_label is not None
                                                     else {})}),
                        int(batch_size), int(actors),
                        float(gpus_per_actor), {"rows_per_shard": rows_per_shard, "target_shard_mib": target_shard_mib,
                                                "compression": compression}, truncation, class_label,
                        storage.portable_s3_filesystem() if storage.is_s3(loc.uri) else None)


def encode_pngs(normalisation: Normalisation, x: np.ndarray) -> list[bytes]:
    """One PNG per sample: data values mapped back to the generator's [-1, 1] and then to 0..255."""
    import torch
    from PIL import Image

    from gan_core.sampling import to_uint8_images

    imgs = to_uint8_images(normalisation.to_model(torch.from_numpy(x)))  # (n, H, W, C)
    out = []
    for img in imgs:
        buf = io.BytesIO()
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img, mode=None).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# --- Ray Data ------------------------------------------------------------------------------------


class ShardSampler:
    """Ray Data callable class: one loaded generator per actor; each input row is a shard index.

    The model is loaded once, in the constructor, from the pinned URI (MLflow's URIs come from the
    actor's runtime_env, see actor_env).
    """

    def __init__(self, plan: SamplingPlan, *, write: bool = True):
        import warnings

        import torch

        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")

        device = "cuda" if plan.gpus_per_actor > 0 else "cpu"
        if device == "cpu":
            torch.set_num_threads(1)  # one actor per CPU; tiny nets are fastest single-threaded
        self.plan, self.write = plan, write
        self.pm = load_generator_model(plan.model.uri, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for index in batch["shard"].tolist():
            start, stop = self.plan.shard_ranges[index]
            x = generate_range(self.pm, self.plan.seed, start, stop - start, self.plan.batch_size,
                               self.plan.truncation, self.plan.class_label)
            records.append(self.plan.write_samples(index, x) if self.write else
                           {"path": self.plan.layout.shard_name(index), "start": start, "rows": len(x), "bytes": 0,
                            "sha256": ""})
        return {"shard": np.asarray(batch["shard"], dtype=np.int64),
                "record": np.asarray([json.dumps(r, sort_keys=True) for r in records], dtype=object)}


def _actor_count(actors: int, gpus_per_actor: float, todo: int) -> int:
    import ray

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


# --- reading, and the whole job -------------------------------------------------------------------


@dataclass
class SampleSet(ShardSet):
    """A committed sample set."""

    error: ClassVar[type[ShardSetError]] = SamplingError
    checksum_error: ClassVar[type[ShardSetError]] = SamplingError

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(index int64 (n,), x float32 (n, *shape)) of a Parquet sample set, in index order."""
        if self.manifest["sample_format"] != "parquet":
            raise SamplingError(f"{self.uri}: a {self.manifest['sample_format']} sample set has no arrays")
        table = self.read_table()
        return table.column("index").to_numpy(), shardset.column_to_numpy(table, self.shape).astype(np.float32,
                                                                                                    copy=False)


def open_samples(uri: str, *, verify: bool = False) -> SampleSet:
    """The committed sample set at `uri`; SamplingError when there is none (or its manifest is not one,
    or names a foreign shard), and on a checksum mismatch with `verify`."""
    loc = storage.resolve(uri)
    manifest = shardset.read_manifest(loc, FORMAT, SamplingError, SampleManifest)
    if manifest is None:
        raise SamplingError(f"{loc.uri}: no committed sample set (no {MANIFEST_NAME}; an interrupted job? run it "
                            "again)")
    s = SampleSet(loc.uri, manifest, loc)
    if verify:
        s.verify()
    return s


def sample(model: str | ResolvedModel, num_samples: int, seed: int, out: str, *, fmt: str = "parquet",
           batch_size: int = DEFAULT_BATCH_SIZE, actors: int = 1, gpus_per_actor: float = 0.0,
           rows_per_shard: int | None = None, progress: Callable[[int], None] | None = None,
           truncation: float | None = None, class_label: int | None = None) -> SampleSet:
    """Plan, generate with Ray Data, commit: the whole job without Prefect. A no-op when ``out``
    already holds this request's committed set. ``progress(samples)`` as shards complete;
    ``truncation``: None (off) or psi > 0; ``class_label``: None (class-balanced) or one class k (see
    plan_sampling)."""
    plan = plan_sampling(model, num_samples, seed, out, fmt=fmt, rows_per_shard=rows_per_shard,
                         batch_size=batch_size, actors=actors, gpus_per_actor=gpus_per_actor, truncation=truncation,
                         class_label=class_label)
    shard_writer.execute(plan, progress)
    return open_samples(plan.out)
