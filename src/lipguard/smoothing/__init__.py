"""Randomized smoothing: certified classifiers, regressors and reward models (SPEC E1–E3).

- :class:`SmoothedClassifier` — Cohen et al.'s PREDICT and CERTIFY, exactly, batched over inputs
  and noise samples, with optional sequential early stopping; isotropic or fixed anisotropic
  noise (ellipsoidal certificates).
- :class:`SmoothedRegressor` — bounded outputs (rewards) with certified two-sided bounds under
  perturbation (Salman et al.'s lemma, Hoeffding / empirical-Bernstein estimation).
- :class:`SmoothedQuantile` — percentile (median) smoothing for unbounded outputs.
- :func:`certify_preference` — radius within which a smoothed preference cannot flip.
- :func:`certified_accuracy`, :func:`plot_certified_accuracy` — dataset-level curves.

Every certificate holds with probability at least ``1 - alpha`` over the Monte-Carlo sampling.
See ``docs/smoothing.md``.
"""

from lipguard.smoothing.classifier import ABSTAIN, ClassifierCertificates, SmoothedClassifier
from lipguard.smoothing.curves import (
    CertifiedAccuracyCurve,
    certified_accuracy,
    plot_certified_accuracy,
)
from lipguard.smoothing.noise import (
    DCTNoise,
    DiagonalNoise,
    GaussianNoise,
    IsotropicNoise,
    LowRankNoise,
    PerInputNoiseError,
)
from lipguard.smoothing.regression import (
    QuantileCertificates,
    RegressionCertificates,
    SmoothedQuantile,
    SmoothedRegressor,
    certify_preference,
)

__all__ = [
    "ABSTAIN",
    "CertifiedAccuracyCurve",
    "ClassifierCertificates",
    "DCTNoise",
    "DiagonalNoise",
    "GaussianNoise",
    "IsotropicNoise",
    "LowRankNoise",
    "PerInputNoiseError",
    "QuantileCertificates",
    "RegressionCertificates",
    "SmoothedClassifier",
    "SmoothedQuantile",
    "SmoothedRegressor",
    "certified_accuracy",
    "certify_preference",
    "plot_certified_accuracy",
]
