"""Report pictures of a training run: the training curves over kimg and the sample strip.

Both are pure functions of what the loop already produces (the per-tick metrics history, and the
fixed-seed samples drawn at each tick), rendered with matplotlib's Agg backend (no display needed), so
`python -m gan_core`, the MLflow tracker and the tests draw the same pictures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

# One panel per question: (title, y-axis label, metric names, lines to draw as (y, label)). A panel
# whose metrics no tick holds is left out (e.g. mode coverage exists only for the mixtures).
CURVE_PANELS: tuple[tuple[str, str, tuple[str, ...], tuple[tuple[float, str], ...]], ...] = (
    ("Losses", "loss (nats for the log losses)", ("loss/D", "loss/G"), ()),
    ("Discriminator outputs", "mean D output (probability)", ("D/real", "D/fake"), ((0.5, "D = 1/2"),)),
    # Goodfellow et al. 2014, Thm. 1: V(G, D*) = -log 4 + 2 JSD, so JSD = (V + log 4) / 2 in [0, log 2]
    ("Jensen-Shannon estimate", "JSD estimate (nats)", ("js_estimate",), ((0.0, "0"), (math.log(2), "log 2"))),
    # loss.kind rpgan (R3GAN): only D's ordering of each (real, fake) pair means something
    ("Relativistic discriminator", "fraction of pairs / mean logit gap", ("D/real>fake", "D/real-fake"),
     ((0.5, "1/2"), (0.0, "0"))),
    ("Gradient norms", "L2 norm of the gradient", ("grad_norm/G", "grad_norm/D"), ()),
    # gan_core.diagnostics: coverage of modes or classes and the diversity ratio (about 1 when healthy)
    ("Mode collapse", "fraction / ratio (1 = healthy)",
     ("mode_collapse/coverage", "mode_collapse/diversity_ratio", "mode_collapse/high_quality_fraction"),
     ((1.0, "1"),)),
    # gan_core.diagnostics: G's loss gain at D's output and G's gradient norm relative to its peak
    ("Vanishing gradient", "gain / ratio (1 = healthy)",
     ("vanishing_gradient/loss_gain", "vanishing_gradient/grad_norm_ratio"), ()),
)
VANISHING_INDICATOR = "vanishing_gradient/indicator"
MAX_STRIP_ROWS = 16  # ticks shown in the sample strip (evenly spaced, first and last included)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: training hosts and workers are headless
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def save_training_curves(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Write a PNG of the run's per-tick metrics against training progress in kimg (thousands of real
    images shown to D), one panel each for:

    - the losses ``loss/D`` and ``loss/G``;
    - D's mean outputs ``D/real`` (D(x)) and ``D/fake`` (D(G(z))), with D = 1/2 (the optimum at p_g =
      p_data) marked;
    - the Jensen-Shannon estimate ``js_estimate`` with its bounds 0 (p_g = p_data) and log 2 (disjoint
      supports) drawn (Goodfellow et al. 2014, Thm. 1);
    - the gradient norms ``grad_norm/G`` and ``grad_norm/D`` (log scale when positive);
    - the mode-collapse indicators ``mode_collapse/coverage``, ``/diversity_ratio`` and
      ``/high_quality_fraction`` (gan_core.diagnostics);
    - the vanishing-gradient indicators ``vanishing_gradient/loss_gain`` and ``/grad_norm_ratio``, with
      the ticks where ``vanishing_gradient/indicator`` fired shaded.

    ``history``: the loop's per-tick dicts (``TrainResult.history``), each with ``kimg``; a metric no tick
    holds is skipped, as is a panel with none of its metrics. Raises ValueError for an empty history.
    """
    ticks = [h for h in history if "kimg" in h]
    if not ticks:
        raise ValueError("no ticks with 'kimg' in the history: nothing to plot")
    kimg = np.array([h["kimg"] for h in ticks], dtype=np.float64)

    def series(name: str) -> np.ndarray:
        return np.array([h.get(name, math.nan) for h in ticks], dtype=np.float64)

    panels = [(title, ylabel, [n for n in names if any(n in h for h in ticks)], lines)
              for title, ylabel, names, lines in CURVE_PANELS]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ValueError("the history holds none of the plotted metrics (loss/D, D/real, js_estimate, ...)")
    plt = _pyplot()
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.2 * nrows), dpi=100, squeeze=False)
    marker = "o" if len(ticks) <= 30 else None  # a few ticks: show where they are
    for ax, (title, ylabel, names, lines) in zip(axes.flat, panels):
        for name in names:
            ax.plot(kimg, series(name), marker=marker, ms=3, lw=1.2, label=name)
        for y, label in lines:
            ax.axhline(y, ls=":", c="grey", lw=0.9)
            ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), xytext=(2, 0),
                        textcoords="offset points", va="center", fontsize=7, color="grey")
        if title == "Gradient norms":
            values = np.concatenate([series(n) for n in names])
            values = values[np.isfinite(values)]
            if values.size and (values > 0).all():
                ax.set_yscale("log")
        if title == "Vanishing gradient" and any(VANISHING_INDICATOR in h for h in ticks):
            fired = series(VANISHING_INDICATOR) > 0
            if fired.any():
                ax.fill_between(kimg, 0, 1, where=fired, transform=ax.get_xaxis_transform(), color="#d62728",
                                alpha=0.15, step="mid", label="indicator fired")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training progress (kimg)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Training curves: {len(ticks)} ticks, {kimg[-1]:.1f} kimg", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def evenly_spaced(items: Sequence, max_items: int) -> list:
    """At most ``max_items`` of ``items``, evenly spaced, always the first and the last."""
    n = len(items)
    if n <= max_items:
        return list(items)
    if max_items <= 1:
        return [items[-1]]
    idx = sorted({round(i * (n - 1) / (max_items - 1)) for i in range(max_items)})
    return [items[i] for i in idx]


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def save_sample_strip(rows: Sequence[tuple[float, torch.Tensor | np.ndarray]], path: str | Path, *,
                      samples_per_row: int = 8, max_rows: int = MAX_STRIP_ROWS,
                      real: np.ndarray | None = None) -> Path:
    """Write a PNG of the fixed-seed samples at each tick: G_ema's progress at a glance.

    ``rows``: (kimg, samples) per tick, in training order, the same latents every tick. Images
    (N, C, H, W) in [-1, 1] become one row per tick of ``samples_per_row`` images, labelled with the kimg;
    2-D samples (N, >= 2) become one small scatter per tick (shared axes, ``real`` in grey behind).
    At most ``max_rows`` ticks are drawn, evenly spaced, the first and the last included.
    """
    rows = evenly_spaced([(float(k), _as_numpy(x)) for k, x in rows], max_rows)
    if not rows:
        raise ValueError("no ticks to draw")
    if rows[0][1].ndim == 4:
        return _image_strip(rows, path, samples_per_row)
    if rows[0][1].ndim == 2 and rows[0][1].shape[1] >= 2:
        return _scatter_strip(rows, path, real)
    raise ValueError(f"samples of shape {rows[0][1].shape}: expected images (N, C, H, W) or points (N, >=2)")


class SampleStripRecorder:
    """Collects the rows of `save_sample_strip` tick by tick, in bounded memory: a few of each tick's
    fixed-seed samples (``images_per_tick`` images, or ``points_per_tick`` 2-D points), thinned to evenly
    spaced ticks when more than ``4 * max_rows`` accumulate (a long run has thousands of ticks)."""

    def __init__(self, *, images_per_tick: int = 8, points_per_tick: int = 512, max_rows: int = MAX_STRIP_ROWS):
        self.images_per_tick, self.points_per_tick, self.max_rows = images_per_tick, points_per_tick, max_rows
        self.rows: list[tuple[float, torch.Tensor]] = []

    def add(self, kimg: float, samples: torch.Tensor) -> None:
        """Keep (a copy of) the first samples of this tick: images (N, C, H, W), or points (N, >= 2)."""
        keep = samples[:self.images_per_tick] if samples.ndim == 4 else samples[:self.points_per_tick, :2]
        self.rows.append((float(kimg), keep.detach().float().cpu().clone()))
        if len(self.rows) > 4 * self.max_rows:
            self.rows = evenly_spaced(self.rows, 2 * self.max_rows)

    def save(self, path: str | Path, *, real: np.ndarray | None = None) -> Path:
        return save_sample_strip(self.rows, path, samples_per_row=self.images_per_tick, max_rows=self.max_rows,
                                 real=real)


def _image_strip(rows: list[tuple[float, np.ndarray]], path: str | Path, samples_per_row: int) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.8 * samples_per_row + 1.0, 0.8 * len(rows) + 0.5),
                             dpi=100, squeeze=False)
    for ax, (kimg, x) in zip(axes[:, 0], rows):
        x = np.clip((x[:samples_per_row] + 1.0) / 2.0, 0.0, 1.0)  # [-1, 1] -> [0, 1]
        n, c, h, w = x.shape
        pad = max(1, h // 16)
        line = np.ones((h, samples_per_row * (w + pad) - pad, c), np.float32)  # white background
        for i in range(n):
            line[:, i * (w + pad):i * (w + pad) + w] = x[i].transpose(1, 2, 0)
        if c == 1:
            ax.imshow(line[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(line[:, :, :3], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{kimg:.1f} kimg", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("G_ema samples, fixed latents, one row per tick", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _scatter_strip(rows: list[tuple[float, np.ndarray]], path: str | Path, real: np.ndarray | None) -> Path:
    plt = _pyplot()
    ncols = min(len(rows), 6)
    nrows = math.ceil(len(rows) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.1 * nrows + 0.3), dpi=100, squeeze=False,
                             sharex=True, sharey=True)
    # shared limits from the last tick (and the data), so early diffuse samples do not squash the rest
    ref = rows[-1][1][:, :2] if real is None else np.asarray(real)[:, :2]
    ref = ref[np.isfinite(ref).all(1)]
    if len(ref):
        lo, hi = np.percentile(ref, 0.5, axis=0), np.percentile(ref, 99.5, axis=0)
        margin = 0.15 * np.maximum(hi - lo, 1e-6)
        lo, hi = lo - margin, hi + margin
    for ax, (kimg, x) in zip(axes.flat, rows):
        if real is not None:
            ax.scatter(real[:, 0], real[:, 1], s=1, c="#cccccc", rasterized=True)
        ax.scatter(x[:, 0], x[:, 1], s=1, c="#1f77b4", alpha=0.6, rasterized=True)
        ax.set_title(f"{kimg:.1f} kimg", fontsize=8)
        ax.tick_params(labelsize=6)
        if len(ref):
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    fig.suptitle("G_ema samples, fixed latents, one panel per tick", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
