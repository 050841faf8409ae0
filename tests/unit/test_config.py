import dataclasses

import pytest

from gan_core.config import PRESETS, ConfigError, GANConfig, from_dict, get_preset
from tests.factories import tiny_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    cfg = get_preset(name)
    assert GANConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override,field", [
    ({"loss.kind": "bogus"}, "loss.kind"),
    ({"train.global_batch_size": 0}, "train.global_batch_size"),
    ({"train.amp": "fp8"}, "train.amp"),
    ({"network.g_norm": "instance"}, "network.g_norm"),
    ({"g_optim.lr": -1}, "g_optim.lr"),
    ({"train.nonexistent": 1}, "train.nonexistent"),
])
def test_invalid_values_name_the_field_and_the_allowed_values(override, field):
    with pytest.raises(ConfigError) as e:
        tiny_config(override)
    msg = str(e.value)
    assert msg.startswith(field), msg
    assert "allowed" in msg


def test_dcgan_needs_square_power_of_two_images():
    with pytest.raises(ConfigError, match="data.shape"):
        get_preset("digits").with_overrides({"data.shape": [1, 8, 12]})


def test_unknown_preset():
    with pytest.raises(ConfigError, match="allowed: tiny"):
        get_preset("nope")


def test_config_is_frozen():
    cfg = get_preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.total_steps = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = cfg.train  # type: ignore[misc]


@pytest.mark.parametrize("table, message", [
    ({"train": {"total_steps": "10"}}, "train.total_steps: got '10'; allowed: an integer"),
    ({"train": {"total_steps": True}}, "train.total_steps: got True; allowed: an integer"),
    ({"network": {"d_spectral_norm": 1}}, "network.d_spectral_norm: got 1; allowed: true | false"),
    ({"d_optim": {"lr": "fast"}}, "d_optim.lr: got 'fast'; allowed: a number"),
    ({"d_optim": {"lr": 2.0}}, "d_optim.lr: got 2.0; allowed: a number in (0, 1)"),
    ({"data": {"shape": 2}}, "data.shape: got 2; allowed: a list"),
    ({"loss": 3}, "loss: got 3; allowed: a table of fields"),
    ({"loss": {"kindd": "hinge"}}, "loss.kindd: unknown field; allowed: kind, gp_lambda"),
])
def test_from_dict_names_the_field_for_every_wrong_type(table, message):
    """One mechanism (gan_core.config.from_dict) types every section: wrong types are refused with the
    dotted field before any rule compares them."""
    with pytest.raises(ConfigError) as e:
        from_dict(GANConfig, table)
    assert str(e.value).startswith(message)


def test_with_overrides_on_a_field_names_what_is_allowed():
    with pytest.raises(ConfigError, match=r"train.total_steps: unknown section; allowed: none \(it is a field\)"):
        tiny_config({"train.total_steps.x": 1})
