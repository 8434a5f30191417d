"""Exact search for Lipschitz violations between two sets of (state, reward) observations.

A pair ``(s, s')`` violates the bound when ``|r - r'| > L·d(s, s') + tolerance`` with
``d(s, s') >= noise_floor`` (closer pairs are sensor noise). Since ``|r - r'|`` can be at most
``max(r - q_min, q_max - r)`` against a pool whose rewards lie in ``[q_min, q_max]``, only pool
points within the radius ``R(s) = (max(r - q_min, q_max - r) - tolerance)/L`` of ``s`` can violate:
:func:`find_violations` asks a KD-tree for exactly those (``scipy.spatial.cKDTree``, ℓ2 or ℓ∞) and
checks each candidate — the result equals brute force over all pairs (property-tested), at a cost
that depends on how many neighbours fall in the radius rather than on the pool size. Small
problems use one dense screening block instead (a matrix product for ℓ2, then exact distances
for the survivors); states with more than 16 features, where trees degrade to linear scans, are
pruned with the exact lower bound ``|‖s‖ - ‖s'‖| <= ‖s - s'‖`` on a pool sorted by norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

DENSE_LIMIT = 200_000  # pairs below which one dense screening block is cheaper than a tree


@dataclass(frozen=True)
class PairViolations:
    """Violating pairs: ``first[k]`` indexes the queries, ``second[k]`` the pool."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray
    difference: np.ndarray  # |r - r'|
    bound: np.ndarray  # L·d (+ tolerance)


def _norm_order(norm: float) -> float:
    return math.inf if norm == math.inf else 2.0


def _empty() -> PairViolations:
    e = np.zeros(0)
    return PairViolations(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), e, e, e)


def find_violations(
    states: np.ndarray,
    rewards: np.ndarray,
    pool_states: np.ndarray,
    pool_rewards: np.ndarray,
    lipschitz: float | np.ndarray,
    *,
    pool_lipschitz: np.ndarray | None = None,
    norm: float = 2.0,
    tolerance: float = 0.0,
    noise_floor: float = 0.0,
    tree: cKDTree | None = None,
    exclude_self: bool = False,
) -> PairViolations:
    """All violating pairs between queries ``(states, rewards)`` and a pool.

    ``lipschitz`` is a scalar or one bound per query (state-dependent ``L(s)``); with per-pool
    bounds ``pool_lipschitz`` a pair uses the larger of its two bounds (the alarm is raised only
    when even the more permissive bound is exceeded). ``exclude_self`` skips pairs ``(i, j)``
    with ``j <= i`` (a set against itself). ``tree`` reuses a KD-tree built on the pool.
    """
    m, n = len(states), len(pool_states)
    if m == 0 or n == 0:
        return _empty()
    p = _norm_order(norm)
    query_l = np.broadcast_to(np.asarray(lipschitz, dtype=np.float64), (m,))
    smallest_l = float(query_l.min())
    if pool_lipschitz is not None:
        smallest_l = min(smallest_l, float(pool_lipschitz.min()))
    reach = np.maximum(rewards - pool_rewards.min(), pool_rewards.max() - rewards) - tolerance
    # inflated by a few ulps so that the tree's own rounding cannot drop a borderline pair
    radius = np.where(reach > 0, reach / smallest_l * (1 + 1e-9) + 1e-12, -1.0)
    if m * n <= DENSE_LIMIT:
        rows, cols, dist = _dense_candidates(states, pool_states, radius, p)
    elif states.shape[1] > 16:  # trees degrade to linear scans in many dimensions
        rows, cols, dist = _norm_sorted_candidates(states, pool_states, radius, p)
    else:
        tree = tree if tree is not None else cKDTree(pool_states)
        candidates = tree.query_ball_point(states, np.maximum(radius, 0.0), p=p)
        rows = np.repeat(np.arange(m), [len(c) for c in candidates])
        cols = np.fromiter((j for c in candidates for j in c), dtype=np.int64, count=len(rows))
        keep = radius[rows] >= 0
        rows, cols = rows[keep], cols[keep]
        diff = states[rows] - pool_states[cols]
        dist = np.abs(diff).max(1) if p == math.inf else np.sqrt((diff * diff).sum(1))
    if exclude_self:
        keep = cols > rows
        rows, cols, dist = rows[keep], cols[keep], dist[keep]
    pair_l = query_l[rows]
    if pool_lipschitz is not None:
        pair_l = np.maximum(pair_l, pool_lipschitz[cols])
    difference = np.abs(rewards[rows] - pool_rewards[cols])
    bound = pair_l * dist + tolerance
    violating = (difference > bound) & (dist >= noise_floor)
    return PairViolations(
        rows[violating].astype(np.int64),
        cols[violating].astype(np.int64),
        dist[violating],
        difference[violating],
        bound[violating],
    )


def _dense_distances(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    """All pairwise distances, by direct differences (exact, memory ``O(|a|·|b|·d)``)."""
    diff = a[:, None, :] - b[None, :, :]
    return np.abs(diff).max(2) if p == math.inf else np.sqrt((diff * diff).sum(2))


def _exact_within(a, b, rows, cols, radius, p):
    diff = a[rows] - b[cols]
    dist = np.abs(diff).max(1) if p == math.inf else np.sqrt((diff * diff).sum(1))
    keep = dist <= radius[rows]
    return rows[keep], cols[keep], dist[keep]


def _norm_sorted_candidates(a, b, radius, p):
    """Pairs within ``radius`` via the exact lower bound ``|‖a‖ - ‖b‖| <= ‖a - b‖`` (any norm):
    with the pool sorted by norm, each query's candidates are one contiguous range."""
    norm_a = np.abs(a).max(1) if p == math.inf else np.sqrt((a * a).sum(1))
    norm_b = np.abs(b).max(1) if p == math.inf else np.sqrt((b * b).sum(1))
    order = np.argsort(norm_b)
    sorted_b = norm_b[order]
    reach = np.maximum(radius, 0.0) * (1 + 1e-9) + 1e-12
    low = np.searchsorted(sorted_b, norm_a - reach, side="left")
    high = np.searchsorted(sorted_b, norm_a + reach, side="right")
    counts = np.where(radius >= 0, np.maximum(high - low, 0), 0)
    if counts.sum() > 0.25 * len(a) * len(b):
        return _dense_candidates(a, b, radius, p)
    rows = np.repeat(np.arange(len(a)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    cols = order[np.repeat(low, counts) + np.arange(counts.sum()) - starts]
    return _exact_within(a, b, rows, cols, radius, p)


def _dense_candidates(a, b, radius, p, chunk: int = 256):
    """Pairs with ``d(a_i, b_j) <= radius_i``, with their exact distances. ℓ2 screens with the
    Gram identity ``|a|² + |b|² - 2a·b`` (one matrix product) under a radius widened by its
    rounding error, then recomputes the survivors' distances directly, so the result is exact."""
    rows_all, cols_all = [], []
    if p == 2.0:
        a_sq, b_sq = (a * a).sum(1), (b * b).sum(1)
        scale = a_sq[:, None] + b_sq[None, :]
        squared = scale - 2.0 * (a @ b.T)
        slack = 8 * a.shape[1] * np.finfo(np.float64).eps * scale
        reach = np.maximum(radius, 0.0)[:, None] ** 2 + slack
        rows_all, cols_all = np.nonzero((squared <= reach) & (radius[:, None] >= 0))
    else:
        for start in range(0, len(a), chunk):
            block = np.abs(a[start : start + chunk, None, :] - b[None, :, :]).max(2)
            r, c = np.nonzero(block <= radius[start : start + chunk, None])
            rows_all.append(r + start)
            cols_all.append(c)
        rows_all, cols_all = np.concatenate(rows_all), np.concatenate(cols_all)
    return _exact_within(a, b, rows_all, cols_all, radius, p)


def brute_force_violations(
    states,
    rewards,
    pool_states,
    pool_rewards,
    lipschitz,
    *,
    norm=2.0,
    tolerance=0.0,
    noise_floor=0.0,
) -> set[tuple[int, int]]:
    """All violating index pairs by checking every pair (the oracle of the tests)."""
    distance = _dense_distances(states, pool_states, _norm_order(norm))
    difference = np.abs(rewards[:, None] - pool_rewards[None, :])
    bound = np.broadcast_to(np.asarray(lipschitz, dtype=np.float64), (len(states),))[:, None]
    violating = (difference > bound * distance + tolerance) & (distance >= noise_floor)
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(violating), strict=True)}
