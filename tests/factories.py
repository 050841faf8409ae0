"""Shared test factories (issue 26 item 8): the tiny config, a tiny trained checkpoint and generator, a
stand-in resolved model and a committed sample set written without MLflow or Ray. One place each, so a
change to the config, the checkpoint format or the sampling plan is made once for every test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def tiny_config(overrides: dict[str, Any] | None = None):
    """The "tiny" preset (2-D ring8 MLP) with dotted-path overrides, e.g. {"train.total_steps": 4}."""
    from gan_core.config import get_preset

    return get_preset("tiny").with_overrides(overrides or {})


def tiny_checkpoint(root: Path, steps: int = 4) -> Path:
    """A real gan_core checkpoint under `root`: the tiny preset trained `steps` steps on ring8."""
    from gan_core.data import InMemoryBatches, sample_mixture
    from gan_core.loop import train

    x, _ = sample_mixture("ring8", 256, seed=0)
    cfg = tiny_config({"train.total_steps": steps, "train.checkpoint_every_steps": steps})
    return Path(train(cfg, batches=InMemoryBatches(x, 64, seed=0), checkpoint_root=root).checkpoint_dir)


def tiny_generator(seed: int = 0):
    """(G in eval mode, its config): the tiny preset's MLP generator (z_dim 8 -> 2-D points) with fixed
    random weights."""
    import torch

    from gan_core.networks import build_generator

    cfg = tiny_config()
    torch.manual_seed(seed)
    return build_generator(cfg).eval(), cfg


def resolved_model(sample_shape: tuple[int, ...] = (1, 2, 2), normalisation=None, **fields):
    """A stand-in infra.models.batch_sampling.ResolvedModel for models:/m/1 (alias a; z_dim 4), by keyword:
    `fields` override any other field (supports_truncation, num_classes, ...)."""
    from gan_core.data import Normalisation
    from infra.models.batch_sampling import ResolvedModel

    base = dict(requested_uri="models:/m@a", uri="models:/m/1", name="m", version="1", alias="a", run_id=None,
                z_dim=4, sample_shape=sample_shape, normalisation=normalisation or Normalisation(),
                weights_sha256="0" * 64)
    return ResolvedModel(**{**base, **fields})


def committed_sample_set(out: Path, num_samples: int, rows_per_shard: int, fmt: str = "parquet") -> str:
    """A small committed sample set at `out` (its URI), written without MLflow or Ray: a stand-in model's
    plan (1x2x2 samples stored in [0, 16)), its shards from seeded arrays, and the executor's commit."""
    from gan_core.data import Normalisation
    from infra.data import shardset
    from infra.data import shard_writer
    from infra.models import batch_sampling

    model = resolved_model(normalisation=Normalisation(1 / 8, -1.0))
    layout = batch_sampling.choose_layout(num_samples, model.sample_shape, fmt, rows_per_shard=rows_per_shard)
    plan = batch_sampling.SamplingPlan(model, num_samples, 0, str(out), fmt, layout,
                                       shardset.split_rows(num_samples, layout.rows_per_shard, balanced=False), "fp")
    x = np.random.default_rng(0).uniform(0, 16, (num_samples, *model.sample_shape)).astype(np.float32)
    shard_writer.commit(plan, [plan.write_samples(i, x[a:b]) for i, (a, b) in enumerate(plan.shard_ranges)])
    return plan.uri
