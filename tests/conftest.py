"""Shared test configuration.

Hypothesis runs derandomized by default so CI is reproducible; set HYPOTHESIS_PROFILE=thorough
to search with fresh randomness and more examples.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def true_sigma(matrix: torch.Tensor) -> float:
    """Largest singular value by a float64 SVD (relative error ~1e-15)."""
    return float(torch.linalg.matrix_norm(matrix.detach().to(torch.float64), ord=2))
