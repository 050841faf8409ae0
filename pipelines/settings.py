"""One configuration tree for the pipeline: a preset, a TOML file, and `--set` overrides.

    preset = "digits"            # base GAN configuration (gan_core.config.PRESETS)

    [source]                     # what to stage (pipelines.stage.stage_dataset)
    uri = "digits"               # built-in name, a local path or s3:// URI; "" = the preset's dataset
    [storage]
    root = "s3://bucket/ganpipe" # where datasets live; "" = <GANPIPE_HOME>/data
    [train]                      # any GANConfig section: data, network, loss, g_optim, d_optim, train
    total_steps = 3000
    [cluster]                    # infra.train.plan.ClusterConfig, plus `address` (default: RAY_ADDRESS)
    num_workers = 2
    [tracking]                   # MLflow (the server comes from MLFLOW_TRACKING_URI)
    experiment = "ganpipe"
    [registry]
    model_name = "ganpipe-digits"
    [evaluation]
    num_samples = 0
    inception = "~/models/inception-2015-12-05.pt"  # FID weights; "" = $GANPIPE_FID_INCEPTION, else none
    [sampling]                   # the preview grid after registration
    num_samples = 64

Precedence: preset <- config file <- `--set section.field=value` <- explicit CLI flags.
Validation is complete before any work starts; errors name the field, the value and what is allowed.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gan_core.files import read_bytes_bounded
from gan_core.config import (MAX_CONFIG_DEPTH, PRESETS, ConfigError, GANConfig, check, check_depth, from_dict, get_preset,
                             parse_overrides, to_plain)
from infra.base.storage import join_uri
from infra.data.datasets import check_dataset_name
from infra.data.sources import BUILTIN_SOURCES
from infra.train.plan import ClusterConfig, validate_launch

GAN_SECTIONS = tuple(f.name for f in fields(GANConfig))
# registered model names travel inside models:/<name>/<version> URIs and folder names: no '/', no '..'
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# an alias travels in models:/<name>@<alias> URIs: MLflow's own rule (letters, digits, '-' and '_'; 'latest'
# and v<number> reserved), checked here before anything is evaluated or logged
ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
# The largest networks a request may build: G and D together, counted from the config (on torch's meta
# device: nothing is allocated). 10^9 parameters are 4 GB of float32 weights per copy, ~20 GB with G_ema,
# the gradients and both Adam moments; the presets use at most 1.5e7 (dcgan64). The widths alone are
# not a bound: network.g_width = 65536 is 1.4e11 parameters in the digits preset.
MAX_PARAMETERS = 10**9
# Staging bounds: points drawn for a built-in 2-D mixture (10^8 points are 800 MB of float32 held at once),
# and the side of a resized image (DCGAN builds up to 128 px; Pillow would try any size).
MAX_SOURCE_SAMPLES = 10**8
MAX_EVALUATION_SAMPLES = 100_000  # evaluation.num_samples
MAX_IMAGE_SIZE = 4096
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KiB of TOML; more is a mistake (or /dev/zero)
SAMPLE_FORMATS = ("png", "npy")
FID_INCEPTION_ENV = "GANPIPE_FID_INCEPTION"  # the default of evaluation.inception (read in resolve_settings)


# -- the pipeline's own sections ------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceSettings:
    """What `stage` reads (see `ganpipe stage --help`)."""

    uri: str = ""  # digits | ring8 | grid25 | a path or s3:// URI; "" = the preset's data.name
    name: str = ""  # dataset name; "" = the built-in's or the file/folder's name
    num_samples: int = 0  # 2-D mixtures: number of points; 0 = the preset's data.num_examples
    seed: int = 0  # 2-D mixtures: sampling seed
    image_size: int = 0  # images: resize + centre-crop to this many px; 0 = keep the size
    grayscale: bool = False  # images: one channel instead of RGB
    skip_bad: bool = False  # images: skip unreadable files instead of failing
    labels: str = ""  # .npy sources: a .npy file of integer labels
    image_column: str = ""  # Parquet: the encoded-image column; "" = image (files with a column x are numeric)
    label_column: str = ""  # Parquet images: the label column (integers or strings); "" = label, if present

    def __post_init__(self) -> None:
        check_staging_sizes(self.num_samples, self.seed, self.image_size, "source.")
        if self.name:
            check_dataset_name(self.name, "source.name")
        for key, column in (("source.image_column", self.image_column), ("source.label_column", self.label_column)):
            check(column == column.strip(), key, column, "a column name without surrounding spaces")
        check(not self.image_column or self.image_column != self.label_column, "source.label_column",
              self.label_column, "a column other than source.image_column")


@dataclass(frozen=True)
class StorageSettings:
    root: str = ""  # a local folder or s3://bucket/prefix; "" = <GANPIPE_HOME>/data


@dataclass(frozen=True)
class TrackingSettings:
    enabled: bool = True  # log the training run to MLflow (MLFLOW_TRACKING_URI, else SQLite in GANPIPE_HOME)
    experiment: str = "ganpipe"

    def __post_init__(self) -> None:
        check(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")


@dataclass(frozen=True)
class RegistrySettings:
    model_name: str = ""  # "" = ganpipe-<dataset name> (ganpipe-<dataset name>-conditional for a conditional G)
    alias: str = "champion"  # moved to the new version only if it is better (ties keep the holder)
    promote: bool = True  # consider the alias at all
    export: bool = True  # ship torch.export / ONNX files inside the model

    def __post_init__(self) -> None:
        check_alias(self.alias, "registry.alias")
        if self.model_name:
            check_model_name(self.model_name, "registry.model_name")


def check_staging_sizes(num_samples: int, seed: int, image_size: int, prefix: str) -> None:
    """ConfigError unless the staging sizes are within their bounds; fields named `prefix` + name
    (`source.` for the config, `--` for `ganpipe stage`, whose flags use dashes)."""
    dash = (lambda n: n.replace("_", "-")) if prefix == "--" else (lambda n: n)
    check(0 <= num_samples <= MAX_SOURCE_SAMPLES, prefix + dash("num_samples"), num_samples,
          f"an integer from 0 to {MAX_SOURCE_SAMPLES:,}")
    check(0 <= seed < 2**63, prefix + "seed", seed, "an integer in [0, 2**63)")
    check(0 <= image_size <= MAX_IMAGE_SIZE, prefix + dash("image_size"), image_size,
          f"an integer from 0 to {MAX_IMAGE_SIZE} (0 = keep the size)")


def check_model_name(name: Any, where: str) -> None:
    """ConfigError naming `where` (registry.model_name, register --name) unless `name` can be a registered
    model name: it travels in models:/<name>/<version> URIs and in folder names."""
    from infra.models.registry import PROMOTION_LOCK_SUFFIX  # the registry's lock for <name> is a model of this name

    check(isinstance(name, str) and MODEL_NAME.fullmatch(name) is not None and ".." not in name
          and not name.endswith(PROMOTION_LOCK_SUFFIX), where, name,
          f"letters, digits, '.', '-' and '_' (no '..', not ending in {PROMOTION_LOCK_SUFFIX}), starting with a "
          "letter or digit, at most 128")


def check_alias(alias: Any, where: str) -> None:
    """ConfigError naming `where` (registry.alias, register --alias) unless `alias` is a valid model alias."""
    check(isinstance(alias, str) and ALIAS.fullmatch(alias) is not None and alias.lower() != "latest"
          and re.fullmatch(r"[vV]\d+", alias) is None, where, alias,
          "letters, digits, '-' and '_' (1 to 255), not 'latest' or v<number> (MLflow reserves them)")


def check_network_size(gan: GANConfig) -> int:
    """The parameter count of G and D for `gan`, computed on torch's meta device (no memory allocated);
    ConfigError naming the network fields unless it is at most MAX_PARAMETERS."""
    from gan_core.networks import parameter_counts

    count = sum(parameter_counts(gan))
    n = gan.network
    check(count <= MAX_PARAMETERS, "network", f"{n.arch} z_dim={n.z_dim} g_width={n.g_width} d_width={n.d_width} "
          f"g_depth={n.g_depth} d_depth={n.d_depth} ({count:.3g} parameters in G and D)",
          f"at most {MAX_PARAMETERS:.0e} parameters (pipelines.settings.MAX_PARAMETERS)")
    return count


@dataclass(frozen=True)
class EvaluationSettings:
    num_samples: int = 0  # generated samples; 0 = as many as the reference half of the real data (<= 10,000)
    seed: int = 0
    # FID Inception weights: a local copy of NVIDIA's TorchScript inception-2015-12-05.pt; then the metric is
    # FID ("fid"), comparable with papers. "" = $GANPIPE_FID_INCEPTION, else none: images use random_conv256
    inception: str = ""

    def __post_init__(self) -> None:
        check(0 <= self.num_samples <= MAX_EVALUATION_SAMPLES, "evaluation.num_samples", self.num_samples,
              f"an integer from 0 to {MAX_EVALUATION_SAMPLES:,} (twice FID's 50,000)")
        check(0 <= self.seed < 2**63, "evaluation.seed", self.seed, "an integer in [0, 2**63)")
        object.__setattr__(self, "inception", inception_weights(self.inception, "evaluation.inception"))


@dataclass(frozen=True)
class SamplingSettings:
    """The preview drawn from the registered model after registration."""

    num_samples: int = 64
    seed: int = 0
    format: str = "png"  # png: a grid image (a scatter plot for 2-D data); npy: the grid plus the raw array
    out: str = ""  # a folder; "" = <GANPIPE_HOME>/samples/<model name>/v<version>

    def __post_init__(self) -> None:
        check(1 <= self.num_samples <= 4096, "sampling.num_samples", self.num_samples, "an integer in [1, 4096]")
        check(0 <= self.seed < 2**63, "sampling.seed", self.seed, "an integer in [0, 2**63)")
        check(self.format in SAMPLE_FORMATS, "sampling.format", self.format, " | ".join(SAMPLE_FORMATS))


PIPELINE_SECTIONS: dict[str, type] = {
    "source": SourceSettings, "storage": StorageSettings, "tracking": TrackingSettings,
    "registry": RegistrySettings, "evaluation": EvaluationSettings, "sampling": SamplingSettings,
}
TOP_LEVEL = ("preset",) + tuple(PIPELINE_SECTIONS) + GAN_SECTIONS + ("cluster",)


@dataclass(frozen=True)
class Settings:
    preset: str
    gan: GANConfig
    cluster: ClusterConfig
    source: SourceSettings = field(default_factory=SourceSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    # -- derived values (the embedded defaults live here, in one place) ------------------------------
    @property
    def source_uri(self) -> str:
        return self.source.uri or self.gan.data.name

    @property
    def storage_root(self) -> str:
        if self.storage.root:
            return self.storage.root
        from infra.base.settings import local_home

        return str(local_home() / "data")

    @property
    def run_storage(self) -> str | None:
        """Where training runs and their checkpoints live: `[cluster] storage_path`, else `<[storage] root>/runs`
        when a root is given (a cluster's shared storage), else None (infra's local default)."""
        if self.cluster.storage_path:
            return self.cluster.storage_path
        return join_uri(self.storage.root, "runs") if self.storage.root else None

    def preview_uri(self, model_name: str, version: str) -> str:
        """Where the preview sample set and picture go: `[sampling] out`, else under `[storage] root` when
        given, else <GANPIPE_HOME>/samples/<model>/v<version>."""
        if self.sampling.out:
            return self.sampling.out
        if self.storage.root:
            return join_uri(self.storage.root, "samples", model_name, f"v{version}")
        from infra.base.settings import local_home

        return str(local_home() / "samples" / model_name / f"v{version}")

    @property
    def dataset_name(self) -> str:
        if self.source.name:
            return self.source.name
        uri = self.source_uri.rstrip("/")
        stem = uri.rsplit("/", 1)[-1]
        return stem.split(".")[0] if "." in stem and not stem.startswith(".") else stem

    @property
    def model_name(self) -> str:
        """registry.model_name, else ganpipe-<dataset>, and ganpipe-<dataset>-conditional for a
        class-conditional G: its predict takes labels, so it never takes over the alias that consumers of
        the unconditional model load."""
        suffix = "-conditional" if self.gan.network.conditional else ""
        return self.registry.model_name or f"ganpipe-{self.dataset_name}{suffix}"

    def staging_options(self) -> dict[str, Any]:
        s = self.source
        return {"num_samples": s.num_samples or self.gan.data.num_examples, "seed": s.seed, "image_size": s.image_size or None,
                "grayscale": s.grayscale, "skip_bad": s.skip_bad, "labels": s.labels or None,
                "image_column": s.image_column or None, "label_column": s.label_column or None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"preset": self.preset}
        for name in PIPELINE_SECTIONS:
            out[name] = to_plain(getattr(self, name))
        out.update(self.gan.to_dict())
        out["cluster"] = to_plain(self.cluster)
        return out

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


# -- reading ---------------------------------------------------------------------------------------------

def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a malformed file is one ConfigError naming the file and the line."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:  # a regular file of bounded size: /dev/zero, a FIFO or a huge file is refused before it is read
        raw = read_bytes_bounded(path, "--config", MAX_CONFIG_BYTES)
    except ValueError as e:  # one line naming the path and what is accepted
        raise ConfigError(str(e)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "allowed: a TOML file in UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(f"{path}: nested deeper than the TOML parser goes; allowed: at most {MAX_CONFIG_DEPTH} "
                          "levels of tables and lists") from None
    check_depth(data, str(path))
    try:
        check_top_level(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return data


def check_top_level(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown field; allowed: {', '.join(TOP_LEVEL)}")
    for key in TOP_LEVEL[1:]:
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"{key}: got {data[key]!r}; allowed: a table ([{key}])")


def resolve_settings(*, preset: str | None = None, config_file: str | None = None, overrides: list[str] = (),
                     cluster_overrides: dict[str, Any] | None = None,
                     config_data: dict[str, Any] | None = None, needs_source: bool = True) -> Settings:
    """preset <- config file (or `config_data`, the same tree as a dict) <- --set overrides <- explicit
    CLI flags (None values are ignored). Raises ConfigError naming the field, the value and what is allowed.
    ``needs_source=False`` for requests that train on a dataset staged already (`train`, `submit`): the
    [source] section is then not used, so a preset whose dataset is not built in (dcgan64's 'images')
    needs no source.uri."""
    if config_file and config_data is not None:
        raise ConfigError("config: got both a file and inline data; allowed: one of them")
    if config_file:
        data = read_config_file(config_file)
    else:
        data = dict(config_data or {})
        check_top_level(data)
    preset_name = preset if preset is not None else data.get("preset", "digits")
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise ConfigError(f"preset: got {preset_name!r}; allowed: {' | '.join(PRESETS)}")
    gan = get_preset(preset_name)
    # 1. gather every value as section -> {field: value}, the file first, then --set
    tables: dict[str, dict[str, Any]] = {k: dict(data.get(k) or {}) for k in TOP_LEVEL[1:]}
    for key, value in parse_overrides(list(overrides)).items():
        section, _, rest = key.partition(".")
        if key == "preset":
            raise ConfigError("--set preset=...: use --preset NAME instead")
        if section not in tables or not rest:
            raise ConfigError(f"--set {key}: unknown field; allowed: SECTION.FIELD with SECTION one of "
                              f"{', '.join(TOP_LEVEL[1:])}")
        if section in GAN_SECTIONS:
            tables[section][rest] = value  # nested paths (none today) are checked by with_overrides
        else:
            if "." in rest:
                raise ConfigError(f"--set {key}: unknown field; {section} has no sub-tables")
            tables[section][rest] = value
    # 2. the GAN tree
    flat = {f"{section}.{k}": v for section in GAN_SECTIONS for k, v in tables[section].items()}
    if flat:
        gan = gan.with_overrides(flat)
    # 3. cluster: the file's and --set values, then explicit CLI flags (None = not given)
    explicit = {k: v for k, v in (cluster_overrides or {}).items() if v is not None}
    cluster = from_dict(ClusterConfig, {**tables["cluster"], **explicit}, "cluster.")
    # 4. the pipeline's own sections (evaluation.inception defaults to $GANPIPE_FID_INCEPTION)
    if not tables["evaluation"].get("inception"):
        tables["evaluation"]["inception"] = default_inception()
    sections = {name: from_dict(cls, tables[name], f"{name}.") for name, cls in PIPELINE_SECTIONS.items()}
    settings = Settings(preset_name, gan, cluster, **sections)
    # 5. rules across sections: checked here, before any service starts, not at launch
    validate_launch(settings.gan, settings.cluster)
    check_model_name(settings.model_name, "registry.model_name")  # the derived name too (ganpipe-<dataset>)
    check_network_size(settings.gan)
    if needs_source:
        _check_source(settings)
    return settings


def inception_weights(path: str, where: str) -> str:
    """The FID Inception weights file `path` ("~" expanded; "" = none) after checking that it is a local
    file: the one rule for evaluation.inception, $GANPIPE_FID_INCEPTION and `ganpipe evaluate --inception`.
    ConfigError naming `where`."""
    path = str(path or "").strip()
    if not path:
        return ""
    path = str(Path(path).expanduser())
    check(Path(path).is_file(), where, path, f"an existing local file (NVIDIA's TorchScript "
          f"inception-2015-12-05.pt; ${FID_INCEPTION_ENV} sets the default; nothing is downloaded)")
    return path


def default_inception() -> str:
    """The FID Inception weights path from $GANPIPE_FID_INCEPTION ("" when unset): evaluation.inception's
    default, for resolve_settings and for `ganpipe evaluate` (which has no config tree). ConfigError naming
    the variable when it names no file."""
    import os

    return inception_weights(os.environ.get(FID_INCEPTION_ENV, ""), FID_INCEPTION_ENV)


def check_output_locations(settings: Settings) -> None:
    """Where the request will write ([storage] root, [cluster] storage_path, [sampling] out), checked as
    output folders (infra.base.storage.check_output_folder: not an existing file, writable, the S3 bucket
    reachable; the preview folder also new, empty or ganpipe's) before any service starts. Not part of
    resolve_settings: --dry-run and `ganpipe submit` (whose paths live on the cluster) touch no storage. Raises StorageError naming the field."""
    from infra.base import storage

    for field_name, uri in (("storage.root", settings.storage.root), ("cluster.storage_path",
                                                                       settings.cluster.storage_path),
                            ("sampling.out", settings.sampling.out)):
        if uri:
            storage.check_output_folder(storage.resolve(uri), field_name)
    if settings.sampling.out:  # the preview folder: new, empty, or ganpipe's (it writes samples.png there)
        from infra.data import shard_writer

        shard_writer.check_destination(storage.resolve(settings.sampling.out), None, storage.StorageError,
                                   "sampling.out")


def _check_source(settings: Settings) -> None:
    uri = settings.source_uri
    if "://" in uri or "/" in uri or Path(uri).suffix or uri in BUILTIN_SOURCES:
        return
    if not Path(uri).exists():
        raise ConfigError(f"source.uri: got {uri!r}; allowed: {' | '.join(BUILTIN_SOURCES)}, a path or an s3:// URI "
                          f"(set it in [source] when the preset's dataset {settings.gan.data.name!r} is not built in)")


# -- writing ---------------------------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def dump_toml(tree: dict[str, Any]) -> str:
    """The resolved tree as TOML that `--config` reads back (None values become comments: TOML has no null)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    for section, table in tree.items():
        if not isinstance(table, dict):
            continue
        lines += ["", f"[{section}]"]
        for k, v in table.items():
            lines.append(f"# {k} = (unset)" if v is None else f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
