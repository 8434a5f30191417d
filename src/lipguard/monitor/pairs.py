"""Exact search for Lipschitz violations between two sets of (state, reward) observations.

A pair ``(s, s')`` violates the bound when ``|r - r'| > L·d(s, s') + tolerance + σ + σ'`` with
``d(s, s') >= noise_floor`` (closer pairs are sensor noise), where ``σ`` and ``σ'`` are the two
observations' own slacks (their floating-point error, say). Since ``|r - r'|`` can be at most
``max(r - q_min, q_max - r)`` against a pool whose rewards lie in ``[q_min, q_max]``, only pool
points within the radius ``R(s) = (max(r - q_min, q_max - r) - tolerance - σ - σ_min)/L`` of ``s``
can violate. :func:`find_violations` generates candidates within ``R(s)`` and checks each with
its exact distance — the result equals brute force over all pairs (property-tested on every
path), at a cost that depends on how many pool points fall in the radius rather than on the
pool size. Candidates come from lower bounds of the distance (a coordinate projection never
lengthens a difference in ℓ2 or ℓ∞), in the cheapest of three ways:

- **sweep** (the common case: radii small next to the spread of the states): the pool in the
  order of its widest coordinate, each query's candidates the contiguous run whose coordinate
  lies within ``R(s)`` of the query's. A pool searched once (a sliding window with its new
  batch, given as :class:`Columns`) is ordered by a counting sort into ``BUCKETS_PER_POINT``
  buckets per point along that coordinate, and a query's run is the buckets its interval
  meets (no binary search); a :class:`PoolIndex` prepared for many searches (a reference set)
  is sorted once, and binary searches find the runs. Partial distances on the next widest
  coordinates (up to ``INDEX_DIMENSIONS``) discard most candidates before the exact check. The
  candidate count is known before any pair is formed, and the sweep is used when it is below
  ``SWEEP_PER_POINT`` per query and pool point (buckets crowded by a far outlier fall back to
  the sorted sweep first);
- **KD-tree** (``scipy.spatial.cKDTree``, ℓ2 or ℓ∞) on the pool's widest coordinates, for
  larger radii in large problems;
- **dense blocks**, when the radii cover most of the pool (one outlier reward widens every
  radius) or the problem is small: blocks of a few queries each screen every pair with a lower
  bound of its distance (a matrix product for ℓ2, a fused kernel for ℓ∞) against that pair's own
  bound.

Every stage works in blocks, so temporaries stay within ``MEMORY_BUDGET`` whatever the rewards;
``worst=True`` also bounds the result (one pair per query).
"""

from __future__ import annotations

import functools
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
CANDIDATE_BLOCK = 1_000_000  # candidates per block of sweep or KD-tree queries
INDEX_DIMENSIONS = 8  # coordinates indexed (KD-trees degrade to linear scans in more)
SWEEP_PER_POINT = 64  # sweep candidates per query and pool point above which a tree is cheaper
BUCKETS_PER_POINT = 2  # buckets of a one-off sweep per pool point (at most 2**22 in all)


class PoolIndex:
    """A pool of states prepared for many candidate searches (a reference set): its
    ``INDEX_DIMENSIONS`` widest coordinates (:func:`widest_coordinates`), the pool sorted on the
    first of them, and a KD-tree on them built on first use. Distances on a subset of
    coordinates are lower bounds of the full ones, so every search over them returns every pair
    within a radius (plus some further ones, which the exact check removes)."""

    def __init__(self, states: ArrayLike) -> None:
        self.states = _as_rows(states)
        self.coordinates = widest_coordinates(self.states)
        self.columns = np.ascontiguousarray(self.states.T[self.coordinates])
        self.order = np.argsort(self.columns[0], kind="stable")
        self.keys = self.columns[0][self.order]

    @functools.cached_property
    def tree(self) -> cKDTree:
        """A KD-tree on the indexed coordinates (built once, when a search first needs it)."""
        return cKDTree(self.states[:, self.coordinates])


@dataclass(frozen=True)
class Columns:
    """A pool's values on its widest coordinates, for a one-off search: ``values[k]`` holds
    every pool row's coordinate ``coordinates[k]`` (a sliding window keeps them as rows arrive,
    so a search need not read the rows again). The caller's promise: they are the pool's
    values. They must be float64 — the narrowing's margins assume float64 differences."""

    coordinates: np.ndarray
    values: np.ndarray  # (len(coordinates), pool size)

    def __post_init__(self) -> None:
        if self.values.dtype != np.float64:
            raise InvalidArgumentError(f"Columns values must be float64, got {self.values.dtype}")

    @classmethod
    def of(cls, states: np.ndarray) -> Columns:
        coordinates = widest_coordinates(states)
        return cls(coordinates, np.ascontiguousarray(states.T[coordinates]))


def widest_coordinates(states: np.ndarray) -> np.ndarray:
    """The ``INDEX_DIMENSIONS`` coordinates of widest range in a sample of at most about 64
    rows, widest first. The choice affects the speed of a search only, never its result."""
    sample = states[:: max(1, len(states) // 64)]
    spread = sample.max(0) - sample.min(0) if len(sample) else np.zeros(states.shape[1])
    return np.argsort(-spread, kind="stable")[:INDEX_DIMENSIONS]


@dataclass(frozen=True)
class PairViolations:
    """Violating pairs: ``first[k]`` indexes the queries, ``second[k]`` the pool."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray
    difference: np.ndarray  # |r - r'|
    bound: np.ndarray  # L·d + tolerance + both slacks
    count: np.ndarray | None = None  # with worst=True: each query's number of violating pairs

    def select(self, keep: np.ndarray) -> PairViolations:
        """The pairs ``keep`` selects (a boolean mask or indices)."""
        if len(self.first) == 0:
            return self
        count = None if self.count is None else self.count[keep]
        return PairViolations(
            self.first[keep],
            self.second[keep],
            self.distance[keep],
            self.difference[keep],
            self.bound[keep],
            count,
        )


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
    index: PoolIndex | Columns | None = None,
    exclude_self: bool = False,
    self_offset: int = 0,
    slack: np.ndarray | None = None,
    pool_slack: np.ndarray | None = None,
    worst: bool = False,
) -> PairViolations:
    """All violating pairs between queries ``(states, rewards)`` and a pool.

    ``lipschitz`` is a scalar or one bound per query (state-dependent ``L(s)``); with per-pool
    bounds ``pool_lipschitz`` a pair uses the larger of its two bounds (the alarm is raised only
    when even the more permissive bound is exceeded). ``slack`` and ``pool_slack`` add each
    observation's own slack to every pair it is in. ``exclude_self`` says the queries are
    the pool's rows ``self_offset, self_offset + 1, …`` (a set against a pool that holds it)
    and skips pairs ``(i, self_offset + j)`` with ``j <= i``. ``index`` is a
    :class:`PoolIndex` of the pool (reused across searches) or its :class:`Columns`. Pairs come
    sorted by query, then pool index.
    ``worst=True`` keeps only each query's pair with the largest ratio ``|Δr|/d`` (ties: the
    lowest pool index) and counts its violating pairs in ``count``.

    Memory stays within about ``MEMORY_BUDGET`` bytes of temporaries (plus the result) whatever
    the rewards: candidates are generated and checked in blocks.
    """
    states, pool_states = _as_rows(states), _as_rows(pool_states)
    m, n = len(states), len(pool_states)
    if m == 0 or n == 0:
        return _empty()
    la = np.asarray(lipschitz, dtype=np.float64)
    lb = None if pool_lipschitz is None else np.asarray(pool_lipschitz, dtype=np.float64)
    smallest = float(la.min()) if lb is None else float(min(la.min(), lb.min()))
    problem = _Problem(
        states,
        np.asarray(rewards, dtype=np.float64),
        pool_states,
        np.asarray(pool_rewards, dtype=np.float64),
        np.full(m, float(la)) if la.ndim == 0 else np.broadcast_to(la, (m,)),
        lb,
        smallest,
        _norm_order(norm),
        float(tolerance),
        float(noise_floor),
        np.zeros(m) if slack is None else np.asarray(slack, dtype=np.float64),
        np.zeros(n) if pool_slack is None else np.asarray(pool_slack, dtype=np.float64),
        exclude_self,
        self_offset,
    )
    # radii, their squares and partial distances of huge states overflow to inf, which only
    # keeps more candidates: not worth a warning
    with np.errstate(over="ignore"):
        radius = problem.radius()
        active = np.flatnonzero(radius >= 0)
        blocks = _candidate_blocks(problem, radius, active, index) if len(active) else []
        result = _joined([problem.check(rows, cols) for rows, cols in blocks])
    if len(result.first) > 1:  # by query, then pool index, whatever path found them
        result = result.select(np.lexsort((result.second, result.first)))
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
    smallest_l: float
    p: float
    tolerance: float
    noise_floor: float
    sa: np.ndarray
    sb: np.ndarray
    exclude_self: bool
    self_offset: int

    def radius(self) -> np.ndarray:
        """Per query, the largest distance at which any pool point can still violate (-1:
        none can)."""
        smallest = self.smallest_l
        reach = np.maximum(self.ra - self.rb.min(), self.rb.max() - self.ra)
        reach -= self.sa + (self.tolerance + float(self.sb.min()))
        # inflated by a few ulps so that the searches' own rounding cannot drop a borderline pair
        return np.where(reach > 0, reach * ((1 + 1e-9) / smallest) + 1e-12, -1.0)

    def pair_terms(
        self, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(L of the pair, |Δr|, tolerance + both slacks)`` for candidate pairs."""
        pair_l = self.la[rows]
        if self.lb is not None:
            pair_l = np.maximum(pair_l, self.lb[cols])
        difference = np.abs(self.ra[rows] - self.rb[cols])
        return pair_l, difference, self.tolerance + self.sa[rows] + self.sb[cols]

    def without_self(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates less the pairs ``exclude_self`` skips."""
        if not self.exclude_self:
            return rows, cols
        keep = (cols < self.self_offset) | (cols > rows + self.self_offset)
        return rows[keep], cols[keep]

    def check(self, rows: np.ndarray, cols: np.ndarray) -> PairViolations:
        """The exact test on candidate pairs, with exact distances, in bounded blocks."""
        rows, cols = self.without_self(rows, cols)
        if len(rows) == 0:
            return _empty()
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
    than numpy: its allocator makes these short-lived gathers several times cheaper. ℓ2 is
    scaled by the largest entry, as ``hypot`` is, so that no square overflows (states 1e154 or
    more apart would get an infinite distance, hiding every violation) or underflows (states
    1e-154 or less apart would get 0, or a subnormal, and false alarms)."""
    magnitude = diff.abs()
    largest = magnitude.amax(-1)
    if p == math.inf:
        return largest.numpy()
    scale = torch.where(largest > 0, largest, 1.0)
    ratio = magnitude / scale[..., None]
    return ((ratio * ratio).sum(-1).sqrt() * scale).numpy()


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


def _candidate_blocks(
    problem: _Problem,
    radius: np.ndarray,
    active: np.ndarray,
    index: PoolIndex | Columns | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate pairs of the cheapest path: the sweep (by buckets for a one-off pool, by the
    sorted order of a prepared one or when outliers crowd the buckets), else dense blocks
    (small problems) or the KD-tree."""
    limit = SWEEP_PER_POINT * (len(problem.a) + len(problem.b))
    if not isinstance(index, PoolIndex):
        ranges = _bucket_ranges(problem, radius, active, index or Columns.of(problem.b))
        if ranges is not None and ranges.count <= limit:
            return _range_blocks(problem, radius, ranges)
        index = PoolIndex(problem.b)
    ranges = _sweep_ranges(problem, radius, active, index)
    if ranges.count <= limit:
        return _range_blocks(problem, radius, ranges)
    if len(problem.a) * len(problem.b) <= DENSE_LIMIT or not _squares_finite(problem):
        return _dense_blocks(problem, active)
    return _tree_blocks(problem, radius, active, index)


def _squares_finite(problem: _Problem) -> bool:
    """Whether the states' squared distances stay within float64's range (the KD-tree refuses
    states near 1e154 and above; dense blocks bound such pairs by 0 and check them exactly)."""
    largest = max(float(np.abs(problem.a).max()), float(np.abs(problem.b).max()))
    return largest < 1e150


@dataclass(frozen=True)
class _Ranges:
    """Candidates as runs of an order of the pool: query ``queries[k]`` against the pool rows
    ``order[lo[k]:hi[k]]``, to be narrowed on further coordinates (``query_columns[j]`` and
    ``pool_columns[j]`` hold the queries' and the pool's values of the j-th)."""

    queries: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    order: np.ndarray
    query_columns: list[np.ndarray]
    pool_columns: list[np.ndarray]

    @property
    def count(self) -> int:
        return int((self.hi - self.lo).sum())


def _sweep_keys(
    problem: _Problem, active: np.ndarray, columns: np.ndarray, coordinates: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The active queries' values on the first coordinate, and every query's values on the
    others. Queries that are the pool's tail rows (``exclude_self``) read them off the pool's
    ``columns`` rather than the rows."""
    m = len(problem.a)
    if problem.exclude_self:
        own = columns[:, problem.self_offset : problem.self_offset + m]
        return own[0, active], list(own[1:])
    return problem.a[active, coordinates[0]], [problem.a[:, c] for c in coordinates[1:]]


def _widened(radius: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``radius`` widened by ``2·eps`` of the magnitudes, so that the rounding of
    ``values ± radius`` cannot drop a pool point at exactly the radius."""
    return radius + 2 * np.finfo(np.float64).eps * (np.abs(values) + radius)


def _sweep_ranges(
    problem: _Problem, radius: np.ndarray, active: np.ndarray, index: PoolIndex
) -> _Ranges:
    """For each active query, the run of the prepared pool's sorted order whose widest
    coordinate lies within its (widened) radius of the query's, by binary search."""
    key, query_columns = _sweep_keys(problem, active, index.columns, index.coordinates)
    reach = _widened(radius[active], key)
    lo = np.searchsorted(index.keys, key - reach, side="left")
    hi = np.searchsorted(index.keys, key + reach, side="right")
    return _Ranges(active, lo, hi, index.order, query_columns, list(index.columns[1:]))


def _bucket_ranges(
    problem: _Problem, radius: np.ndarray, active: np.ndarray, columns: Columns
) -> _Ranges | None:
    """For each active query, the run of the pool (ordered by bucket) in the buckets its
    (widened) interval ``[x - R, x + R]`` meets on the widest coordinate; ``None`` when that
    coordinate's extent overflows.

    The extent from the lowest value ``x0`` is cut into ``C`` buckets of width ``side``; a
    value's bucket ``⌊(x - x0)/side⌋`` is non-decreasing in ``x`` also after rounding (a rounded
    subtraction of a constant and a rounded division by a positive one are monotone), and the
    widening makes ``fl(x - R) <= x' <= fl(x + R)`` for every pool value ``x'`` within ``R``: so
    the buckets from that of ``fl(x - R)`` to that of ``fl(x + R)`` hold every such point. The
    pool is ordered by a counting sort; a query's run is read off the buckets' starts."""
    pool = columns.values[0]
    key, query_columns = _sweep_keys(problem, active, columns.values, columns.coordinates)
    reach = _widened(radius[active], key)
    low, high = key - reach, key + reach
    x0 = min(float(pool.min()), float(low.min()))
    buckets = min(BUCKETS_PER_POINT * len(pool), 2**22)
    side = (max(float(pool.max()), float(high.max())) - x0) / buckets
    if not (math.isfinite(side) and side > 0):
        return None
    bits = max(1, (len(pool) - 1).bit_length())
    bucket = ((pool - x0) / side).astype(np.int64)  # values >= x0: truncation is the floor
    order = np.sort(bucket << bits | np.arange(len(pool))) & ((1 << bits) - 1)
    starts = np.zeros(buckets + 2, dtype=np.int64)
    np.cumsum(np.bincount(bucket, minlength=buckets + 1), out=starts[1:])
    lo = starts[((low - x0) / side).astype(np.int64)]
    hi = starts[((high - x0) / side).astype(np.int64) + 1]
    return _Ranges(active, lo, hi, order, query_columns, list(columns.values[1:]))


def _range_blocks(
    problem: _Problem, radius: np.ndarray, ranges: _Ranges
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate blocks from the runs (whole runs, at most about ``CANDIDATE_BLOCK``
    candidates per block), narrowed coordinate by coordinate by the distance on the other
    indexed coordinates — never above the full distance — compared with ``R(s)`` (squared for
    ℓ2) inflated by the same relative margin as the radius, far above the rounding of these few
    operations. With ``exclude_self``, each query's own row in the pool goes with the first
    narrowing (the exact check removes the other skipped pairs)."""
    squared = problem.p == 2.0
    limits = radius * (1 + 1e-9)
    if squared:
        limits = limits * limits
    counts = ranges.hi - ranges.lo
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        before = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, before + CANDIDATE_BLOCK, side="right")))
        size = counts[start:stop]
        rows = np.repeat(ranges.queries[start:stop], size)
        at = np.repeat(ranges.lo[start:stop] - (ends[start:stop] - size - before), size)
        at += np.arange(len(rows))
        cols = ranges.order[at]
        limit = limits[rows]
        partial: np.ndarray | None = None
        for query, pool in zip(ranges.query_columns, ranges.pool_columns, strict=True):
            step = query[rows] - pool[cols]
            term = step * step if squared else np.abs(step)
            if partial is None:
                partial = term
                keep = partial <= limit
                if problem.exclude_self:  # a query's own row: cols == self_offset + rows
                    keep &= cols - rows != problem.self_offset
            else:
                partial = partial + term if squared else np.maximum(partial, term)
                keep = partial <= limit
            rows, cols, partial, limit = rows[keep], cols[keep], partial[keep], limit[keep]
            if len(rows) == 0:
                break
        yield rows, cols
        start = stop


def _tree_blocks(
    problem: _Problem, radius: np.ndarray, active: np.ndarray, index: PoolIndex
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate blocks within ``radius`` from the pool's KD-tree (on its widest coordinates: a
    coordinate projection never lengthens a difference in ℓ2 or ℓ∞, so no pair is missed), a
    bounded number of candidates per block. Falls back to dense blocks when the radii cover
    most of the pool."""
    a, b, p = problem.a, problem.b, problem.p
    queries = a[:, index.coordinates]
    sample = active[:: max(1, len(active) // 64)]  # estimate the candidate count on ~64 queries
    counts = index.tree.query_ball_point(queries[sample], radius[sample], p=p, return_length=True)
    if counts.sum() > 0.25 * len(sample) * len(b):
        yield from _dense_blocks(problem, active)
        return
    per_query = max(1.0, counts.sum() / len(sample))
    chunk = max(1, int(CANDIDATE_BLOCK / per_query))
    for start in range(0, len(active), chunk):
        part = active[start : start + chunk]
        candidates = index.tree.query_ball_point(queries[part], radius[part], p=p)
        rows = np.repeat(part, [len(c) for c in candidates])
        cols = np.fromiter((j for c in candidates for j in c), dtype=np.int64, count=len(rows))
        yield rows, cols


def _dense_blocks(problem: _Problem, active: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate blocks from all pairs, a few query rows at a time (temporaries within
    ``MEMORY_BUDGET``). A pair is a candidate when it can violate given a *lower bound* of its
    distance: ℓ2 from the Gram identity ``|a|² + |b|² - 2a·b`` minus its rounding error (one
    matrix product), ℓ∞ by ``torch.cdist`` (within an ulp of the exact value). Pruning uses a
    relative margin of 1e-9 — far above these roundings and the few of the test — so every pair
    the exact check would flag stays a candidate."""
    a, b, p = problem.a, problem.b, problem.p
    n, d = len(b), a.shape[1]
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
            # squares beyond float64's range (states near 1e154 and above): no bound but 0
            lower = lower.nan_to_num(nan=0.0, posinf=0.0)
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
