"""Training diagnostics: the vanishing gradient of the saturating loss (its gradient ratio to the
non-saturating loss, analytic and measured, and the warning on it), the mode-collapse indicators (mode
and class coverage, with the warning naming the missing classes), and the loop reporting both without
disturbing training."""

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from gan_core.config import DataConfig, GANConfig, NetworkConfig, OptimizerConfig, TrainConfig, get_preset
from gan_core.data import InMemoryBatches, mixture, sample_mixture
from gan_core.diagnostics import (CONFIDENT_REJECTION, GRADIENT_PROBE_SAMPLES, GRADIENT_RATIO_WARN, TrainingDiagnostics,
                                  g_gradient_ratio, g_loss_gain, measured_gradient_ratio, vanishing_gradient_indicator)
from gan_core.loop import train
from gan_core.sampling import latents_for_range
from gan_core.training import build_training_state, discriminator_step, generator_step
from tests.gloo import run_ranks
from tests.factories import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def strong_d_poor_g_state():
    """p_data = N(0, 1); G is an MLP whose outputs sit near x = 5; D trained (project's D update) until
    it confidently rejects them."""
    cfg = GANConfig(
        data=DataConfig(name="gauss", shape=(1,)),
        network=NetworkConfig(arch="mlp", z_dim=4, g_width=32, d_width=32, g_depth=2, d_depth=2, g_norm="none"),
        d_optim=OptimizerConfig(lr=3e-3, beta1=0.5, beta2=0.99),
        train=TrainConfig(global_batch_size=256, total_steps=1, seed=0),
    )
    state = build_training_state(cfg)
    with torch.no_grad():
        state.G.net[-1].bias.fill_(5.0)
    g = torch.Generator().manual_seed(0)
    for i in range(150):
        state.step = i
        stats = discriminator_step(state, state.D, torch.randn(256, 1, generator=g), 0)
    state.step = 150
    return state, stats


def with_loss(state, kind):
    s = copy.deepcopy(state)
    s.config = s.config.with_overrides({"loss.kind": kind})
    return s


def test_saturating_loss_gradient_vanishes_and_the_indicator_fires_only_for_it(caplog):
    state, d_stats = strong_d_poor_g_state()
    d_fake = float(d_stats["D/fake"])
    assert d_fake < 0.01, "the discriminator should confidently reject the fakes"
    # the same batch: both copies draw z for the same (seed, step)
    s_mm, s_ns = with_loss(state, "minimax"), with_loss(state, "non_saturating")
    g_mm = float(generator_step(s_mm, s_mm.G)["grad_norm/G"])
    g_ns = float(generator_step(s_ns, s_ns.G)["grad_norm/G"])
    s_again = with_loss(state, "minimax")
    assert float(generator_step(s_again, s_again.G)["grad_norm/G"]) == g_mm  # same z, same weights: same batch
    assert g_ns >= 100 * g_mm, f"non-saturating {g_ns:.3e} vs saturating {g_mm:.3e}"
    # the indicator, fed the tick's numbers, fires for the saturating run only, and the warning names the fix
    for kind, gn, expected in (("minimax", g_mm, 1.0), ("non_saturating", g_ns, 0.0)):
        diag = TrainingDiagnostics(with_loss(state, kind).config, num_samples=64)
        with caplog.at_level(logging.WARNING, logger="gan_core.diagnostics"):
            caplog.clear()
            out = diag(with_loss(state, kind), {"D/fake": d_fake, "grad_norm/G": gn})
        assert out["vanishing_gradient/indicator"] == expected, kind
        if expected:
            assert "non_saturating" in caplog.text and "r1_gamma" in caplog.text and "d_optim.lr" in caplog.text
            # the measured ratio at G's output agrees in scale with the ratio of G's parameter gradients
            assert out["vanishing_gradient/gradient_ratio_measured"] >= 100
            assert out["vanishing_gradient/gradient_ratio"] == pytest.approx((1 - d_fake) / d_fake)
        else:
            assert not caplog.records
    # the pure function agrees with the loss gains the theory predicts
    assert g_loss_gain("minimax", d_fake) == pytest.approx(d_fake)
    assert g_loss_gain("non_saturating", d_fake) == pytest.approx(1 - d_fake)


def test_indicator_also_fires_when_g_gradient_collapses_from_its_peak():
    assert vanishing_gradient_indicator(0.01, 1e-4, "non_saturating", peak_grad_norm_G=1.0)[
        "vanishing_gradient/indicator"] == 1.0
    # not while D is unsure, however small the gradient
    assert vanishing_gradient_indicator(0.4, 1e-4, "minimax", peak_grad_norm_G=1.0)[
        "vanishing_gradient/indicator"] == 0.0


def calibrated_state(d_fake_target):
    """`strong_d_poor_g_state` with D's output bias shifted (bisection) so that the mean D(G(z)) on the
    diagnostics' probe latents is ``d_fake_target``; returns (state, that mean)."""
    state, _ = strong_d_poor_g_state()
    z = latents_for_range(0, 0, GRADIENT_PROBE_SAMPLES, state.config.network.z_dim)
    with torch.no_grad():
        logits = state.D(state.G.eval()(z))
        state.G.train()
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float(torch.sigmoid(logits + mid).mean()) < d_fake_target else (lo, mid)
        state.D.net[-1].bias += (lo + hi) / 2
        d_fake = float(torch.sigmoid(state.D(state.G(z))).mean())
    return state, d_fake


def test_the_vanishing_gradient_warning_fires_for_the_saturating_loss_at_d_fake_0_06(caplog):
    state, d_fake = calibrated_state(0.06)
    assert d_fake == pytest.approx(0.06, abs=1e-4)
    assert d_fake > CONFIDENT_REJECTION  # the former rule (mean D(G(z)) < 0.05) stayed silent here
    # what G really gets: the parameter gradients of both losses on the same batch
    s_mm, s_ns = with_loss(state, "minimax"), with_loss(state, "non_saturating")
    g_mm = float(generator_step(s_mm, s_mm.G)["grad_norm/G"])
    g_ns = float(generator_step(s_ns, s_ns.G)["grad_norm/G"])
    assert g_ns / g_mm >= GRADIENT_RATIO_WARN, f"non-saturating {g_ns:.3e} vs saturating {g_mm:.3e}"
    for kind, gn in (("minimax", g_mm), ("non_saturating", g_ns)):
        s = with_loss(state, kind)
        diag = TrainingDiagnostics(s.config, num_samples=64)
        with caplog.at_level(logging.WARNING, logger="gan_core.diagnostics"):
            caplog.clear()
            out = diag(s, {"D/fake": d_fake, "grad_norm/G": gn})
        if kind == "minimax":
            assert out["vanishing_gradient/gradient_ratio"] == pytest.approx(15.67, abs=0.02)
            assert out["vanishing_gradient/indicator"] == 1.0
            # measured at G's output, the ratio matches the one between G's parameter gradients
            assert out["vanishing_gradient/gradient_ratio_measured"] == pytest.approx(g_ns / g_mm, rel=0.1)
            [record] = caplog.records
            text = record.getMessage()
            assert text.startswith("step 150: vanishing generator gradient")
            assert "15.7x weaker gradient than the non-saturating loss" in text and "D(G(z)) = 0.060" in text
            assert "measured" in text and "loss.kind=non_saturating" in text
        else:  # the same D, the non-saturating loss: nothing to warn about
            assert out["vanishing_gradient/gradient_ratio"] == 1.0
            assert out["vanishing_gradient/indicator"] == 0.0
            assert "vanishing_gradient/gradient_ratio_measured" not in out
            assert not caplog.records


def test_measuring_the_gradient_ratio_leaves_g_and_d_untouched():
    state, _ = strong_d_poor_g_state()
    s = with_loss(state, "minimax")
    before = [copy.deepcopy(m.state_dict()) for m in (s.G, s.D)]
    s.G.train()
    s.D.train()
    ratio = measured_gradient_ratio(s.G, s.D, latents_for_range(0, 0, 64, s.config.network.z_dim))
    assert ratio > 100
    assert s.G.training and s.D.training
    assert all(p.grad is None for m in (s.G, s.D) for p in m.parameters())
    for module, saved in zip((s.G, s.D), before):
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved[key]), key


def test_the_gradient_ratio_threshold_and_one_warning_per_episode(caplog):
    fires = lambda d, kind="minimax": vanishing_gradient_indicator(d, 1.0, kind)["vanishing_gradient/indicator"]
    assert g_gradient_ratio("minimax", 1 / 11) == pytest.approx(GRADIENT_RATIO_WARN)
    assert fires(1 / 11 - 1e-9) == 1.0 and fires(0.1) == 0.0  # ratios 10.0 and 9.0
    assert g_gradient_ratio("minimax", 0.0) == float("inf")
    for kind in ("non_saturating", "hinge", "wasserstein"):
        assert g_gradient_ratio(kind, 1e-3) == 1.0 and fires(1e-3, kind) == 0.0, kind
    cfg = tiny_config({"loss.kind": "minimax"})
    diag = TrainingDiagnostics(cfg, num_samples=64, measure_gradient_ratio=False)
    tick = SimpleNamespace(G_ema=RingGenerator(False), device=torch.device("cpu"), step=0)
    seen = []
    with caplog.at_level(logging.WARNING, logger="gan_core.diagnostics"):
        for step, d_fake in enumerate((0.06, 0.05, 0.3, 0.08)):
            caplog.clear()
            tick.step = step
            out = diag(tick, {"D/fake": d_fake, "grad_norm/G": 1.0})
            seen.append((out["vanishing_gradient/indicator"], len(caplog.records)))
    assert seen == [(1.0, 1), (1.0, 0), (0.0, 0), (1.0, 1)]


class RingGenerator(nn.Module):
    """A hand-made ring8 generator: mode = argmax of the first 8 latents (uniform), or always mode 0."""

    def __init__(self, collapsed):
        super().__init__()
        self.z_dim, self.collapsed = 8, collapsed
        self.register_buffer("centres", torch.tensor(mixture("ring8").centres, dtype=torch.float32))

    def forward(self, z):
        mode = torch.zeros(len(z), dtype=torch.long) if self.collapsed else z.argmax(1)
        return self.centres[mode] + 0.01 * z[:, 8 - 2:]


def test_mode_collapse_indicator_on_ring8():
    cfg = get_preset("tiny")
    diag = TrainingDiagnostics.for_config(cfg)
    healthy = diag(SimpleNamespace(G_ema=RingGenerator(False), device=torch.device("cpu"), step=0), {})
    collapsed = diag(SimpleNamespace(G_ema=RingGenerator(True), device=torch.device("cpu"), step=0), {})
    assert healthy["mode_collapse/modes_covered"] == 8 and collapsed["mode_collapse/modes_covered"] == 1
    assert healthy["mode_collapse/diversity_ratio"] == pytest.approx(1.0, abs=0.1)
    assert collapsed["mode_collapse/diversity_ratio"] < 0.05
    assert collapsed["mode_collapse/reverse_kl"] == pytest.approx(np.log(8))


@pytest.mark.parametrize("overrides", [{}, {"loss.kind": "minimax", "network.d_spectral_norm": True}],
                         ids=["non_saturating", "minimax-measured-ratio"])
def test_loop_reports_diagnostics_on_every_tick_without_changing_training(tmp_path, overrides):
    # the minimax case measures the gradient ratio through G (BatchNorm) and D (spectral norm) at each tick
    cfg = tiny_config({"train.total_steps": 10, "train.tick_every_steps": 5, **overrides})
    x, _ = sample_mixture("ring8", 256, seed=0)
    snaps = []
    rng_before = torch.get_rng_state()
    on = train(cfg, batches=InMemoryBatches(x, 32, seed=0), on_snapshot=snaps.append, checkpoint_root=tmp_path / "a")
    off = train(cfg, batches=InMemoryBatches(x, 32, seed=0), checkpoint_root=tmp_path / "b", diagnostics=False)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for key in ("D/real", "D/fake", "js_estimate", "grad_norm/G", "grad_norm/D", "vanishing_gradient/indicator",
                "vanishing_gradient/loss_gain", "vanishing_gradient/gradient_ratio", "mode_collapse/modes_covered",
                "mode_collapse/diversity_ratio"):
        assert all(key in s.metrics for s in snaps), key
    measured = [s.metrics.get("vanishing_gradient/gradient_ratio_measured") for s in snaps]
    assert all(m is not None and m > 0 for m in measured) if overrides else measured == [None] * len(snaps)
    assert not any(k.startswith(("vanishing_gradient/", "mode_collapse/")) for k in off.last_snapshot.metrics)
    for net in ("G", "D", "G_ema"):  # parameters, BatchNorm statistics, spectral-norm vectors
        for a, b in zip(getattr(on.state, net).state_dict().values(), getattr(off.state, net).state_dict().values()):
            assert torch.equal(a, b), net
    assert on.last_snapshot.metrics["loss/D"] == off.last_snapshot.metrics["loss/D"]


class DigitGenerator(nn.Module):
    """Real digit images addressed by z: all classes, or only the images of one digit."""

    def __init__(self, images):
        super().__init__()
        self.z_dim = 4
        self.register_buffer("images", torch.as_tensor(images))

    def forward(self, z):
        index = (z[:, 0].abs() * 1e4).long() % len(self.images)
        return self.images[index]


def test_class_coverage_indicator_with_the_digits_classifier(digits_cache):
    from gan_core.data import load_digits
    from gan_core.metrics import load_or_train_digits_classifier

    x, y = load_digits()
    classifier = load_or_train_digits_classifier(digits_cache)
    diag = TrainingDiagnostics.for_config(get_preset("digits"), classifier=classifier)
    cpu = torch.device("cpu")
    healthy = diag(SimpleNamespace(G_ema=DigitGenerator(x), device=cpu, step=0), {})
    collapsed = diag(SimpleNamespace(G_ema=DigitGenerator(x[y == 7]), device=cpu, step=0), {})
    assert healthy["mode_collapse/classes_covered"] == 10 and healthy["mode_collapse/coverage"] == 1.0
    assert collapsed["mode_collapse/classes_covered"] == 1 and collapsed["mode_collapse/coverage"] == 0.1
    assert healthy["mode_collapse/diversity_ratio"] == pytest.approx(1.0, abs=0.1)
    assert collapsed["mode_collapse/diversity_ratio"] < healthy["mode_collapse/diversity_ratio"]


def class_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "classes; missing" in r.getMessage()]


def test_a_digits_run_with_a_generator_forced_to_one_class_warns_naming_the_missing_classes(
        digits_cache, tmp_path, caplog):
    from gan_core.data import load_digits

    x, y = load_digits()
    cfg = get_preset("digits").with_overrides({"train.total_steps": 4, "train.tick_every_steps": 2,
                                               "train.checkpoint_every_steps": 4})
    state = build_training_state(cfg)
    # G (and G_ema) forced to one class: a real 3, perturbed by the trained network's own output
    three = torch.as_tensor(x[np.flatnonzero(y == 3)[0]])
    for G in (state.G, state.G_ema):
        G.register_forward_hook(lambda module, inputs, out: (three + 0.1 * out).clamp(-1, 1))
    snaps = []
    with caplog.at_level(logging.WARNING, logger="gan_core.diagnostics"):
        train(cfg, batches=InMemoryBatches(x, 64, seed=0), state=state, on_snapshot=snaps.append,
              checkpoint_root=tmp_path, diagnostics=TrainingDiagnostics.for_config(cfg, cache_dir=digits_cache))
    assert [s.step for s in snaps] == [2, 4]
    for s in snaps:  # every tick reports the collapse
        assert s.metrics["mode_collapse/classes_covered"] == 1 and s.metrics["mode_collapse/num_classes"] == 10
        # KL(p_gen || p_data) with all mass on class 3: -log p_data(3)
        assert s.metrics["mode_collapse/class_kl"] == pytest.approx(-np.log(np.mean(y == 3)), abs=0.01)
    # one warning for the episode, at its first tick, naming the missing classes
    [warning] = class_warnings(caplog)
    assert warning.startswith("step 2: generated samples cover 1/10 classes; missing: 0, 1, 2, 4, 5, 6, 7, 8, 9 ")
    assert "d_pack" in warning


def test_the_class_warning_names_a_dropped_class_and_warns_again_only_when_another_drops(digits_cache, caplog):
    from gan_core.data import load_digits

    x, y = load_digits()
    diag = TrainingDiagnostics.for_config(get_preset("digits"), cache_dir=digits_cache)
    assert diag.classifier is not None  # digits: the classifier comes with the config
    generators = {"all": x, "no 7": x[y != 7], "no 1 or 7": x[(y != 7) & (y != 1)]}
    seen = []
    with caplog.at_level(logging.WARNING, logger="gan_core.diagnostics"):
        for step, which in enumerate(("all", "no 7", "no 7", "all", "no 7", "no 1 or 7"), start=1):
            caplog.clear()
            out = diag(SimpleNamespace(G_ema=DigitGenerator(generators[which]), device=torch.device("cpu"),
                                       step=100 * step), {})
            seen.append((out["mode_collapse/classes_covered"], [w.split(" (")[0] for w in class_warnings(caplog)]))
            if which == "all":
                assert out["mode_collapse/class_kl"] < 0.05
            else:
                assert out["mode_collapse/class_kl"] > 0.05
    assert seen == [
        (10, []),
        (9, ["step 200: generated samples cover 9/10 classes; missing: 7"]),
        (9, []),  # the same episode
        (10, []),
        (9, ["step 500: generated samples cover 9/10 classes; missing: 7"]),  # dropped again
        (8, ["step 600: generated samples cover 8/10 classes; missing: 1, 7"]),  # another class dropped
    ]


def test_class_coverage_needs_a_classifier_and_goes_without_one_when_asked(digits_cache, monkeypatch):
    import gan_core.metrics.digits as digits

    monkeypatch.setattr(digits, "train_digits_classifier", lambda *a, **k: pytest.fail("cached: no training"))
    assert TrainingDiagnostics.for_config(get_preset("digits"), cache_dir=digits_cache).classifier is not None
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(digits_cache))  # the loop's default: the cache from the environment
    assert TrainingDiagnostics.for_config(get_preset("digits")).classifier is not None
    off = TrainingDiagnostics.for_config(get_preset("digits"), classifier=None)
    out = off(SimpleNamespace(G_ema=DigitGenerator(np.zeros((4, 1, 8, 8), np.float32)), device=torch.device("cpu"),
                              step=0), {})
    assert "mode_collapse/classes_covered" not in out and "mode_collapse/diversity_ratio" in out
    assert TrainingDiagnostics.for_config(get_preset("tiny")).classifier is None  # ring8: modes, not classes


@pytest.mark.parametrize("cache", ["foreign file", "not a directory"])
def test_an_unusable_classifier_cache_costs_a_warning_not_the_run(cache, digits_cache, tmp_path, monkeypatch, caplog):
    import gan_core.metrics.digits as digits

    cached = digits.load_or_train_digits_classifier(digits_cache)
    monkeypatch.setattr(digits, "train_digits_classifier", lambda *a, **k: (cached, 1.0))  # stands in for 3 s
    if cache == "foreign file":
        cache_dir = tmp_path
        torch.save({"format": "something-else/1"}, tmp_path / digits.CACHE_FILE)
    else:
        cache_dir = tmp_path / "a-file"
        cache_dir.write_text("")
    with caplog.at_level(logging.WARNING, logger="gan_core.diagnostics"):
        diag = TrainingDiagnostics.for_config(get_preset("digits"), cache_dir=cache_dir)
    assert diag.classifier is cached
    [record] = caplog.records
    assert str(cache_dir) in record.getMessage() and "training one in memory" in record.getMessage()


def _ddp_worker(rank, world_size, out_dir):
    from torch.nn.parallel import DistributedDataParallel

    cfg = tiny_config({"train.total_steps": 6, "train.tick_every_steps": 3,
                                             "network.g_norm": "none", "loss.kind": "minimax"})
    x, _ = sample_mixture("ring8", 256, seed=0)
    snaps = []
    train(cfg, batches=InMemoryBatches(x, 32, seed=0, rank=rank, world_size=world_size), rank=rank,
          world_size=world_size, wrap_model=DistributedDataParallel, on_snapshot=lambda s: snaps.append(s.metrics),
          checkpoint_root=f"{out_dir}/ckpt-{rank}")
    return [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in snaps]


def test_diagnostics_are_identical_on_every_rank_of_a_ddp_run(tmp_path):
    rank0, rank1 = run_ranks(_ddp_worker, tmp_path)
    assert len(rank0) == 2 and "mode_collapse/modes_covered" in rank0[-1]
    assert "vanishing_gradient/indicator" in rank0[-1] and "vanishing_gradient/gradient_ratio_measured" in rank0[-1]
    assert rank0 == rank1
