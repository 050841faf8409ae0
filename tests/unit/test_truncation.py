"""Truncated sampling (the truncation trick, BigGAN): bounds, distribution, determinism, default off."""

import math

import numpy as np
import pytest
import torch

from gan_core.config import get_preset
from gan_core.networks import build_generator
from gan_core.rng import generator
from gan_core.sampling import LATENT_BLOCK, check_truncation, generate, latents_for_range
from tests.factories import resolved_model


@pytest.mark.parametrize("psi", [2.0, 1.0, 0.5, 0.01])
def test_every_component_is_within_psi_and_the_kept_ones_are_unchanged(psi):
    plain = latents_for_range(5, 0, 2 * LATENT_BLOCK, 16)
    z = latents_for_range(5, 0, 2 * LATENT_BLOCK, 16, truncation=psi)
    assert z.dtype == torch.float32 and z.shape == plain.shape
    assert z.abs().max() <= psi
    inside = plain.abs() <= psi
    assert torch.equal(z[inside], plain[inside])  # only the components beyond psi are resampled
    assert not torch.equal(z[~inside], plain[~inside].clamp(-psi, psi))  # resampled, not clipped


@pytest.mark.parametrize("psi", [2.0, 1.0, 0.5])
def test_components_follow_the_standard_normal_truncated_to_psi(psi):
    z = latents_for_range(0, 0, 8 * LATENT_BLOCK, 32, truncation=psi).double().flatten()  # 262,144 values
    # N(0, 1) restricted to [-psi, psi]: mean 0, variance 1 - 2 psi phi(psi) / (2 Phi(psi) - 1)
    phi = math.exp(-psi * psi / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(psi / math.sqrt(2))
    var = 1 - 2 * psi * phi / mass
    sd_of_mean = math.sqrt(var / len(z))
    assert abs(z.mean().item()) < 5 * sd_of_mean
    assert z.var().item() == pytest.approx(var, rel=0.02)
    # the CDF at a few points within [-psi, psi], against the truncated normal's (KS-style, 5 sigma)
    for t in (-0.5 * psi, 0.0, 0.25 * psi, 0.75 * psi):
        expected = (0.5 * (1 + math.erf(t / math.sqrt(2))) - 0.5 * (1 - mass)) / mass
        assert (z <= t).double().mean().item() == pytest.approx(expected, abs=5 * math.sqrt(0.25 / len(z)))


def test_truncated_latents_are_addressed_by_index_and_threshold():
    whole = latents_for_range(7, 0, 3000, 4, truncation=1.0)
    torch.testing.assert_close(latents_for_range(7, 1500, 700, 4, truncation=1.0), whole[1500:2200], rtol=0, atol=0)
    assert torch.equal(latents_for_range(7, 0, 3000, 4, truncation=1.0), whole)  # same call, same bytes
    assert not torch.equal(latents_for_range(8, 0, 10, 4, truncation=1.0), whole[:10])
    assert not torch.equal(latents_for_range(7, 0, 3000, 4, truncation=0.9), whole)


def test_truncation_uses_its_own_stream_and_not_the_global_rng():
    torch.manual_seed(0)
    a = latents_for_range(1, 0, 10, 4, truncation=0.5)
    torch.manual_seed(123)
    torch.rand(5)
    assert torch.equal(latents_for_range(1, 0, 10, 4, truncation=0.5), a)
    # the resample stream is the block's own: another block's does not share it
    u0 = torch.rand(2, generator=generator("latents-truncation", 1, 0))
    u1 = torch.rand(2, generator=generator("latents-truncation", 1, 1))
    assert not torch.equal(u0, u1)


@pytest.mark.parametrize("batch_size", [1, 100, 1024, 4096])
def test_truncated_generate_is_independent_of_batch_size_and_partition(batch_size):
    G = build_generator(get_preset("digits")).eval()
    ref = generate(G, 2500, seed=3, batch_size=2048, truncation=0.7)
    got = torch.cat([generate(G, 900, seed=3, start=0, batch_size=batch_size, truncation=0.7),
                     generate(G, 1600, seed=3, start=900, batch_size=batch_size, truncation=0.7)])
    assert torch.equal(ref, got)
    assert not torch.equal(ref, generate(G, 2500, seed=3, batch_size=2048))


def _latents_before_truncation_existed(seed, start, count, z_dim):
    """The code path of gan_core.sampling.latents_for_range before truncation (commit 7f1b9c6)."""
    first, last = start // LATENT_BLOCK, (start + count - 1) // LATENT_BLOCK
    blocks = [torch.randn(LATENT_BLOCK, z_dim, generator=generator("latents", seed, b)) for b in range(first, last + 1)]
    offset = start - first * LATENT_BLOCK
    return torch.cat(blocks)[offset:offset + count]


@pytest.mark.parametrize("off", [None, 0, 0.0])
def test_default_off_is_byte_identical_to_untruncated_sampling(off):
    ref = _latents_before_truncation_existed(11, 1000, 2100, 8)
    z = latents_for_range(11, 1000, 2100, 8, truncation=off)
    assert z.numpy().tobytes() == ref.numpy().tobytes()
    G = build_generator(get_preset("digits")).eval()
    with torch.no_grad():
        expected = torch.cat([G(_latents_before_truncation_existed(2, 0, LATENT_BLOCK, G.z_dim)),
                              G(_latents_before_truncation_existed(2, LATENT_BLOCK, LATENT_BLOCK, G.z_dim))])[:1500]
    assert generate(G, 1500, seed=2, truncation=off).numpy().tobytes() == expected.numpy().tobytes()
    assert generate(G, 1500, seed=2).numpy().tobytes() == expected.numpy().tobytes()


@pytest.mark.parametrize("bad", [-1.0, -0.5, float("nan"), float("inf"), "1.0", True, [1.0]])
def test_a_bad_threshold_is_one_line_naming_it(bad):
    with pytest.raises(ValueError) as e:
        check_truncation(bad)
    msg = str(e.value)
    assert "\n" not in msg and repr(bad) in msg and "> 0" in msg
    G = build_generator(get_preset("digits")).eval()
    with pytest.raises(ValueError):
        generate(G, 4, seed=0, truncation=bad)


def test_accepted_thresholds():
    assert check_truncation(None) is None and check_truncation(0) is None and check_truncation(0.0) is None
    assert check_truncation(1) == 1.0 and check_truncation(np.float32(0.5)) == 0.5


# --- the pyfunc and the batch sampler -------------------------------------------------------------

def _pyfunc(G):
    """infra.models.generator_model.GeneratorModel as load_context leaves it, with this process's engine."""
    import gan_core.sampling
    from gan_core.data import Normalisation
    from infra.models.generator_model import GeneratorModel

    pm = GeneratorModel()
    pm.G, pm.sampling, pm.normalisation, pm.device = G, gan_core.sampling, Normalisation(), torch.device("cpu")
    return pm


def test_pyfunc_predict_and_sample_take_truncation():
    G = build_generator(get_preset("digits")).eval()
    pm = _pyfunc(G)
    want = generate(G, 6, seed=2, start=1030, truncation=0.5).numpy()
    got = pm.predict(None, None, params={"num_samples": 6, "seed": 2, "start": 1030, "truncation": 0.5})
    assert np.array_equal(got, want)
    assert np.array_equal(pm.sample(6, 2, start=1030, truncation=0.5), want)
    plain = generate(G, 6, seed=2, start=1030).numpy()
    # the signature's default (0.0) is off: byte-identical to no truncation
    assert pm.predict(None, None, params={"num_samples": 6, "seed": 2, "start": 1030, "truncation": 0.0}
                      ).tobytes() == plain.tobytes()
    assert pm.predict(None, None, params={"num_samples": 6, "seed": 2, "start": 1030}).tobytes() == plain.tobytes()


@pytest.mark.parametrize("params,message", [
    ({"num_samples": 2, "truncation": -1.0}, "truncation=-1.0"),
    ({"num_samples": 2, "truncation": float("nan")}, "truncation=nan"),
    ({"truncation": 0.5}, "not to latents z"),
])
def test_pyfunc_refuses_a_bad_truncation_in_one_line(params, message):
    G = build_generator(get_preset("digits")).eval()
    pm = _pyfunc(G)
    z = None if "num_samples" in params else np.zeros((2, G.z_dim), np.float32)
    with pytest.raises(ValueError) as e:
        pm.predict(None, z, params=params)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_registered_signature_has_truncation_double_default_off():
    from infra.models.registry import model_signature

    spec = {p.name: p for p in model_signature(get_preset("digits")).params.params}
    assert spec["truncation"].dtype.name == "double" and spec["truncation"].default == 0.0


def _resolved(supports_truncation=True):
    return resolved_model(supports_truncation=supports_truncation)


def test_a_different_truncation_is_a_different_sample_set(tmp_path):
    from infra.models.batch_sampling import plan_sampling

    plain = plan_sampling(_resolved(), 3000, 0, str(tmp_path / "a"))
    t1 = plan_sampling(_resolved(), 3000, 0, str(tmp_path / "a"), truncation=1.0)
    t05 = plan_sampling(_resolved(), 3000, 0, str(tmp_path / "a"), truncation=0.5)
    assert len({plain.fingerprint, t1.fingerprint, t05.fingerprint}) == 3
    assert plan_sampling(_resolved(), 3000, 0, str(tmp_path / "a"), truncation=1).fingerprint == t1.fingerprint
    shards = [{"rows": b - a} for a, b in t1.shard_ranges]
    assert t1.manifest_fields(shards)["truncation"] == 1.0 and plain.manifest_fields(shards)["truncation"] is None
    # an untruncated request keeps the fingerprint it had before truncation existed (committed sets stay valid)
    from dataclasses import asdict

    from infra.data import shardset

    assert plain.fingerprint == shardset.content_address({"model": plain.model.identity(), "num_samples": 3000,
                                                          "seed": 0, "format": "parquet",
                                                          "layout": asdict(plain.layout)})


def test_a_version_registered_before_truncation_refuses_it_in_one_line(tmp_path):
    from infra.models.batch_sampling import SamplingError, generate_range, plan_sampling

    with pytest.raises(SamplingError) as e:
        plan_sampling(_resolved(supports_truncation=False), 100, 0, str(tmp_path / "a"), truncation=1.0)
    assert "registered before truncated sampling" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()
    plan_sampling(_resolved(supports_truncation=False), 100, 0, str(tmp_path / "a"))  # untruncated: as always

    class OldPyfunc:  # a version's shipped pyfunc from before: sample() without truncation
        def sample(self, num_samples, seed, *, start=0, batch_size=1024):
            raise AssertionError("must not be called: it would silently ignore the truncation")

    with pytest.raises(SamplingError, match="registered before truncated sampling"):
        generate_range(OldPyfunc(), 0, 0, 4, 4, truncation=0.5)
    G = build_generator(get_preset("digits")).eval()
    assert np.array_equal(generate_range(_pyfunc(G), 0, 10, 4, 4, truncation=0.5),
                          generate(G, 4, seed=0, start=10, truncation=0.5).numpy())


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, float("nan"), float("inf"), True])
def test_the_batch_sampler_checks_truncation_before_anything(bad, tmp_path):
    from infra.models.batch_sampling import SamplingError, check_request

    with pytest.raises(SamplingError) as e:
        check_request(10, 0, str(tmp_path / "out"), truncation=bad)
    assert str(e.value).startswith("--truncation: got") and "> 0" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_cli_sample_refuses_a_bad_truncation_up_front(value, tmp_path, capsys):
    from pipelines.cli import main

    rc = main(["sample", "--model", "models:/m@a", "--num-samples", "10", "--out", str(tmp_path / "o"),
               f"--truncation={value}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--truncation" in err and "> 0" in err
    assert not (tmp_path / "o").exists()
