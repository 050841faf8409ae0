"""Every numeric field of every config section has a documented upper bound (issue 31, item 3:
`train.total_steps = 10**20` was accepted): an absurd value is refused, naming the field, before anything
starts. The fields are enumerated from the dataclasses, so a new numeric field without a bound fails here."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from gan_core.config import ConfigError, get_preset

NUMERIC = (int, float, int | None, float | None)


def _numeric_fields(root) -> list[str]:
    names = []
    for section in dataclasses.fields(root):
        value = getattr(root, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        hints = typing.get_type_hints(type(value))
        names += [f"{section.name}.{f.name}" for f in dataclasses.fields(value) if hints[f.name] in NUMERIC]
    return names


GAN_FIELDS = _numeric_fields(get_preset("digits"))


@pytest.mark.parametrize("absurd", [10**20, 1e300])
@pytest.mark.parametrize("field", GAN_FIELDS)
def test_every_numeric_gan_field_is_bounded(field, absurd):
    with pytest.raises(ConfigError, match=rf"^{field}: got"):
        get_preset("digits").with_overrides({field: absurd})


def _pipeline_fields() -> list[str]:
    from infra.train.plan import ClusterConfig
    from pipelines.settings import PIPELINE_SECTIONS

    names = []
    for name, cls in {**PIPELINE_SECTIONS, "cluster": ClusterConfig}.items():
        hints = typing.get_type_hints(cls)
        names += [f"{name}.{f.name}" for f in dataclasses.fields(cls) if hints[f.name] in NUMERIC]
    return names


@pytest.mark.parametrize("absurd", [10**20, 1e300])
@pytest.mark.parametrize("field", _pipeline_fields())
def test_every_numeric_pipeline_field_is_bounded(field, absurd):
    from pipelines.settings import resolve_settings

    with pytest.raises(ConfigError, match=rf"{field}: got"):
        resolve_settings(preset="digits", overrides=[f"{field}={absurd}"])


def test_the_enumeration_sees_the_fields_of_the_issue():
    assert "train.total_steps" in GAN_FIELDS and "evaluation.num_samples" in _pipeline_fields()
