"""Drift detectors for monitoring streams: Page–Hinkley and ADWIN.

Both consume one value at a time (``update``, the violation indicator or the observed ratio)
and return ``True`` when they detect a change; then they reset and start afresh.
``update_many`` consumes a batch with the same result as value-by-value updates and returns the
positions of the alarms.

- :class:`PageHinkley` (Page, 1954): cumulative deviation ``m_t = Σ (x_i - x̄_i - δ)`` against its
  running minimum; alarm when ``m_t - min m > threshold``. Detects increases of the mean.
- :class:`ADWIN` (Bifet & Gavaldà, 2007): keeps a window and drops its older part whenever two
  sub-windows have means further apart than ``ε_cut = sqrt(2/m·σ²·ln(2/δ')) + 2/(3m)·ln(2/δ')``
  (``m`` the harmonic mean of their sizes, ``δ' = δ/ln n`` as in ADWIN2); detects changes in
  either direction.
  This implementation checks every split with cumulative sums (``O(n)`` per check, window capped
  at ``max_window``) instead of exponential histograms: exact for the bound, simple to verify.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike

from lipguard import _checks

_Detector = TypeVar("_Detector", "PageHinkley", "ADWIN")


class PageHinkley:
    """Page–Hinkley test for an increase of the mean (see the module docstring): ``delta`` the
    tolerated drift per value, ``threshold`` the alarm level of ``m_t - min m``, no alarm before
    ``min_samples`` values."""

    def __init__(
        self, delta: float = 0.005, threshold: float = 50.0, min_samples: int = 30
    ) -> None:
        self.delta = float(delta)
        self.threshold = _checks.positive_float("threshold", threshold)
        self.min_samples = _checks.positive_int("min_samples", min_samples)
        self.reset()

    def reset(self) -> None:
        self.count, self.mean, self.cumulative, self.minimum = 0, 0.0, 0.0, 0.0

    def copy(self) -> PageHinkley:
        """An independent copy (its state is four numbers)."""
        return _shallow_copy(self)

    def update(self, value: float) -> bool:
        self.count += 1
        self.mean += (value - self.mean) / self.count
        self.cumulative += value - self.mean - self.delta
        self.minimum = min(self.minimum, self.cumulative)
        if self.count >= self.min_samples and self.cumulative - self.minimum > self.threshold:
            self.reset()
            return True
        return False

    def update_many(self, values: ArrayLike) -> list[int]:
        """Vectorised :meth:`update`: cumulative sums over the batch, restarted after each
        alarm."""
        values = np.asarray(values, dtype=np.float64)
        alarms: list[int] = []
        start = 0
        while start < len(values):
            segment = values[start:]
            counts = self.count + np.arange(1, len(segment) + 1)
            means = (self.mean * self.count + np.cumsum(segment)) / counts
            cumulative = self.cumulative + np.cumsum(segment - means - self.delta)
            minima = np.minimum(self.minimum, np.minimum.accumulate(cumulative))
            fired = np.flatnonzero(
                (counts >= self.min_samples) & (cumulative - minima > self.threshold)
            )
            if fired.size == 0:
                self.count, self.mean = int(counts[-1]), float(means[-1])
                self.cumulative, self.minimum = float(cumulative[-1]), float(minima[-1])
                break
            alarms.append(start + int(fired[0]))
            self.reset()
            start += int(fired[0]) + 1
        return alarms


class ADWIN:
    """ADWIN2's adaptive window (see the module docstring): ``delta`` the confidence, windows of
    at most ``max_window`` values, splits checked every ``clock`` values and only where both
    sides hold at least ``min_split``."""

    def __init__(
        self, delta: float = 0.002, max_window: int = 5000, clock: int = 16, min_split: int = 16
    ) -> None:
        self.delta = _checks.probability("delta", delta)
        self.max_window = _checks.positive_int("max_window", max_window)
        self.clock = _checks.positive_int("clock", clock)
        self.min_split = _checks.positive_int("min_split", min_split)
        # the window is buffer[first:last]; a full buffer is replaced by a fresh one holding the
        # window (amortised O(1)). Copies share the buffer: `_written` (shared by them, in a list)
        # is the end of what any of them wrote, and one that would write below it — where another
        # copy's values may lie — first moves its window to a fresh buffer (copy-on-write).
        self._buffer = np.empty(2 * self.max_window)
        self._written = [0]
        self._first = self._last = 0
        self._single: float | None = math.nan  # the window's one value; None: several; NaN: unknown
        self.seen = 0

    @property
    def window(self) -> np.ndarray:
        return self._buffer[self._first : self._last]

    def reset(self) -> None:
        self._first = self._last = 0
        self._single = math.nan

    def copy(self) -> ADWIN:
        """An independent copy, in O(1): the buffer is shared and copied on write."""
        return _shallow_copy(self)

    def _extend(self, values: np.ndarray) -> None:
        """Append values, keeping at most ``max_window`` of the newest."""
        self._single = math.nan
        for begin in range(0, len(values), self.max_window):
            chunk = values[begin : begin + self.max_window]
            end = self._last + len(chunk)
            if self._last < self._written[0] or end > len(self._buffer):
                size = self._last - self._first  # the window moves to a buffer of its own
                buffer = np.empty(2 * self.max_window)
                buffer[:size] = self.window
                self._buffer, self._written = buffer, [0]
                self._first, self._last, end = 0, size, size + len(chunk)
            self._buffer[self._last : end] = chunk
            self._last = self._written[0] = end
            self._first = max(self._first, end - self.max_window)

    def _holds_only(self, value: float) -> bool:
        """Whether every value in the window equals ``value`` (an empty window does); the
        window's only value is remembered until the window changes."""
        if self._first == self._last:
            return True
        if self._single is not None and math.isnan(self._single):
            self._single = float(self.window[0]) if _constant(self.window) else None
        return self._single == value

    def update_many(self, values: ArrayLike) -> list[int]:
        """:meth:`update` for a batch: the window is extended up to each clock tick at once.
        When the window and the batch hold one value only (the all-clear stream), no check can
        find a change and the batch is appended at once."""
        values = np.asarray(values, dtype=np.float64)
        if values.size and _constant(values) and self._holds_only(float(values[0])):
            self._extend(values)
            self._single = float(values[0])
            self.seen += len(values)
            return []
        alarms: list[int] = []
        start = 0
        while start < len(values):
            until_tick = self.clock - self.seen % self.clock
            segment = values[start : start + until_tick]
            self._extend(segment[:-1])
            self.seen += len(segment) - 1
            if self.update(float(segment[-1])):
                alarms.append(start + len(segment) - 1)
            start += len(segment)
        return alarms

    def update(self, value: float) -> bool:
        self._extend(np.array([float(value)]))
        self.seen += 1
        if self.seen % self.clock or len(self.window) < 2 * self.min_split:
            return False
        values = self.window
        n = len(values)
        if self._holds_only(float(values[0])):
            return False  # a constant window has no change (the common all-clear indicator)
        prefix = np.cumsum(values)
        splits = np.arange(self.min_split, n - self.min_split + 1)
        left_mean = prefix[splits - 1] / splits
        right_mean = (prefix[-1] - prefix[splits - 1]) / (n - splits)
        variance = float(values.var())
        harmonic = 1.0 / (1.0 / splits + 1.0 / (n - splits))
        log_term = math.log(2.0 * math.log(n) / self.delta) if n > 2 else math.log(2 / self.delta)
        cut = np.sqrt(2.0 / harmonic * variance * log_term) + 2.0 / (3.0 * harmonic) * log_term
        changed = np.abs(left_mean - right_mean) > cut
        if not changed.any():
            return False
        self._first += int(splits[np.nonzero(changed)[0][-1]])  # drop the older part
        self._single = math.nan
        return True


def _shallow_copy(detector: _Detector) -> _Detector:
    """A new detector with the same attributes (``copy.copy`` without its protocol lookups)."""
    twin = object.__new__(type(detector))
    twin.__dict__.update(detector.__dict__)
    return twin


def _constant(values: np.ndarray) -> bool:
    """Whether the non-empty ``values`` are all one value (NaN never equals)."""
    return bool(values.min() == values[0] and values.max() == values[0])
