"""Exact search for Lipschitz violations between two sets of (state, reward) observations.

A pair ``(s, s')`` violates the bound when ``|r - r'| > L·d(s, s') + tolerance + σ + σ'`` with
``d(s, s') >= noise_floor`` (closer pairs are sensor noise), where ``σ`` and ``σ'`` are the two
observations' own slacks (their floating-point error, say). Since ``|r - r'|`` can be at most
``max(r - q_min, q_max - r)`` against a pool whose rewards lie in ``[q_min, q_max]``, only pool
points within the radius ``R(s) = (max(r - q_min, q_max - r) - tolerance - σ - σ_min)/L`` of ``s``
can violate:
:func:`find_violations` asks a KD-tree (``scipy.spatial.cKDTree``, ℓ2 or ℓ∞) for exactly those
and checks each candidate — the result equals brute force over all pairs (property-tested), at a
cost that depends on how many neighbours fall in the radius rather than on the pool size. States
with more than ``TREE_DIMENSIONS`` features are indexed on their widest coordinates (a lower bound
of the distance, so nothing is missed). Small problems use one dense screening block instead (a
matrix product for ℓ2, then exact distances for the survivors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

DENSE_LIMIT = 200_000  # pairs below which one dense screening block is cheaper than a tree
TREE_DIMENSIONS = 8  # KD-trees degrade to linear scans in more dimensions


class PoolIndex:
    """A KD-tree over a pool of states, reusable across queries. Above ``TREE_DIMENSIONS``
    features the tree indexes only the pool's ``TREE_DIMENSIONS`` highest-variance coordinates:
    distances there are lower bounds of the full ones, so the tree still returns every pair
    within a radius (plus some further ones, which the exact check removes)."""

    def __init__(self, states: np.ndarray):
        states = _as_rows(states)
        if states.shape[1] > TREE_DIMENSIONS:
            widest = np.argsort(states.var(0))[-TREE_DIMENSIONS:]
            self.coordinates: np.ndarray | None = np.sort(widest)
            states = states[:, self.coordinates]
        else:
            self.coordinates = None
        self.tree = cKDTree(states)


@dataclass(frozen=True)
class PairViolations:
    """Violating pairs: ``first[k]`` indexes the queries, ``second[k]`` the pool."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray
    difference: np.ndarray  # |r - r'|
    bound: np.ndarray  # L·d + tolerance + both slacks


def _norm_order(norm: float) -> float:
    return math.inf if norm == math.inf else 2.0


def _as_rows(states) -> np.ndarray:
    return np.ascontiguousarray(states, dtype=np.float64)


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
    index: PoolIndex | None = None,
    exclude_self: bool = False,
    slack: np.ndarray | None = None,
    pool_slack: np.ndarray | None = None,
) -> PairViolations:
    """All violating pairs between queries ``(states, rewards)`` and a pool.

    ``lipschitz`` is a scalar or one bound per query (state-dependent ``L(s)``); with per-pool
    bounds ``pool_lipschitz`` a pair uses the larger of its two bounds (the alarm is raised only
    when even the more permissive bound is exceeded). ``slack`` and ``pool_slack`` add each
    observation's own slack to every pair it is in. ``exclude_self`` skips pairs ``(i, j)``
    with ``j <= i`` (a set against itself). ``index`` reuses a :class:`PoolIndex` of the pool.
    """
    states, pool_states = _as_rows(states), _as_rows(pool_states)
    m, n = len(states), len(pool_states)
    if m == 0 or n == 0:
        return _empty()
    p = _norm_order(norm)
    query_l = np.broadcast_to(np.asarray(lipschitz, dtype=np.float64), (m,))
    smallest_l = float(query_l.min())
    if pool_lipschitz is not None:
        smallest_l = min(smallest_l, float(pool_lipschitz.min()))
    query_slack = np.zeros(m) if slack is None else np.asarray(slack, dtype=np.float64)
    other_slack = np.zeros(n) if pool_slack is None else np.asarray(pool_slack, dtype=np.float64)
    reach = np.maximum(rewards - pool_rewards.min(), pool_rewards.max() - rewards)
    reach = reach - tolerance - query_slack - float(other_slack.min())
    # inflated by a few ulps so that the tree's own rounding cannot drop a borderline pair
    radius = np.where(reach > 0, reach / smallest_l * (1 + 1e-9) + 1e-12, -1.0)
    if m * n <= DENSE_LIMIT:
        rows, cols, dist = _dense_candidates(states, pool_states, radius, p)
    else:
        index = index if index is not None else PoolIndex(pool_states)
        rows, cols, dist = _tree_candidates(states, pool_states, radius, p, index)
    if exclude_self:
        keep = cols > rows
        rows, cols, dist = rows[keep], cols[keep], dist[keep]
    pair_l = query_l[rows]
    if pool_lipschitz is not None:
        pair_l = np.maximum(pair_l, pool_lipschitz[cols])
    difference = np.abs(rewards[rows] - pool_rewards[cols])
    bound = pair_l * dist + tolerance + query_slack[rows] + other_slack[cols]
    violating = (difference > bound) & (dist >= noise_floor)
    return PairViolations(
        rows[violating].astype(np.int64),
        cols[violating].astype(np.int64),
        dist[violating],
        difference[violating],
        bound[violating],
    )


def _distances(diff: torch.Tensor, p: float) -> np.ndarray:
    """Norms of differences along the last axis, in float64, one summation order for every
    caller (so the pruned search and the brute-force oracle round identically). torch rather
    than numpy: its allocator makes these short-lived gathers several times cheaper."""
    norms = diff.abs().amax(-1) if p == math.inf else (diff * diff).sum(-1).sqrt()
    return norms.numpy()


def _pair_distances(a, b, rows, cols, p) -> np.ndarray:
    """``d(a[rows[k]], b[cols[k]])`` for every k."""
    first = torch.from_numpy(a).index_select(0, torch.from_numpy(rows))
    return _distances(first - torch.from_numpy(b).index_select(0, torch.from_numpy(cols)), p)


def _dense_distances(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    """All pairwise distances, by direct differences (exact, memory ``O(|a|·|b|·d)``)."""
    first, second = torch.from_numpy(a), torch.from_numpy(b)
    return _distances(first[:, None, :] - second[None, :, :], p)


def _exact_within(a, b, rows, cols, radius, p):
    dist = _pair_distances(a, b, rows, cols, p)
    keep = dist <= radius[rows]
    return rows[keep], cols[keep], dist[keep]


def _tree_candidates(a, b, radius, p, index: PoolIndex):
    """Pairs within ``radius`` from the pool's KD-tree (on its widest coordinates: a coordinate
    projection never lengthens a difference in ℓ2 or ℓ∞, so no pair is missed), with exact
    distances. Falls back to one dense block when the radii cover most of the pool."""
    queries = a if index.coordinates is None else a[:, index.coordinates]
    active = np.flatnonzero(radius >= 0)
    sample = active[:: max(1, len(active) // 64)]  # estimate the candidate count on ~64 queries
    counts = index.tree.query_ball_point(queries[sample], radius[sample], p=p, return_length=True)
    if counts.sum() > 0.25 * len(sample) * len(b):
        return _dense_candidates(a, b, radius, p)
    candidates = index.tree.query_ball_point(queries[active], radius[active], p=p)
    rows = np.repeat(active, [len(c) for c in candidates])
    cols = np.fromiter((j for c in candidates for j in c), dtype=np.int64, count=len(rows))
    return _exact_within(a, b, rows, cols, radius, p)


def _dense_candidates(a, b, radius, p, chunk: int = 256):
    """Pairs with ``d(a_i, b_j) <= radius_i``, with their exact distances. ℓ2 screens with the
    Gram identity ``|a|² + |b|² - 2a·b`` (one matrix product) under a radius widened by its
    rounding error, then recomputes the survivors' distances directly, so the result is exact."""
    rows_all, cols_all = [], []
    if p == 2.0:  # in torch: numpy's BLAS threads would fight torch's for the two cores
        first, second, limit = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(radius)
        scale = (first * first).sum(1)[:, None] + (second * second).sum(1)[None, :]
        squared = scale - 2.0 * (first @ second.T)
        slack = 8 * a.shape[1] * np.finfo(np.float64).eps * scale
        reach = limit.clamp(min=0.0)[:, None] ** 2 + slack
        mask = (squared <= reach) & (limit[:, None] >= 0)
        rows_all, cols_all = (index.numpy() for index in torch.nonzero(mask, as_tuple=True))
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
    distance = _dense_distances(_as_rows(states), _as_rows(pool_states), _norm_order(norm))
    difference = np.abs(rewards[:, None] - pool_rewards[None, :])
    bound = np.broadcast_to(np.asarray(lipschitz, dtype=np.float64), (len(states),))[:, None]
    violating = (difference > bound * distance + tolerance) & (distance >= noise_floor)
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(violating), strict=True)}
