"""DiffAugment (Zhao et al. 2020) and ADA's adaptive p (Karras et al. 2020): gan_core.augment and its use
in the training step."""

import numpy as np
import pytest
import torch

from gan_core.augment import ADJUST_EVERY_STEPS, AdaptiveP, diff_augment, parse_policy
from gan_core.checkpoint import load_training_state
from gan_core.config import ConfigError, GANConfig, get_preset
from gan_core.data import InMemoryBatches, load_digits, training_subset
from gan_core.loop import format_tick, train
from tests.gloo import run_ranks
from tests.factories import tiny_config

ALL = "color,translation,cutout"


def images(n=8, seed=0):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def aug(x, policy=ALL, p=1.0, **kw):
    kw = {"seed": 1, "purpose": "t", "step": 3, "j": 0, **kw}
    return diff_augment(x, policy, p, **kw)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", ALL])
def test_every_transform_changes_images_and_passes_the_gradient_to_its_input(policy):
    x = images().requires_grad_(True)
    y = aug(x, policy)
    assert y.shape == x.shape and not torch.equal(y, x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_translation_shifts_by_at_most_an_eighth_with_zero_padding_and_cutout_blanks_a_half_square():
    x = torch.ones(64, 1, 8, 8)
    t = aug(x, "translation")
    zeros = (t == 0).sum(dim=(1, 2, 3))  # a shift of (dx, dy) leaves |dx|*8 + |dy|*8 - |dx*dy| zero pixels
    assert set(zeros.tolist()) <= {0, 8, 15}
    assert torch.equal(t[t != 0], torch.ones_like(t[t != 0]))
    c = aug(x, "cutout")
    blanked = (c == 0).sum(dim=(1, 2, 3))
    assert blanked.max() == 16 and blanked.min() >= 4  # a 4x4 square, clipped at the border


@pytest.mark.parametrize("fill", [-1.0, 0.5])
def test_fill_is_the_value_of_the_uncovered_border_and_the_cutout_square_and_blocks_the_gradient(fill):
    x = torch.full((64, 1, 8, 8), 0.25, requires_grad=True)
    for policy, counts in (("translation", {0, 8, 15}), ("cutout", set(range(4, 17)))):
        y = aug(x, policy, fill=fill)
        filled = (y == fill).sum(dim=(1, 2, 3))
        assert set(filled.tolist()) <= counts and filled.max() > 0, policy
        assert torch.equal(y[y != fill], torch.full_like(y[y != fill], 0.25))
        assert torch.equal(aug(x, policy, fill=0.0) == 0, y == fill)  # the same pixels as the default fill
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(grad.sum(dim=(1, 2, 3)), 64 - filled.to(grad.dtype)), policy


def test_parameters_are_addressed_by_seed_purpose_step_and_j_not_the_global_rng():
    x = images()
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(1)
    assert torch.equal(aug(x), a)
    for change in ({"seed": 2}, {"purpose": "u"}, {"step": 4}, {"j": 1}):
        assert not torch.equal(aug(x, **change), a), change


def test_two_workers_rows_equal_the_one_worker_batch():
    x = images(8)
    one = aug(x, p=0.5)
    two = torch.cat([aug(x[r * 4:(r + 1) * 4], p=0.5, rank=r, world_size=2) for r in range(2)])
    assert torch.equal(one, two)


def test_empty_policy_is_the_identity_and_p_0_passes_images_through_bitwise():
    x = images()
    assert aug(x, "") is x
    assert torch.equal(aug(x, p=0.0), x)
    assert torch.equal(aug(x, p=torch.tensor(0.0)), x)
    half = aug(x, p=0.5)  # each example is either untouched or changed
    assert 0 < sum(torch.equal(half[i], x[i]) for i in range(len(x))) < len(x)


def test_policy_is_parsed_in_application_order_and_unknown_names_are_refused():
    assert parse_policy("cutout, color") == ("color", "cutout")
    assert parse_policy("") == ()
    with pytest.raises(ValueError, match="allowed: a comma-separated subset of color, translation, cutout"):
        parse_policy("blur")


def test_adaptive_p_rises_when_d_overfits_and_falls_otherwise():
    a = AdaptiveP(0.5, target=0.6, speed_kimg=1.0)
    for step in range(1, ADJUST_EVERY_STEPS + 1):
        a.observe(torch.tensor([3.0, 2.0, 1.0, -1.0, 4.0]), images=50)  # 4 of 5 positive
        a.observe(torch.ones(5), images=50)  # r_t = 9/10 over the interval > target 0.6: D overfits
        a.adjust(step)
        if step < ADJUST_EVERY_STEPS:
            assert a.p.item() == 0.5  # p moves once per interval
    assert a.p.item() == pytest.approx(0.5 + 4 * 100 / 1000)
    for step in range(ADJUST_EVERY_STEPS + 1, 2 * ADJUST_EVERY_STEPS + 1):
        a.observe(torch.ones(5), images=100)
        a.adjust(step)
    assert a.p.item() == 1.0  # clamped
    b = AdaptiveP(0.5, target=0.6, speed_kimg=10.0)
    for step in range(1, ADJUST_EVERY_STEPS + 1):
        b.observe(-torch.ones(6), images=50)  # r_t = -1 < 0.6: D does not overfit
        b.adjust(step)
    assert b.p.item() == pytest.approx(0.5 - 4 * 50 / 10_000)
    assert b.logits == 0 and b.images == 0 and b.sign_sum.item() == 0  # sums reset after the adjustment
    assert AdaptiveP(0.0, 0.6, 1.0).update(torch.tensor(0.0), torch.tensor(-1.0), 10_000).item() == 0.0


def test_adaptive_p_sums_of_two_workers_equal_one_workers():
    logits = torch.randn(16)
    one, halves = AdaptiveP(0.2, 0.6, 1.0), [AdaptiveP(0.2, 0.6, 1.0) for _ in range(2)]
    one.observe(logits, images=16)
    for r, h in enumerate(halves):
        h.observe(logits[r * 8:(r + 1) * 8], images=16, world_size=2)
    assert torch.equal(halves[0].sign_sum + halves[1].sign_sum, one.sign_sum)
    assert all((h.logits, h.images) == (one.logits, one.images) for h in halves)


def tiny_images(steps, **extra):
    """A tiny DCGAN on 8x8 digits: seconds."""
    overrides = {"data.name": "digits", "data.shape": [1, 8, 8], "network.arch": "dcgan", "network.g_width": 8,
                 "network.d_width": 8, "network.z_dim": 8, "train.total_steps": steps, "train.tick_every_steps": 5,
                 "train.checkpoint_every_steps": 100, "loss.r1_gamma": 0.1, "train.global_batch_size": 16,
                 **extra}
    return tiny_config(overrides)


def digits_batches():
    x, _ = load_digits()
    return InMemoryBatches(x[:100], 16, seed=3)


def states_equal(a, b):
    return all(torch.equal(va, vb) for name in ("G", "D", "G_ema")
               for va, vb in zip(getattr(a, name).state_dict().values(), getattr(b, name).state_dict().values()))


def test_training_with_p_0_or_an_empty_policy_is_bitwise_training_without_augmentation(tmp_path, one_thread):
    run = lambda cfg, d: train(cfg, batches=digits_batches(), checkpoint_root=tmp_path / d, diagnostics=False)
    plain = run(tiny_images(6), "plain")
    off = run(tiny_images(6, **{"augment.p": 0.3}), "off")  # policy "": p is ignored
    p0 = run(tiny_images(6, **{"augment.policy": ALL, "augment.p": 0.0}), "p0")
    on = run(tiny_images(6, **{"augment.policy": ALL}), "on")
    assert states_equal(plain.state, off.state) and states_equal(plain.state, p0.state)
    assert not states_equal(plain.state, on.state)
    assert "aug/p" not in plain.history[-1]
    assert on.history[-1]["aug/p"] == 1.0 and -1 <= on.history[-1]["aug/rt"] <= 1


def test_adaptive_p_is_logged_checkpointed_and_resumes_bitwise(tmp_path, one_thread):
    extra = {"augment.policy": ALL, "augment.adaptive": True, "augment.speed_kimg": 0.5,
             "train.checkpoint_every_steps": 7}  # a checkpoint between two adjustments: partial sums matter
    n = 14
    full = train(tiny_images(n, **extra), batches=digits_batches(), checkpoint_root=tmp_path / "full",
                 diagnostics=False)
    assert full.state.adaptive_p.p.item() > 0  # started at 0 (ADA), moved
    assert {"aug/p", "aug/rt"} <= set(full.history[-1])
    first = train(tiny_images(7, **extra), batches=digits_batches(), checkpoint_root=tmp_path / "part",
                  diagnostics=False)
    loaded = load_training_state(first.checkpoint_dir)
    assert torch.equal(loaded.adaptive_p.p, first.state.adaptive_p.p)
    assert (loaded.adaptive_p.logits, loaded.adaptive_p.images) == (first.state.adaptive_p.logits,
                                                                    first.state.adaptive_p.images) != (0, 0)
    torch.manual_seed(999)
    resumed = train(tiny_images(n, **extra), batches=digits_batches(), resume_from=first.checkpoint_dir,
                    checkpoint_root=tmp_path / "part", diagnostics=False).state
    assert torch.equal(resumed.adaptive_p.p, full.state.adaptive_p.p)
    assert states_equal(resumed, full.state)


def test_the_progress_line_shows_p_and_rt_only_when_augmenting(tmp_path, one_thread):
    on = train(tiny_images(4, **{"augment.policy": ALL, "augment.adaptive": True}), batches=digits_batches(),
               checkpoint_root=tmp_path / "on", diagnostics=False)
    line = format_tick(on.last_snapshot, 4)
    assert "aug/p 0.000" in line and "aug/rt " in line
    off = train(tiny_images(4), batches=digits_batches(), checkpoint_root=tmp_path / "off", diagnostics=False)
    assert "aug/" not in format_tick(off.last_snapshot, 4)


@pytest.mark.parametrize("overrides, message", [
    ({"augment.policy": "color,blur"}, "augment.policy: got 'color,blur'; allowed: '' (off) or a comma-separated "
                                       "subset of color, translation, cutout"),
    ({"augment.policy": "color,color"}, "augment.policy: got 'color,color'"),
    ({"augment.p": 1.5}, "augment.p: got 1.5; allowed: a number in [0, 1]"),
    ({"augment.adaptive": True}, "augment.adaptive: got True; allowed: true only together with a non-empty"),
    ({"augment.target": 1}, "augment.target: got 1"),
    ({"augment.speed_kimg": 0}, "augment.speed_kimg: got 0"),
    ({"augment.fill": 2.5}, "augment.fill: got 2.5; allowed: a number in [-1, 1]"),
    ({"augment.fill": "black"}, "augment.fill: got 'black'"),
    ({"augment.nope": 0}, "augment.nope: unknown field"),
    ({"data.subset": -1}, "data.subset: got -1"),
])
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        tiny_images(2, **overrides)
    assert message in str(e.value)


def test_vector_data_refuses_augmentation_with_a_clear_message():
    with pytest.raises(ConfigError) as e:
        tiny_config({"augment.policy": "color"})
    assert "augment.policy: got 'color'; allowed: '' for vector data (data.shape = [2])" in str(e.value)


def test_augment_section_round_trips_through_dicts_and_set_overrides():
    cfg = get_preset("digits").with_overrides({"augment.policy": "cutout, color", "augment.adaptive": True,
                                               "augment.p": 0.25})
    assert cfg.augment.policy == "color,cutout" and cfg.augment.initial_p == 0.25
    assert GANConfig.from_dict(cfg.to_dict()) == cfg
    assert get_preset("digits").augment.policy == "" and get_preset("digits").augment.initial_p == 1.0
    assert get_preset("digits").with_overrides({"augment.policy": "color", "augment.adaptive": True}
                                               ).augment.initial_p == 0.0


def test_training_subset_is_stratified_seeded_and_complete_at_0():
    x, labels = load_digits()
    sx, sl = training_subset(x, labels, 300, seed=0)
    assert len(sx) == 300 and len(sl) == 300
    counts = np.bincount(sl, minlength=10)
    expected = np.bincount(labels, minlength=10) * 300 / len(labels)
    assert np.all(np.abs(counts - expected) < 1)
    assert np.array_equal(training_subset(x, labels, 300, seed=0)[0], sx)
    assert not np.array_equal(training_subset(x, labels, 300, seed=1)[0], sx)
    assert training_subset(x, labels, 0, seed=0)[0] is x


@pytest.mark.parametrize("argv, message", [
    (["--set", "data.subset=37"], "error: data.subset: got 37; allowed: 0 (every example) or at least one global "
                                  "batch (train.global_batch_size = 64)"),
    (["--preset", "ring8", "--set", "data.subset=300"], "error: data.subset: got 300; allowed: 0 for the 2-D mixtures"),
])
def test_python_m_gan_core_refuses_a_bad_subset_in_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    from gan_core.__main__ import main

    out = tmp_path / "run"
    assert main(argv + ["--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and not out.exists()


def split_logits():
    """4 steps of 16 real logits: the first 8 of each positive, the last 8 negative (r_t = 0)."""
    magnitude = torch.rand(4, 16, generator=torch.Generator().manual_seed(5)) + 0.1
    return magnitude * torch.cat([torch.ones(8), -torch.ones(8)])


def _adaptive_p_worker(rank, world_size, out_dir):
    # adjust() all-reduces the sign sums: each rank holds its half of the logits, both end with the p of
    # one worker that saw them all (alone, rank 0 would see r_t = 0.5 and raise p, rank 1 -0.5 and lower it)
    logits = split_logits()
    halves = AdaptiveP(0.3, 0.2, 0.05)
    for step in range(1, 5):
        halves.observe(logits[step - 1].view(world_size, -1)[rank], images=16, world_size=world_size)
        halves.adjust(step, world_size)
    return {"p": halves.p.item()}


def test_adaptive_p_is_all_reduced_in_a_two_process_run(tmp_path):
    rank0, rank1 = run_ranks(_adaptive_p_worker, tmp_path)
    logits = split_logits()
    one = AdaptiveP(0.3, 0.2, 0.05)
    for step in range(1, 5):
        one.observe(logits[step - 1], images=16)
        one.adjust(step)
    assert one.p.item() < 0.3 and rank0["p"] == rank1["p"] == one.p.item()  # r_t = 0 < target 0.2: p fell
