"""Distribution metrics for generators, each generic over a feature extractor and each citing its paper.

- `frechet_distance` (Heusel et al. 2017), `kernel_inception_distance` (Bińkowski et al. 2018),
  `precision_recall` (Kynkäänniemi et al. 2019, k = 3), `mode_coverage` (VEEGAN / PacGAN protocol),
  `class_coverage` (classes produced, KL to the data's class histogram), `stacked_modes` +
  `mode_statistics` (the 1000-mode StackedMNIST protocol on stacked digits).
- `frechet_inception_distances`: FID proper, by torchmetrics, with the user's Inception weights.
- Feature extractors: `IdentityFeatures`, `DigitsClassifierFeatures` (+ `load_or_train_digits_classifier`),
  `FIDInceptionFeatures` (NVIDIA's inception-2015-12-05.pt from a local file), `RandomConvFeatures`
  (random-network embeddings, the fallback for images), `TorchScriptFeatures` (any user-supplied network).
"""

from .coverage import class_coverage, covered_classes, mode_coverage
from .digits import DigitsClassifierFeatures, DigitsCNN, load_or_train_digits_classifier, train_digits_classifier
from .features import (FeatureExtractor, FIDInceptionFeatures, IdentityFeatures, RandomConvFeatures,
                       TorchScriptFeatures, extract_features)
from .frechet import (frechet_distance, frechet_distance_from_statistics, frechet_inception_distances,
                      gaussian_statistics)
from .kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from .precision_recall import knn_radii, precision_recall
from .stacked import STACKED_PROTOCOL_SAMPLES, StackedDigitsFeatures, mode_statistics, stacked_modes

__all__ = [
    "class_coverage", "covered_classes", "mode_coverage", "DigitsClassifierFeatures", "DigitsCNN", "load_or_train_digits_classifier",
    "train_digits_classifier", "FeatureExtractor", "IdentityFeatures", "TorchScriptFeatures", "extract_features",
    "FIDInceptionFeatures", "RandomConvFeatures", "frechet_inception_distances", "frechet_distance", "frechet_distance_from_statistics", "gaussian_statistics", "kernel_inception_distance",
    "mmd2_unbiased", "polynomial_kernel", "knn_radii", "precision_recall", "STACKED_PROTOCOL_SAMPLES", "StackedDigitsFeatures",
    "mode_statistics", "stacked_modes",
]
