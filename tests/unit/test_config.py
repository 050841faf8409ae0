import pytest

from gan_core.config import PRESETS, ConfigError, GANConfig, get_preset


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
        get_preset("tiny").with_overrides(override)
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
    with pytest.raises(Exception):
        cfg.train.total_steps = 3  # type: ignore[misc]
