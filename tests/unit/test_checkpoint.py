"""Checkpoint round trip and resume equivalence."""

import json
import subprocess
import sys

import pytest
import torch

from gan_core.checkpoint import (CheckpointError, load_generator, load_training_state, read_checkpoint_config,
                                 restore_training_state, save_checkpoint, verify_checkpoint, write_files_manifest)
from gan_core.data import InMemoryBatches, sample_mixture
from gan_core.loop import train
from gan_core.training import build_training_state, lr_scale
from tests.factories import tiny_config


def cfg_for(steps, **extra):
    return tiny_config({"train.total_steps": steps, "train.checkpoint_every_steps": 7,
                                              "loss.r1_gamma": 0.5, "train.d_steps": 2, **extra})


def data():
    x, _ = sample_mixture("ring8", 300, seed=0)  # not a multiple of the batch: resume mid-epoch
    return InMemoryBatches(x, 32, seed=3)


def assert_same_state(a, b):
    for name in ("G", "D", "G_ema"):
        for (ka, va), (kb, vb) in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().items()):
            assert ka == kb
            assert torch.equal(va, vb), f"{name}.{ka} differs"
    sa, sb = a.opt_D.state_dict()["state"], b.opt_D.state_dict()["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"])
    assert (a.step, a.images_seen) == (b.step, b.images_seen)


def test_round_trip(tmp_path):
    result = train(cfg_for(5), batches=data(), checkpoint_root=tmp_path / "run")
    path = save_checkpoint(result.state, tmp_path / "ckpt", {"loss/D": 1.0})
    loaded = load_training_state(path)
    assert_same_state(result.state, loaded)
    assert loaded.config == result.state.config
    G, cfg = load_generator(path)
    torch.testing.assert_close(G(torch.ones(2, cfg.network.z_dim)), result.state.G_ema.eval()(torch.ones(2, 8)))


def test_resume_equals_uninterrupted(tmp_path):
    n, k = 20, 7
    full = train(cfg_for(n), batches=data(), checkpoint_root=tmp_path / "full").state
    first = train(cfg_for(k), batches=data(), checkpoint_root=tmp_path / "part")
    ckpt = first.checkpoint_dir
    # a fresh process state: perturb the global RNG, then resume from the directory alone
    torch.manual_seed(12345)
    torch.randn(100)
    resumed = train(cfg_for(n), batches=data(), resume_from=ckpt, checkpoint_root=tmp_path / "part").state
    assert_same_state(full, resumed)


def test_resume_in_a_fresh_interpreter_matches(tmp_path):
    n, k = 12, 5
    full = train(cfg_for(n), batches=data(), checkpoint_root=tmp_path / "full")
    first = train(cfg_for(k), batches=data(), checkpoint_root=tmp_path / "part")
    code = f"""
import torch
from gan_core.config import get_preset
from gan_core.data import InMemoryBatches, sample_mixture
from gan_core.loop import train
from gan_core.checkpoint import save_checkpoint
cfg = get_preset("tiny").with_overrides({{"train.total_steps": {n}, "train.checkpoint_every_steps": 7,
    "loss.r1_gamma": 0.5, "train.d_steps": 2}})
x, _ = sample_mixture("ring8", 300, seed=0)
r = train(cfg, batches=InMemoryBatches(x, 32, seed=3), resume_from={first.checkpoint_dir!r},
          checkpoint_root={str(tmp_path / 'part')!r})
save_checkpoint(r.state, {str(tmp_path / 'resumed')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    assert_same_state(full.state, load_training_state(tmp_path / "resumed"))


def test_loading_uses_weights_only(tmp_path, monkeypatch):
    result = train(cfg_for(2), batches=data(), checkpoint_root=tmp_path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    load_training_state(result.checkpoint_dir)
    assert calls and all(kw.get("weights_only") is True for kw in calls)


def test_incomplete_or_corrupt_checkpoint_is_refused(tmp_path):
    result = train(cfg_for(2), batches=data(), checkpoint_root=tmp_path)
    ckpt = tmp_path / "checkpoint-000000002"
    (ckpt / "summary.json").unlink()
    with pytest.raises(CheckpointError, match="summary.json is missing"):
        load_training_state(ckpt)
    save_checkpoint(result.state, ckpt)
    (ckpt / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="state.pt"):
        load_training_state(ckpt)


def stop_after(k):
    """A ``should_stop`` for the loop (polled after each step): stop after step k."""
    calls = []
    return lambda: calls.append(1) or len(calls) >= k


def test_resume_with_lr_rampdown_equals_uninterrupted(tmp_path):
    n, k = 20, 7
    ramp = {"train.lr_rampdown": 0.5}
    full = train(cfg_for(n, **ramp), batches=data(), checkpoint_root=tmp_path / "full").state
    first = train(cfg_for(n, **ramp), batches=data(), checkpoint_root=tmp_path / "part", should_stop=stop_after(k))
    assert first.state.step == k
    resumed = train(cfg_for(n, **ramp), batches=data(), resume_from=first.checkpoint_dir,
                    checkpoint_root=tmp_path / "part").state
    assert_same_state(full, resumed)
    assert resumed.opt_D.param_groups[0]["lr"] == full.opt_D.param_groups[0]["lr"]


def adam_state(opt):
    return {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}


@pytest.mark.parametrize("lr_rampdown", [0.0, 0.5])
def test_resume_applies_the_configs_optimiser_settings_and_keeps_adam_moments(tmp_path, caplog, lr_rampdown):
    # the rule: the resumed config's d_optim/g_optim settings apply, whatever train.lr_rampdown is
    n = 12
    before = cfg_for(n, **{"d_optim.lr": 1e-3, "train.lr_rampdown": lr_rampdown})
    after = cfg_for(n, **{"d_optim.lr": 5e-4, "g_optim.beta1": 0.0, "train.lr_rampdown": lr_rampdown})
    train(before, batches=data(), checkpoint_root=tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint-000000007"
    moments = {name: adam_state(getattr(load_training_state(ckpt), name)) for name in ("opt_D", "opt_G")}
    state = build_training_state(after)
    with caplog.at_level("WARNING", logger="gan_core.checkpoint"):
        restore_training_state(state, ckpt)
    # 1. the config's lr (times the schedule's multiplier at the resumed step) and betas
    scale = lr_scale(after.train, 7)
    assert state.opt_D.param_groups[0]["lr"] == pytest.approx(5e-4 * scale)
    assert state.opt_G.param_groups[0]["lr"] == pytest.approx(after.g_optim.lr * scale)
    assert state.opt_G.param_groups[0]["betas"] == (0.0, after.g_optim.beta2)
    # 2. Adam's moments and step counts are the checkpoint's
    for name in ("opt_D", "opt_G"):
        for i, saved in moments[name].items():
            for key, value in saved.items():
                assert torch.equal(getattr(state, name).state_dict()["state"][i][key], value), f"{name}[{i}].{key}"
    # 3. each change stated once, naming the field and both values
    lines = [r.getMessage() for r in caplog.records if r.name == "gan_core.checkpoint"]
    assert len(lines) == 2, lines
    assert "d_optim.lr 0.001 -> 0.0005 (the config's value applies" in lines[0]
    assert "g_optim.beta1 0.5 -> 0.0" in lines[1]
    # 4. the remaining steps train at the config's rate
    used = []
    state.opt_D.register_step_pre_hook(lambda opt, *a: used.append(opt.param_groups[0]["lr"]))
    train(after, batches=data(), state=state, checkpoint_root=tmp_path / "resumed")
    d_steps = after.train.d_steps
    assert used == pytest.approx([5e-4 * lr_scale(after.train, s) for s in range(7, n) for _ in range(d_steps)])


def test_lr_schedules_round_trip(tmp_path, caplog):
    cfg = cfg_for(10, **{"train.lr_rampdown": 0.5})
    result = train(cfg, batches=data(), checkpoint_root=tmp_path, should_stop=stop_after(8))
    ckpt = result.checkpoint_dir
    payload = torch.load(f"{ckpt}/state.pt", weights_only=True)
    with caplog.at_level("WARNING", logger="gan_core.checkpoint"):
        loaded = load_training_state(ckpt)
    assert not [r for r in caplog.records if r.name == "gan_core.checkpoint"]  # nothing changed, nothing said
    for name in ("sched_D", "sched_G"):
        original, restored = getattr(result.state, name), getattr(loaded, name)
        assert payload[name] == original.state_dict()
        assert restored.last_epoch == original.last_epoch == loaded.step == 8
        assert restored.base_lrs == original.base_lrs
        assert restored.get_last_lr() == original.get_last_lr()
    assert loaded.opt_D.param_groups[0]["lr"] == result.state.opt_D.param_groups[0]["lr"]
    assert loaded.opt_D.param_groups[0]["lr"] == pytest.approx(cfg.d_optim.lr * lr_scale(cfg.train, 8))


def write_old_format(ckpt):
    """Rewrite a checkpoint as the code before the lr schedules wrote it (format /1)."""
    payload = torch.load(ckpt / "state.pt", weights_only=True)
    del payload["sched_G"], payload["sched_D"]
    for opt in ("opt_G", "opt_D"):
        for group in payload[opt]["param_groups"]:
            del group["initial_lr"]
    torch.save(payload, ckpt / "state.pt")
    summary = json.loads((ckpt / "summary.json").read_text())
    (ckpt / "summary.json").write_text(json.dumps({**summary, "format": "ganpipe-checkpoint/1"}))
    (ckpt / "sha256.json").unlink()  # added by format /3


def test_a_checkpoint_without_lr_schedules_resumes_bitwise(tmp_path):
    n, k = 12, 7
    ramp = {"train.lr_rampdown": 0.5}
    full = train(cfg_for(n, **ramp), batches=data(), checkpoint_root=tmp_path / "full").state
    train(cfg_for(n, **ramp), batches=data(), checkpoint_root=tmp_path / "part")
    ckpt = tmp_path / "part" / f"checkpoint-{k:09d}"
    write_old_format(ckpt)
    loaded = load_training_state(ckpt)
    assert loaded.sched_D.last_epoch == loaded.sched_G.last_epoch == loaded.step == k
    cfg = loaded.config
    assert loaded.opt_D.param_groups[0]["lr"] == pytest.approx(cfg.d_optim.lr * lr_scale(cfg.train, k))
    resumed = train(cfg_for(n, **ramp), batches=data(), resume_from=ckpt, checkpoint_root=tmp_path / "resumed").state
    assert_same_state(full, resumed)


def test_a_schedule_at_another_step_than_the_counters_is_refused(tmp_path):
    result = train(cfg_for(3), batches=data(), checkpoint_root=tmp_path)
    path = tmp_path / "checkpoint-000000003" / "state.pt"
    payload = torch.load(path, weights_only=True)
    payload["sched_D"]["last_epoch"] = 2
    torch.save(payload, path)
    write_files_manifest(path.parent)
    with pytest.raises(CheckpointError, match="lr schedule is at step 2 but the counters at step 3"):
        load_training_state(result.checkpoint_dir)


# -- damaged checkpoints: every kind named by its file ----------------------------------------------

def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path):
    path.write_bytes(b"\x00garbage\xff" * 64)


def bad_config(path):
    table = json.loads(path.read_text())
    table["train"]["total_steps"] = -3
    path.write_text(json.dumps(table))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    return train(cfg_for(2), batches=data(), checkpoint_root=root).checkpoint_dir


@pytest.mark.parametrize("name,damage,message", [
    ("state.pt", truncate, "state.pt: .* bytes where sha256.json records .* \\(truncated or altered\\)"),
    ("state.pt", garbage, "state.pt: .* bytes where sha256.json records"),
    ("state.pt", lambda p: p.unlink(), "state.pt is missing"),
    ("config.json", bad_config, "config.json: (.* \\(truncated or altered\\)|train.total_steps: got -3)"),
    ("config.json", lambda p: p.unlink(), "config.json is missing"),
    ("summary.json", garbage, "summary.json: .* \\(truncated or altered\\)"),
    ("summary.json", lambda p: p.unlink(), "summary.json is missing"),
    ("sha256.json", garbage, "sha256.json: unreadable"),
])
def test_a_damaged_checkpoint_is_refused_naming_the_file(saved, tmp_path, name, damage, message):
    import shutil

    ckpt = shutil.copytree(saved, tmp_path / "ckpt")
    assert verify_checkpoint(ckpt)["step"] == 2
    damage(ckpt / name)
    for load in (verify_checkpoint, load_training_state, load_generator):
        with pytest.raises(CheckpointError, match=message) as e:
            load(ckpt)
        assert str(ckpt) in str(e.value) and "\n" not in str(e.value)


def test_an_altered_state_file_of_the_same_size_is_refused(saved, tmp_path):
    import shutil

    ckpt = shutil.copytree(saved, tmp_path / "ckpt")
    data = bytearray((ckpt / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ckpt / "state.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="state.pt: its sha256 differs from sha256.json"):
        verify_checkpoint(ckpt)


@pytest.mark.parametrize("name,damage,message", [
    ("state.pt", truncate, "state.pt: cannot be read as a checkpoint"),
    ("state.pt", garbage, "state.pt: cannot be read as a checkpoint"),
    ("config.json", bad_config, "config.json: train.total_steps: got -3; allowed"),
    ("config.json", garbage, "config.json: not readable as JSON"),
])
def test_a_checkpoint_without_sha256_json_is_verified_by_loading_it(saved, tmp_path, name, damage, message):
    import shutil

    ckpt = shutil.copytree(saved, tmp_path / "ckpt")
    write_old_format(ckpt)
    assert verify_checkpoint(ckpt)["format"] == "ganpipe-checkpoint/1"  # an older checkpoint still loads
    damage(ckpt / name)
    with pytest.raises(CheckpointError, match=message) as e:
        verify_checkpoint(ckpt)
    assert str(ckpt / name) in str(e.value) and "\n" not in str(e.value)
    if name == "config.json":
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint_config(ckpt)
