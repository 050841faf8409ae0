"""Checkpoint round trip and resume equivalence."""

import subprocess
import sys

import pytest
import torch

from gan_core.checkpoint import CheckpointError, load_generator, load_training_state, save_checkpoint
from gan_core.config import get_preset
from gan_core.data import InMemoryBatches, sample_mixture
from gan_core.loop import train


def cfg_for(steps, **extra):
    return get_preset("tiny").with_overrides({"train.total_steps": steps, "train.checkpoint_every_steps": 7,
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
