"""Training-stability metrics for the minimax of robust training.

Adversarial training alternates an inner maximisation and an outer minimisation; when it goes
wrong the loss oscillates or explodes. :func:`oscillation` measures the first from the per-step
loss history; :class:`DivergenceError` reports the second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Oscillation:
    """``sign_change_rate``: the fraction of consecutive loss differences that change sign
    (about 2/3 for white noise, near 0 for a monotone curve); ``variance``: the variance of
    the loss around its moving average (window ``window``)."""

    sign_change_rate: float
    variance: float
    window: int


def oscillation(losses: Sequence[float], window: int = 10) -> Oscillation:
    """How much a loss curve oscillates (:class:`Oscillation`); non-finite losses are dropped,
    and fewer than three finite values give zeros."""
    values = np.asarray(losses, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 3:
        return Oscillation(0.0, 0.0, window)
    steps = np.diff(values)
    signs = np.sign(steps[steps != 0])
    changes = float(np.mean(signs[1:] != signs[:-1])) if len(signs) > 1 else 0.0
    width = max(1, min(window, len(values)))
    trend = np.convolve(values, np.ones(width) / width, mode="valid")
    residual = values[width - 1 :] - trend
    return Oscillation(changes, float(np.var(residual)), width)


def diverged(loss: float, reference: float, factor: float) -> bool:
    """A loss is divergent if it is not finite or exceeds ``factor`` times the reference (the
    first batch's loss, floored at 1)."""
    return not math.isfinite(loss) or loss > factor * max(reference, 1.0)
