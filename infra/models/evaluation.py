"""How the registry scores a generator before deciding whether it becomes the champion.

An *evaluator* is any callable ``evaluator(G_ema, config) -> Evaluation``; the pipeline passes the
project's real metrics (gan_core.evaluate) and the registry only compares ``Evaluation.value``. The
documented default, `default_evaluator`, needs no downloaded weights:

- 2-D mixtures (``ring8``, ``grid25``): mode coverage on 2,500 samples (VEEGAN / PacGAN protocol,
  gan_core.data.mode_coverage); primary metric ``modes_covered``, higher is better.
- everything else: the Fréchet distance between generated and real examples in raw data space
  (``fd_raw``; Heusel et al. 2017's formula on flattened pixels or coordinates instead of Inception
  features), lower is better. Built-in datasets supply their own reference; staged datasets pass
  ``reference=`` (examples in model space, i.e. already normalised).

`gan_core_evaluator` adapts the project's full evaluation (gan_core.evaluate: FD in a feature space
with its real-vs-real floor, KID, precision/recall, coverage) to this interface; primary metric
``fid`` when FID Inception weights are given (``inception=``), else ``fd``; lower is better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from torch import nn

from gan_core.config import GANConfig
from gan_core.data import MIXTURES, load_builtin, mode_coverage
from gan_core.metrics import frechet_distance
from gan_core.sampling import generate

EVAL_SEED = 2**31 - 1  # fixed and far from training seeds, so every version is scored on the same z


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one generator and which of them decides the champion."""

    metrics: dict[str, float]
    primary: str  # a key of ``metrics``
    higher_is_better: bool
    details: dict[str, str] = field(default_factory=dict)  # e.g. {"evaluator": "..."}; stored as tags

    def __post_init__(self) -> None:
        if self.primary not in self.metrics:
            raise ValueError(f"Evaluation.primary: got {self.primary!r}; allowed: one of {sorted(self.metrics)}")

    @property
    def value(self) -> float:
        return float(self.metrics[self.primary])

    def beats(self, other_value: float) -> bool:
        """Strictly better than ``other_value`` (ties keep the incumbent; NaN never wins)."""
        v = self.value
        if math.isnan(v):
            return False
        if math.isnan(other_value):
            return True
        return v > other_value if self.higher_is_better else v < other_value


Evaluator = Callable[[nn.Module, GANConfig], Evaluation]


def default_evaluator(reference: np.ndarray | None = None, *, num_samples: int = 2500,
                      seed: int = EVAL_SEED) -> Evaluator:
    """The documented default evaluator (see the module docstring)."""

    def evaluate(G: nn.Module, config: GANConfig) -> Evaluation:
        samples = generate(G, num_samples, seed)
        name = config.data.name
        if name in MIXTURES and reference is None:
            m = mode_coverage(samples, name)
            return Evaluation(m, "modes_covered", True, {"evaluator": f"mode_coverage({name}, n={num_samples})"})
        ref = reference
        if ref is None:
            try:
                ref, _ = load_builtin(name, config.data.num_examples, config.data.data_seed)
            except ValueError:
                raise ValueError(f"no reference data for dataset {name!r}: it is not built in; evaluate against the "
                                 "staged dataset it was trained on (default_evaluator(reference=...), "
                                 "`ganpipe register --dataset`)") from None
        fd = frechet_distance(samples.numpy(), np.asarray(ref)[: max(num_samples, 2)])
        return Evaluation({"fd_raw": fd}, "fd_raw", False, {"evaluator": f"frechet_distance_raw(n={num_samples})"})

    return evaluate


def evaluation_of(metrics: dict[str, float], details: dict[str, str] | None = None) -> Evaluation:
    """gan_core.evaluate.evaluate_generator's result as the registry's Evaluation: its primary metric
    (gan_core.evaluate.primary_metric) with the catalogue's direction (gan_core.metrics.catalogue)."""
    from gan_core.evaluate import primary_metric
    from gan_core.metrics.catalogue import metric

    primary = primary_metric(metrics)
    return Evaluation({k: float(v) for k, v in metrics.items()}, primary, metric(primary).higher_is_better,
                      {"evaluator": "gan_core.evaluate.evaluate_generator", **(details or {})})


def gan_core_evaluator(real_x: np.ndarray, real_labels: np.ndarray | None = None, **kwargs) -> Evaluator:
    """The project's evaluation (``gan_core.evaluate.evaluate_generator``) as a registry evaluator.

    ``real_x`` in model space (as the generator outputs); ``kwargs`` go to ``evaluate_generator``
    (``num_samples``, ``inception``, ``feature_network``, ``cache_dir``, ...).
    """

    def evaluate(G: nn.Module, config: GANConfig) -> Evaluation:
        from gan_core.evaluate import evaluate_generator

        return evaluation_of(evaluate_generator(G, config, real_x, real_labels, **kwargs))

    return evaluate
