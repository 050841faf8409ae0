"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al. 2020, "Differentiable Augmentation
for Data-Efficient GAN Training") with an optional adaptive probability (ADA, Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data").

D sees every image, real and fake, through the same random family of transforms T, in the D step and
in the G step; T is differentiable, so G's gradient passes through it. D then cannot memorise a small
training set. G matches the un-augmented data only if T(G) = T(data) implies G = data; ADA (Sec. 2) shows
this "non-leaking" condition holds when each transform is skipped with some probability (p below about
0.8 in its experiments); DiffAugment uses p = 1.

Transforms (``augment.policy``, a comma-separated subset, always applied in this order):

- ``color``: brightness + U(-0.5, 0.5); saturation (deviation from the channel mean) * U(0, 2);
  contrast (deviation from the image mean) * U(0.5, 1.5).
- ``translation``: an integer shift of up to 1/8 of the image side in each direction, the uncovered
  border set to ``fill``.
- ``cutout``: a square of half the image side set to ``fill``, at a uniformly random centre.

``fill`` is 0 in DiffAugment (mid-grey for images in [-1, 1]); -1 is black, the background of digits.

Each transform is applied to each example with probability p (independently); p = 1 is DiffAugment.
Randomness is seed-addressed (`gan_core.rng`): the parameters of the *global* batch are drawn from
``generator(seed, purpose, step, j)`` and each worker keeps its rows (``rank_slice``), so N workers
augment exactly as one does and a resumed run as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .config import AUGMENT_POLICIES as POLICIES  # the transforms, in the order they are applied
from .rng import generator, rank_slice

TRANSLATION_RATIO = 0.125  # of the image side (DiffAugment's default)
CUTOUT_RATIO = 0.5  # of the image side (DiffAugment's default)
ADJUST_EVERY_STEPS = 4  # adaptive p is adjusted every 4 steps (ADA: every 4 minibatches)


def parse_policy(policy: str) -> tuple[str, ...]:
    """The transforms named in ``policy`` ("" = none), in application order. Raises ValueError naming the
    unknown or repeated name and the allowed ones."""
    names = [p.strip() for p in policy.split(",")] if policy.strip() else []
    for name in names:
        if name not in POLICIES:
            raise ValueError(f"unknown transform {name!r}; allowed: a comma-separated subset of "
                             f"{', '.join(POLICIES)}, or '' for none")
    if len(set(names)) != len(names):
        raise ValueError(f"a transform is named twice in {policy!r}")
    return tuple(p for p in POLICIES if p in names)


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...], p: float | torch.Tensor = 1.0, *, seed: int,
                 purpose: str, step: int, j: int = 0, rank: int = 0, world_size: int = 1,
                 fill: float = 0.0) -> torch.Tensor:
    """``x`` (this worker's rows of a global batch, float (N, C, H, W)) through DiffAugment's transforms.

    Parameters are drawn for the global batch of N * world_size examples from
    ``generator(seed, purpose, step, j)`` and rows ``rank_slice(N * world_size, rank, world_size)`` are
    kept: the result is a pure function of (x, policy, p, seed, purpose, step, j, fill) and the rows. ``p`` is
    each transform's per-example probability (a float or a 0-dim tensor, e.g. the adaptive p on the
    device); examples a transform skips are passed through bitwise. ``fill`` is the value translation's
    uncovered border and cutout's square take (0 = DiffAugment's). Differentiable in ``x``. With an
    empty policy ``x`` itself is returned. Raises ValueError for a tensor that is not 4-D.
    """
    names = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
    if not names:
        return x
    if x.dim() != 4:
        raise ValueError(f"DiffAugment needs images (N, C, H, W); got shape {tuple(x.shape)}")
    n, _, H, W = x.shape
    B = n * world_size
    rows = rank_slice(B, rank, world_size)
    g = generator(seed, purpose, step, j)
    # every parameter is drawn, whatever the policy: each transform's draws do not depend on the others
    u = torch.rand(B, 3, generator=g)[rows]
    color = torch.rand(B, 3, generator=g)[rows]
    tx, ty = max(int(H * TRANSLATION_RATIO + 0.5), 1), max(int(W * TRANSLATION_RATIO + 0.5), 1)
    shift = torch.stack([torch.randint(-tx, tx + 1, (B,), generator=g),
                         torch.randint(-ty, ty + 1, (B,), generator=g)], dim=1)[rows]
    ch, cw = int(H * CUTOUT_RATIO + 0.5), int(W * CUTOUT_RATIO + 0.5)
    centre = torch.stack([torch.randint(0, H + (1 - ch % 2), (B,), generator=g),
                          torch.randint(0, W + (1 - cw % 2), (B,), generator=g)], dim=1)[rows]
    dev = x.device
    p = p.to(dev) if isinstance(p, torch.Tensor) else p
    apply = (u.to(dev) < p).view(n, 3, 1, 1, 1)
    color, shift, centre = color.to(dev, x.dtype), shift.to(dev), centre.to(dev)
    if "color" in names:
        r = color.view(n, 3, 1, 1, 1)
        y = x + (r[:, 0] - 0.5)  # brightness
        mean = y.mean(dim=1, keepdim=True)
        y = (y - mean) * (r[:, 1] * 2) + mean  # saturation
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * (r[:, 2] + 0.5) + mean  # contrast
        x = torch.where(apply[:, 0], y, x)
    if "translation" in names:
        xp = F.pad(x, (ty, ty, tx, tx), value=fill)
        ri = (torch.arange(H, device=dev)[None, :] + shift[:, :1] + tx)  # (n, H): source row in the padded image
        ci = (torch.arange(W, device=dev)[None, :] + shift[:, 1:] + ty)
        b = torch.arange(n, device=dev)[:, None, None]
        y = xp[b, :, ri[:, :, None], ci[:, None, :]].permute(0, 3, 1, 2)  # (n, H, W, C) -> (n, C, H, W)
        x = torch.where(apply[:, 1], y, x)
    if "cutout" in names:
        lo = centre - torch.tensor([ch // 2, cw // 2], device=dev)
        i, k = torch.arange(H, device=dev)[None, :], torch.arange(W, device=dev)[None, :]
        in_rows = (i >= lo[:, :1]) & (i < lo[:, :1] + ch)
        in_cols = (k >= lo[:, 1:]) & (k < lo[:, 1:] + cw)
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (n, H, W)
        x = torch.where(apply[:, 2] & ~keep[:, None], torch.full_like(x, fill), x)
    return x


class AdaptiveP:
    """ADA's controller of the augmentation probability p (Karras et al. 2020, Sec. 3).

    The overfitting heuristic r_t = E[sign(D(x_real))] is accumulated over ``ADJUST_EVERY_STEPS`` steps
    (its sum over the real logits of every worker); then p moves by sign(r_t - target) * images /
    (speed_kimg * 1000), clamped to [0, 1], where images are the real images D saw meanwhile (all
    workers). So p can cross [0, 1] in speed_kimg thousand images. With several workers the sums are
    all-reduced (integers, exactly), so every rank holds the same p, equal to a single worker's.

    ``p`` lives on the device as a float32 0-dim tensor (no host sync per step); `state_dict` and
    `load_state_dict` carry p and the partial sums through checkpoints, so a resume is bitwise.
    """

    def __init__(self, p: float, target: float, speed_kimg: float, device: torch.device | str = "cpu"):
        self.target, self.speed_kimg = float(target), float(speed_kimg)
        self.p = torch.tensor(float(p), dtype=torch.float32, device=device)
        self.sign_sum = torch.zeros((), dtype=torch.float32, device=device)  # this worker's sum since the last adjustment
        self.logits = 0  # real logits behind sign_sum, all workers
        self.images = 0  # real images, all workers, since the last adjustment

    def observe(self, real_logits: torch.Tensor, images: int, world_size: int = 1) -> torch.Tensor:
        """Add this worker's real logits (any shape; each worker holds as many) to r_t's sums; ``images``
        is the number of real images behind them over all workers. Returns this worker's mean sign."""
        s = torch.sign(real_logits.detach().float())
        self.sign_sum += s.sum()
        self.logits += s.numel() * world_size
        self.images += int(images)
        return s.mean()

    def adjust(self, step: int, world_size: int = 1) -> None:
        """At steps that are multiples of ``ADJUST_EVERY_STEPS``: r_t from the sums (over ranks), move p,
        reset the sums. Every rank must call it at the same steps (an all-reduce when world_size > 1)."""
        if step % ADJUST_EVERY_STEPS or self.logits == 0:
            return
        total = self.sign_sum.clone()
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        self.p = self.update(self.p, total / self.logits, self.images)
        self.sign_sum.zero_()
        self.logits = self.images = 0

    def update(self, p: torch.Tensor, rt: torch.Tensor, images: int) -> torch.Tensor:
        """p moved by sign(rt - target) * images / (speed_kimg * 1000), clamped to [0, 1]."""
        return (p + torch.sign(rt - self.target) * (images / (self.speed_kimg * 1000.0))).clamp(0.0, 1.0)

    def state_dict(self) -> dict:
        return {"p": self.p.detach().cpu(), "sign_sum": self.sign_sum.detach().cpu(), "logits": self.logits,
                "images": self.images}

    def load_state_dict(self, d: dict) -> None:
        self.p = d["p"].to(self.p.device, torch.float32)
        self.sign_sum = d["sign_sum"].to(self.sign_sum.device, torch.float32)
        self.logits, self.images = int(d["logits"]), int(d["images"])
