"""Algorithm 1 of Goodfellow et al. 2014: k discriminator updates, then one generator update.

`TrainingState` holds the unwrapped networks, the optimisers, their learning-rate schedules and the
counters; `discriminator_step`
and `generator_step` are the two halves of one iteration. The networks being updated are passed in
*wrapped* form (e.g. DDP) by the caller; the other network is used unwrapped, because its gradients
are not wanted and a DDP module whose parameters receive no gradient would stall the all-reduce.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from . import losses
from .augment import AdaptiveP, diff_augment
from .config import GANConfig, OptimizerConfig, TrainConfig
from .ema import ema_beta, update_ema
from .networks import apply, build_discriminator, build_generator, pack
from .rng import derive_seed, generator, rank_slice


@dataclass
class TrainingState:
    """Everything a checkpoint holds: networks, optimisers, their schedules, AMP scalers and counters.

    Invariant: ``sched_G.last_epoch == sched_D.last_epoch == step``, so each optimiser's lr is the one
    for the next step, ``optim.lr * lr_scale(config.train, step)``.
    """

    config: GANConfig
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    sched_G: torch.optim.lr_scheduler.LambdaLR
    sched_D: torch.optim.lr_scheduler.LambdaLR
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    device: torch.device
    step: int = 0  # completed iterations of Algorithm 1 (= G updates)
    images_seen: int = 0  # real images shown to D, summed over workers
    adaptive_p: AdaptiveP | None = None  # augment.adaptive's p (gan_core.augment); None otherwise

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000.0


def lr_scale(train: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at ``step``: 1, then a cosine ramp to 0 over the last
    ``train.lr_rampdown`` fraction of ``train.total_steps`` (a function of the step alone, so resumed
    runs follow the same schedule)."""
    if train.lr_rampdown <= 0:
        return 1.0
    start = train.total_steps * (1.0 - train.lr_rampdown)
    progress = min(max((step - start) / (train.total_steps - start), 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(opt: torch.optim.Optimizer, optim: OptimizerConfig, train: TrainConfig,
                step: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Put ``optim``'s settings into ``opt`` and return its schedule, positioned at ``step``.

    Sets every param group's betas to (optim.beta1, optim.beta2) and its base rate ("initial_lr",
    LambdaLR's ``base_lrs``) to optim.lr; the returned scheduler has ``last_epoch == step`` and has set
    lr = optim.lr * lr_scale(train, step). `train_step` advances it once per step. The optimiser's
    per-parameter state (Adam's moments and step counts) is left as it is.
    """
    for group in opt.param_groups:
        group["betas"] = (optim.beta1, optim.beta2)
        group["initial_lr"] = optim.lr
    # LambdaLR's constructor takes one step: from last_epoch = step - 1 to step (-1 is a fresh start)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_scale(train, s), last_epoch=step - 1)


def build_training_state(config: GANConfig, device: str | torch.device = "cpu") -> TrainingState:
    """Fresh networks (initialised from train.seed, leaving the global RNG untouched), optimisers and
    their lr schedules at step 0."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.train.seed, "init"))
        G = build_generator(config)
        D = build_discriminator(config)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    for net in (G, D, G_ema):
        net.to(device=device, memory_format=memory_format)
    g, d = config.g_optim, config.d_optim
    opt_G = torch.optim.Adam(G.parameters(), lr=g.lr, betas=(g.beta1, g.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=d.lr, betas=(d.beta1, d.beta2))
    sched_G = lr_schedule(opt_G, g, config.train, step=0)
    sched_D = lr_schedule(opt_D, d, config.train, step=0)
    use_scaler = config.train.amp == "fp16"
    scaler_G = torch.amp.GradScaler(device.type, enabled=use_scaler)
    scaler_D = torch.amp.GradScaler(device.type, enabled=use_scaler)
    a = config.augment
    adaptive_p = AdaptiveP(a.initial_p, a.target, a.speed_kimg, device) if a.adaptive else None
    return TrainingState(config, G, D, G_ema, opt_G, opt_D, sched_G, sched_D, scaler_G, scaler_D, device,
                         adaptive_p=adaptive_p)


def _autocast(state: TrainingState):
    amp = state.config.train.amp
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(state.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def latents(state: TrainingState, purpose: str, j: int, rank: int, world_size: int) -> torch.Tensor:
    """This worker's slice of the global batch of z ~ N(0, I) for (step, purpose, j).

    Every worker draws the same global batch and keeps its own rows, so the union over workers is
    independent of the number of workers.
    """
    cfg = state.config
    B = cfg.train.global_batch_size
    z = torch.randn(B, cfg.network.z_dim, generator=generator(cfg.train.seed, purpose, state.step, j))
    return z[rank_slice(B, rank, world_size)].to(state.device, non_blocking=True)


def fake_labels(state: TrainingState, purpose: str, j: int, rank: int, world_size: int) -> torch.Tensor | None:
    """This worker's slice of the global batch of class labels for the fakes of (step, purpose, j):
    int64 in [0, data.num_classes), drawn from the label distribution data.class_frequencies (uniform
    when unset) like `latents` (the same union over any number of workers); None for unconditional
    networks. StyleGAN2-ADA likewise draws training labels with the dataset's class frequencies."""
    cfg = state.config
    if not cfg.network.conditional:
        return None
    B, freq = cfg.train.global_batch_size, cfg.data.class_frequencies
    g = generator(cfg.train.seed, purpose, state.step, j)
    c = (torch.multinomial(torch.tensor(freq, dtype=torch.float64), B, replacement=True, generator=g) if freq
         else torch.randint(cfg.data.num_classes, (B,), generator=g))
    return c[rank_slice(B, rank, world_size)].to(state.device, non_blocking=True)


def _real_labels(state: TrainingState, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The real minibatch's labels as D takes them: None when unconditional; int64 (n,) in
    [0, data.num_classes) when conditional. Raises ValueError for missing or out-of-range labels."""
    cfg = state.config
    if not cfg.network.conditional:
        return None
    K = cfg.data.num_classes
    if labels is None:
        raise ValueError(f"network.conditional = true needs labelled real batches (labels 0..{K - 1}); the "
                         f"data stream gave images only")
    labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
    # the range check runs where the labels arrive (the CPU, from the data stream): no device sync
    if labels.shape != (n,) or (labels.device.type == "cpu" and bool(((labels < 0) | (labels >= K)).any())):
        raise ValueError(f"real labels: got shape {tuple(labels.shape)}, range [{int(labels.min())}, "
                         f"{int(labels.max())}]; expected ({n},) in [0, {K - 1}] (data.num_classes = {K})")
    return labels.to(state.device, non_blocking=True)


def minibatches_per_step(config: GANConfig) -> int:
    """Real minibatches one step of Algorithm 1 takes from the data stream: one per D update (k =
    train.d_steps), plus one for G's update when its loss compares against reals (loss.kind rpgan, as
    R3GAN's training loop fetches a separate real batch for the G phase). The stream of a resumed run
    is opened at step x this."""
    return config.train.d_steps + (1 if config.loss.kind == "rpgan" else 0)


def check_device(name: str) -> torch.device:
    """``name`` as a torch.device this process can use: ``cpu``, ``cuda``/``cuda:N`` with N below the
    number of visible CUDA devices, or ``mps`` where Apple's backend is available. Raises ValueError naming the value and what is allowed (a typo, a
    device type torch does not know, or CUDA where none is visible)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    if device is not None and (device.type == "cpu" or (device.type == "cuda" and (device.index or 0) < count)
                               or (device.type == "mps" and mps)):
        return device
    allowed = "cpu" + (f", cuda or cuda:0 to cuda:{count - 1}" if count else " (no CUDA device is visible)")
    allowed += ", mps" if mps else ""
    raise ValueError(f"device: got {name!r}; allowed: {allowed}")


def augment(state: TrainingState, x: torch.Tensor, purpose: str, j: int, rank: int,
            world_size: int) -> torch.Tensor:
    """``x`` through config.augment's DiffAugment policy at the current p, with parameters addressed by
    (train.seed, purpose, step, j) (`gan_core.augment.diff_augment`); ``x`` itself when the policy is ""."""
    a = state.config.augment
    if not a.policy:
        return x
    p = state.adaptive_p.p if state.adaptive_p is not None else a.initial_p
    return diff_augment(x, a.policy, p, seed=state.config.train.seed, purpose=purpose, step=state.step, j=j,
                        rank=rank, world_size=world_size, fill=a.fill)


def _grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def discriminator_step(state: TrainingState, D_train: nn.Module, real: torch.Tensor, j: int,
                       rank: int = 0, world_size: int = 1,
                       real_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One D update: ascend V(D, G) on a fresh real minibatch and fresh z (Algorithm 1, inner loop).

    ``D_train`` is D as the caller wrapped it (DDP or the plain module). ``real_labels``: the real
    minibatch's class labels (int64 (n,)), required when network.conditional (ignored otherwise); the
    fakes' labels are drawn by `fake_labels`. Returns detached statistics.
    With ``loss.r1_interval`` N > 1, R1 (weight x N) is computed only when (step * d_steps + j) % N == 0;
    ``loss/D_r1`` is then N x R1 on those updates and 0 on the others.
    """
    # NOTE (over 60 lines): Algorithm 1's inner-loop step in the paper's order (loss, regularisers, update).
    cfg = state.config
    lcfg = cfg.loss
    c_real = _real_labels(state, real_labels, real.shape[0])
    # 1. fresh z (and class labels); fakes from the unwrapped G without a graph: the D step must not touch G
    z = latents(state, "z_D", j, rank, world_size)
    # rpgan pairs fake i with real i: a conditional pair shares the class (R3GAN conditions G on the reals')
    c_fake = c_real if lcfg.kind == "rpgan" else fake_labels(state, "c_D", j, rank, world_size)
    with torch.no_grad(), _autocast(state):
        fake = apply(state.G, z, c_fake)
    real = real.to(state.device, non_blocking=True)
    if cfg.train.channels_last and real.dim() == 4:
        real = real.contiguous(memory_format=torch.channels_last)
    fake = fake.to(real.dtype)
    # DiffAugment (augment.policy; a no-op when it is ""): real and fake alike, before packing
    real = augment(state, real, "aug_real", j, rank, world_size)
    fake = augment(state, fake, "aug_fake", j, rank, world_size)
    # PacGAN: D judges groups of d_pack consecutive examples (a no-op for d_pack = 1)
    k = cfg.network.d_pack
    real, fake = pack(real, k), pack(fake, k)
    # lazy R1 and R2 (Karras et al. 2020): only on every r1_interval-th D update (counted over steps and j)
    lazy_turn = (state.step * cfg.train.d_steps + j) % lcfg.r1_interval == 0
    with_r1 = lcfg.r1_gamma > 0 and lazy_turn
    with_r2 = lcfg.r2_gamma > 0 and lazy_turn
    if with_r1:
        real = real.detach().requires_grad_(True)
    if with_r2:
        fake = fake.detach().requires_grad_(True)
    parts = [real, fake]
    if lcfg.gp_lambda > 0:
        B = cfg.train.global_batch_size // k
        eps_shape = (B,) + (1,) * (real.dim() - 1)
        eps = torch.rand(eps_shape, generator=generator(cfg.train.seed, "gp_eps", state.step, j))
        eps = eps[rank_slice(B, rank, world_size)].to(state.device)
        parts.append(losses.interpolate(real, fake, eps))
    # 2. one forward of D on real, fake (and interpolates): BatchNorm and DDP stay consistent
    n = real.shape[0]
    c = None if c_real is None else torch.cat([c_real, c_fake] + [c_real] * (len(parts) - 2))
    with _autocast(state):
        logits = apply(D_train, torch.cat(parts), c).float()
    real_logits, fake_logits = logits[:n], logits[n:2 * n]
    # 3. the loss: -V for the original GAN, or the chosen alternative, plus regularisers
    loss = losses.d_loss_for(lcfg.kind, real_logits, fake_logits)
    stats = {"loss/D": loss.detach()}
    if lcfg.gp_lambda > 0:
        gp = losses.gradient_penalty(logits[2 * n:], parts[2])
        loss = loss + lcfg.gp_lambda * gp
        stats["loss/D_gp"] = gp.detach()
    if with_r1:  # weight x r1_interval: the same regularisation per D update on average
        r1 = losses.r1_penalty(real_logits, real)
        loss = loss + 0.5 * (r1_gamma(cfg, state.step) * lcfg.r1_interval) * r1
        stats["loss/D_r1"] = r1.detach() if lcfg.r1_interval == 1 else r1.detach() * lcfg.r1_interval
    elif lcfg.r1_gamma > 0:  # amortised: interval x R1 where computed, 0 here; a tick's mean estimates R1
        stats["loss/D_r1"] = torch.zeros((), device=real.device)
    if with_r2:  # on the fakes, with R1's interval and schedule (R3GAN: gamma/2 * (R1 + R2))
        r2 = losses.r2_penalty(fake_logits, fake)
        loss = loss + 0.5 * (r2_gamma(cfg, state.step) * lcfg.r1_interval) * r2
        stats["loss/D_r2"] = r2.detach() * lcfg.r1_interval
    elif lcfg.r2_gamma > 0:
        stats["loss/D_r2"] = torch.zeros((), device=real.device)
    # 4. update D
    state.opt_D.zero_grad(set_to_none=True)
    state.scaler_D.scale(loss).backward()
    state.scaler_D.unscale_(state.opt_D)
    stats["grad_norm/D"] = _grad_norm(state.D).detach()
    state.scaler_D.step(state.opt_D)
    state.scaler_D.update()
    stats.update(_d_output_statistics(state, real_logits, fake_logits, world_size))
    state.images_seen += cfg.train.global_batch_size
    return stats


def _d_output_statistics(state: TrainingState, real_logits: torch.Tensor, fake_logits: torch.Tensor,
                         world_size: int) -> dict[str, torch.Tensor]:
    """D's outputs as the tick line reports them (detached, on the device), and augment's p and r_t."""
    cfg = state.config
    stats: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if cfg.loss.kind == "rpgan":
            # NOTE: under RpGAN only differences of D's outputs mean something: no D(x), D(G(z)) or V (hence
            # no JS estimate); the fraction of pairs D orders right (R3GAN logs Loss/signs/real) instead
            stats["D/real>fake"] = (real_logits > fake_logits).float().mean()
            stats["D/real-fake"] = (real_logits - fake_logits).mean()
        else:
            stats["D/real"] = torch.sigmoid(real_logits).mean()
            stats["D/fake"] = torch.sigmoid(fake_logits).mean()
            stats["value"] = losses.value_function(real_logits, fake_logits)
        if cfg.augment.policy:
            p = state.adaptive_p.p if state.adaptive_p is not None else torch.tensor(cfg.augment.initial_p)
            stats["aug/p"] = p.clone()
            stats["aug/rt"] = (state.adaptive_p.observe(real_logits, cfg.train.global_batch_size, world_size)
                               if state.adaptive_p is not None else torch.sign(real_logits).mean())
    return stats


def generator_step(state: TrainingState, G_train: nn.Module, rank: int = 0, world_size: int = 1,
                   real: torch.Tensor | None = None, real_labels: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """One G update on fresh z (Algorithm 1, outer loop), then the EMA update of G_ema.

    D's parameters are frozen (requires_grad off) so the backward pass computes no D gradients, and
    D is used unwrapped: only G's gradients need synchronising. ``real`` (this worker's rows of a real
    minibatch, and ``real_labels`` when conditional) is required by loss.kind rpgan, whose G loss pairs
    fake i with real i (a conditional fake then takes its real's class); ignored otherwise.
    """
    cfg = state.config
    rpgan = cfg.loss.kind == "rpgan"
    if rpgan and real is None:
        raise ValueError("loss.kind = rpgan: the G step needs a real minibatch (paired rows)")
    z = latents(state, "z_G", 0, rank, world_size)
    c = _real_labels(state, real_labels, real.shape[0]) if rpgan else fake_labels(state, "c_G", 0, rank, world_size)
    state.D.requires_grad_(False)
    try:
        with _autocast(state):
            fake = augment(state, apply(G_train, z, c), "aug_G", 0, rank, world_size)  # G's gradient passes through
            fake_logits = apply(state.D, pack(fake, cfg.network.d_pack), c).float()
            real_logits = None
            if rpgan:  # D(x_r) is a constant for G: no graph
                with torch.no_grad():
                    x = real.to(state.device, non_blocking=True).to(fake.dtype)
                    if cfg.train.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    x = augment(state, x, "aug_G_real", 0, rank, world_size)
                    real_logits = apply(state.D, pack(x, cfg.network.d_pack), c).float()
        loss = losses.g_loss_for(cfg.loss.kind, fake_logits, real_logits)
        state.opt_G.zero_grad(set_to_none=True)
        state.scaler_G.scale(loss).backward()
    finally:
        state.D.requires_grad_(True)
    state.scaler_G.unscale_(state.opt_G)
    grad_norm = _grad_norm(state.G).detach()
    state.scaler_G.step(state.opt_G)
    state.scaler_G.update()
    # G_ema follows G with a half-life measured in images
    t = cfg.train
    update_ema(state.G_ema, state.G, ema_beta(t.global_batch_size, t.ema_kimg, t.ema_rampup, state.images_seen))
    state.step += 1
    return {"loss/G": loss.detach(), "grad_norm/G": grad_norm}


def r1_gamma(config: GANConfig, step: int) -> float:
    """The R1 weight at ``step``: constant, or geometric from loss.r1_gamma to loss.r1_gamma_final."""
    lcfg = config.loss
    if lcfg.r1_gamma_final <= 0:
        return lcfg.r1_gamma
    progress = min(step / config.train.total_steps, 1.0)
    return lcfg.r1_gamma * (lcfg.r1_gamma_final / lcfg.r1_gamma) ** progress


def r2_gamma(config: GANConfig, step: int) -> float:
    """The R2 weight at ``step``: loss.r2_gamma on R1's schedule (x r1_gamma(step) / loss.r1_gamma), constant
    when R1 is off."""
    lcfg = config.loss
    if lcfg.r1_gamma <= 0:
        return lcfg.r2_gamma
    return lcfg.r2_gamma * r1_gamma(config, step) / lcfg.r1_gamma


def train_step(state: TrainingState, next_real, G_train: nn.Module, D_train: nn.Module,
               rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1: k = train.d_steps D updates, each on a fresh real minibatch
    from ``next_real()`` (a tensor, or an (images, labels) pair for conditional training), then one G
    update (on one more real minibatch for rpgan: minibatches_per_step), then both lr schedules advance
    to the new step. Returns statistics averaged over the D
    updates (0-dim tensors, not synchronised to the host)."""
    k = state.config.train.d_steps
    d_stats: dict[str, list[torch.Tensor]] = {}
    for j in range(k):
        real = next_real()
        real, labels = real if isinstance(real, tuple) else (real, None)
        for key, v in discriminator_step(state, D_train, real, j, rank, world_size, labels).items():
            d_stats.setdefault(key, []).append(v)
    stats = {key: torch.stack(vs).mean() for key, vs in d_stats.items()}
    g_real = g_labels = None
    if state.config.loss.kind == "rpgan":  # G's own real minibatch (minibatches_per_step)
        g_real = next_real()
        g_real, g_labels = g_real if isinstance(g_real, tuple) else (g_real, None)
    stats.update(generator_step(state, G_train, rank, world_size, g_real, g_labels))
    if state.adaptive_p is not None:  # ADA: every few steps, p follows r_t (same p on every rank)
        state.adaptive_p.adjust(state.step, world_size)
    # after the optimiser steps (as LambdaLR expects): the learning rates for the next step
    state.sched_D.step()
    state.sched_G.step()
    return stats
