"""Algorithm 1's structure: who changes when, how often, EMA arithmetic, NaN detection."""

import copy
import math

import pytest
import torch

from gan_core.data import InMemoryBatches, sample_mixture
from gan_core.ema import ema_beta, update_ema
from gan_core.loop import NonFiniteLossError, train
from gan_core.training import build_training_state, discriminator_step, generator_step, train_step
from tests.factories import tiny_config


def tiny(**overrides):
    return tiny_config(overrides)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def real_batch(cfg, n=None):
    x, _ = sample_mixture("ring8", n or cfg.train.global_batch_size, seed=1)
    return torch.from_numpy(x)


def test_d_update_changes_only_d():
    cfg = tiny()
    s = build_training_state(cfg)
    g0, d0, e0 = params(s.G), params(s.D), params(s.G_ema)
    discriminator_step(s, s.D, real_batch(cfg), 0)
    assert changed(d0, s.D)
    assert not changed(g0, s.G) and not changed(e0, s.G_ema)


def test_g_update_changes_only_g_and_its_ema():
    cfg = tiny()
    s = build_training_state(cfg)
    s.images_seen = 10_000  # past the EMA ramp-up, so G_ema moves
    g0, d0 = params(s.G), params(s.D)
    generator_step(s, s.G)
    assert changed(g0, s.G)
    assert not changed(d0, s.D)
    assert all(p.grad is None for p in s.D.parameters()), "the G step must not compute D gradients"
    assert all(p.requires_grad for p in s.D.parameters()), "D's requires_grad must be restored"


def test_k_discriminator_updates_per_generator_update():
    cfg = tiny(**{"train.d_steps": 3})
    s = build_training_state(cfg)
    counts = {"D": 0, "G": 0, "real": 0}
    s.opt_D.register_step_post_hook(lambda *a: counts.__setitem__("D", counts["D"] + 1))
    s.opt_G.register_step_post_hook(lambda *a: counts.__setitem__("G", counts["G"] + 1))

    def next_real():
        counts["real"] += 1
        return real_batch(cfg)

    for _ in range(4):
        train_step(s, next_real, s.G, s.D)
    assert counts == {"D": 12, "G": 4, "real": 12}  # a fresh real minibatch per D update
    assert s.step == 4
    assert s.images_seen == 12 * cfg.train.global_batch_size


def test_ema_beta_follows_the_half_life_rule():
    # StyleGAN2-ADA: beta = 0.5 ** (batch / ema_nimg); after ema_nimg images the old weight is halved
    beta = ema_beta(global_batch_size=100, ema_kimg=1.0, ema_rampup=0.0, images_seen=10**6)
    assert beta == pytest.approx(0.5 ** 0.1)
    assert beta ** 10 == pytest.approx(0.5)
    # ramp-up caps the half-life at rampup * images_seen
    assert ema_beta(100, 10.0, 0.05, images_seen=4000) == pytest.approx(0.5 ** (100 / 200))
    assert ema_beta(100, 0.0, 0.0, 0) == 0.0


def test_update_ema_is_a_lerp_and_copies_buffers():
    G = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    G_ema = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        G[1].running_mean.fill_(7.0)
    before = [p.clone() for p in G_ema.parameters()]
    update_ema(G_ema, G, beta=0.75)
    for b, p_ema, p in zip(before, G_ema.parameters(), G.parameters()):
        torch.testing.assert_close(p_ema, 0.75 * b + 0.25 * p)
    assert torch.equal(G_ema[1].running_mean, torch.full((2,), 7.0))


def test_nan_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny(**{"train.total_steps": 30, "train.checkpoint_every_steps": 10, "train.tick_every_steps": 5})
    x, _ = sample_mixture("ring8", 512, seed=0)
    batches = InMemoryBatches(x, cfg.train.global_batch_size, seed=0)

    def poisoned(start):
        for i, b in enumerate(batches(start)):
            yield b * float("nan") if start + i >= 13 else b

    with pytest.raises(NonFiniteLossError) as e:
        train(cfg, batches=poisoned, checkpoint_root=tmp_path)
    assert e.value.step == 14  # the 14th D update saw the first NaN batch (index 13)
    assert "step 14" in str(e.value)
    ckpts = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-000000010"]
    state = torch.load(tmp_path / ckpts[0] / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["G"].values())


# each loss near initialisation, where D(x) ~ 0 for every input (logit): the value the paper's formula gives
# there, and the regulariser's own term. A kind that were ignored (every kind training as one) fails here.
LOSS_AT_INIT = {
    "minimax": ({"loss/D": 2 * math.log(2), "loss/G": -math.log(2)}, None),  # Goodfellow et al. 2014, eq. 1
    "hinge": ({"loss/D": 2.0, "loss/G": 0.0}, None),  # Lim & Ye 2017: max(0, 1 - D) + max(0, 1 + D)
    "wasserstein": ({"loss/D": 0.0, "loss/G": 0.0}, "loss/D_gp"),  # Gulrajani et al. 2017, with the GP
    "non_saturating": ({"loss/D": 2 * math.log(2), "loss/G": math.log(2)}, "loss/D_r1"),  # -log D(G(z)); R1
}


@pytest.mark.parametrize("kind,extra", [("minimax", {}), ("hinge", {}), ("wasserstein", {"loss.gp_lambda": 10.0}),
                                         ("non_saturating", {"loss.r1_gamma": 1.0})])
def test_every_loss_kind_trains(kind, extra):
    cfg = tiny(**{"loss.kind": kind, "train.total_steps": 4, **extra})
    x, _ = sample_mixture("ring8", 256, seed=0)
    result = train(cfg, batches=InMemoryBatches(x, cfg.train.global_batch_size, seed=0))
    assert result.state.step == 4
    metrics = result.last_snapshot.metrics
    assert all(v == v for v in metrics.values())  # no NaN
    expected, regulariser = LOSS_AT_INIT[kind]
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=0.15), (kind, name, metrics[name])
    assert {k for k in metrics if k.startswith("loss/D_")} == ({regulariser} if regulariser else set())


def test_snapshots_report_hierarchical_metrics_and_counters(tmp_path):
    cfg = tiny(**{"train.total_steps": 10, "train.tick_every_steps": 5, "train.checkpoint_every_steps": 10})
    x, _ = sample_mixture("ring8", 256, seed=0)
    snaps = []
    train(cfg, batches=InMemoryBatches(x, 32, seed=0), on_snapshot=snaps.append, checkpoint_root=tmp_path)
    assert [s.step for s in snaps] == [5, 10]
    assert snaps[0].checkpoint_dir is None and snaps[1].checkpoint_dir is not None and snaps[1].is_final
    assert snaps[1].images_seen == 10 * 32 and snaps[1].kimg == pytest.approx(0.32)
    for key in ("loss/D", "loss/G", "D/real", "D/fake", "js_estimate", "grad_norm/G", "grad_norm/D",
                "perf/kimg_per_s"):
        assert key in snaps[1].metrics


def test_pacgan_packing_feeds_d_groups_of_examples():
    cfg = tiny(**{"network.d_pack": 2, "loss.r1_gamma": 1.0})
    s = build_training_state(cfg)
    assert s.D.net[1].in_features == 2 * 2  # two 2-D points per judgement
    d0, g0 = params(s.D), params(s.G)
    stats = discriminator_step(s, s.D, real_batch(cfg), 0)
    generator_step(s, s.G)
    assert changed(d0, s.D) and changed(g0, s.G)
    assert torch.isfinite(stats["loss/D"])


def test_lr_rampdown_is_a_cosine_over_the_last_fraction_and_sets_both_optimisers():
    from gan_core.training import lr_scale

    cfg = tiny(**{"train.total_steps": 100, "train.lr_rampdown": 0.5})
    t = cfg.train
    assert lr_scale(t, 0) == 1.0 and lr_scale(t, 50) == 1.0
    assert lr_scale(t, 75) == pytest.approx(0.5)
    assert lr_scale(t, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_scale(tiny().train, 10**6) == 1.0  # off by default
    # the rate each update actually uses: step s trains at optim.lr * lr_scale(s), in both optimisers
    short = tiny(**{"train.total_steps": 4, "train.lr_rampdown": 0.5, "d_optim.lr": 1e-3})
    s = build_training_state(short)
    used = {"D": [], "G": []}
    s.opt_D.register_step_pre_hook(lambda opt, *a: used["D"].append(opt.param_groups[0]["lr"]))
    s.opt_G.register_step_pre_hook(lambda opt, *a: used["G"].append(opt.param_groups[0]["lr"]))
    x = real_batch(short)
    for _ in range(4):
        train_step(s, lambda: x, s.G, s.D)
    assert [lr_scale(short.train, step) for step in range(4)] == [1.0, 1.0, 1.0, pytest.approx(0.5)]
    assert used["D"] == pytest.approx([1e-3 * lr_scale(short.train, step) for step in range(4)])
    assert used["G"] == pytest.approx([short.g_optim.lr * lr_scale(short.train, step) for step in range(4)])
    assert s.sched_D.last_epoch == s.sched_G.last_epoch == s.step == 4


def test_r1_weight_decays_geometrically_when_a_final_value_is_set():
    from gan_core.config import ConfigError
    from gan_core.training import r1_gamma

    cfg = tiny(**{"train.total_steps": 100, "loss.r1_gamma": 1.0, "loss.r1_gamma_final": 0.01})
    assert r1_gamma(cfg, 0) == 1.0
    assert r1_gamma(cfg, 50) == pytest.approx(0.1)
    assert r1_gamma(cfg, 100) == pytest.approx(0.01)
    assert r1_gamma(tiny(**{"loss.r1_gamma": 0.5}), 50) == 0.5  # constant without a final value
    with pytest.raises(ConfigError, match="loss.r1_gamma_final"):
        tiny(**{"loss.r1_gamma_final": 0.1})  # a final value needs a starting one


def reference_d_step(s, real, j, r1_weight):
    """A D update written out as it was before lazy R1: ``r1_weight`` is the gamma in gamma/2 * R1 (None:
    no R1). The plain path of discriminator_step (no AMP, packing or gradient penalty)."""
    from gan_core import losses
    from gan_core.training import latents

    z = latents(s, "z_D", j, 0, 1)
    with torch.no_grad():
        fake = s.G(z)
    if r1_weight is not None:
        real = real.detach().requires_grad_(True)
    n = real.shape[0]
    logits = s.D(torch.cat([real, fake])).float()
    loss = losses.d_loss_for(s.config.loss.kind, logits[:n], logits[n:])
    if r1_weight is not None:
        loss = loss + 0.5 * r1_weight * losses.r1_penalty(logits[:n], real)
    s.opt_D.zero_grad(set_to_none=True)
    loss.backward()
    s.opt_D.step()


def test_r1_interval_1_is_the_eager_r1_update_bitwise():
    cfg = tiny(**{"loss.r1_gamma": 0.7})
    assert cfg.loss.r1_interval == 1  # the default
    s = build_training_state(cfg)
    ref = copy.deepcopy(s)
    for j in range(3):
        real = real_batch(cfg)
        discriminator_step(s, s.D, real, j)
        reference_d_step(ref, real, j, 0.7)
        assert all(torch.equal(a, b) for a, b in zip(s.D.parameters(), ref.D.parameters()))


def test_lazy_r1_runs_on_every_nth_d_update_with_its_weight_times_n(monkeypatch):
    from gan_core import losses

    n = 3
    cfg = tiny(**{"loss.r1_gamma": 0.7, "loss.r1_interval": n, "train.d_steps": 2})
    s = build_training_state(cfg)
    d_updates, with_r1 = [0], []
    s.opt_D.register_step_post_hook(lambda *a: d_updates.__setitem__(0, d_updates[0] + 1))
    real_r1 = losses.r1_penalty
    monkeypatch.setattr(losses, "r1_penalty", lambda *a: with_r1.append(d_updates[0]) or real_r1(*a))
    stats = [train_step(s, lambda: real_batch(cfg), s.G, s.D) for _ in range(6)]
    assert with_r1 == [0, 3, 6, 9]  # D updates (counted over steps and j) that are multiples of n
    # the reported R1 is amortised: n x R1 where computed, 0 elsewhere (so a tick's mean estimates R1)
    assert [float(st["loss/D_r1"]) > 0 for st in stats] == [True, True, False, True, True, False]
    monkeypatch.setattr(losses, "r1_penalty", real_r1)
    # the update itself: the eager update with gamma x n on an R1 update, without R1 on the others
    for step, j, weight in ((6, 0, 0.7 * n), (6, 1, None)):  # update 12 has R1, update 13 not
        s.step = step
        ref = copy.deepcopy(s)
        real = real_batch(cfg)
        discriminator_step(s, s.D, real, j)
        reference_d_step(ref, real, j, weight)
        assert all(torch.equal(a, b) for a, b in zip(s.D.parameters(), ref.D.parameters()))


def test_r1_interval_must_be_a_positive_integer():
    from gan_core.config import ConfigError

    for bad in (0, -2):
        with pytest.raises(ConfigError, match=r"loss.r1_interval: got -?\d+; allowed: an integer from 1 to"):
            tiny(**{"loss.r1_interval": bad})
    for bad in (1.5, True, "4"):  # the type check names the field too
        with pytest.raises(ConfigError, match=r"loss.r1_interval: got .*; allowed: an integer"):
            tiny(**{"loss.r1_interval": bad})
