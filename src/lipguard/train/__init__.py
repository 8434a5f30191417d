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
from lipguard.train.tasks import Classification, Preference, Regression, Task, make_task

__all__ = [
    "AAJR",
    "REGULARIZERS",
    "TRADES",
    "Classification",
    "GradientPenalty",
    "HardConstraint",
    "JacobianPenalty",
    "NoRegularizer",
    "PGDAdversarialTraining",
    "Preference",
    "Regression",
    "RegularizedLoss",
    "Regularizer",
    "Task",
    "make_regularizer",
    "make_task",
]
