"""Training diagnostics computed once per tick: is the discriminator saturating the generator's
gradient, and is the generator collapsing onto a few modes?

The training loop already reports the per-step statistics ``D/real`` (mean D(x)), ``D/fake``
(mean D(G(z))), ``js_estimate`` ((V + log 4) / 2, Goodfellow et al. 2014, Thm. 1), ``grad_norm/G`` and
``grad_norm/D``, averaged over the tick and over workers. `TrainingDiagnostics` adds, from those
numbers and a fixed batch of G_ema samples:

- ``vanishing_gradient/*``: the gain of G's loss at D's output, |dL_G/dlogit| averaged over fakes
  (D(G(z)) for the saturating minimax loss, 1 - D(G(z)) for the non-saturating one, 1 for hinge and
  Wasserstein), G's gradient norm relative to its peak so far, and a 0/1 indicator that fires when D
  confidently rejects the fakes while G's gradient is attenuated. When it switches on, a warning is
  logged that names the fix.
- ``mode_collapse/*``: mode coverage (VEEGAN / PacGAN protocol) for the ``ring8`` and ``grid25``
  mixtures; class coverage for labelled data when a classifier is supplied (``coverage`` is the
  fraction of modes or classes covered); otherwise (and always when real reference samples exist) the
  diversity ratio: mean pairwise distance of generated samples over that of real samples (about 1
  when healthy, near 0 under collapse).

Every number is a pure function of the reduced metrics (identical on all ranks), of G_ema (identical
on all ranks) and of fixed seeded latents, so every rank computes the same values without any
collective operation, and no global RNG is touched (resume stays exact).
NOTE: the peak of G's gradient norm lives in the diagnostics object, not in checkpoints: after a
resume ``vanishing_gradient/grad_norm_ratio`` is relative to the peak since the resume.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import GANConfig
from .data import MIXTURES, load_builtin, mode_coverage
from .sampling import latents_for_range

log = logging.getLogger(__name__)

# D "confidently rejects" the fakes when the mean D(G(z)) is below this.
CONFIDENT_REJECTION = 0.05
# G's gradient is "attenuated" when the loss gain is below this (the saturating loss at D(G(z)) = 0.05
# passes 5% of the non-saturating loss's gradient) ...
LOSS_GAIN_FLOOR = 0.05
# ... or when G's gradient norm has fallen below this fraction of its peak in this process.
GRAD_NORM_COLLAPSE = 0.01


# -- vanishing gradients ----------------------------------------------------------------------------

def g_loss_gain(loss_kind: str, d_fake: float) -> float:
    """Mean |dL_G / d logit| over fakes, from the mean D(G(z)) (exact, since both are means of sigmoids).

    Minimax L_G = E[log(1 - D(G(z)))]: gain D(G(z)), which vanishes as D rejects the fakes; the
    non-saturating -E[log D(G(z))]: gain 1 - D(G(z)) (Goodfellow et al. 2014, sec. 3). Hinge (Lim & Ye
    2017) and Wasserstein (Arjovsky et al. 2017) G losses are linear in the score: gain 1.
    """
    if loss_kind == "minimax":
        return float(d_fake)
    if loss_kind == "non_saturating":
        return float(1.0 - d_fake)
    return 1.0


def vanishing_gradient_indicator(d_fake: float, grad_norm_G: float, loss_kind: str,
                                 peak_grad_norm_G: float | None = None) -> dict[str, float]:
    """The vanishing-gradient signal of one tick (hierarchical names, floats).

    Fires (``vanishing_gradient/indicator`` = 1) when D confidently rejects the fakes (mean D(G(z)) <
    `CONFIDENT_REJECTION`) *and* G's gradient is attenuated: the loss gain is below `LOSS_GAIN_FLOOR`
    or G's gradient norm is below `GRAD_NORM_COLLAPSE` of its peak. ``peak_grad_norm_G`` defaults to
    the current norm (no history: only the loss gain can fire).
    """
    gain = g_loss_gain(loss_kind, d_fake)
    peak = max(grad_norm_G, peak_grad_norm_G if peak_grad_norm_G is not None else grad_norm_G)
    ratio = grad_norm_G / peak if peak > 0 else 1.0
    confident = d_fake < CONFIDENT_REJECTION
    fires = confident and (gain < LOSS_GAIN_FLOOR or ratio < GRAD_NORM_COLLAPSE)
    return {
        "vanishing_gradient/indicator": float(fires),
        "vanishing_gradient/loss_gain": gain,
        "vanishing_gradient/grad_norm_ratio": ratio,
    }


def vanishing_gradient_advice(loss_kind: str, d_fake: float, grad_norm_G: float) -> str:
    """The warning text: what is happening and the fixes, most effective first."""
    fixes = []
    if loss_kind == "minimax":
        fixes.append("switch to the non-saturating generator loss (loss.kind=non_saturating)")
    fixes += ["lower D's learning rate (d_optim.lr) or train D less often (train.d_steps=1)",
              "add the R1 penalty (loss.r1_gamma > 0) or spectral norm on D (network.d_spectral_norm=true)"]
    return (f"vanishing generator gradient: D confidently rejects the fakes (mean D(G(z)) = {d_fake:.2e}) "
            f"and G's gradient norm is {grad_norm_G:.2e} (loss.kind={loss_kind}). Fix: " + "; or ".join(fixes))


# -- mode collapse ----------------------------------------------------------------------------------

def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean Euclidean distance between distinct samples (flattened): a scale of sample diversity.
    Runs on x's device (float32 distances, float64 sum)."""
    x = x.detach().flatten(1).float()
    n = x.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(x, x)
    return float(d.double().sum() / (n * (n - 1)))


def diversity_ratio(generated: torch.Tensor, real: torch.Tensor, real_diversity: float | None = None) -> float:
    """Mean pairwise distance of generated samples over that of real samples: about 1 for a healthy G,
    towards 0 when G collapses (the distance-based diversity check of Salimans et al. 2016 sec. 3.2 /
    Karras et al. 2018's MS-SSIM idea, in the sample space)."""
    ref = mean_pairwise_distance(real) if real_diversity is None else real_diversity
    return mean_pairwise_distance(generated) / ref if ref > 0 else math.nan


class TrainingDiagnostics:
    """Per-tick diagnostics for `gan_core.loop.train`: ``diagnostics(state, metrics) -> dict``.

    ``real_x``: real reference samples for the diversity ratio (use the same array on every rank);
    ``classifier``: a module mapping samples to class logits (e.g. the digits classifier), which
    turns on class coverage; ``real_labels`` give the data's class histogram (else the classifier's
    predictions on ``real_x``). ``num_samples`` G_ema samples are drawn from fixed latents (seed
    ``seed``) at each tick, so successive ticks are comparable.
    """

    def __init__(self, config: GANConfig, *, real_x: np.ndarray | torch.Tensor | None = None,
                 real_labels: np.ndarray | torch.Tensor | None = None, classifier: nn.Module | None = None,
                 num_samples: int | None = None, seed: int = 0, diversity_samples: int = 512):
        self.config = config
        self.mixture = config.data.name if config.data.name in MIXTURES else None
        # the mixture protocol uses 2,500 samples; images are costlier to generate, so fewer
        self.num_samples = num_samples or (2500 if self.mixture else 512)
        self.seed = seed
        self.classifier = classifier
        self.diversity_samples = min(diversity_samples, self.num_samples)
        self.real_x = None if real_x is None else torch.as_tensor(np.asarray(real_x), dtype=torch.float32)
        self.real_labels = None if real_labels is None else np.asarray(real_labels).astype(np.int64)
        self._z: torch.Tensor | None = None
        self._real_diversity: float | None = None
        self._data_class_hist: np.ndarray | None = None
        self.peak_grad_norm_G = 0.0
        self.warning_active = False

    @classmethod
    def for_config(cls, config: GANConfig, **kwargs: Any) -> "TrainingDiagnostics":
        """Diagnostics with the built-in dataset as the real reference when the config names one
        (``digits``, ``ring8``, ``grid25``); other datasets get the reference the caller passes."""
        if kwargs.get("real_x") is None and config.data.name in ("digits",) + MIXTURES:
            x, labels = load_builtin(config.data.name, min(config.data.num_examples, 10_000), config.data.data_seed)
            kwargs["real_x"] = x
            kwargs.setdefault("real_labels", labels)
        return cls(config, **kwargs)

    # -- pieces ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def samples(self, G_ema: nn.Module, device: torch.device) -> torch.Tensor:
        """G_ema on the fixed latents, float32 on ``device`` (G_ema is in eval mode: no BatchNorm update)."""
        if self._z is None or self._z.device != torch.device(device):
            self._z = latents_for_range(self.seed, 0, self.num_samples, self.config.network.z_dim).to(device)
        was_training = G_ema.training
        G_ema.eval()
        out = [G_ema(z).float() for z in self._z.split(1024)]
        G_ema.train(was_training)
        return torch.cat(out)

    def _real_diversity_value(self, device: torch.device) -> float | None:
        if self.real_x is None:
            return None
        if self._real_diversity is None:
            self._real_diversity = mean_pairwise_distance(self.real_x[: self.diversity_samples].to(device))
        return self._real_diversity

    @torch.no_grad()
    def _class_coverage(self, x: torch.Tensor, device: torch.device) -> dict[str, float]:
        from .metrics.coverage import class_coverage

        self.classifier.to(device).eval()
        pred = torch.cat([self.classifier(b).argmax(1).cpu() for b in x.split(1024)]).numpy()
        if self._data_class_hist is None:
            if self.real_labels is not None:
                labels = self.real_labels
            else:
                labels = torch.cat([self.classifier(b.to(device)).argmax(1).cpu()
                                    for b in self.real_x.split(1024)]).numpy()
            self._data_class_hist = np.bincount(labels, minlength=int(labels.max()) + 1).astype(np.float64)
        cov = class_coverage(pred, self._data_class_hist)
        return {"mode_collapse/classes_covered": cov["classes_covered"],
                "mode_collapse/num_classes": cov["num_classes"],
                "mode_collapse/class_kl": cov["class_kl"]}

    # -- the tick -------------------------------------------------------------------------------------
    def __call__(self, state, metrics: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        kind = self.config.loss.kind
        # 1. vanishing gradients, from the tick's reduced statistics (identical on every rank)
        if "D/fake" in metrics and "grad_norm/G" in metrics:
            d_fake, gn = metrics["D/fake"], metrics["grad_norm/G"]
            out.update(vanishing_gradient_indicator(d_fake, gn, kind, self.peak_grad_norm_G))
            self.peak_grad_norm_G = max(self.peak_grad_norm_G, gn)
            firing = out["vanishing_gradient/indicator"] > 0
            if firing and not self.warning_active:  # warn once per episode, not at every tick
                log.warning("step %d: %s", state.step, vanishing_gradient_advice(kind, d_fake, gn))
            self.warning_active = firing
        # 2. mode collapse, from a fixed batch of G_ema samples
        x = self.samples(state.G_ema, state.device)
        if self.mixture is not None:
            cov = mode_coverage(x.cpu(), self.mixture)
            out["mode_collapse/modes_covered"] = cov["modes_covered"]
            out["mode_collapse/num_modes"] = cov["num_modes"]
            out["mode_collapse/high_quality_fraction"] = cov["high_quality_fraction"]
            out["mode_collapse/reverse_kl"] = cov["reverse_kl"]
            out["mode_collapse/coverage"] = cov["modes_covered"] / cov["num_modes"]
        if self.classifier is not None and self.config.data.is_image:
            out.update(self._class_coverage(x, state.device))
            out["mode_collapse/coverage"] = out["mode_collapse/classes_covered"] / out["mode_collapse/num_classes"]
        real_div = self._real_diversity_value(x.device)
        gen_div = mean_pairwise_distance(x[: self.diversity_samples])
        out["mode_collapse/diversity_generated"] = gen_div
        if real_div is not None:
            out["mode_collapse/diversity_ratio"] = gen_div / real_div if real_div > 0 else math.nan
        return out


def resolve_diagnostics(diagnostics: "TrainingDiagnostics | bool | None", config: GANConfig):
    """The loop's ``diagnostics=`` argument: True builds the default for the config, False/None turns
    them off, an instance (built by the caller with its own reference data) is used as is."""
    if diagnostics is True:
        return TrainingDiagnostics.for_config(config)
    if diagnostics is False or diagnostics is None:
        return None
    return diagnostics


__all__ = [
    "CONFIDENT_REJECTION", "LOSS_GAIN_FLOOR", "GRAD_NORM_COLLAPSE", "g_loss_gain", "vanishing_gradient_indicator",
    "vanishing_gradient_advice", "mean_pairwise_distance", "diversity_ratio", "TrainingDiagnostics",
    "resolve_diagnostics",
]
