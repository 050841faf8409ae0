"""Typed, frozen configuration for the GAN engine, validated on construction.

One dataclass per component (data, networks, loss, optimisers, training) and one tree
(`GANConfig`) that holds them. Every field is checked in ``__post_init__``; a bad value raises
`ConfigError` whose message names the field (dotted path), the value and what is allowed, so the
CLI can print it as one line. Presets are plain functions returning a `GANConfig`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from types import UnionType
from typing import Any, Sequence, Union, get_args, get_origin, get_type_hints

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value is invalid. The message names the field, the value and what is allowed."""


def check(ok: bool, name: str, value: Any, allowed: str) -> None:
    """Raise ConfigError("<name>: got <value>; allowed: <allowed>") unless `ok`: every field rule's message."""
    if not ok:
        raise ConfigError(f"{name}: got {value!r}; allowed: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


LOSS_KINDS = ("non_saturating", "minimax", "hinge", "wasserstein", "rpgan")
ARCHS = ("mlp", "dcgan", "r3gan")
NORMS = ("batch", "layer", "none")
EXPANSION = 2  # r3gan: a residual block's inner width is 2x its outer width (the paper's inverted bottleneck)
R3GAN_FULL_WIDTH_PX = 32  # r3gan: stages up to 32 px are network.*_width wide; wider images halve it per octave


def r3gan_widths(width: int, resolution: int) -> list[int]:
    """r3gan's channels at 4x4, 8x8, ..., resolution px: `width` up to 32 px, then halved per doubling
    (R3GAN's FFHQ presets: 768 up to 32 px, 384 at 64 px, ...)."""
    n = int(math.log2(resolution)) - 2
    return [max(1, width * R3GAN_FULL_WIDTH_PX // max(R3GAN_FULL_WIDTH_PX, 4 * 2 ** i)) for i in range(n + 1)]  # "layer" is the batch-independent option
AMP_MODES = ("off", "bf16", "fp16")
# NOTE: a documented bound, so a typo (10**12) is refused at once instead of allocating without end;
# 64Ki images per step is far beyond the GAN literature's largest batches (BigGAN: 2048)
MAX_GLOBAL_BATCH_SIZE = 65536
# ImageNet-21k's 21,841 classes, rounded up: a typo (10**9) would otherwise allocate a huge class embedding
MAX_NUM_CLASSES = 32768
# Every other numeric field has a documented upper bound too (issue 31: train.total_steps = 10**20 was
# taken), far beyond any published setting, so that no value runs unbounded in time or memory:
MAX_STEPS = 100_000_000  # train.total_steps and the step intervals: ~100x StyleGAN2-ADA's longest runs
MAX_GENERATED_EXAMPLES = 10_000_000  # data.num_examples of a generated dataset (held in memory; 10^7 ring8 = 80 MB)
MAX_SEED = 2**63  # seeds are int64 (exclusive bound)
MAX_PENALTY_WEIGHT = 1e6  # loss.r1_gamma, r2_gamma, gp_lambda (R3GAN's largest gamma: 0.05 to 15)
MAX_KIMG = 1e6  # train.ema_kimg, augment.speed_kimg: thousands of images (StyleGAN2-ADA: 10 and 500)


@dataclass(frozen=True)
class DataConfig:
    """What the networks are trained on.

    ``name`` is a built-in dataset (``digits``, ``ring8``, ``grid25``) or a staged dataset reference
    that infra resolves; ``shape`` is one example's shape, (D,) for vectors or (C, H, W) for images.
    ``num_classes``: K for data labelled 0..K-1 that class-conditional networks use (digits: 10);
    0 = unlabelled, or labels not used.
    ``subset`` (built-in image datasets, i.e. digits, in ``python -m gan_core``): train on that many
    examples, a class-stratified draw seeded by ``data_seed`` (`gan_core.data.training_subset`), for
    data-limited experiments; 0 = all. Evaluation still compares against the whole dataset.
    ``class_frequencies``: the class distribution p(c) that a class-conditional G's fake labels are drawn
    from, K non-negative weights (counts or frequencies, normalised when drawn); () = uniform. The
    launchers fill it from the training labels (`python -m gan_core`; `ganpipe` from the staged
    dataset's ``label_counts``) when it is not set, so fakes follow the data's class frequencies.
    """

    name: str = "ring8"
    shape: tuple[int, ...] = (2,)
    num_examples: int = 50_000  # only for the synthetic mixtures: how many points to draw once
    data_seed: int = 0  # seed of that draw, and of data.subset's (the training seed is train.seed)
    num_classes: int = 0
    subset: int = 0  # built-in image datasets: train on this many examples (stratified); 0 = all
    class_frequencies: tuple[float, ...] = ()  # p(c) of the fake labels; () = uniform

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and self.name != "", "data.name", self.name, "a non-empty string")
        shape = tuple(self.shape) if isinstance(self.shape, (list, tuple)) else self.shape
        check(
            isinstance(shape, tuple) and len(shape) in (1, 3) and all(_is_int(s) and s > 0 for s in shape),
            "data.shape", self.shape, "(D,) for vectors or (C, H, W) for images, positive integers",
        )
        object.__setattr__(self, "shape", shape)
        check(_is_int(self.num_examples) and 0 < self.num_examples <= MAX_GENERATED_EXAMPLES, "data.num_examples",
              self.num_examples, f"an integer from 1 to {MAX_GENERATED_EXAMPLES}")
        check(_is_int(self.data_seed) and 0 <= self.data_seed < MAX_SEED, "data.data_seed", self.data_seed,
              "an integer in [0, 2**63)")
        check(_is_int(self.num_classes) and (self.num_classes == 0 or 2 <= self.num_classes <= MAX_NUM_CLASSES),
              "data.num_classes", self.num_classes, f"0 (unlabelled) or an integer from 2 to {MAX_NUM_CLASSES}")
        check(_is_int(self.subset) and 0 <= self.subset < 2**31, "data.subset", self.subset,
              "an integer in [0, 2**31) (0 = every example)")
        freq = tuple(self.class_frequencies) if isinstance(self.class_frequencies, (list, tuple)) else None
        check(freq is not None and (not freq or (
            len(freq) == self.num_classes and all(_is_number(f) and math.isfinite(f) and f >= 0 for f in freq)
            and sum(freq) > 0)), "data.class_frequencies", self.class_frequencies,
            f"[] (uniform) or data.num_classes = {self.num_classes} non-negative numbers with a positive sum")
        object.__setattr__(self, "class_frequencies", tuple(float(f) for f in freq))

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


@dataclass(frozen=True)
class NetworkConfig:
    """Generator G and discriminator D.

    ``mlp``: fully connected nets for vector data (and flattened images). ``dcgan``: Radford et al.
    2015 conv nets for square power-of-two images of 8 to 128 px. ``r3gan``: R3GAN's normalisation-free
    ResNets (Huang et al. 2024; gan_core.r3gan) for square power-of-two images of 8 to 256 px.
    ``*_width`` is hidden units (mlp), the channel count of the highest-resolution conv layer (dcgan),
    or the channel count of every stage up to 32 px, halved per octave above (r3gan). The norms,
    spectral norm and depths apply to mlp and dcgan; r3gan has no normalisation layers by design.
    """

    arch: str = "mlp"
    z_dim: int = 64
    g_width: int = 256
    d_width: int = 256
    g_depth: int = 3  # hidden layers (mlp only)
    d_depth: int = 3
    g_norm: str = "batch"
    d_norm: str = "none"  # D sees real and fake in one batch: batch statistics would mix them
    d_spectral_norm: bool = False  # Miyato et al. 2018
    d_pack: int = 1  # PacGAN (Lin et al. 2018): D judges d_pack samples at once; > 1 counters mode collapse
    # class-conditional G (class embedding concatenated to z) and projection D (Miyato & Koyama 2018),
    # on data.num_classes classes
    conditional: bool = False
    # r3gan only: residual blocks per resolution (the paper's 2), and channels per group of the grouped
    # 3x3 conv (ResNeXt; R3GAN's CIFAR-10 net: 1536 inner channels in 96 groups = 16)
    blocks_per_stage: int = 2
    group_width: int = 16

    def __post_init__(self) -> None:
        check(self.arch in ARCHS, "network.arch", self.arch, " | ".join(ARCHS))
        check(_is_int(self.blocks_per_stage) and 1 <= self.blocks_per_stage <= 16, "network.blocks_per_stage",
              self.blocks_per_stage, "an integer from 1 to 16")
        check(_is_int(self.group_width) and 1 <= self.group_width <= 65536, "network.group_width",
              self.group_width, "a positive integer")
        for name in ("z_dim", "g_width", "d_width", "g_depth", "d_depth"):
            v = getattr(self, name)
            check(_is_int(v) and 0 < v <= 65536, f"network.{name}", v, "a positive integer")
        check(self.g_norm in NORMS, "network.g_norm", self.g_norm, " | ".join(NORMS))
        check(self.d_norm in NORMS, "network.d_norm", self.d_norm, " | ".join(NORMS))
        check(_is_int(self.d_pack) and 1 <= self.d_pack <= 16, "network.d_pack", self.d_pack,
              "an integer from 1 to 16")
        check(isinstance(self.d_spectral_norm, bool), "network.d_spectral_norm", self.d_spectral_norm,
              "true | false")
        check(isinstance(self.conditional, bool), "network.conditional", self.conditional, "true | false")


@dataclass(frozen=True)
class LossConfig:
    """The adversarial objective and its regularisers.

    kind: ``non_saturating`` (default, -log D(G(z)) for G), ``minimax`` (the saturating
    log(1 - D(G(z))) of the paper's value function), ``hinge``, ``wasserstein``, ``rpgan`` (the
    relativistic pairing loss of R3GAN, gan_core.losses.rpgan_d_loss: each fake is judged against a real
    row, so G's step takes a real minibatch too).
    r2_gamma: R2 weight, the zero-centred gradient penalty on fakes (Roth et al. 2017; R3GAN uses
    R1 + R2 with one gamma); it follows R1's lazy interval and R1's schedule (its weight is r2_gamma x
    the current R1 weight / r1_gamma; constant when r1_gamma is 0).
    gp_lambda: WGAN-GP weight (Gulrajani et al. 2017); r1_gamma: R1 weight (Mescheder et al. 2018);
    r1_gamma_final: when > 0, the R1 weight decays geometrically from r1_gamma at step 0 to this value
    at train.total_steps (a smooth D early keeps G's gradient reaching every mode; a sharp D late
    resolves narrow modes).
    r1_interval: lazy regularisation (Karras et al. 2020, StyleGAN2, section 3.1): R1 is computed only on
    every r1_interval-th D update, with its weight multiplied by r1_interval; 1 computes it on every update.
    """

    kind: str = "non_saturating"
    gp_lambda: float = 0.0
    r1_gamma: float = 0.0
    r1_gamma_final: float = 0.0
    r1_interval: int = 1
    r2_gamma: float = 0.0

    def __post_init__(self) -> None:
        check(self.kind in LOSS_KINDS, "loss.kind", self.kind, " | ".join(LOSS_KINDS))
        for name in ("r2_gamma", "gp_lambda", "r1_gamma"):
            v = getattr(self, name)
            check(_is_number(v) and 0 <= v <= MAX_PENALTY_WEIGHT, f"loss.{name}", v, "a number from 0 to 1e6")
        check(_is_number(self.r1_gamma_final) and 0 <= self.r1_gamma_final <= MAX_PENALTY_WEIGHT and
              (self.r1_gamma_final == 0 or self.r1_gamma > 0), "loss.r1_gamma_final", self.r1_gamma_final,
              "a number from 0 to 1e6 (> 0 only together with loss.r1_gamma > 0)")
        check(_is_int(self.r1_interval) and 1 <= self.r1_interval <= MAX_STEPS, "loss.r1_interval", self.r1_interval,
              f"an integer from 1 to {MAX_STEPS} (R1 on every r1_interval-th D update)")


@dataclass(frozen=True)
class OptimizerConfig:
    """Adam (Kingma & Ba 2015) with DCGAN's betas by default."""

    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self) -> None:
        check(_is_number(self.lr) and 0 < self.lr < 1, "lr", self.lr, "a number in (0, 1)")
        check(_is_number(self.beta1) and 0 <= self.beta1 < 1, "beta1", self.beta1, "a number in [0, 1)")
        check(_is_number(self.beta2) and 0 <= self.beta2 < 1, "beta2", self.beta2, "a number in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """Algorithm 1's schedule, counted in steps (one step = k D updates + one G update) and images."""

    global_batch_size: int = 256  # m in Algorithm 1, summed over all workers
    d_steps: int = 1  # k in Algorithm 1 (the paper uses k = 1)
    total_steps: int = 2000
    seed: int = 0
    ema_kimg: float = 10.0  # half-life of G_ema in thousands of images (StyleGAN2-ADA); 0 = G_ema tracks G
    ema_rampup: float = 0.05  # ema half-life <= rampup * images seen so far; 0 disables the ramp-up
    amp: str = "off"  # "bf16" or "fp16" (CUDA; fp16 uses a GradScaler)
    channels_last: bool = False  # memory format for conv nets on CUDA
    lr_rampdown: float = 0.0  # last fraction of total_steps over which both learning rates fall to 0 (cosine)
    tick_every_steps: int = 100  # metrics are averaged and reported once per tick
    checkpoint_every_steps: int = 500
    num_checkpoints_to_keep: int = 2

    def __post_init__(self) -> None:
        for name, bound in (("global_batch_size", MAX_GLOBAL_BATCH_SIZE), ("d_steps", 100), ("total_steps", MAX_STEPS),
                            ("tick_every_steps", MAX_STEPS), ("checkpoint_every_steps", MAX_STEPS),
                            ("num_checkpoints_to_keep", 10_000)):
            v = getattr(self, name)
            check(_is_int(v) and 0 < v <= bound, f"train.{name}", v, f"an integer from 1 to {bound}")
        check(_is_int(self.seed) and 0 <= self.seed < 2**63, "train.seed", self.seed, "an integer in [0, 2**63)")
        check(_is_number(self.ema_kimg) and 0 <= self.ema_kimg <= MAX_KIMG, "train.ema_kimg", self.ema_kimg,
              "a number from 0 to 1e6 (kimg)")
        check(_is_number(self.ema_rampup) and 0 <= self.ema_rampup <= 1e3, "train.ema_rampup", self.ema_rampup,
              "a number from 0 to 1000")
        check(_is_number(self.lr_rampdown) and 0 <= self.lr_rampdown < 1, "train.lr_rampdown", self.lr_rampdown,
              "a number in [0, 1)")
        check(self.amp in AMP_MODES, "train.amp", self.amp, " | ".join(AMP_MODES))
        check(isinstance(self.channels_last, bool), "train.channels_last", self.channels_last, "true | false")


AUGMENT_POLICIES = ("color", "translation", "cutout")  # gan_core.augment.POLICIES


@dataclass(frozen=True)
class AugmentConfig:
    """Differentiable augmentation of every image D sees (DiffAugment, Zhao et al. 2020), real and fake,
    in the D and the G step; images only (`gan_core.augment`).

    policy: a comma-separated subset of ``color``, ``translation`` (1/8 of the side), ``cutout`` (a square
    of 1/2 the side); "" = off (training is then exactly as without this section).
    fill: the value, in G's output range [-1, 1], of translation's uncovered border and cutout's square:
    0.0 (DiffAugment's, mid-grey) or e.g. -1.0 (black, the background of digits).
    p: each transform's per-example probability; None = 1.0 (DiffAugment), or 0.0 where adaptive starts.
    adaptive: adjust p as ADA does (Karras et al. 2020): every 4 steps r_t = E[sign(D(x_real))] over all
    workers; p rises when r_t > target (D overfits) and falls otherwise, by images / (speed_kimg * 1000),
    within [0, 1]. p and r_t are logged per tick as ``aug/p`` and ``aug/rt``; p is checkpointed.

    NOTE: measured on 300 digits (``data.subset = 300``, FD/floor against all 1,797, 10,000 steps, EMA 20
    kimg; README "Small datasets", ``python -m benchmarks.data_limited``): D overfits its 300 images and
    calls the held-out digits fake; ``cutout`` with ``fill = -1`` keeps it neutral on them and lowers
    FD/floor from 1.94 to 1.77 on average over 10 seeds (lower on 6). Translation (a 1 px shift of an 8x8
    digit) and the grey fill made it worse; the R1-regularised digits D keeps r_t below ADA's 0.6, so the
    adaptive p stays near 0 at the default target.
    """

    policy: str = ""
    p: float | None = None
    adaptive: bool = False
    target: float = 0.6  # ADA's r_t target
    speed_kimg: float = 500.0  # thousands of real images for p to cross [0, 1] (ADA: 500)
    fill: float = 0.0  # translation's border and cutout's square (DiffAugment: 0)

    def __post_init__(self) -> None:
        check(isinstance(self.policy, str), "augment.policy", self.policy, "a string")
        names = [n.strip() for n in self.policy.split(",")] if self.policy.strip() else []
        allowed = f"'' (off) or a comma-separated subset of {', '.join(AUGMENT_POLICIES)}"
        check(all(n in AUGMENT_POLICIES for n in names) and len(set(names)) == len(names), "augment.policy",
              self.policy, allowed)
        object.__setattr__(self, "policy", ",".join(n for n in AUGMENT_POLICIES if n in names))  # canonical
        check(self.p is None or (_is_number(self.p) and 0 <= self.p <= 1), "augment.p", self.p,
              "a number in [0, 1], or unset")
        check(isinstance(self.adaptive, bool), "augment.adaptive", self.adaptive, "true | false")
        check(not self.adaptive or bool(names), "augment.adaptive", self.adaptive,
              "true only together with a non-empty augment.policy")
        check(_is_number(self.target) and 0 < self.target < 1, "augment.target", self.target,
              "a number in (0, 1)")
        check(_is_number(self.speed_kimg) and 0 < self.speed_kimg <= MAX_KIMG, "augment.speed_kimg", self.speed_kimg,
              "a number in (0, 1e6] (kimg)")
        check(_is_number(self.fill) and -1 <= self.fill <= 1, "augment.fill", self.fill, "a number in [-1, 1]")

    @property
    def initial_p(self) -> float:
        """p at step 0: the configured p, else 1.0 (or 0.0 with adaptive, as ADA starts)."""
        return float(self.p) if self.p is not None else (0.0 if self.adaptive else 1.0)


@dataclass(frozen=True)
class GANConfig:
    """The whole engine configuration: data, networks, loss, one optimiser each for G and D, training,
    and D's input augmentation."""

    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    g_optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    d_optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check(not self.augment.policy or self.data.is_image, "augment.policy", self.augment.policy,
              f"'' for vector data (data.shape = {list(self.data.shape)}); DiffAugment transforms images "
              f"(C, H, W)")
        if self.network.arch in ("dcgan", "r3gan"):
            arch = self.network.arch
            check(self.data.is_image, "network.arch", arch,
                  f"mlp for vector data (data.shape has one entry); {arch} needs (C, H, W)")
            c, h, w = self.data.shape
            sizes = (8, 16, 32, 64, 128) if arch == "dcgan" else (8, 16, 32, 64, 128, 256)
            check(h == w and h in sizes, "data.shape", self.data.shape,
                  f"square images of {', '.join(map(str, sizes[:-1]))} or {sizes[-1]} px for network.arch = {arch}")
        if self.network.arch == "r3gan":
            n = self.network
            for name in ("g_width", "d_width"):
                widths = r3gan_widths(getattr(n, name), self.data.shape[1])
                bad = [w for w in widths if (w * EXPANSION) % n.group_width]
                check(not bad, f"network.{name}", getattr(n, name),
                      f"a width whose stages ({widths}) times {EXPANSION} are multiples of network.group_width = "
                      f"{n.group_width}")
        if self.network.conditional:
            check(self.data.num_classes >= 2, "network.conditional", self.network.conditional,
                  "true only with data.num_classes >= 2 (labelled data); set data.num_classes (digits: 10)")
            check(self.network.d_pack == 1, "network.d_pack", self.network.d_pack,
                  "1 with network.conditional = true (a packed D would judge several labels at once)")
        check(self.train.global_batch_size % self.network.d_pack == 0, "train.global_batch_size",
              self.train.global_batch_size, f"a multiple of network.d_pack = {self.network.d_pack}")
        if self.loss.kind == "wasserstein" and self.loss.gp_lambda == 0 and not self.network.d_spectral_norm:
            raise ConfigError(
                "loss.kind: got 'wasserstein' with loss.gp_lambda = 0 and no spectral norm; allowed: set "
                "loss.gp_lambda > 0 (WGAN-GP, e.g. 10) or network.d_spectral_norm = true to keep D Lipschitz")

    # -- conversion -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GANConfig":
        return from_dict(cls, d)

    def with_overrides(self, overrides: dict[str, Any]) -> "GANConfig":
        """Return a copy with dotted-path overrides applied, e.g. {"train.total_steps": 10}."""
        d = self.to_dict()
        for path, value in overrides.items():
            parts = path.split(".")
            node = d
            for i, p in enumerate(parts[:-1]):
                if not isinstance(node.get(p), dict):
                    sections = [k for k, v in node.items() if isinstance(v, dict)]
                    raise ConfigError(f"{'.'.join(parts[:i + 1])}: unknown section; allowed: "
                                      f"{', '.join(sections) if sections else 'none (it is a field)'}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"{path}: unknown field; allowed: {', '.join(sorted(node))}")
            node[parts[-1]] = value
        return GANConfig.from_dict(d)

    def with_label_counts(self, counts: Sequence[int]) -> "GANConfig":
        """A class-conditional config whose fakes follow the data's label distribution p(c): ``counts[k]``
        (examples of class k, as gan_core.data.label_counts or a staged manifest's ``label_counts``) become
        ``data.class_frequencies``, classes beyond ``counts`` at 0. Unchanged when unconditional, when
        data.class_frequencies is set already, or without counts (a dataset staged without them: uniform).
        The one place the rule lives: ``python -m gan_core`` and the pipeline's launch both call it."""
        if not self.network.conditional or self.data.class_frequencies or not len(counts):
            return self
        padded = [float(n) for n in counts] + [0.0] * (self.data.num_classes - len(counts))
        return self.with_overrides({"data.class_frequencies": padded})


MAX_CONFIG_DEPTH = 4  # tables and lists inside a config value: no field needs more than a list of numbers


def check_depth(value: Any, where: str, max_depth: int = MAX_CONFIG_DEPTH) -> None:
    """ConfigError naming ``where`` when ``value`` (parsed TOML or JSON) nests tables or lists deeper than
    ``max_depth``. Iterative: a hostile depth cannot exhaust the stack here."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if depth >= max_depth:
                raise ConfigError(f"{where}: nested deeper than {max_depth} levels of tables and lists; allowed: "
                                  f"at most {max_depth} (no field needs more)")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`FIELD=VALUE` strings (from --set); values are parsed as JSON when they can be (numbers,
    booleans, lists), else kept as strings. Raises ConfigError for a malformed item or a value nested
    deeper than MAX_CONFIG_DEPTH (JSON's parser recurses: thousands of '[' exhausted the stack)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. train.global_batch_size=256")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except RecursionError:
            raise ConfigError(f"--set {key.strip()}: nested deeper than Python's parser goes; allowed: at most "
                              f"{MAX_CONFIG_DEPTH} levels") from None
        check_depth(value, f"--set {key.strip()}", MAX_CONFIG_DEPTH - 1)  # the value sits inside its section
        out[key.strip()] = value
    return out


def to_plain(obj: Any) -> Any:
    """A config dataclass (tree) as plain dicts and lists: what TOML and JSON hold."""
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true | false"}


def _coerce(typ: Any, value: Any, where: str) -> Any:
    """`value` as a field of type `typ` (str, int, float, bool, Optional[...], tuple[...] or a nested
    config dataclass); ConfigError naming `where` otherwise. Only lossless conversions: int -> float,
    list -> tuple."""
    if get_origin(typ) in (Union, UnionType):
        args = [a for a in get_args(typ) if a is not type(None)]
        if value is None and len(args) < len(get_args(typ)):
            return None
        typ = args[0]
    if is_dataclass(typ):
        return from_dict(typ, value, where + ".")
    if get_origin(typ) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r}; allowed: a list")
        return tuple(value)
    if typ is float and _is_int(value):
        return float(value)
    if typ in _TYPE_NAMES and (not isinstance(value, typ) or (typ is not bool and isinstance(value, bool))):
        raise ConfigError(f"{where}: got {value!r}; allowed: {_TYPE_NAMES[typ]}")
    return value


def from_dict(cls: type, d: Any, prefix: str = "") -> Any:
    """Build the config dataclass `cls` from a table (TOML, JSON, --set values), recursively.

    The one validation mechanism of every configuration section in the project (the engine's, the
    cluster's and the pipeline's): unknown fields and wrong types are refused here, field rules in each
    class's ``__post_init__``; every ConfigError names the dotted field (``prefix`` + name), the value
    and what is allowed. Missing fields take the class defaults.
    """
    where = prefix.rstrip(".") or "config"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: got {d!r}; allowed: a table of fields")
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = [k for k in d if k not in known]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; allowed: {', '.join(known)}")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        # a section does not know where it sits (OptimizerConfig is G's or D's): prefix its bare names
        if prefix and not msg.startswith(prefix) and msg.split(":")[0] in known:
            msg = prefix + msg
        raise ConfigError(msg) from None


# -- presets ----------------------------------------------------------------------------------------

def preset_tiny() -> GANConfig:
    """Seconds on a laptop: the tests' configuration (ring8, small MLPs)."""
    return GANConfig(
        data=DataConfig(name="ring8", shape=(2,), num_examples=2048),
        network=NetworkConfig(arch="mlp", z_dim=8, g_width=32, d_width=32, g_depth=2, d_depth=2),
        train=TrainConfig(global_batch_size=32, total_steps=20, tick_every_steps=5, checkpoint_every_steps=10,
                          ema_kimg=0.5),
    )


def preset_ring8() -> GANConfig:
    """8 Gaussians on a circle (radius 1, sigma 0.01): the classic mode-collapse benchmark.

    NOTE: D learns 5x faster than G (TTUR, Heusel et al. 2017); with equal rates D could not resolve the
    0.01-wide modes in the time budget and G spread along the circle. The samples that miss a mode lie on
    bridges between modes (G is continuous and z connected); they thin out only with training at a falling
    rate, so 12000 steps end in a cosine ramp-down over the last 40%: measured (2,500 G_ema samples) 8/8
    modes, 96.2% high quality, reverse KL 0.012, 184 s on one CPU thread (seed 0); 8/8, 96.2%, reverse KL
    0.013 (seed 1). 8000 steps without a ramp-down gave 92.1%, with one over 30% 94.1%. An EMA half-life of 5
    kimg smooths G's late wobbles. Top-k G updates (Sinha et al. 2020, nu 0.5) kept the modes balanced but
    doubled the bridge mass (87.1%).
    """
    return GANConfig(
        data=DataConfig(name="ring8", shape=(2,), num_examples=50_000),
        network=NetworkConfig(arch="mlp", z_dim=4, g_width=256, d_width=256, g_depth=3, d_depth=3,
                              g_norm="none", d_norm="none"),
        loss=LossConfig(kind="non_saturating"),
        g_optim=OptimizerConfig(lr=2e-4, beta1=0.5, beta2=0.99),
        d_optim=OptimizerConfig(lr=1e-3, beta1=0.5, beta2=0.99),
        train=TrainConfig(global_batch_size=256, total_steps=12_000, lr_rampdown=0.4, tick_every_steps=500,
                          checkpoint_every_steps=2000, ema_kimg=5.0),
    )


def preset_grid25() -> GANConfig:
    """25 Gaussians on a 5x5 grid (spacing 2, sigma 0.05): 25 narrow modes, far apart.

    NOTE: the ring8 recipe covered only 15-17 modes: as D sharpened, G dropped modes it could no longer feel.
    Here an R1 penalty decaying from 1 to 0.003 keeps D smooth early, so G's gradient reaches every mode, and
    sharp late, so the modes become narrow; PacGAN pairs (d_pack 2, Lin et al. 2018) let D see a lack of
    diversity; a cosine ramp-down over the last 50% of 16000 steps: the samples off the modes (bridges
    between them, G being continuous and z connected) thin out while the rates fall. Against the bridges: a
    fourth hidden layer in G (sharper transitions between modes) and D learning 2x faster than G (TTUR,
    Heusel et al. 2017), so D finds the bridges. Measured (2,500 G_ema samples, one CPU thread): 25/25 modes,
    95.4% high quality, reverse KL 0.010, 269 s (seed 0); 25/25, 95.6%, reverse KL 0.007, 271 s (seed 1).
    The same with equal rates 1e-3: 96.5% / 94.7% (seeds 0 / 1); D at 3e-3: 94.2% (seed 0); z of 8 (equal
    rates): 93.6% / 95.9%; G of depth 3 (equal rates): 94.6% / 93.9%; depth 5 (14000 steps): 81.6% (seed 1);
    lazy R1 (r1_interval 16, 20000 steps, 293-345 s): 91.5% / 96.0%, with a wild mid-run. 12000 steps
    with a 30% ramp-down gave 90.6% (depth 3); 15-17 modes without R1 and packing. Not better at depth 3:
    rates 1.5e-3, a 40% ramp-down, R1 ending at 0.001, EMA half-lives of 5-50 kimg (94.0-94.7%); top-k G
    updates (Sinha et al. 2020) balanced the modes but lowered HQ (90.0% / 83.2%). HQ still rises in the last
    2000 steps; the margin over 95% is thin (0.4-0.6 points).
    """
    return GANConfig(
        data=DataConfig(name="grid25", shape=(2,), num_examples=50_000),
        network=NetworkConfig(arch="mlp", z_dim=4, g_width=256, d_width=256, g_depth=4, d_depth=3,
                              g_norm="none", d_norm="none", d_pack=2),
        loss=LossConfig(kind="non_saturating", r1_gamma=1.0, r1_gamma_final=0.003),
        g_optim=OptimizerConfig(lr=1e-3, beta1=0.5, beta2=0.99),
        d_optim=OptimizerConfig(lr=2e-3, beta1=0.5, beta2=0.99),
        train=TrainConfig(global_batch_size=256, total_steps=16_000, lr_rampdown=0.5, tick_every_steps=500,
                          checkpoint_every_steps=2000, ema_kimg=1.0),
    )


def preset_digits() -> GANConfig:
    """scikit-learn's 8x8 handwritten digits with small DCGAN nets: the default (about 2 min on one CPU
    thread, 80 s on two; measured FD 23.8 with one thread, 24.1 with two, in digits-classifier features
    against a real-vs-real floor of 10.3, 10/10 classes). Shorter schedules miss the 3x-floor target:
    FD 32.1 at 1500 steps, 39.3 at 1200, 35.2 at 1000 with doubled learning rates.
    Lazy R1 (r1_interval 16, StyleGAN2's): the same FD/floor curve per step (2.08 at 2000 steps against
    2.18 with R1 on every D update), 22% less training time to FD/floor <= 2.5 (benchmarks B9)."""
    return GANConfig(
        data=DataConfig(name="digits", shape=(1, 8, 8), num_classes=10),
        network=NetworkConfig(arch="dcgan", z_dim=32, g_width=32, d_width=32, g_norm="batch", d_norm="none"),
        loss=LossConfig(kind="non_saturating", r1_gamma=0.1, r1_interval=16),
        g_optim=OptimizerConfig(lr=2e-4, beta1=0.5, beta2=0.99),
        d_optim=OptimizerConfig(lr=2e-4, beta1=0.5, beta2=0.99),
        train=TrainConfig(global_batch_size=64, total_steps=2000, tick_every_steps=200,
                          checkpoint_every_steps=1000, ema_kimg=5.0),
    )


def preset_digits_cond() -> GANConfig:
    """``digits``, class-conditional (Mirza & Osindero 2014): G takes a class embedding beside z and
    conditional batch norm, D is a projection discriminator (Miyato & Koyama 2018); 4,000 steps.

    NOTE: measured with one CPU thread (python -m gan_core --preset digits-cond, then python -m
    gan_core.evaluate), fake labels drawn with digits' class frequencies: FD 12.09 and 10.29 (seeds 0, 1)
    against a real-vs-real floor of 10.63, and the digits classifier reads the class asked for in >= 91.1%
    and >= 94.4% of every class's samples (uniform fake labels: FD 9.40 / 8.70, >= 93.3% / 95.5%). At the
    unconditional preset's 2,000 steps the worst class (9) was read correctly in only 85-93%.
    """
    base = preset_digits()
    return replace(base, network=replace(base.network, conditional=True),
                   train=replace(base.train, total_steps=4000))


def preset_dcgan32() -> GANConfig:
    """32x32 RGB images (CIFAR-10 sized) with DCGAN nets (Radford et al. 2015); meant for a GPU: 3.8 M
    (G) and 2.8 M (D) parameters, batch 128, 50k steps (6.4 Mimg). On CPUs use ``dcgan32-cpu``."""
    return GANConfig(
        data=DataConfig(name="images", shape=(3, 32, 32)),
        network=NetworkConfig(arch="dcgan", z_dim=128, g_width=64, d_width=64, g_norm="batch", d_norm="none",
                              d_spectral_norm=True),
        loss=LossConfig(kind="non_saturating", r1_gamma=0.1),
        g_optim=OptimizerConfig(lr=2e-4, beta1=0.5, beta2=0.99),
        d_optim=OptimizerConfig(lr=2e-4, beta1=0.5, beta2=0.99),
        train=TrainConfig(global_batch_size=128, total_steps=50_000, tick_every_steps=500,
                          checkpoint_every_steps=2500, ema_kimg=10.0),
    )


def preset_dcgan32_cpu() -> GANConfig:
    """``dcgan32`` sized for a few CPU cores: quarter-width nets (0.30 M and 0.17 M parameters), batch 32,
    2,000 steps (64 kimg; minutes on 2 cores). Recognisable colours and layout, not a converged model."""
    base = preset_dcgan32()
    return replace(base, network=replace(base.network, z_dim=64, g_width=16, d_width=16),
                   train=replace(base.train, global_batch_size=32, total_steps=2000, tick_every_steps=200,
                                 checkpoint_every_steps=1000, ema_kimg=1.0))


def preset_dcgan64() -> GANConfig:
    """64x64 RGB image folders with DCGAN nets; meant for GPUs (bf16 autocast, channels_last). ``dcgan32``
    one resolution up: z of 100 (Radford et al. 2015), R1 0.2, ticks every 200 steps."""
    base = preset_dcgan32()
    return replace(base, data=replace(base.data, shape=(3, 64, 64)), network=replace(base.network, z_dim=100),
                   loss=replace(base.loss, r1_gamma=0.2),
                   train=replace(base.train, tick_every_steps=200, checkpoint_every_steps=2000))


def preset_stacked() -> GANConfig:
    """``digits``' DCGAN nets and loss on stacked digits (gan_core.data.stacked_digits: 1000 modes, 3x8x8):
    the baseline of the 1000-mode benchmark (the StackedMNIST protocol, evaluated by gan_core.evaluate)."""
    base = preset_digits()
    return replace(base, data=DataConfig(name="stacked-digits", shape=(3, 8, 8), num_examples=50_000))


def preset_r3gan_digits() -> GANConfig:
    """R3GAN (Huang et al. 2024) sized for one CPU thread on digits: RpGAN + R1 + R2 (gamma 2, lazy every
    16 D updates), Adam (0, 0.9) at 3e-3, normalisation-free ResNets of one block per stage, 32 channels,
    groups of 16 (gan_core.r3gan).

    NOTE: measured with one CPU thread, seed 0, FD/floor of G_ema after 1,000 steps (python -m gan_core
    --preset r3gan-digits --steps 1000 --set ..., then python -m gan_core.evaluate): R3GAN's CIFAR-10
    optimiser settings (lr 2e-4, beta2 0.99, gamma 0.1) 24.2; lr 1e-3 10.3; lr 2e-3 with gamma 1 8.5; and
    beta2 0.9 6.8; lr 3e-3 with gamma 2 5.6 (this preset); lr 5e-3 with gamma 4 8.6; 64 channels 11.9; two
    blocks per stage 9.2. DCGAN's digits preset with the same RpGAN loss: 4.7. The fix-up network starts as
    a linear map of z and learns slowly at small learning rates; a step costs about 2.7x a DCGAN step.
    With this preset's settings, seed 0: 5.61, 2.06, 1.25, 1.08 after 1,000, 2,000, 3,000 and 4,000 steps
    (4,000 steps, 256 kimg)."""
    return GANConfig(
        data=DataConfig(name="digits", shape=(1, 8, 8), num_classes=10),
        network=NetworkConfig(arch="r3gan", z_dim=32, g_width=32, d_width=32, blocks_per_stage=1, group_width=16),
        loss=LossConfig(kind="rpgan", r1_gamma=2.0, r2_gamma=2.0, r1_interval=16),
        g_optim=OptimizerConfig(lr=3e-3, beta1=0.0, beta2=0.9),
        d_optim=OptimizerConfig(lr=3e-3, beta1=0.0, beta2=0.9),
        train=TrainConfig(global_batch_size=64, total_steps=4000, tick_every_steps=200,
                          checkpoint_every_steps=1000, ema_kimg=5.0),
    )


def preset_r3gan_stacked() -> GANConfig:
    """``r3gan-digits`` on stacked digits (1000 modes, 3x8x8): R3GAN's StackedMNIST experiment in small."""
    base = preset_r3gan_digits()
    return replace(base, data=DataConfig(name="stacked-digits", shape=(3, 8, 8), num_examples=50_000))


def preset_r3gan32() -> GANConfig:
    """R3GAN's CIFAR-10 configuration (Huang et al. 2024; R3GAN's train.py, preset CIFAR10): 32x32 RGB,
    four stages of 768 channels with 2 blocks each, groups of 16 (96 of 1536 inner channels), z of 64,
    20.7 M (G) and 20.7 M (D) parameters, batch 512, RpGAN + R1 + R2 with gamma 0.05 -> 0.005, Adam
    (0, 0.99) at 2e-4, bf16 autocast. Meant for GPUs.

    NOTE: R3GAN ramps lr (2e-4 -> 5e-5), beta2 (0.9 -> 0.99), the EMA half-life and the augmentation
    probability by cosine over 20 Mimg; here the learning rates are constant until train.lr_rampdown,
    gamma decays geometrically (loss.r1_gamma_final) and the EMA half-life ramps up as in StyleGAN2-ADA."""
    return GANConfig(
        data=DataConfig(name="images", shape=(3, 32, 32)),
        network=NetworkConfig(arch="r3gan", z_dim=64, g_width=768, d_width=768, blocks_per_stage=2, group_width=16),
        loss=LossConfig(kind="rpgan", r1_gamma=0.05, r1_gamma_final=0.005, r2_gamma=0.05),
        g_optim=OptimizerConfig(lr=2e-4, beta1=0.0, beta2=0.99),
        d_optim=OptimizerConfig(lr=2e-4, beta1=0.0, beta2=0.99),
        train=TrainConfig(global_batch_size=512, total_steps=50_000, tick_every_steps=500,
                          checkpoint_every_steps=2500, ema_kimg=500.0, amp="bf16", lr_rampdown=0.5),
    )


def preset_r3gan64() -> GANConfig:
    """R3GAN's FFHQ-64 configuration: ``r3gan32`` one octave up (384 channels at 64 px), gamma 2 -> 0.2."""
    base = preset_r3gan32()
    return replace(base, data=replace(base.data, shape=(3, 64, 64)),
                   loss=replace(base.loss, r1_gamma=2.0, r1_gamma_final=0.2, r2_gamma=2.0),
                   train=replace(base.train, global_batch_size=256, ema_kimg=500.0))


PRESETS = {
    "tiny": preset_tiny,
    "digits": preset_digits,
    "digits-cond": preset_digits_cond,
    "ring8": preset_ring8,
    "grid25": preset_grid25,
    "dcgan32": preset_dcgan32,
    "dcgan32-cpu": preset_dcgan32_cpu,
    "dcgan64": preset_dcgan64,
    "stacked": preset_stacked,
    "r3gan-digits": preset_r3gan_digits,
    "r3gan-stacked": preset_r3gan_stacked,
    "r3gan32": preset_r3gan32,
    "r3gan64": preset_r3gan64,
}


def get_preset(name: str) -> GANConfig:
    if name not in PRESETS:
        raise ConfigError(f"preset: got {name!r}; allowed: {' | '.join(PRESETS)}")
    return PRESETS[name]()


__all__ = [
    "ConfigError", "DataConfig", "NetworkConfig", "LossConfig", "OptimizerConfig", "TrainConfig", "AugmentConfig",
    "GANConfig",
    "PRESETS", "get_preset", "replace", "check", "from_dict", "to_plain", "parse_overrides",
]
