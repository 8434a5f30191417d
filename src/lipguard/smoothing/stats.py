"""Confidence bounds used by the smoothing certificates.

Each function returns a bound that holds with probability at least ``1 - alpha`` over the
Monte-Carlo samples (one-sided unless stated). Binary events use exact Clopper–Pearson bounds;
bounded real-valued outputs use Hoeffding's or the empirical-Bernstein inequality (Maurer &
Pontil, 2009), because Clopper–Pearson is only valid for 0/1 outcomes; quantiles use order
statistics with binomial tail probabilities (valid for any distribution).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from lipguard.errors import InvalidArgumentError


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise InvalidArgumentError(f"alpha must lie in (0, 1), got {alpha!r}")
    return alpha


def clopper_pearson_lower(
    successes: np.ndarray | int, trials: np.ndarray | int, alpha: float
) -> np.ndarray:
    """One-sided lower confidence bound on a binomial proportion: ``Beta.ppf(α; k, n - k + 1)``
    (0 when ``k = 0``)."""
    alpha = _check_alpha(alpha)
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    safe = np.maximum(k, 1.0)
    bound = stats.beta.ppf(alpha, safe, n - safe + 1.0)
    return np.where(k > 0, bound, 0.0)


def clopper_pearson_upper(
    successes: np.ndarray | int, trials: np.ndarray | int, alpha: float
) -> np.ndarray:
    """One-sided upper confidence bound on a binomial proportion (1 when ``k = n``)."""
    k = np.asarray(successes, dtype=np.float64)
    return 1.0 - clopper_pearson_lower(np.asarray(trials) - k, trials, alpha)


def binomial_p_value(top: np.ndarray | int, total: np.ndarray | int) -> np.ndarray:
    """Two-sided binomial test of ``top`` successes out of ``total`` against ``p = 1/2``
    (scipy's ``binomtest``: the probability of outcomes no more likely than the observed)."""
    top_array = np.atleast_1d(np.asarray(top, dtype=np.int64))
    total_array = np.broadcast_to(np.asarray(total, dtype=np.int64), top_array.shape)
    values = [
        stats.binomtest(int(k), int(n), 0.5).pvalue if n > 0 else 1.0
        for k, n in zip(top_array, total_array, strict=True)
    ]
    return np.asarray(values, dtype=np.float64).reshape(np.shape(top))


def hoeffding_radius(count: int, alpha: float, width: float = 1.0) -> float:
    """``t`` with ``P(mean - E >= t) <= α`` for ``count`` i.i.d. samples in an interval of
    ``width``: ``width·sqrt(log(1/α) / (2n))``."""
    alpha = _check_alpha(alpha)
    return width * math.sqrt(math.log(1.0 / alpha) / (2.0 * count))


def bernstein_radius(
    variance: np.ndarray, count: int, alpha: float, width: float = 1.0
) -> np.ndarray:
    """Empirical-Bernstein deviation (Maurer & Pontil 2009, Thm 4): with probability >= 1 - α,
    ``E <= mean + sqrt(2·V·log(2/α)/n) + 7·width·log(2/α)/(3(n - 1))`` for samples in an interval
    of ``width`` and unbiased sample variance ``V`` (one-sided; the same holds for the other
    side)."""
    alpha = _check_alpha(alpha)
    if count < 2:
        raise InvalidArgumentError("the empirical-Bernstein bound needs at least 2 samples")
    log_term = math.log(2.0 / alpha)
    variance = np.asarray(variance, dtype=np.float64)
    return np.sqrt(2.0 * variance * log_term / count) + 7.0 * width * log_term / (3.0 * (count - 1))


def quantile_lower_index(count: int, quantile: float | np.ndarray, alpha: float) -> np.ndarray:
    """The largest 1-based order-statistic index ``k`` with ``P(X_(k) <= h_q) >= 1 - α``, where
    ``h_q`` is the ``q``-quantile: ``BinomCDF(k - 1; n, q) <= α``. 0 when none exists (the bound
    is then ``-inf``)."""
    alpha = _check_alpha(alpha)
    q = np.asarray(quantile, dtype=np.float64)
    # BinomCDF(k - 1; n, q) <= α  ⇔  k - 1 <= ppf(α) - 1 (ppf: least j with CDF(j) >= α)
    j = stats.binom.ppf(alpha, count, q)
    k = np.where(stats.binom.cdf(j, count, q) <= alpha, j + 1, j)
    # guard against the tolerance of scipy's ppf: the defining inequality must hold exactly
    k = np.where((k > 0) & (stats.binom.cdf(k - 1, count, q) > alpha), k - 1, k)
    return k.astype(np.int64)


def quantile_upper_index(count: int, quantile: float | np.ndarray, alpha: float) -> np.ndarray:
    """The smallest 1-based index ``k`` with ``P(X_(k) >= h_q) >= 1 - α``:
    ``BinomCDF(k - 1; n, q) >= 1 - α``. ``n + 1`` when none exists (bound ``+inf``)."""
    alpha = _check_alpha(alpha)
    q = np.asarray(quantile, dtype=np.float64)
    k = stats.binom.ppf(1.0 - alpha, count, q) + 1  # ppf: least j with CDF(j) >= 1 - α
    k = np.where((k <= count) & (stats.binom.cdf(k - 1, count, q) < 1.0 - alpha), k + 1, k)
    return np.minimum(k, count + 1).astype(np.int64)
