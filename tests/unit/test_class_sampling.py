"""Class-conditional batch sampling (`ganpipe sample --class K`, issue 17 item 2): the class is checked
before anything is written, is part of the request's fingerprint and manifest only when given, and the
sampler draws with the version's own pyfunc (`sample(..., class_label=k)`, as predict's params label)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from gan_core.data import Normalisation
from gan_core.networks import build_generator
from gan_core.sampling import generate
from infra.data import shardset
from infra.models.batch_sampling import (SamplingError, check_request, class_refusal, generate_range,
                                         plan_sampling)
from tests.factories import resolved_model, tiny_config


def _resolved(num_classes=8, supports_class_label=True):
    return resolved_model(sample_shape=(2,), supports_truncation=True, num_classes=num_classes,
                          supports_class_label=supports_class_label)


def _tiny_cond():
    cfg = tiny_config({"network.conditional": True, "data.num_classes": 8})
    torch.manual_seed(0)
    return build_generator(cfg).eval()


def _pyfunc(G):
    """infra.models.generator_model.GeneratorModel as load_context leaves it, with this process's engine."""
    import gan_core.sampling
    from infra.models.generator_model import GeneratorModel

    pm = GeneratorModel()
    pm.G, pm.sampling, pm.normalisation, pm.device = G, gan_core.sampling, Normalisation(), torch.device("cpu")
    return pm


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
def test_the_batch_sampler_checks_the_class_type_before_anything(bad, tmp_path):
    with pytest.raises(SamplingError) as e:
        check_request(10, 0, str(tmp_path / "out"), class_label=bad)
    assert str(e.value).startswith("--class: got") and "integer >= 0" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model,k,message", [
    (_resolved(num_classes=0, supports_class_label=False), 0, "this model version has no classes"),
    (_resolved(num_classes=8), 8, "--class: got 8; allowed: an integer from 0 to 7"),
    (_resolved(num_classes=8), 1000, "--class: got 1000; allowed: an integer from 0 to 7"),
    (_resolved(num_classes=8, supports_class_label=False), 3, "registered before class-conditional sampling"),
], ids=["unconditional", "k-equals-K", "k-far-out", "registered-before"])
def test_plan_refuses_a_class_the_version_cannot_draw_in_one_line(model, k, message, tmp_path):
    with pytest.raises(SamplingError) as e:
        plan_sampling(model, 100, 0, str(tmp_path / "a"), class_label=k)
    assert message in str(e.value) and "models:/m@a" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()
    plan_sampling(model, 100, 0, str(tmp_path / "a"))  # without --class: as always


def test_class_refusal_accepts_every_class_of_a_conditional_version():
    assert all(class_refusal(k, 8, supports_class_label=True) is None for k in range(8))


def test_the_class_is_part_of_the_request_only_when_given(tmp_path):
    out = str(tmp_path / "a")
    balanced = plan_sampling(_resolved(), 3000, 0, out)
    k3, k4 = plan_sampling(_resolved(), 3000, 0, out, class_label=3), plan_sampling(_resolved(), 3000, 0, out,
                                                                                     class_label=4)
    k0 = plan_sampling(_resolved(), 3000, 0, out, class_label=0)
    assert len({balanced.fingerprint, k0.fingerprint, k3.fingerprint, k4.fingerprint}) == 4
    assert plan_sampling(_resolved(), 3000, 0, out, class_label=np.int64(3)).fingerprint == k3.fingerprint
    # with truncation too: both keys, a set of its own
    both = plan_sampling(_resolved(), 3000, 0, out, class_label=3, truncation=1.0)
    truncated = plan_sampling(_resolved(), 3000, 0, out, truncation=1.0)
    assert both.fingerprint not in {k3.fingerprint, truncated.fingerprint}
    shards = [{"rows": b - a} for a, b in k3.shard_ranges]
    assert k3.manifest_fields(shards)["class_label"] == 3 and k0.manifest_fields(shards)["class_label"] == 0
    assert "class_label" not in balanced.manifest_fields(shards)
    # without a class, the fingerprint is the one requests had before class-conditional sampling existed
    # (for an unconditional model and a class-balanced conditional one alike)
    unconditional = plan_sampling(_resolved(num_classes=0, supports_class_label=False), 3000, 0, out)
    before = shardset.content_address({"model": balanced.model.identity(), "num_samples": 3000, "seed": 0,
                                       "format": "parquet", "layout": asdict(balanced.layout)})
    assert balanced.fingerprint == unconditional.fingerprint == before


def test_another_class_into_the_same_out_is_refused_naming_the_committed_class(tmp_path):
    k3 = plan_sampling(_resolved(), 3000, 0, str(tmp_path / "a"), class_label=3)
    committed = k3.manifest_fields([{"rows": b - a} for a, b in k3.shard_ranges])
    for other in (plan_sampling(_resolved(), 3000, 0, str(tmp_path / "a"), class_label=4),
                  plan_sampling(_resolved(), 3000, 0, str(tmp_path / "a"))):
        with pytest.raises(SamplingError, match=r"different committed sample set \(models:/m/1, seed 0, class 3, "):
            other.check_committed(committed)
    k3.check_committed(committed)  # the same request: committed already, no error


def test_generate_range_draws_the_class_with_the_versions_pyfunc():
    G = _tiny_cond()
    pm = _pyfunc(G)
    for k in (0, 5):
        got = generate_range(pm, 3, 1000, 50, 16, class_label=k)
        assert np.array_equal(got, generate(G, 50, seed=3, start=1000, class_label=k).numpy())
        assert np.array_equal(got, pm.predict(None, None, params={"num_samples": 50, "seed": 3, "start": 1000,
                                                                  "label": k}))
    balanced = generate_range(pm, 3, 1000, 50, 16)
    assert np.array_equal(balanced, generate(G, 50, seed=3, start=1000).numpy())  # generate's default
    assert not np.array_equal(balanced, generate_range(pm, 3, 1000, 50, 16, class_label=0))
    truncated = generate_range(pm, 3, 1000, 50, 16, truncation=0.5, class_label=2)
    assert np.array_equal(truncated, generate(G, 50, seed=3, start=1000, truncation=0.5, class_label=2).numpy())


def test_generate_range_refuses_a_class_to_a_pyfunc_from_before_class_sampling():
    class OldPyfunc:  # a version's shipped pyfunc from before: sample() without class_label
        SUPPORTS_TRUNCATION = True

        def sample(self, num_samples, seed, *, start=0, batch_size=1024, truncation=None):
            raise AssertionError("must not be called: it would silently ignore the class")

    with pytest.raises(SamplingError, match="registered before class-conditional sampling") as e:
        generate_range(OldPyfunc(), 0, 0, 4, 4, class_label=1)
    assert "\n" not in str(e.value)


def test_cli_sample_refuses_a_negative_class_up_front(tmp_path, capsys):
    from pipelines.cli import main

    rc = main(["sample", "--model", "models:/m@a", "--num-samples", "10", "--out", str(tmp_path / "o"),
               "--class=-1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--class: got -1; allowed: an integer >= 0" in err
    assert not (tmp_path / "o").exists()


def test_cli_sample_refuses_a_class_the_model_cannot_draw_before_anything_is_written(tmp_path, capsys,
                                                                                   monkeypatch):
    """The model's classes come from its registered metadata and signature (resolve_model; stubbed here)."""
    import infra.models.batch_sampling
    from pipelines.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(infra.models.batch_sampling, "resolve_model", lambda uri: _resolved(num_classes=8))
    rc = main(["sample", "--model", "models:/m@a", "--num-samples", "10", "--out", str(tmp_path / "o"),
               "--class", "8", "--engine", "direct"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "--class: got 8; allowed: an integer from 0 to 7" in err
    assert not (tmp_path / "o").exists()


def test_cli_help_documents_class(capsys):
    from pipelines.cli import main

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert "--class K" in out and "class-balanced" in out and "--class 3" in out
