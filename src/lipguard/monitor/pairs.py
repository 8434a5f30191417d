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
of the distance, so nothing is missed). When the radii cover most of the pool (one outlier
reward widens every radius) or the problem is small, dense blocks of a few queries each screen
every pair with a lower bound of its distance (a matrix product for ℓ2, a fused kernel for ℓ∞)
against that pair's own bound, and exact distances settle the survivors. Every stage works in
blocks, so temporaries stay within ``MEMORY_BUDGET`` whatever the rewards; ``worst=True`` also
bounds the result (one pair per query).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from lipguard.errors import InvalidArgumentError
from lipguard.norm import L2, Norm, NormLike, parse_norm

DENSE_LIMIT = 200_000  # pairs below which one dense screening block is cheaper than a tree
MEMORY_BUDGET = 64 * 2**20  # bytes of temporaries per block of candidates
TREE_CANDIDATES = 1_000_000  # candidates per block of KD-tree queries
TREE_DIMENSIONS = 8  # KD-trees degrade to linear scans in more dimensions


class PoolIndex:
    """A KD-tree over a pool of states, reusable across queries. Above ``TREE_DIMENSIONS``
    features the tree indexes only the pool's ``TREE_DIMENSIONS`` highest-variance coordinates:
    distances there are lower bounds of the full ones, so the tree still returns every pair
    within a radius (plus some further ones, which the exact check removes)."""

    def __init__(self, states: ArrayLike) -> None:
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
    count: np.ndarray | None = None  # with worst=True: each query's number of violating pairs


def _norm_order(norm: NormLike) -> float:
    """``2.0`` or ``inf``: the state distances the pair search supports (ℓ1 is refused)."""
    p = parse_norm(norm)
    if p not in (2.0, math.inf):
        raise InvalidArgumentError(f"pair distances are ℓ2 or ℓ∞, got {Norm(p).label}")
    return p


def _as_rows(states: ArrayLike) -> np.ndarray:
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
    norm: NormLike = L2,
    tolerance: float = 0.0,
    noise_floor: float = 0.0,
    index: PoolIndex | None = None,
    exclude_self: bool = False,
    slack: np.ndarray | None = None,
    pool_slack: np.ndarray | None = None,
    worst: bool = False,
) -> PairViolations:
    """All violating pairs between queries ``(states, rewards)`` and a pool.

    ``lipschitz`` is a scalar or one bound per query (state-dependent ``L(s)``); with per-pool
    bounds ``pool_lipschitz`` a pair uses the larger of its two bounds (the alarm is raised only
    when even the more permissive bound is exceeded). ``slack`` and ``pool_slack`` add each
    observation's own slack to every pair it is in. ``exclude_self`` skips pairs ``(i, j)``
    with ``j <= i`` (a set against itself). ``index`` reuses a :class:`PoolIndex` of the pool.
    ``worst=True`` keeps only each query's pair with the largest ratio ``|Δr|/d`` (ties: the
    lowest pool index) and counts its violating pairs in ``count``.

    Memory stays within about ``MEMORY_BUDGET`` bytes of temporaries (plus the result) whatever
    the rewards: candidates are generated and checked in blocks.
    """
    states, pool_states = _as_rows(states), _as_rows(pool_states)
    m, n = len(states), len(pool_states)
    if m == 0 or n == 0:
        return _empty()
    problem = _Problem(
        states,
        np.asarray(rewards, dtype=np.float64),
        pool_states,
        np.asarray(pool_rewards, dtype=np.float64),
        np.broadcast_to(np.asarray(lipschitz, dtype=np.float64), (m,)),
        None if pool_lipschitz is None else np.asarray(pool_lipschitz, dtype=np.float64),
        _norm_order(norm),
        float(tolerance),
        float(noise_floor),
        np.zeros(m) if slack is None else np.asarray(slack, dtype=np.float64),
        np.zeros(n) if pool_slack is None else np.asarray(pool_slack, dtype=np.float64),
        exclude_self,
    )
    radius = problem.radius()
    if m * n <= DENSE_LIMIT:
        blocks = _dense_blocks(problem, radius)
    else:
        blocks = _tree_blocks(problem, radius, index or PoolIndex(pool_states))
    result = _joined([problem.check(rows, cols) for rows, cols in blocks])
    return _worst_per_query(result, m) if worst else result


@dataclass(frozen=True)
class _Problem:
    """One search: queries against a pool, with every per-pair term of the bound."""

    a: np.ndarray
    ra: np.ndarray
    b: np.ndarray
    rb: np.ndarray
    la: np.ndarray
    lb: np.ndarray | None
    p: float
    tolerance: float
    noise_floor: float
    sa: np.ndarray
    sb: np.ndarray
    exclude_self: bool

    def radius(self) -> np.ndarray:
        """Per query, the largest distance at which any pool point can still violate (-1:
        none can)."""
        smallest = float(self.la.min()) if self.lb is None else min(self.la.min(), self.lb.min())
        reach = np.maximum(self.ra - self.rb.min(), self.rb.max() - self.ra)
        reach = reach - self.tolerance - self.sa - float(self.sb.min())
        # inflated by a few ulps so that the tree's own rounding cannot drop a borderline pair
        return np.where(reach > 0, reach / smallest * (1 + 1e-9) + 1e-12, -1.0)

    def pair_terms(
        self, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(L of the pair, |Δr|, tolerance + both slacks)`` for candidate pairs."""
        pair_l = self.la[rows]
        if self.lb is not None:
            pair_l = np.maximum(pair_l, self.lb[cols])
        difference = np.abs(self.ra[rows] - self.rb[cols])
        return pair_l, difference, self.tolerance + self.sa[rows] + self.sb[cols]

    def check(self, rows: np.ndarray, cols: np.ndarray) -> PairViolations:
        """The exact test on candidate pairs, with exact distances, in bounded blocks."""
        if self.exclude_self:
            keep = cols > rows
            rows, cols = rows[keep], cols[keep]
        parts = [_empty()]
        step = max(1, MEMORY_BUDGET // (8 * self.a.shape[1] + 64))
        for start in range(0, len(rows), step):
            r, c = rows[start : start + step], cols[start : start + step]
            dist = _pair_distances(self.a, self.b, r, c, self.p)
            pair_l, difference, extra = self.pair_terms(r, c)
            bound = pair_l * dist + extra
            hit = (difference > bound) & (dist >= self.noise_floor)
            parts.append(
                PairViolations(
                    r[hit].astype(np.int64),
                    c[hit].astype(np.int64),
                    dist[hit],
                    difference[hit],
                    bound[hit],
                )
            )
        return _joined(parts)


def _joined(parts: list[PairViolations]) -> PairViolations:
    if len(parts) <= 1:
        return parts[0] if parts else _empty()
    return PairViolations(*(np.concatenate([getattr(x, f) for x in parts]) for f in _FIELDS))


_FIELDS = ("first", "second", "distance", "difference", "bound")


def _worst_per_query(found: PairViolations, m: int) -> PairViolations:
    """Each query's pair with the largest ratio (ties: lowest pool index), with pair counts."""
    if len(found.first) == 0:
        return PairViolations(
            found.first,
            found.second,
            found.distance,
            found.difference,
            found.bound,
            np.zeros(0, dtype=np.int64),
        )
    safe = np.where(found.distance > 0, found.distance, 1.0)
    ratio = np.where(found.distance > 0, found.difference / safe, math.inf)
    order = np.lexsort((found.second, -ratio, found.first))
    first = found.first[order]
    heads = order[np.r_[True, first[1:] != first[:-1]]]
    counts = np.bincount(found.first, minlength=m)
    return PairViolations(
        found.first[heads],
        found.second[heads],
        found.distance[heads],
        found.difference[heads],
        found.bound[heads],
        counts[found.first[heads]],
    )


def _distances(diff: torch.Tensor, p: float) -> np.ndarray:
    """Norms of differences along the last axis, in float64, one summation order for every
    caller (so the pruned search and the brute-force oracle round identically). torch rather
    than numpy: its allocator makes these short-lived gathers several times cheaper."""
    norms = diff.abs().amax(-1) if p == math.inf else (diff * diff).sum(-1).sqrt()
    return norms.numpy()


def _pair_distances(
    a: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray, p: float
) -> np.ndarray:
    """``d(a[rows[k]], b[cols[k]])`` for every k."""
    first = torch.from_numpy(a).index_select(0, torch.from_numpy(rows))
    return _distances(first - torch.from_numpy(b).index_select(0, torch.from_numpy(cols)), p)


def _dense_distances(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    """All pairwise distances, by direct differences (exact, memory ``O(|a|·|b|·d)``)."""
    first, second = torch.from_numpy(a), torch.from_numpy(b)
    return _distances(first[:, None, :] - second[None, :, :], p)


def _tree_blocks(
    problem: _Problem, radius: np.ndarray, index: PoolIndex
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate blocks within ``radius`` from the pool's KD-tree (on its widest coordinates: a
    coordinate projection never lengthens a difference in ℓ2 or ℓ∞, so no pair is missed), a
    bounded number of candidates per block. Falls back to dense blocks when the radii cover
    most of the pool."""
    a, b, p = problem.a, problem.b, problem.p
    queries = a if index.coordinates is None else a[:, index.coordinates]
    active = np.flatnonzero(radius >= 0)
    if len(active) == 0:
        return
    sample = active[:: max(1, len(active) // 64)]  # estimate the candidate count on ~64 queries
    counts = index.tree.query_ball_point(queries[sample], radius[sample], p=p, return_length=True)
    if counts.sum() > 0.25 * len(sample) * len(b):
        yield from _dense_blocks(problem, radius)
        return
    per_query = max(1.0, counts.sum() / len(sample))
    chunk = max(1, int(TREE_CANDIDATES / per_query))
    for start in range(0, len(active), chunk):
        part = active[start : start + chunk]
        candidates = index.tree.query_ball_point(queries[part], radius[part], p=p)
        rows = np.repeat(part, [len(c) for c in candidates])
        cols = np.fromiter((j for c in candidates for j in c), dtype=np.int64, count=len(rows))
        yield rows, cols


def _dense_blocks(problem: _Problem, radius: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate blocks from all pairs, a few query rows at a time (temporaries within
    ``MEMORY_BUDGET``). A pair is a candidate when it can violate given a *lower bound* of its
    distance: ℓ2 from the Gram identity ``|a|² + |b|² - 2a·b`` minus its rounding error (one
    matrix product), ℓ∞ by ``torch.cdist`` (within an ulp of the exact value). Pruning uses a
    relative margin of 1e-9 — far above these roundings and the few of the test — so every pair
    the exact check would flag stays a candidate."""
    a, b, p = problem.a, problem.b, problem.p
    n, d = len(b), a.shape[1]
    active = np.flatnonzero(radius >= 0)
    per_row = 8 * n * 8  # the block's n-wide temporaries
    chunk = max(1, MEMORY_BUDGET // per_row)
    second = torch.from_numpy(b)
    second_sq = (second * second).sum(1)
    eps = np.finfo(np.float64).eps
    for start in range(0, len(active), chunk):
        part = active[start : start + chunk]
        first = torch.from_numpy(a[part])
        if p == 2.0:  # in torch: numpy's BLAS threads would fight torch's for the two cores
            scale = (first * first).sum(1)[:, None] + second_sq[None, :]
            squared = scale - 2.0 * (first @ second.T)
            lower = (squared - 8 * d * eps * scale).clamp(min=0.0).sqrt()
        else:  # one fused kernel; within an ulp of the exact distance, far inside the margin
            lower = torch.cdist(first, second, p=math.inf)
        pair_l = torch.from_numpy(problem.la[part])[:, None]
        if problem.lb is not None:
            pair_l = torch.maximum(pair_l, torch.from_numpy(problem.lb)[None, :])
        rewards = torch.from_numpy(problem.ra[part])[:, None]
        difference = (rewards - torch.from_numpy(problem.rb)[None, :]).abs()
        extra = (
            torch.from_numpy(problem.tolerance + problem.sa[part])[:, None]
            + torch.from_numpy(problem.sb)[None, :]
        )
        keep = difference * (1 + 1e-9) >= pair_l * lower + extra
        local, cols = (index.numpy() for index in torch.nonzero(keep, as_tuple=True))
        yield part[local], cols


def brute_force_violations(
    states: np.ndarray,
    rewards: np.ndarray,
    pool_states: np.ndarray,
    pool_rewards: np.ndarray,
    lipschitz: float | np.ndarray,
    *,
    norm: NormLike = L2,
    tolerance: float = 0.0,
    noise_floor: float = 0.0,
) -> set[tuple[int, int]]:
    """All violating index pairs by checking every pair (the oracle of the tests)."""
    distance = _dense_distances(_as_rows(states), _as_rows(pool_states), _norm_order(norm))
    difference = np.abs(rewards[:, None] - pool_rewards[None, :])
    bound = np.broadcast_to(np.asarray(lipschitz, dtype=np.float64), (len(states),))[:, None]
    violating = (difference > bound * distance + tolerance) & (distance >= noise_floor)
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(violating), strict=True)}
