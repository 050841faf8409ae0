"""One configuration tree for the pipeline: a preset, a TOML file, and `--set` overrides.

    preset = "digits"            # base configuration (tiny | digits | ring8 | grid25 | dcgan64)
    [train]                      # any GANConfig section: data, network, loss, g_optim, d_optim, train
    total_steps = 3000
    [cluster]                    # infra.ray_train.ClusterConfig
    num_workers = 2

Validation is complete before any work starts; errors name the field, the value and what is allowed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from gan_core.config import ConfigError, GANConfig, get_preset
from infra.ray_train import ClusterConfig

GAN_SECTIONS = tuple(f.name for f in fields(GANConfig))
TOP_LEVEL = ("preset",) + GAN_SECTIONS + ("cluster",)


@dataclass(frozen=True)
class Settings:
    preset: str
    gan: GANConfig
    cluster: ClusterConfig

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, **self.gan.to_dict(), "cluster": {f.name: getattr(self.cluster, f.name)
                                                                          for f in fields(ClusterConfig)}}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a malformed file is one ConfigError naming the file and the line."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown field; allowed: {', '.join(TOP_LEVEL)}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`FIELD=VALUE` strings; values are parsed as JSON when they can be (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. train.global_batch_size=256")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _cluster_from(base: ClusterConfig, values: dict[str, Any], where: str) -> ClusterConfig:
    known = {f.name for f in fields(ClusterConfig)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}{key}: unknown field; allowed: {', '.join(sorted(known))}")
    return replace(base, **values)


def resolve_settings(*, preset: str | None = None, config_file: str | None = None, overrides: list[str] = (),
                     cluster_overrides: dict[str, Any] | None = None) -> Settings:
    """preset <- config file <- --set overrides <- explicit CLI flags (None values are ignored)."""
    data = read_config_file(config_file) if config_file else {}
    preset_name = preset if preset is not None else data.get("preset", "digits")
    if config_file and preset is not None and "preset" in data and data["preset"] != preset:
        preset_name = preset  # the command line wins
    gan = get_preset(preset_name)
    flat: dict[str, Any] = {}
    for section in GAN_SECTIONS:
        for key, value in (data.get(section) or {}).items():
            flat[f"{section}.{key}"] = value
    cluster_values = dict(data.get("cluster") or {})
    for key, value in parse_overrides(list(overrides)).items():
        if key.startswith("cluster."):
            cluster_values[key[len("cluster."):]] = value
        else:
            flat[key] = value
    if flat:
        gan = gan.with_overrides(flat)
    cluster = _cluster_from(ClusterConfig(), cluster_values, "cluster.")
    explicit = {k: v for k, v in (cluster_overrides or {}).items() if v is not None}
    cluster = _cluster_from(cluster, explicit, "cluster.")
    return Settings(preset_name, gan, cluster)
