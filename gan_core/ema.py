"""Exponential moving average of G's weights, as in StyleGAN2-ADA (Karras et al. 2020).

The half-life is given in images, so the decay per step depends on the global batch size:
beta = 0.5 ** (global_batch_size / ema_nimg). Evaluation and sampling use G_ema.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(global_batch_size: int, ema_kimg: float, ema_rampup: float, images_seen: int) -> float:
    """Per-step decay. With a ramp-up the half-life is at most ``ema_rampup * images_seen``
    (StyleGAN2-ADA's ``ema_rampup``), so early G_ema is not dominated by the random init."""
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup > 0:
        ema_nimg = min(ema_nimg, images_seen * ema_rampup)
    if ema_nimg <= 0:
        return 0.0
    return 0.5 ** (global_batch_size / ema_nimg)


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """p_ema <- lerp(p, p_ema, beta) = beta * p_ema + (1 - beta) * p; buffers (BatchNorm stats) copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)
