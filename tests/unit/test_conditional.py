"""Class-conditional GANs: conditional G, projection D (Miyato & Koyama 2018), labels through training,
checkpoints and sampling; unconditional networks unchanged."""

import numpy as np
import pytest
import torch

from gan_core.checkpoint import load_generator
from gan_core.config import ConfigError, get_preset
from gan_core.data import InMemoryBatches, load_digits, sample_mixture
from gan_core.evaluate import conditional_accuracy
from gan_core.loop import train
from gan_core.networks import build_discriminator, build_generator
from gan_core.sampling import generate, labels_for_range
from gan_core.training import build_training_state, fake_labels, train_step
from tests.factories import tiny_config


def digits_cond(steps=6, **extra):
    return get_preset("digits-cond").with_overrides({
        "train.total_steps": steps, "train.global_batch_size": 16, "train.tick_every_steps": 3,
        "train.checkpoint_every_steps": 3, "network.g_width": 8, "network.d_width": 8, **extra})


def tiny_cond(steps=6, **extra):
    """ring8's mode ids as 8 class labels: an MLP pair, seconds to train."""
    return tiny_config({"train.total_steps": steps, "train.checkpoint_every_steps": 3,
                                              "network.conditional": True, "data.num_classes": 8,
                                              "loss.r1_gamma": 0.5, "train.d_steps": 2, **extra})


def ring8_labelled(n=300):
    return sample_mixture("ring8", n, seed=0)


@pytest.mark.parametrize("preset", ["tiny", "digits"])
def test_unconditional_networks_keep_their_parameters_and_refuse_labels(preset):
    cfg = get_preset(preset)
    G, D = build_generator(cfg), build_discriminator(cfg)
    for net in (G, D):
        assert net.num_classes == 0
        assert not any("embed" in k or k.startswith("cond") for k in net.state_dict())
    z = torch.randn(4, cfg.network.z_dim)
    with pytest.raises(ValueError, match="unconditional"):
        G(z, torch.zeros(4, dtype=torch.int64))


@pytest.mark.parametrize("make", [digits_cond, tiny_cond])
def test_conditional_g_and_projection_d_depend_on_the_label(make):
    cfg = make()
    G, D = build_generator(cfg), build_discriminator(cfg)
    K = cfg.data.num_classes
    z = torch.randn(6, cfg.network.z_dim)
    a, b = torch.zeros(6, dtype=torch.int64), torch.full((6,), K - 1, dtype=torch.int64)
    G.eval()
    assert not torch.allclose(G(z, a), G(z, b))
    x = G(z, a)
    assert D(x, a).shape == (6,)
    assert not torch.allclose(D(x, a), D(x, b))  # the projection term <embed(c), phi(x)>
    with pytest.raises(ValueError, match="needs class labels"):
        G(z)
    with pytest.raises(ValueError, match="expected int64"):
        D(x, a.float())


@pytest.mark.parametrize("overrides, field", [
    ({"network.conditional": True, "data.num_classes": 0}, "network.conditional"),
    ({"network.conditional": True, "data.num_classes": 8, "network.d_pack": 2}, "network.d_pack"),
    ({"data.num_classes": 1}, "data.num_classes"),
    ({"data.num_classes": 10**9}, "data.num_classes"),
    ({"network.conditional": "yes", "data.num_classes": 8}, "network.conditional"),
])
def test_conditional_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}: got"):
        tiny_config(overrides)


def test_fake_labels_are_uniform_without_class_frequencies_seed_addressed_and_rank_sliced():
    cfg = tiny_cond()
    s = build_training_state(cfg)
    whole = fake_labels(s, "c_D", 0, 0, 1)
    assert whole.dtype == torch.int64 and whole.shape == (cfg.train.global_batch_size,)
    assert torch.equal(whole, fake_labels(s, "c_D", 0, 0, 1))
    halves = torch.cat([fake_labels(s, "c_D", 0, r, 2) for r in range(2)])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, fake_labels(s, "c_G", 0, 0, 1))
    assert int(whole.min()) >= 0 and int(whole.max()) < cfg.data.num_classes
    assert fake_labels(build_training_state(get_preset("tiny")), "c_D", 0, 0, 1) is None


def test_fake_labels_follow_the_class_frequencies_seed_addressed_and_rank_sliced():
    freq = [0, 6, 0, 0, 0, 0, 0, 2]  # classes 1 and 7 only, 3:1
    cfg = tiny_cond(**{"train.global_batch_size": 4096, "data.class_frequencies": freq})
    s = build_training_state(cfg)
    whole = fake_labels(s, "c_D", 0, 0, 1)
    assert set(whole.tolist()) == {1, 7}
    assert abs((whole == 1).float().mean().item() - 0.75) < 0.03
    assert torch.equal(whole, torch.cat([fake_labels(s, "c_D", 0, r, 2) for r in range(2)]))
    assert not torch.equal(whole, fake_labels(s, "c_G", 0, 0, 1))


@pytest.mark.parametrize("freq", [[1, 2], [1] * 7 + [-1], [0] * 8, [1] * 7 + [float("nan")], [1] * 7 + ["a"]])
def test_class_frequencies_must_be_num_classes_non_negative_weights(freq):
    with pytest.raises(ConfigError, match=r"^data.class_frequencies: got .*; allowed: \[\] \(uniform\) or "
                                          r"data.num_classes = 8 non-negative numbers with a positive sum"):
        tiny_cond(**{"data.class_frequencies": freq})
    with pytest.raises(ConfigError, match=r"^data.class_frequencies: got 'uniform'; allowed: a list"):
        tiny_cond(**{"data.class_frequencies": "uniform"})


def test_label_counts_count_every_class_and_name_labels_beyond_num_classes():
    from gan_core.data import label_counts

    assert label_counts(np.array([0, 2, 2, 3]), 5) == (1, 0, 2, 1, 0)
    with pytest.raises(ValueError, match=r"^labels: got values in \[0, 9\]; allowed: 0 to 7 "
                                         r"\(data.num_classes = 8; set it to at least 10\)"):
        label_counts(np.arange(10), 8)


def test_python_m_gan_core_draws_fakes_with_the_training_labels_frequencies(tmp_path, capsys):
    from gan_core.__main__ import main
    from gan_core.checkpoint import load_training_state
    from gan_core.data import training_subset

    out = tmp_path / "run"
    assert main(["--preset", "digits-cond", "--steps", "1", "--threads", "1", "--set", "data.subset=37",
                 "--set", "train.global_batch_size=16", "--set", "network.g_width=8", "--set", "network.d_width=8", "--out", str(out)]) == 0
    state = load_training_state(next((out / "checkpoints").glob("checkpoint-*")))
    x, y = load_digits()
    counts = np.bincount(training_subset(x, y, 37, 0)[1], minlength=10)
    assert state.config.data.class_frequencies == tuple(float(n) for n in counts)


def test_conditional_training_needs_labelled_batches_in_range():
    cfg = tiny_cond()
    x, y = ring8_labelled()
    s = build_training_state(cfg)
    B = cfg.train.global_batch_size
    with pytest.raises(ValueError, match="needs labelled real batches"):
        train_step(s, lambda: torch.from_numpy(x[:B]), s.G, s.D)
    bad = torch.full((B,), 8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"expected \(32,\) in \[0, 7\]"):
        train_step(s, lambda: (torch.from_numpy(x[:B]), bad), s.G, s.D)


def test_conditional_resume_is_bitwise(tmp_path):
    x, y = ring8_labelled()

    def data():
        return InMemoryBatches(x, 32, seed=3, labels=y)

    full = train(tiny_cond(12), batches=data(), checkpoint_root=tmp_path / "full", diagnostics=False).state
    first = train(tiny_cond(5), batches=data(), checkpoint_root=tmp_path / "part", diagnostics=False)
    G, cfg = load_generator(first.checkpoint_dir)  # the checkpoint rebuilds the conditional G_ema
    assert G.num_classes == 8 and cfg.network.conditional
    torch.manual_seed(999)
    resumed = train(tiny_cond(12), batches=data(), resume_from=first.checkpoint_dir,
                    checkpoint_root=tmp_path / "part", diagnostics=False).state
    for name in ("G", "D", "G_ema"):
        for (ka, va), (kb, vb) in zip(getattr(full, name).state_dict().items(),
                                      getattr(resumed, name).state_dict().items()):
            assert ka == kb and torch.equal(va, vb), f"{name}.{ka} differs"


def test_labels_travel_with_in_memory_batches_and_their_rank_slices():
    x, y = ring8_labelled(100)
    one = InMemoryBatches(x, 20, seed=1, labels=y)(0)
    two = [InMemoryBatches(x, 20, seed=1, rank=r, world_size=2, labels=y)(0) for r in range(2)]
    for _ in range(7):  # across an epoch boundary
        xb, yb = next(one)
        parts = [next(it) for it in two]
        assert torch.equal(xb, torch.cat([p[0] for p in parts])) and torch.equal(yb, torch.cat([p[1] for p in parts]))
        # each label is the mode id of its point: the pairing survives the shuffle
        centres = torch.tensor(np.stack([np.cos(2 * np.pi * np.arange(8) / 8), np.sin(2 * np.pi * np.arange(8) / 8)], 1),
                               dtype=torch.float32)
        assert torch.equal(torch.cdist(xb, centres).argmin(1), yb)
    with pytest.raises(ValueError, match="one per example"):
        InMemoryBatches(x, 20, seed=1, labels=y[:5])


def test_conditional_sampling_by_class_and_class_balanced():
    cfg = digits_cond()
    G = build_generator(cfg)
    assert torch.equal(labels_for_range(8, 5, 10), torch.tensor([8, 9, 0, 1, 2]))
    assert torch.equal(labels_for_range(0, 3, 10, 4), torch.full((3,), 4))
    balanced = generate(G, 25, seed=1)
    # sample i is G(z_i, i mod K): the same as generating it alone, at its own index
    assert torch.equal(balanced[13:14], generate(G, 1, seed=1, start=13))
    only3 = generate(G, 25, seed=1, class_label=3)
    assert torch.equal(only3[3], balanced[3]) and not torch.equal(only3[4], balanced[4])
    for bad in (10, -1, 2.5, True):
        with pytest.raises(ValueError, match="accepted: an integer from 0 to 9"):
            generate(G, 2, seed=1, class_label=bad)
    with pytest.raises(ValueError, match="unconditional generator"):
        generate(build_generator(get_preset("digits")), 2, seed=1, class_label=0)


def test_conditional_accuracy_names_the_worst_class():
    predicted = labels_for_range(0, 40, 4).numpy().copy()
    predicted[[1, 5]] = 0  # two class-1 samples read as 0
    acc = conditional_accuracy(predicted, 40, 4)
    assert acc["class_accuracy"] == pytest.approx(38 / 40)
    assert acc["class_accuracy/1"] == pytest.approx(8 / 10) and acc["class_accuracy_min"] == pytest.approx(0.8)
    assert conditional_accuracy(predicted, 40, 0) == {}


def test_conditional_digits_trains_with_diagnostics_per_tick():
    x, y = load_digits()
    cfg = digits_cond(steps=4, **{"train.tick_every_steps": 2})
    result = train(cfg, batches=InMemoryBatches(x, 16, seed=0, labels=y))
    last = result.history[-1]
    assert last["mode_collapse/num_classes"] == 10 and np.isfinite(last["loss/G"])


# --- the registered pyfunc (as load_context leaves it, with this process's engine) ---------------------

def _pyfunc(G):
    import gan_core.sampling
    from gan_core.data import Normalisation
    from infra.models.generator_model import GeneratorModel

    pm = GeneratorModel()
    pm.G, pm.sampling, pm.normalisation, pm.device = G, gan_core.sampling, Normalisation(), torch.device("cpu")
    return pm


def test_pyfunc_samples_a_class_or_class_balanced_and_takes_labelled_latents():
    G = build_generator(digits_cond()).eval()
    pm = _pyfunc(G)
    assert pm.num_classes == 10
    balanced = pm.predict(None, None, params={"num_samples": 12, "seed": 4, "start": 3})
    assert np.array_equal(balanced, generate(G, 12, seed=4, start=3).numpy())
    assert np.array_equal(pm.predict(None, None, params={"num_samples": 12, "seed": 4, "start": 3, "label": -1}),
                          balanced)
    seven = pm.predict(None, None, params={"num_samples": 5, "seed": 4, "label": 7})
    assert np.array_equal(seven, generate(G, 5, seed=4, class_label=7).numpy())
    z = torch.randn(3, G.z_dim).numpy()
    labels = np.array([0, 7, 9])
    with torch.no_grad():
        want = G(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
    assert np.array_equal(pm.predict(None, {"z": z, "label": labels}), want)


@pytest.mark.parametrize("model_input, params, message", [
    (None, {"num_samples": 2, "label": 10}, "params label: class 10 is not accepted; accepted: an integer from 0 to 9"),
    (None, {"num_samples": 2, "label": 2.5}, "params label: class 2.5 is not accepted"),
    ("z", {}, "needs a label per latent"),
    ("z+bad", {}, r"labels are int64 of shape \(3,\) in \[0, 10\]"),
    ("z+float", {}, r"labels are float64 of shape \(3,\)"),
    ("z+labels", {"label": 3}, "params label=3 applies to seed-addressed sampling"),
])
def test_pyfunc_refuses_bad_labels_in_one_line(model_input, params, message):
    pm = _pyfunc(build_generator(digits_cond()).eval())
    z = np.zeros((3, pm.G.z_dim), np.float32)
    inputs = {None: None, "z": z, "z+bad": {"z": z, "label": np.array([0, 1, 10])},
              "z+float": {"z": z, "label": np.array([0.0, 1.0, 2.0])},
              "z+labels": {"z": z, "label": np.array([0, 1, 2])}}
    with pytest.raises(ValueError, match=message) as e:
        pm.predict(None, inputs[model_input], params=params)
    assert "\n" not in str(e.value)


def test_pyfunc_of_an_unconditional_generator_refuses_a_label():
    pm = _pyfunc(build_generator(get_preset("digits")).eval())
    with pytest.raises(ValueError, match="unconditional generator"):
        pm.predict(None, None, params={"num_samples": 2, "label": 1})
    z = np.zeros((2, pm.G.z_dim), np.float32)
    with pytest.raises(ValueError, match="labels given to an unconditional generator"):
        pm.predict(None, {"z": z, "label": np.array([0, 1])})
    assert pm.predict(None, None, params={"num_samples": 2, "label": -1}).shape == (2, 1, 8, 8)


def test_registered_signature_lists_the_label_param_only_when_conditional():
    from infra.models.registry import model_signature

    names = lambda cfg: [p.name for p in model_signature(cfg).params.params]  # noqa: E731
    assert "label" in names(digits_cond()) and "label" not in names(get_preset("digits"))
    spec = {p.name: p for p in model_signature(digits_cond()).params.params}["label"]
    assert spec.default == -1


def test_a_conditional_launch_needs_a_labelled_dataset_with_at_most_num_classes_names():
    from infra.train.plan import resolve_config_for_dataset

    cfg = tiny_cond()
    manifest = {"name": "photos", "shape": [2], "has_labels": False}
    with pytest.raises(ConfigError, match="^network.conditional: got true, but the staged dataset 'photos' has no labels"):
        resolve_config_for_dataset(cfg, manifest)
    named = {**manifest, "has_labels": True, "label_names": [f"c{i}" for i in range(12)]}
    with pytest.raises(ConfigError, match="^data.num_classes: got 8, but the staged dataset 'photos' names 12 classes"):
        resolve_config_for_dataset(cfg, named)
    ok = resolve_config_for_dataset(cfg, {**named, "label_names": ["a", "b"]})
    assert ok.data.name == "photos" and ok.network.conditional
    assert ok.data.class_frequencies == ()  # staged before label counts: uniform fakes
    # the fakes follow the staged label counts (classes never seen get weight 0); set frequencies win
    counted = {**manifest, "has_labels": True, "label_counts": [5, 0, 3]}
    assert resolve_config_for_dataset(cfg, counted).data.class_frequencies == (5, 0, 3, 0, 0, 0, 0, 0)
    given = tiny_cond(**{"data.class_frequencies": [1] * 8})
    assert resolve_config_for_dataset(given, counted).data.class_frequencies == (1,) * 8
    with pytest.raises(ConfigError, match=r"^data.num_classes: got 8, but the staged dataset 'photos' has labels "
                                          r"up to 9; allowed: an integer >= 10"):
        resolve_config_for_dataset(cfg, {**counted, "label_counts": [1] * 10})
    # an unconditional config never looks at the labels
    assert resolve_config_for_dataset(get_preset("tiny"), manifest).data.name == "photos"
