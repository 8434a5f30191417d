"""Robust training: regularizers (incl. AAJR), tasks, one trainer (SPEC D1–D4). See
``docs/training.md``."""

from lipguard.errors import DivergenceError
from lipguard.train.active import Ensemble, RandomFeatureRidge, active_learning, random_sampling
from lipguard.train.certified import (
    CertifiedAccuracy,
    certified_hinge_loss,
    certified_margins,
    fit_certified,
    lipschitz_certified_accuracy,
    offset_cross_entropy,
)
from lipguard.train.dro import dual_norm_regularizer, robust_linear_loss
from lipguard.train.regularizers import (
    AAJR,
    REGULARIZERS,
    TRADES,
    GradientPenalty,
    HardConstraint,
    JacobianPenalty,
    NoRegularizer,
    PGDAdversarialTraining,
    RegularizedLoss,
    Regularizer,
    make_regularizer,
)
from lipguard.train.stability import Oscillation, oscillation
from lipguard.train.sweep import (
    SweepPoint,
    at_matched,
    pareto_front,
    plot_price_of_robustness,
    price_of_robustness,
)
from lipguard.train.tasks import Classification, Preference, Regression, Task, make_task
from lipguard.train.trainer import EpochMetrics, FitResult, fit

__all__ = [
    "AAJR",
    "REGULARIZERS",
    "TRADES",
    "CertifiedAccuracy",
    "Classification",
    "DivergenceError",
    "Ensemble",
    "EpochMetrics",
    "FitResult",
    "GradientPenalty",
    "HardConstraint",
    "JacobianPenalty",
    "NoRegularizer",
    "Oscillation",
    "PGDAdversarialTraining",
    "Preference",
    "RandomFeatureRidge",
    "Regression",
    "RegularizedLoss",
    "Regularizer",
    "SweepPoint",
    "Task",
    "active_learning",
    "at_matched",
    "certified_hinge_loss",
    "certified_margins",
    "dual_norm_regularizer",
    "fit",
    "fit_certified",
    "lipschitz_certified_accuracy",
    "make_regularizer",
    "make_task",
    "offset_cross_entropy",
    "oscillation",
    "pareto_front",
    "plot_price_of_robustness",
    "price_of_robustness",
    "random_sampling",
    "robust_linear_loss",
]
