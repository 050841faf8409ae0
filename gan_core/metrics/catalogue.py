"""The metric catalogue: one list of the evaluation's metrics, each with its direction, how it is shown and
the paper that defines it. The registry's champion decision (infra.models.evaluation.evaluation_of), the
run report (pipelines.flow) and `ganpipe models` read it here; a metric gan_core.evaluate.evaluate_generator
reports that is not listed fails tests/unit/test_evaluate.py.

Every listed metric is reported beside its real-vs-real floor (``floor/<name>``: the same metric between
the reference and a held-back real split), the value a perfect generator would reach at this sample size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """name: the key in evaluate_generator's result; higher_is_better: its direction; scale and suffix: how
    the report prints it (KID x 10^3, as StyleGAN2-ADA reports it); source: where it is defined."""

    name: str
    higher_is_better: bool
    source: str
    scale: float = 1.0
    suffix: str = ""


# in the order a report lists them: the primary distances first
METRICS: tuple[Metric, ...] = (
    Metric("fid", False, "Heusel et al. 2017 (FID proper: NVIDIA's Inception weights)"),
    Metric("fd", False, "Heusel et al. 2017, eq. 6 (in the feature space evaluate_generator names)"),
    Metric("kid", False, "Binkowski et al. 2018", scale=1e3, suffix=" (x 10^3)"),
    Metric("precision", True, "Kynkaanniemi et al. 2019, k = 3"),
    Metric("recall", True, "Kynkaanniemi et al. 2019, k = 3"),
    Metric("classes_covered", True, "classes a digits classifier finds among the samples"),
    Metric("class_kl", False, "KL(data's class histogram || samples'), nats"),
    Metric("modes_covered", True, "VEEGAN / PacGAN protocol (2-D mixtures), StackedMNIST (stacked digits)"),
    Metric("high_quality_fraction", True, "VEEGAN / PacGAN protocol: samples within 3 sigma of a mode"),
    Metric("mode_reverse_kl", False, "PacGAN protocol: KL(samples' mode histogram || uniform), nats"),
)
BY_NAME = {m.name: m for m in METRICS}
# values reported beside a metric (with their own floor) that qualify it rather than rank generators
COMPANIONS = {"kid_std": "kid", "num_modes": "modes_covered", "num_classes": "classes_covered"}


def metric(name: str) -> Metric:
    """The catalogue entry of `name`; KeyError naming the metrics listed."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a catalogued metric; listed: {', '.join(BY_NAME)}") from None
