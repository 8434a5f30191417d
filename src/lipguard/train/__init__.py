"""Robust training: regularizers (incl. AAJR), tasks, one trainer (SPEC D1–D4). See
``docs/training.md``."""

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
from lipguard.train.stability import DivergenceError, Oscillation, oscillation
from lipguard.train.tasks import Classification, Preference, Regression, Task, make_task
from lipguard.train.trainer import EpochMetrics, FitResult, fit

__all__ = [
    "AAJR",
    "REGULARIZERS",
    "TRADES",
    "Classification",
    "DivergenceError",
    "EpochMetrics",
    "FitResult",
    "GradientPenalty",
    "HardConstraint",
    "JacobianPenalty",
    "NoRegularizer",
    "Oscillation",
    "PGDAdversarialTraining",
    "Preference",
    "Regression",
    "RegularizedLoss",
    "Regularizer",
    "Task",
    "fit",
    "make_regularizer",
    "make_task",
    "oscillation",
]
