"""Training diagnostics computed once per tick: is the discriminator saturating the generator's
gradient, and is the generator collapsing onto a few modes?

The training loop already reports the per-step statistics ``D/real`` (mean D(x)), ``D/fake``
(mean D(G(z))), ``js_estimate`` ((V + log 4) / 2, Goodfellow et al. 2014, Thm. 1), ``grad_norm/G`` and
``grad_norm/D``, averaged over the tick and over workers. `TrainingDiagnostics` adds, from those
numbers, a fixed batch of G_ema samples and (for the saturating loss) one forward/backward of D:

- ``vanishing_gradient/*``:
  - ``loss_gain``: |dL_G/dlogit| averaged over fakes (D(G(z)) for the saturating minimax loss,
    1 - D(G(z)) for the non-saturating one, 1 for hinge and Wasserstein);
  - ``gradient_ratio``: how many times weaker G's gradient is under the configured loss than under
    the non-saturating loss at the tick's mean D(G(z)): (1 - D)/D for the saturating loss (15.7 at
    D(G(z)) = 0.06), 1 for the others;
  - ``gradient_ratio_measured`` (saturating loss only): the same ratio measured on D's gradient with
    respect to a fixed batch of G's samples, ||dL_NS/dx|| / ||dL_minimax/dx|| (each fake weighed by
    its own D(G(z)): below the analytic ratio when D's outputs spread, since the fakes D likes dominate
    the saturating gradient; 14.5 against 15.7 at D(G(z)) = 0.06 in the tests, where G's parameter
    gradients differ 14.4x);
  - ``grad_norm_ratio``: G's gradient norm relative to its peak so far;
  - ``indicator``: 0/1, on when ``gradient_ratio`` >= `GRADIENT_RATIO_WARN` (10x), or when D
    confidently rejects the fakes (mean D(G(z)) < `CONFIDENT_REJECTION`) while G's gradient norm fell
    below `GRAD_NORM_COLLAPSE` of its peak. When it switches on, one warning names the ratio and the fix.
- ``mode_collapse/*``: mode coverage (VEEGAN / PacGAN protocol) for the ``ring8`` and ``grid25``
  mixtures; class coverage for labelled data when a classifier is available (the digits classifier of
  `gan_core.metrics.digits` is loaded, or trained and cached, for ``digits``): ``classes_covered``,
  ``num_classes`` and ``class_kl`` (KL(generated class histogram || real label histogram)), with a
  warning naming the missing classes whenever a class drops out (``coverage`` is the fraction of modes
  or classes covered); otherwise (and always when real reference samples exist) the diversity ratio:
  mean pairwise distance of generated samples over that of real samples (about 1 when healthy, near 0
  under collapse).

Every number is a pure function of the reduced metrics (identical on all ranks), of G_ema, G and D
(identical on all ranks) and of fixed seeded latents, so every rank computes the same values without
any collective operation; no global RNG, no parameter, buffer or gradient of the training state is
touched (G and D are evaluated in eval mode, gradients taken with `torch.autograd.grad`), so resume
stays exact.
NOTE: the peak of G's gradient norm lives in the diagnostics object, not in checkpoints: after a
resume ``vanishing_gradient/grad_norm_ratio`` is relative to the peak since the resume.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import losses
from .config import GANConfig
from .data import MIXTURES, load_builtin, mode_coverage
from .networks import apply, pack
from .sampling import labels_for_range, latents_for_range

log = logging.getLogger(__name__)

# The vanishing-gradient warning fires when the configured loss gives G a gradient this many times
# weaker than the non-saturating loss would: for the saturating loss, at mean D(G(z)) <= 1/11 = 0.091.
# NOTE: the former rule (D(G(z)) < 0.05) stayed silent at 0.057, where the ratio is already 16.5.
GRADIENT_RATIO_WARN = 10.0
# D "confidently rejects" the fakes when the mean D(G(z)) is below this ...
CONFIDENT_REJECTION = 0.05
# ... and then G's gradient has collapsed when its norm is below this fraction of its peak in this process
# (a second route to the indicator, for any loss).
GRAD_NORM_COLLAPSE = 0.01
# Fakes on which the saturating/non-saturating gradient ratio is measured (one D forward and backward).
GRADIENT_PROBE_SAMPLES = 64


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


def g_gradient_ratio(loss_kind: str, d_fake: float) -> float:
    """How many times weaker G's gradient (at D's output) is under ``loss_kind`` than under the
    non-saturating loss, at mean D(G(z)) = ``d_fake``: (1 - D)/D for the saturating minimax loss (the
    ratio of the two loss gains, Goodfellow et al. 2014 sec. 3; inf at D = 0), 1 for the others (hinge
    and Wasserstein losses are linear in the score: nothing saturates). A float >= 0, no unit.
    """
    if loss_kind != "minimax":
        return 1.0
    return math.inf if d_fake <= 0 else float((1.0 - d_fake) / d_fake)


def measured_gradient_ratio(G: nn.Module, D: nn.Module, z: torch.Tensor, d_pack: int = 1,
                            c: torch.Tensor | None = None) -> float:
    """||dL_NS/dx|| / ||dL_minimax/dx|| on the fakes x = G(z): how many times weaker the saturating loss's
    gradient reaching G's output is than the non-saturating loss's, measured (Goodfellow et al. 2014
    sec. 3). ``z``: (N, z_dim) float32 on G's device, N divisible by ``d_pack``; ``c``: class labels
    int64 (N,) for class-conditional networks (None otherwise).

    G and D run in eval mode (no BatchNorm statistics, no spectral-norm power iteration updated) and the
    gradients come from `torch.autograd.grad`: no parameter, buffer or ``.grad`` changes. inf when the
    saturating gradient is exactly 0 (D's sigmoid underflows).
    """
    modes = G.training, D.training
    G.eval()
    D.eval()
    try:
        with torch.no_grad():
            x = apply(G, z, c).float()
        x.requires_grad_(True)
        with torch.enable_grad():
            logits = apply(D, pack(x, d_pack), c).float()
            g_ns, = torch.autograd.grad(losses.non_saturating_g_loss(logits), x, retain_graph=True)
            g_mm, = torch.autograd.grad(losses.minimax_g_loss(logits), x)
    finally:
        G.train(modes[0])
        D.train(modes[1])
    ns, mm = float(torch.linalg.vector_norm(g_ns)), float(torch.linalg.vector_norm(g_mm))
    return ns / mm if mm > 0 else math.inf


def vanishing_gradient_indicator(d_fake: float, grad_norm_G: float, loss_kind: str,
                                 peak_grad_norm_G: float | None = None) -> dict[str, float]:
    """The vanishing-gradient signal of one tick (hierarchical names, floats): ``loss_gain``,
    ``gradient_ratio`` (`g_gradient_ratio`), ``grad_norm_ratio`` and ``indicator``.

    Fires (``vanishing_gradient/indicator`` = 1) when the gradient ratio is >= `GRADIENT_RATIO_WARN`,
    or when D confidently rejects the fakes (mean D(G(z)) < `CONFIDENT_REJECTION`) and G's gradient
    norm is below `GRAD_NORM_COLLAPSE` of its peak. ``peak_grad_norm_G`` defaults to the current norm
    (no history: only the gradient ratio can fire).
    """
    gain = g_loss_gain(loss_kind, d_fake)
    gradient_ratio = g_gradient_ratio(loss_kind, d_fake)
    peak = max(grad_norm_G, peak_grad_norm_G if peak_grad_norm_G is not None else grad_norm_G)
    ratio = grad_norm_G / peak if peak > 0 else 1.0
    collapsed = d_fake < CONFIDENT_REJECTION and ratio < GRAD_NORM_COLLAPSE
    fires = gradient_ratio >= GRADIENT_RATIO_WARN or collapsed
    return {
        "vanishing_gradient/indicator": float(fires),
        "vanishing_gradient/loss_gain": gain,
        "vanishing_gradient/gradient_ratio": gradient_ratio,
        "vanishing_gradient/grad_norm_ratio": ratio,
    }


def vanishing_gradient_advice(loss_kind: str, d_fake: float, grad_norm_G: float,
                              gradient_ratio: float | None = None, measured_ratio: float | None = None) -> str:
    """The warning text: what is happening (the gradient ratio when it is the cause) and the fixes,
    most effective first."""
    fixes = []
    if loss_kind == "minimax":
        fixes.append("switch to the non-saturating generator loss (loss.kind=non_saturating)")
    fixes += ["lower D's learning rate (d_optim.lr) or train D less often (train.d_steps=1)",
              "add the R1 penalty (loss.r1_gamma > 0) or spectral norm on D (network.d_spectral_norm=true)"]
    if gradient_ratio is not None and gradient_ratio >= GRADIENT_RATIO_WARN:
        measured = "" if measured_ratio is None else f" (measured {measured_ratio:.1f}x on G's samples)"
        what = (f"at mean D(G(z)) = {d_fake:.3f} the saturating loss (loss.kind={loss_kind}) gives G a "
                f"{gradient_ratio:.1f}x weaker "
                f"gradient than the non-saturating loss would{measured}; G's gradient norm is {grad_norm_G:.2e}")
    else:
        what = (f"D confidently rejects the fakes (mean D(G(z)) = {d_fake:.2e}) and G's gradient norm "
                f"collapsed to {grad_norm_G:.2e} (loss.kind={loss_kind})")
    return f"vanishing generator gradient: {what}. Fix: " + "; or ".join(fixes)


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


def missing_classes_advice(step: int, covered: np.ndarray, class_kl: float, num_samples: int) -> str:
    """The partial-mode-collapse warning: which classes the generated samples miss (``covered``: a
    (num_classes,) bool array from `gan_core.metrics.coverage.covered_classes`) and the fixes."""
    missing = ", ".join(str(c) for c in np.flatnonzero(~covered))
    return (f"step {step}: generated samples cover {int(covered.sum())}/{len(covered)} classes; missing: {missing} "
            f"(class KL {class_kl:.2f} nats over {num_samples} G_ema samples): partial mode collapse. Fix: pack D's "
            "inputs (network.d_pack=2..4, PacGAN); or add the R1 penalty (loss.r1_gamma > 0); or lower the "
            "learning rates (g_optim.lr, d_optim.lr)")


def digits_classifier(cache_dir: str | Path | None = None) -> nn.Module:
    """The digits classifier for class coverage (`gan_core.metrics.digits`), from ``cache_dir`` (default
    `gan_core.evaluate.default_cache_dir`: $GANPIPE_CACHE_DIR or ~/.cache/ganpipe), trained there first
    if absent (seconds, CPU, global RNG untouched). An unusable cache (unwritable folder, foreign file)
    costs a warning and an in-memory training, never the run."""
    from .evaluate import default_cache_dir
    from .metrics.digits import load_or_train_digits_classifier, train_digits_classifier

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        return load_or_train_digits_classifier(cache)
    except (OSError, ValueError) as e:
        log.warning("digits classifier cache %s unusable (%s); training one in memory for the diagnostics", cache, e)
        return train_digits_classifier()[0]


class TrainingDiagnostics:
    """Per-tick diagnostics for `gan_core.loop.train`: ``diagnostics(state, metrics) -> dict``.

    ``real_x``: real reference samples for the diversity ratio (use the same array on every rank);
    ``classifier``: a module mapping samples to class logits (e.g. the digits classifier), which
    turns on class coverage; ``real_labels`` give the data's class histogram (else the classifier's
    predictions on ``real_x``). ``num_samples`` G_ema samples are drawn from fixed latents (seed
    ``seed``) at each tick, so successive ticks are comparable. ``measure_gradient_ratio``: with the
    saturating loss, also measure ``vanishing_gradient/gradient_ratio_measured`` (one D forward and
    backward on `GRADIENT_PROBE_SAMPLES` samples of G; needs ``state.G`` and ``state.D``).

    Warnings (logger ``gan_core.diagnostics``), once per episode rather than at every tick: the
    vanishing-gradient one when the indicator switches on; the class one whenever a class that was
    covered at the previous tick (or any class, at the first tick) is missing.
    """

    def __init__(self, config: GANConfig, *, real_x: np.ndarray | torch.Tensor | None = None,
                 real_labels: np.ndarray | torch.Tensor | None = None, classifier: nn.Module | None = None,
                 num_samples: int | None = None, seed: int = 0, diversity_samples: int = 512,
                 measure_gradient_ratio: bool = True):
        self.config = config
        self.mixture = config.data.name if config.data.name in MIXTURES else None
        # the mixture protocol uses 2,500 samples; images are costlier to generate, so fewer
        self.num_samples = num_samples or (2500 if self.mixture else 512)
        self.seed = seed
        self.classifier = classifier
        self.measure_gradient_ratio = measure_gradient_ratio
        self.diversity_samples = min(diversity_samples, self.num_samples)
        self.real_x = None if real_x is None else torch.as_tensor(np.asarray(real_x), dtype=torch.float32)
        self.real_labels = None if real_labels is None else np.asarray(real_labels).astype(np.int64)
        self._z: torch.Tensor | None = None
        self._real_diversity: float | None = None
        self._data_class_hist: np.ndarray | None = None
        self.peak_grad_norm_G = 0.0
        self.warning_active = False
        self.missing_classes: frozenset[int] = frozenset()  # at the previous tick

    @classmethod
    def for_config(cls, config: GANConfig, *, cache_dir: str | Path | None = None,
                   **kwargs: Any) -> "TrainingDiagnostics":
        """Diagnostics with the built-in dataset as the real reference when the config names one
        (``digits``, ``ring8``, ``grid25``); other datasets get the reference the caller passes. For
        ``digits`` the classifier defaults to `digits_classifier` (``cache_dir``); pass
        ``classifier=None`` to go without class coverage."""
        if kwargs.get("real_x") is None and config.data.name in ("digits",) + MIXTURES:
            x, labels = load_builtin(config.data.name, min(config.data.num_examples, 10_000), config.data.data_seed)
            kwargs["real_x"] = x
            kwargs.setdefault("real_labels", labels)
        if config.data.name == "digits" and "classifier" not in kwargs:
            kwargs["classifier"] = digits_classifier(cache_dir)
        return cls(config, **kwargs)

    # -- pieces ---------------------------------------------------------------------------------------
    def _latents(self, device: torch.device) -> torch.Tensor:
        if self._z is None or self._z.device != torch.device(device):
            self._z = latents_for_range(self.seed, 0, self.num_samples, self.config.network.z_dim).to(device)
        return self._z

    def _labels(self, device: torch.device) -> torch.Tensor | None:
        """Class-balanced labels for the fixed latents of a class-conditional G (None otherwise)."""
        if not self.config.network.conditional:
            return None
        return labels_for_range(0, self.num_samples, self.config.data.num_classes).to(device)

    @torch.no_grad()
    def samples(self, G_ema: nn.Module, device: torch.device) -> torch.Tensor:
        """G_ema on the fixed latents, float32 on ``device`` (G_ema is in eval mode: no BatchNorm update)."""
        z = self._latents(device)
        c = self._labels(device)
        was_training = G_ema.training
        G_ema.eval()
        c_chunks = c.split(1024) if c is not None else [None] * len(z.split(1024))
        out = [apply(G_ema, zc, cc).float() for zc, cc in zip(z.split(1024), c_chunks)]
        G_ema.train(was_training)
        return torch.cat(out)

    def _real_diversity_value(self, device: torch.device) -> float | None:
        if self.real_x is None:
            return None
        if self._real_diversity is None:
            self._real_diversity = mean_pairwise_distance(self.real_x[: self.diversity_samples].to(device))
        return self._real_diversity

    @torch.no_grad()
    def _class_coverage(self, x: torch.Tensor, device: torch.device, step: int) -> dict[str, float]:
        from .metrics.coverage import class_coverage, covered_classes

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
        covered = covered_classes(pred, self._data_class_hist)
        missing = frozenset(int(c) for c in np.flatnonzero(~covered))
        if missing - self.missing_classes:  # a class dropped out since the previous tick
            log.warning("%s", missing_classes_advice(step, covered, cov["class_kl"], len(pred)))
        self.missing_classes = missing
        return {"mode_collapse/classes_covered": cov["classes_covered"],
                "mode_collapse/num_classes": cov["num_classes"],
                "mode_collapse/class_kl": cov["class_kl"]}

    def _vanishing_gradient(self, state, metrics: dict[str, float]) -> dict[str, float]:
        kind = self.config.loss.kind
        d_fake, gn = metrics["D/fake"], metrics["grad_norm/G"]
        out = vanishing_gradient_indicator(d_fake, gn, kind, self.peak_grad_norm_G)
        self.peak_grad_norm_G = max(self.peak_grad_norm_G, gn)
        measured = None
        if kind == "minimax" and self.measure_gradient_ratio:
            z = self._latents(state.device)[:GRADIENT_PROBE_SAMPLES]
            c = self._labels(state.device)
            measured = measured_gradient_ratio(state.G, state.D, z, self.config.network.d_pack,
                                               None if c is None else c[:GRADIENT_PROBE_SAMPLES])
            out["vanishing_gradient/gradient_ratio_measured"] = measured
        firing = out["vanishing_gradient/indicator"] > 0
        if firing and not self.warning_active:  # warn once per episode, not at every tick
            log.warning("step %d: %s", state.step, vanishing_gradient_advice(
                kind, d_fake, gn, out["vanishing_gradient/gradient_ratio"], measured))
        self.warning_active = firing
        return out

    # -- the tick -------------------------------------------------------------------------------------
    def __call__(self, state, metrics: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        # 1. vanishing gradients, from the tick's reduced statistics (identical on every rank)
        if "D/fake" in metrics and "grad_norm/G" in metrics:
            out.update(self._vanishing_gradient(state, metrics))
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
            out.update(self._class_coverage(x, state.device, state.step))
            out["mode_collapse/coverage"] = out["mode_collapse/classes_covered"] / out["mode_collapse/num_classes"]
        real_div = self._real_diversity_value(x.device)
        gen_div = mean_pairwise_distance(x[: self.diversity_samples])
        out["mode_collapse/diversity_generated"] = gen_div
        if real_div is not None:
            out["mode_collapse/diversity_ratio"] = gen_div / real_div if real_div > 0 else math.nan
        return out


def resolve_diagnostics(diagnostics: "TrainingDiagnostics | bool | None", config: GANConfig):
    """The loop's ``diagnostics=`` argument: True builds the default for the config, False/None turns
    them off, an instance (built by the caller with its own reference data or classifier) is used as is."""
    if diagnostics is True:
        return TrainingDiagnostics.for_config(config)
    if diagnostics is False or diagnostics is None:
        return None
    return diagnostics


__all__ = [
    "GRADIENT_RATIO_WARN", "CONFIDENT_REJECTION", "GRAD_NORM_COLLAPSE", "GRADIENT_PROBE_SAMPLES", "g_loss_gain",
    "g_gradient_ratio", "measured_gradient_ratio", "vanishing_gradient_indicator", "vanishing_gradient_advice",
    "mean_pairwise_distance", "diversity_ratio", "missing_classes_advice", "digits_classifier",
    "TrainingDiagnostics", "resolve_diagnostics",
]
