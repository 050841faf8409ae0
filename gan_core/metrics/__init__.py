"""Distribution metrics for generators, each generic over a feature extractor and each citing its paper.

- `frechet_distance` (Heusel et al. 2017), `kernel_inception_distance` (Bińkowski et al. 2018),
  `precision_recall` (Kynkäänniemi et al. 2019, k = 3), `mode_coverage` (VEEGAN / PacGAN protocol),
  `class_coverage` (classes produced, KL to the data's class histogram).
- Feature extractors: `IdentityFeatures`, `DigitsClassifierFeatures` (+ `load_or_train_digits_classifier`),
  `TorchScriptFeatures` (Inception or any network from a user-supplied file).
"""

from .coverage import class_coverage, mode_coverage
from .digits import DigitsClassifierFeatures, DigitsCNN, load_or_train_digits_classifier, train_digits_classifier
from .features import FeatureExtractor, IdentityFeatures, TorchScriptFeatures, extract_features
from .frechet import frechet_distance, frechet_distance_from_statistics, gaussian_statistics
from .kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from .precision_recall import knn_radii, precision_recall

__all__ = [
    "class_coverage", "mode_coverage", "DigitsClassifierFeatures", "DigitsCNN", "load_or_train_digits_classifier",
    "train_digits_classifier", "FeatureExtractor", "IdentityFeatures", "TorchScriptFeatures", "extract_features",
    "frechet_distance", "frechet_distance_from_statistics", "gaussian_statistics", "kernel_inception_distance",
    "mmd2_unbiased", "polynomial_kernel", "knn_radii", "precision_recall",
]
