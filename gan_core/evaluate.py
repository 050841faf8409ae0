"""Evaluate a generator (G_ema) against real data, with the real-vs-real floor beside every metric.

    python -m gan_core.evaluate --checkpoint runs/digits/checkpoints/checkpoint-000003000

The real data are split into two disjoint halves of equal size: a reference half R and a held-back
half H. Each metric is computed for G_ema's samples against R, and for H against R: the *floor*, what
a perfect generator would score with the same number of samples. FD is biased upwards for finite
samples, so only the distance to its floor means anything.

Feature space, by data:

- the FID Inception-v3 network when the user gives a local copy of its weights (``inception=``, NVIDIA's
  TorchScript ``inception-2015-12-05.pt``): the distance is then the standard FID (Heusel et al. 2017),
  computed by torchmetrics and reported as ``fid`` (``floor/fid`` beside it), comparable with papers;
- otherwise ``fd`` in: the digits classifier's features (`gan_core.metrics.digits`) for ``digits``; any
  user-supplied TorchScript network (``feature_network=``); for other images `RandomConvFeatures`
  (``random_conv256``, random-network embeddings, fast at any resolution; a line says that no Inception
  weights were given and names it); raw values for vectors (2-D mixtures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, load_generator
from .config import GANConfig
from .data import BUILTIN_DATASETS, MIXTURES, STACKED_DIGITS, load_builtin, mode_coverage
from .errors import run_command
from .metrics import (STACKED_PROTOCOL_SAMPLES, DigitsClassifierFeatures, FIDInceptionFeatures, IdentityFeatures,
                      RandomConvFeatures, StackedDigitsFeatures, TorchScriptFeatures, class_coverage,
                      extract_features, frechet_distance, frechet_inception_distances, kernel_inception_distance,
                      load_or_train_digits_classifier, mode_statistics, precision_recall, stacked_modes)
from .metrics.features import FeatureExtractor, FeatureNetworkError
from .rng import derive_seed
from .sampling import generate, labels_for_range, num_classes_of
from .training import check_device

PRIMARY_METRIC = "fd"  # lower is better; the registry compares generators on it
FID_METRIC = "fid"  # the primary metric instead, when the distance is FID proper (Inception weights given)
RANDOM_FEATURES_SEED = 0  # RandomConvFeatures' weights: one fixed network, so values compare between runs
CACHE_ENV = "GANPIPE_CACHE_DIR"


def default_cache_dir(home: str | Path | None = None) -> Path:
    """Where what can be rebuilt (the digits classifier's weights) is cached: $GANPIPE_CACHE_DIR, else
    ``<home>/cache`` for a caller with a home folder (the pipeline's local home, infra.base.settings), else
    ~/.cache/ganpipe (the engine run alone: ``python -m gan_core``). The one rule for the cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(home) / "cache" if home is not None else Path.home() / ".cache" / "ganpipe"


def split_real(real_x: np.ndarray, real_labels: np.ndarray | None, seed: int = 0):
    """Two disjoint halves of equal size, from a seeded permutation: (R_x, R_y, H_x, H_y)."""
    perm = np.random.default_rng(derive_seed("eval-split", seed)).permutation(len(real_x))
    half = len(real_x) // 2
    r, h = perm[:half], perm[half:2 * half]
    labels = None if real_labels is None else np.asarray(real_labels)
    return (real_x[r], None if labels is None else labels[r], real_x[h], None if labels is None else labels[h])


def primary_metric(metrics: dict[str, float]) -> str:
    """The metric the registry compares generators on: ``fid`` when present, else ``fd`` (both lower-better)."""
    return FID_METRIC if FID_METRIC in metrics else PRIMARY_METRIC


def feature_space(config: GANConfig, *, inception: str | Path | None = None,
                  feature_network: str | Path | None = None, cache_dir: str | Path | None = None,
                  device: str | torch.device = "cpu") -> tuple[FeatureExtractor, DigitsClassifierFeatures | None]:
    """(feature extractor, classifier for class coverage or None) for a configuration's data.

    ``inception``: a local FID Inception weights file (`FIDInceptionFeatures`); ``feature_network``: any
    other TorchScript network (`TorchScriptFeatures`); at most one of them. Without either: the digits
    classifier for ``digits`` (which also gives class coverage), its per-channel features for
    ``stacked-digits`` (whose classifier gives the 1000 modes), `RandomConvFeatures` for other images,
    the raw values for vectors. Raises ValueError for both given, FileNotFoundError for a missing file.
    """
    if inception is not None and feature_network is not None:
        raise ValueError("give either the FID Inception weights or another feature network, not both")
    clf = None
    if config.data.name in ("digits", STACKED_DIGITS):
        clf = DigitsClassifierFeatures(load_or_train_digits_classifier(cache_dir or default_cache_dir()).to(device))
    if config.data.name == STACKED_DIGITS and inception is None and feature_network is None:
        return StackedDigitsFeatures(clf), clf  # each channel read by the digits classifier
    if inception is not None:
        return FIDInceptionFeatures(inception, device=device), clf
    if feature_network is not None:
        return TorchScriptFeatures(feature_network, device=device), clf
    if clf is not None:
        return clf, clf
    if config.data.is_image:
        return RandomConvFeatures(seed=RANDOM_FEATURES_SEED).to(device), None
    return IdentityFeatures(), None


def no_inception_note(extractor: FeatureExtractor) -> str | None:
    """The line that says no FID Inception weights were given and what the distance uses instead (None
    when FID proper is computed, or for vectors, where FID has no meaning)."""
    if isinstance(extractor, (FIDInceptionFeatures, IdentityFeatures)):
        return None
    return (f"no FID Inception weights given (evaluation.inception or GANPIPE_FID_INCEPTION: a local "
            f"inception-2015-12-05.pt): 'fd' uses {extractor.name} features instead, comparable between "
            f"runs here, not with papers' FID")


def distribution_metrics(reference: torch.Tensor, other: torch.Tensor, *, kid_subset_size: int = 1000,
                         kid_num_subsets: int = 100, k: int = 3, seed: int = 0) -> dict[str, float]:
    """KID (mean and std over subsets) and precision/recall of ``other`` against ``reference``, both
    already in feature space (N, d). The Fréchet distance is computed beside it (``fd`` or ``fid``)."""
    kid, kid_std = kernel_inception_distance(other.numpy(), reference.numpy(), subset_size=kid_subset_size,
                                             num_subsets=kid_num_subsets, seed=seed)
    return {"kid": kid, "kid_std": kid_std, **precision_recall(reference, other, k=k)}


def evaluate_generator(G: nn.Module, config: GANConfig, real_x: np.ndarray | torch.Tensor,
                       real_labels: np.ndarray | None = None, *, num_samples: int | None = None, seed: int = 0,
                       feature_extractor: FeatureExtractor | None = None,
                       classifier: DigitsClassifierFeatures | None = None, inception: str | Path | None = None,
                       feature_network: str | Path | None = None, cache_dir: str | Path | None = None,
                       device: str | torch.device = "cpu", kid_subset_size: int | None = None,
                       kid_num_subsets: int = 100, progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Every metric for ``G`` (use G_ema) and, under ``floor/<name>``, the same metric for real data.

    ``real_x``: real samples in the generator's value range (e.g. [-1, 1] images), ``real_labels``
    optional class labels. ``num_samples`` generated samples (seed-addressed with ``seed``) are compared
    with as many samples of the reference half of the real data; the default and maximum is the half's
    size, further capped at 2,500 for the 2-D mixtures (their protocol) and 10,000 otherwise. The feature
    space is ``feature_extractor``, else `feature_space` (``inception``, ``feature_network``). ``progress``
    receives one line per phase (e.g. ``print``). Returns a flat dict of floats, e.g. ``fd`` (``fid``
    instead when the extractor is `FIDInceptionFeatures`), ``floor/fd``, ``kid``, ``precision``,
    ``recall``, ``classes_covered``, ``modes_covered``, plus ``num_samples`` and ``feature_dim``.
    Raises ValueError for fewer than 8 real samples, or real samples of another shape than the generator's.
    """
    say = progress or (lambda line: None)
    real_x = real_x.detach().cpu().numpy() if isinstance(real_x, torch.Tensor) else np.asarray(real_x)
    real_x = real_x.astype(np.float32)
    _check_real_shape(real_x, config)
    if feature_extractor is None:
        feature_extractor, default_classifier = feature_space(config, inception=inception,
                                                              feature_network=feature_network,
                                                              cache_dir=cache_dir, device=device)
        classifier = classifier if classifier is not None else default_classifier
    note = no_inception_note(feature_extractor)
    if note:
        say(f"evaluation: {note}")
    # 1. reference half R, held-back half H, and as many generated samples as H has
    ref_x, ref_y, held_x, held_y = split_real(real_x, real_labels, seed)
    cap = 2500 if config.data.name in MIXTURES else 10_000
    n = min(len(ref_x), num_samples or cap)
    if n < 4:
        raise ValueError(f"need at least 8 real samples to split into halves, got {len(real_x)}")
    # NOTE: all three sets have n samples: k-NN radii (precision/recall) and FD's bias depend on set size
    ref_x, ref_y = ref_x[:n], None if ref_y is None else ref_y[:n]
    held_x, held_y = held_x[:n], None if held_y is None else held_y[:n]
    t0 = time.perf_counter()
    fake_x = generate(G, n, seed=seed, device=device)
    say(f"evaluation: generated {n} samples in {time.perf_counter() - t0:.1f} s")
    # 2. features (and FID proper, by torchmetrics, which runs the Inception network itself)
    t0 = time.perf_counter()
    out: dict[str, float] = {"num_samples": float(n)}
    if isinstance(feature_extractor, FIDInceptionFeatures):
        fid, f_ref, f = frechet_inception_distances(feature_extractor, torch.from_numpy(ref_x),
                                                    {"fake": fake_x, "held": torch.from_numpy(held_x)})
        f_fake, f_held = f["fake"], f["held"]
        out.update({FID_METRIC: fid["fake"], f"floor/{FID_METRIC}": fid["held"]})
    else:
        f_ref = _varying(extract_features(feature_extractor, torch.from_numpy(ref_x)), feature_extractor)
        f_held = extract_features(feature_extractor, torch.from_numpy(held_x))
        f_fake = extract_features(feature_extractor, fake_x)
        out.update({"fd": frechet_distance(f_fake, f_ref), "floor/fd": frechet_distance(f_held, f_ref)})
    say(f"evaluation: {feature_extractor.name} features ({f_ref.shape[1]}-d) of 3 x {n} samples in "
        f"{time.perf_counter() - t0:.1f} s")
    # 3. KID and precision/recall in the same features
    t0 = time.perf_counter()
    # KID subsets of 1000 (Binkowski et al. 2018), or of half the samples when there are fewer than 2000,
    # so that the subsets differ and kid_std says how much the estimate moves
    subset = kid_subset_size or min(1000, max(2, n // 2))
    kid_kw = {"kid_subset_size": subset, "kid_num_subsets": kid_num_subsets, "seed": seed}
    out.update(distribution_metrics(f_ref, f_fake, **kid_kw))
    out.update({f"floor/{k}": v for k, v in distribution_metrics(f_ref, f_held, **kid_kw).items()})
    say(f"evaluation: KID, precision/recall in {time.perf_counter() - t0:.1f} s")
    # 4. coverage: modes of a mixture, classes of labelled data
    out.update(_coverage_metrics(G, config, classifier, real_x, fake_x, ref_x, ref_y, held_x, held_y, seed=seed,
                                 device=device, say=say))
    out["feature_dim"] = float(f_ref.shape[1])
    return out


def _coverage_metrics(G: nn.Module, config: GANConfig, classifier: DigitsClassifierFeatures | None,
                      real_x: np.ndarray, fake_x: torch.Tensor, ref_x: np.ndarray, ref_y: np.ndarray | None,
                      held_x: np.ndarray, held_y: np.ndarray | None, *, seed: int, device: str | torch.device,
                      say: Callable[[str], None]) -> dict[str, float]:
    """Mode collapse, measured (evaluate_generator's step 4), for the generated samples and, under
    ``floor/``, the held-back real ones: ``modes_covered`` / ``high_quality_fraction`` / ``mode_reverse_kl``
    of a 2-D mixture; the 1000 modes of stacked digits (`stacked_mode_metrics`); ``classes_covered`` /
    ``class_kl`` by ``classifier`` for labelled data, plus the conditional accuracy of a conditional G."""
    out: dict[str, float] = {}
    if config.data.name in MIXTURES:
        for prefix, x in (("", fake_x), ("floor/", held_x)):
            cov = mode_coverage(x, config.data.name)
            out.update({f"{prefix}modes_covered": cov["modes_covered"], f"{prefix}num_modes": cov["num_modes"],
                        f"{prefix}high_quality_fraction": cov["high_quality_fraction"],
                        f"{prefix}mode_reverse_kl": cov["reverse_kl"]})
    if classifier is not None and config.data.name == STACKED_DIGITS:
        out.update(stacked_mode_metrics(G, classifier, real_x, seed=seed, device=device, say=say))
    elif classifier is not None:
        hist_source = ref_y if ref_y is not None else classifier.predict(torch.from_numpy(ref_x))
        data_hist = np.bincount(np.asarray(hist_source, dtype=np.int64))
        for prefix, x in (("", fake_x), ("floor/", torch.from_numpy(held_x))):
            cov = class_coverage(classifier.predict(x), data_hist)
            out.update({f"{prefix}classes_covered": cov["classes_covered"],
                        f"{prefix}num_classes": cov["num_classes"], f"{prefix}class_kl": cov["class_kl"]})
        if held_y is not None:
            predicted = classifier.predict(torch.from_numpy(held_x))
            out["classifier_accuracy_on_held_back"] = float((predicted == held_y).mean())
        out.update(conditional_accuracy(classifier.predict(fake_x), len(fake_x), num_classes_of(G)))
    return out


def stacked_mode_metrics(G: nn.Module, classifier: DigitsClassifierFeatures, real_x: np.ndarray, *, seed: int = 0,
                         device: str | torch.device = "cpu", num_samples: int = STACKED_PROTOCOL_SAMPLES,
                         say: Callable[[str], None] = lambda line: None) -> dict[str, float]:
    """The StackedMNIST protocol (gan_core.metrics.stacked): ``modes_covered`` (of 1000) and ``mode_kl`` of
    ``num_samples`` G samples (seed-addressed), and under ``floor/`` the same for as many real stacked
    digits (all of ``real_x`` when it has fewer)."""
    t0 = time.perf_counter()
    fake = generate(G, num_samples, seed=seed, device=device)
    out = mode_statistics(stacked_modes(classifier, fake))
    real = torch.from_numpy(np.ascontiguousarray(real_x[:num_samples]))
    out.update({f"floor/{k}": v for k, v in mode_statistics(stacked_modes(classifier, real)).items()})
    say(f"evaluation: 1000-mode protocol on {num_samples} samples in {time.perf_counter() - t0:.1f} s")
    return out


def conditional_accuracy(predicted: np.ndarray, n: int, num_classes: int) -> dict[str, float]:
    """How often a class-conditional G's samples are classified as the class asked for (Odena et al. 2017's
    check): ``class_accuracy`` over the n class-balanced samples 0..n-1 (sample i asks for class
    i mod K), ``class_accuracy_min`` for the worst class and ``class_accuracy/<k>`` per class. Empty for
    an unconditional G (num_classes 0)."""
    if num_classes == 0:
        return {}
    asked = labels_for_range(0, n, num_classes).numpy()
    hit = np.asarray(predicted) == asked
    per_class = {k: float(hit[asked == k].mean()) for k in range(num_classes) if (asked == k).any()}
    return {"class_accuracy": float(hit.mean()), "class_accuracy_min": min(per_class.values()),
            **{f"class_accuracy/{k}": v for k, v in per_class.items()}}


def _check_real_shape(real_x: np.ndarray, config: GANConfig) -> None:
    """ValueError unless real_x is (N, *config.data.shape): e.g. ring8 points for a digits generator."""
    if real_x.ndim < 2 or tuple(real_x.shape[1:]) != tuple(config.data.shape):
        raise ValueError(f"real data of shape {tuple(real_x.shape)} for a generator of samples {tuple(config.data.shape)}; "
                         f"allowed: (N, {', '.join(map(str, config.data.shape))}): the dataset it was trained on")


def _varying(features: torch.Tensor, extractor: FeatureExtractor) -> torch.Tensor:
    """``features`` of the real samples, unless every dimension is constant (FeatureNetworkError: a distance
    between constant features is always 0 and means nothing)."""
    if len(features) > 1 and not (features.std(0) > 0).any():
        raise FeatureNetworkError(f"{getattr(extractor, 'path', extractor.name)}: returns the same features for all "
                                  f"{len(features)} real samples; a distance in them means nothing")
    return features


def format_report(result: dict[str, float], feature_name: str = "") -> str:
    """A table: metric | G_ema | real-vs-real floor."""
    names = [k for k in result if not k.startswith("floor/") and f"floor/{k}" in result]
    width = max([len(k) for k in result if not k.startswith("floor/")] + [6])
    lines = [f"{'metric':<{width}}  {'G_ema':>12}  {'floor (real vs real)':>20}"]
    for name in names:
        lines.append(f"{name:<{width}}  {result[name]:>12.6g}  {result['floor/' + name]:>20.6g}")
    extras = [k for k in result if not k.startswith("floor/") and k not in names]
    for name in extras:
        lines.append(f"{name:<{width}}  {result[name]:>12.6g}")
    if feature_name:
        lines.append(f"features: {feature_name}")
    return "\n".join(lines)


def load_real_data(config: GANConfig, real_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Real data for a checkpoint: a built-in dataset by name, or an .npy / .npz file (arrays ``x`` and
    optional ``label`` / ``labels``) in the generator's value range."""
    if real_path is not None:
        path = Path(real_path)
        if path.suffix == ".npy":
            return np.load(path), None
        with np.load(path) as z:
            labels = z["label"] if "label" in z else (z["labels"] if "labels" in z else None)
            return z["x"], labels
    if config.data.name in BUILTIN_DATASETS:
        return load_builtin(config.data.name, config.data.num_examples, config.data.data_seed + 1)
    raise ValueError(f"data.name = {config.data.name!r} is not built in ({' | '.join(BUILTIN_DATASETS)}); "
                     "pass the real data with --real FILE.npz")


def evaluate_checkpoint(directory: str | Path, *, num_samples: int | None = None, seed: int = 0,
                        real_path: str | Path | None = None, inception: str | Path | None = None,
                        feature_network: str | Path | None = None, cache_dir: str | Path | None = None,
                        device: str | torch.device = "cpu", verbose: bool = True, **kwargs: Any) -> dict[str, float]:
    """Load G_ema and the config from a checkpoint directory, evaluate (printing a line per phase and the
    table when ``verbose``), return the dict."""
    G, config = load_generator(directory, device)
    real_x, real_labels = load_real_data(config, real_path)
    extractor, classifier = feature_space(config, inception=inception, feature_network=feature_network,
                                          cache_dir=cache_dir, device=device)
    result = evaluate_generator(G, config, real_x, real_labels, num_samples=num_samples, seed=seed,
                                feature_extractor=extractor, classifier=classifier, device=device,
                                progress=print if verbose else None, **kwargs)
    if verbose:
        print(format_report(result, extractor.name))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gan_core.evaluate",
        description="Evaluate a checkpoint's G_ema: FD, KID, precision/recall, mode or class coverage, each with "
                    "the real-vs-real floor beside it. Nothing is downloaded.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (holds state.pt, config.json)")
    p.add_argument("--num-samples", type=int, help="generated samples (default: size of a real half, capped)")
    p.add_argument("--seed", type=int, default=0, help="sampling and split seed (default 0)")
    p.add_argument("--real", help="real data as .npy / .npz (x, label) for datasets that are not built in")
    p.add_argument("--inception", help="FID Inception weights: a local copy of NVIDIA's TorchScript "
                                       "inception-2015-12-05.pt; the distance is then FID, reported as 'fid' "
                                       "(never downloaded; without it images use random_conv256 features)")
    p.add_argument("--feature-network", help="any other TorchScript feature network file; reported as 'fd'")
    p.add_argument("--cache-dir", help=f"where the digits classifier is cached (default ${CACHE_ENV} or "
                                       "~/.cache/ganpipe)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m gan_core.evaluate`, ending at the shared error boundary (gan_core.errors)."""
    return run_command(lambda: _evaluate_command(argv), prog="python -m gan_core.evaluate")


def _evaluate_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_device(args.device)
        if args.json and (Path(args.json).is_dir() or not Path(args.json).parent.is_dir()):
            raise ValueError(f"--json: {args.json} is a folder or lies in a missing one; allowed: a file path "
                             "in an existing folder")
        result = evaluate_checkpoint(args.checkpoint, num_samples=args.num_samples, seed=args.seed,
                                     real_path=args.real, inception=args.inception,
                                     feature_network=args.feature_network,
                                     cache_dir=args.cache_dir, device=args.device)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps({k: (v if math.isfinite(v) else None) for k, v in result.items()},
                                              indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
