"""The monitor's sliding window: the most recent observations, kept ready for pair searches.

Each batch is checked against the window and itself in one search over the *pool* — the window
followed by the batch — and then the window becomes the pool's newest rows. The window keeps
what that search reads, so that a batch costs about its own size rather than the window's:

- the states (float64) in a buffer with room after the window: a batch is converted straight
  into that room, and only when the room runs out is the window moved, into a second buffer
  kept for that (no fresh memory to fault in, no copy of the window per batch);
- the states' values on their widest coordinates (:class:`~lipguard.monitor.pairs.Columns`),
  filled as rows arrive, with the coordinates chosen afresh every ``REINDEX_TURNOVERS`` windows
  (speed only: any coordinates give a sound search).

:meth:`SlidingWindow.stage` and :meth:`SlidingWindow.pool` never change the window (they write
only into its unused room); :meth:`SlidingWindow.commit` does. A batch that fails anywhere in
between leaves the window as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.monitor.pairs import INDEX_DIMENSIONS, Columns, widest_coordinates

#: window turnovers after which the indexed coordinates are chosen afresh
REINDEX_TURNOVERS = 16


@dataclass(frozen=True)
class Pool:
    """The window followed by a batch: states, rewards, bounds ``L(s)``, steps, slacks, the
    states' columns, and where the rows lie in the buffers."""

    states: np.ndarray
    rewards: np.ndarray
    bounds: np.ndarray
    steps: np.ndarray
    slacks: np.ndarray
    columns: Columns
    _buffers: tuple[np.ndarray, np.ndarray]
    _start: int
    _chosen: bool  # the coordinates were chosen afresh for this pool


class SlidingWindow:
    """The newest ``size`` observations (see the module docstring)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._states = np.zeros((0, 0))  # the buffers: states rows, columns (k, capacity)
        self._columns = np.zeros((0, 0))
        self._spare: tuple[np.ndarray, np.ndarray] | None = None
        self._start = self._count = 0  # the window: rows start:start + count
        self._coordinates = np.zeros(0, dtype=np.int64)
        self._seen = 0  # rows committed
        self._reindex_at = 0  # the row count from which the coordinates are chosen afresh
        empty = np.zeros(0)
        self.rewards, self.bounds, self.slacks = empty, empty, empty
        self.steps = np.zeros(0, dtype=np.int64)
        self._staged: tuple[np.ndarray, np.ndarray, int, bool] | None = None

    @property
    def states(self) -> np.ndarray:
        return self._states[self._start : self._start + self._count]

    def stage(self, states: np.ndarray) -> np.ndarray:
        """The batch ``states (m, d)`` converted to float64 into the room after the window (the
        window's rows moved to a buffer with room first, where needed); checked: two
        dimensions, the window's width, real and finite. Its columns are taken while the rows
        are in cache, unless the coordinates are to be chosen afresh (then :meth:`pool` chooses
        them on the whole pool). Returns the converted rows."""
        self._staged = None
        if states.ndim != 2:
            raise ShapeError("observe needs states (N, d) and one reward per state")
        if states.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"states must be real numbers, got {states.dtype}")
        m, width = states.shape
        n = self._count
        if n and width != self._states.shape[1]:
            raise ShapeError(f"states have {width} features, expected {self._states.shape[1]}")
        buffers, start = (self._states, self._columns), self._start
        if start + n + m > len(self._states) or width != self._states.shape[1]:
            buffers, start = self._room(n + m, width), 0
        rows = buffers[0][start + n : start + n + m]
        np.copyto(rows, states, casting="unsafe")  # integers and floats: what astype does
        if not all_finite(rows):
            raise InvalidArgumentError("observations must be finite")
        chosen = n == 0 or self._seen >= self._reindex_at
        if not chosen:  # the batch's columns into the room
            k = len(self._coordinates)
            buffers[1][:k, start + n : start + n + m] = rows.T[self._coordinates]
        self._staged = (buffers[0], buffers[1], start, chosen)
        return rows

    def _room(self, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Buffers with room for ``rows`` and a few more batches, holding the window's rows at
        their start: the spare ones when they are large enough. The room beyond the pool is
        about four batches, but never less than the window (small batches: the window is moved
        once per window of rows) nor more than four windows (a batch larger than the window
        is mostly dropped on commit)."""
        n, batch = self._count, rows - self._count
        kept = min(self.size, rows)  # the window after this batch
        capacity = rows + max(kept, 4 * min(batch, kept))
        spare = self._spare
        if spare is None or spare[0].shape[1] != width or len(spare[0]) < capacity:
            spare = np.empty((capacity, width)), np.empty((INDEX_DIMENSIONS, capacity))
        if n:
            spare[0][:n] = self.states
            spare[1][: len(self._coordinates), :n] = self._window_columns()
        return spare

    def _window_columns(self) -> np.ndarray:
        return self._columns[: len(self._coordinates), self._start : self._start + self._count]

    def pool(
        self,
        rewards: np.ndarray,
        bounds: np.ndarray,
        steps: np.ndarray,
        slacks: np.ndarray,
    ) -> Pool:
        """The window followed by the staged batch (with these rewards, bounds, steps and
        slacks), with its columns; the window is unchanged."""
        if self._staged is None:
            raise RuntimeError("SlidingWindow.pool: stage a batch first")
        states_buffer, columns_buffer, start, chosen = self._staged
        n, m = self._count, len(rewards)
        states = states_buffer[start : start + n + m]
        if chosen:  # apart from the buffer, whose window part changes only on commit
            coordinates = widest_coordinates(states)
            values = np.ascontiguousarray(states.T[coordinates])
        else:  # the batch's were written by `stage`
            coordinates = self._coordinates
            values = columns_buffer[: len(coordinates), start : start + n + m]
        columns = Columns(coordinates, values)
        return Pool(
            states,
            np.concatenate((self.rewards, rewards)),
            np.concatenate((self.bounds, bounds)),
            np.concatenate((self.steps, steps)),
            np.concatenate((self.slacks, slacks)),
            columns,
            (states_buffer, columns_buffer),
            start,
            chosen,
        )

    def commit(self, pool: Pool) -> None:
        """The window becomes the newest ``size`` rows of ``pool``."""
        total = len(pool.states)
        drop = max(0, total - self.size)
        if pool._buffers[0] is not self._states:  # moved: the old buffers become the spare
            self._spare = (self._states, self._columns) if self._states.size else None
            self._states, self._columns = pool._buffers
        self._seen += total - self._count  # the batch's rows
        self._start, self._count = pool._start + drop, total - drop
        self.rewards, self.bounds, self.steps, self.slacks = (
            values[drop:] for values in (pool.rewards, pool.bounds, pool.steps, pool.slacks)
        )
        if pool._chosen:  # kept REINDEX_TURNOVERS windows (once at least 64 rows chose them)
            self._coordinates = pool.columns.coordinates
            self._window_columns()[...] = pool.columns.values[:, drop:]
            turnovers = REINDEX_TURNOVERS if total >= 64 else 0
            self._reindex_at = self._seen + turnovers * self.size
        self._staged = None


def all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite: a finite sum proves it (any inf or NaN makes the sum inf
    or NaN) in one pass; a sum that overflowed falls back to checking every value."""
    return bool(np.isfinite(values.sum()) or np.isfinite(values).all())
