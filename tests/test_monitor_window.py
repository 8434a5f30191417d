"""The monitor's sliding window: the newest rows, their columns, conversion and transactions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.monitor import AuditError, AuditStore, LipschitzMonitor
from lipguard.monitor import window as window_module
from lipguard.monitor.window import SlidingWindow


@contextlib.contextmanager
def _coordinates_chosen_every(turnovers: int) -> Iterator[None]:
    saved = window_module.REINDEX_TURNOVERS
    window_module.REINDEX_TURNOVERS = turnovers
    try:
        yield
    finally:
        window_module.REINDEX_TURNOVERS = saved


def _observe(window: SlidingWindow, states: np.ndarray, first_step: int) -> None:
    rows = window.stage(states)
    m = len(rows)
    steps = first_step + np.arange(m)
    pool = window.pool(rows[:, 0].copy(), np.ones(m), steps, np.zeros(m))
    window.commit(pool)


def _assert_consistent(window: SlidingWindow, stream: np.ndarray) -> None:
    """The window holds the stream's newest rows, and its columns are those rows' values."""
    newest = stream[-window.size :]
    np.testing.assert_array_equal(window.states, newest)
    np.testing.assert_array_equal(window.rewards, newest[:, 0])
    np.testing.assert_array_equal(window.steps, np.arange(len(stream))[-window.size :])
    coordinates = window._coordinates
    np.testing.assert_array_equal(window._window_columns(), newest.T[coordinates])


@given(
    size=st.integers(1, 300),
    batches=st.lists(st.integers(1, 700), min_size=1, max_size=25),
    width=st.integers(1, 12),
    reindex=st.sampled_from([0, 1, 16]),
)
@settings(max_examples=60, deadline=None)
def test_the_window_holds_the_newest_rows_whatever_the_batch_sizes(size, batches, width, reindex):
    """Batches smaller and larger than the window, the room running out (the window moving to
    the spare buffers and back), coordinates re-chosen every turnover or never."""
    rng = np.random.default_rng(size + width)
    window = SlidingWindow(size)
    with _coordinates_chosen_every(reindex):
        stream = np.zeros((0, width))
        for count in batches:
            states = rng.normal(size=(count, width)) * rng.uniform(0.1, 10, size=width)
            _observe(window, states, len(stream))
            stream = np.concatenate([stream, states])
            _assert_consistent(window, stream)


def test_a_staged_batch_leaves_the_window_as_it_was_until_committed():
    """Staging writes only into the room after the window, also when the room runs out or the
    coordinates are chosen afresh: a batch dropped before commit changes nothing."""
    rng = np.random.default_rng(1)
    with _coordinates_chosen_every(0):  # afresh for every batch
        window = SlidingWindow(50)
        stream = rng.normal(size=(50, 5))
        _observe(window, stream, 0)
        for batch in range(30):
            dropped = rng.normal(size=(int(rng.integers(1, [20, 200][batch % 2])), 5)) * 100.0
            rows = window.stage(dropped)
            steps = len(stream) + np.arange(len(rows))
            window.pool(rows[:, 0].copy(), np.ones(len(rows)), steps, rows[:, 0].copy())
            _assert_consistent(window, stream)  # staged and pooled, never committed
            kept = rng.normal(size=(int(rng.integers(1, [10, 120][batch % 3 == 0])), 5))
            _observe(window, kept, len(stream))
            stream = np.concatenate([stream, kept])
            _assert_consistent(window, stream)


def test_states_are_converted_as_astype_converts_them():
    window = SlidingWindow(10)
    for values in (
        np.arange(12, dtype=np.int32).reshape(4, 3),
        np.array([[True, False, True]]),
        np.array([[0.1, 1e-45, 3.4e38]], dtype=np.float32),
    ):
        np.testing.assert_array_equal(window.stage(values), values.astype(np.float64))


@pytest.mark.parametrize(
    ("states", "error", "message"),
    [
        (np.ones((2, 3), dtype=np.complex128), InvalidArgumentError, "real numbers"),
        (np.array([["a", "b", "c"]]), InvalidArgumentError, "real numbers"),
        (np.array([[1.0, np.nan, 0.0]]), InvalidArgumentError, "finite"),
        (np.array([[1.0, np.inf, 0.0]], dtype=np.float32), InvalidArgumentError, "finite"),
        (np.array([[3e38, 3e38, 3e38]], dtype=np.float32), None, None),  # the sum overflows
        (np.ones(3), ShapeError, r"\(N, d\)"),
        (np.ones((2, 4)), ShapeError, "4 features, expected 3"),
    ],
)
def test_bad_states_are_refused_by_name_and_change_nothing(states, error, message):
    window = SlidingWindow(10)
    first = np.arange(6.0).reshape(2, 3)
    _observe(window, first, 0)
    if error is None:
        assert np.isfinite(window.stage(states)).all()
        return
    with pytest.raises(error, match=message):
        window.stage(states)
    np.testing.assert_array_equal(window.states, first)


def test_failures_mid_batch_with_coordinates_chosen_afresh_change_nothing(tmp_path):
    """A monitor whose store fails on every third batch, with the window's coordinates chosen
    afresh at every turnover, reports what a monitor that never failed reports."""
    rng = np.random.default_rng(5)
    with _coordinates_chosen_every(1):
        stores = [AuditStore(tmp_path / "failing.db"), AuditStore(tmp_path / "steady.db")]
        failing, steady = (
            LipschitzMonitor(1.0, window=40, store=store, tolerance=0.0) for store in stores
        )
        broken = stores[0].append
        for batch in range(40):
            scale = rng.uniform(0.1, 10, size=6)  # the widest coordinates move around
            states = rng.normal(size=(int(rng.integers(5, [12, 60][batch % 4 == 0])), 6)) * scale
            rewards = states[:, int(rng.integers(0, 6))] * 0.5
            rewards[int(rng.integers(0, len(states)))] += 4.0
            states[1] = states[0] + 1e-3  # a near-duplicate of a state, with another reward
            rewards[1] = rewards[0] + 0.5
            if batch % 3 == 1:
                stores[0].append = lambda records: (_ for _ in ()).throw(AuditError("disk full"))
                with pytest.raises(AuditError):
                    failing.observe(states[::-1] * 3.0, rewards - 2.0)
                stores[0].append = broken
            got = failing.observe(states, rewards).events
            assert any(event.step == failing.step - len(states) for event in got)
            assert got == steady.observe(states, rewards).events


def test_room_is_sized_by_the_window_not_only_by_the_batch():
    """A batch far larger than the window gets room for itself and a few windows, not for four
    more such batches; batches far smaller than the window move it once per window of rows."""
    window = SlidingWindow(100)
    _observe(window, np.zeros((50_000, 2)), 0)
    assert len(window._states) <= 50_000 + 4 * 100
    small = SlidingWindow(1000)
    _observe(small, np.zeros((1000, 2)), 0)
    moves, buffer = 0, small._states
    for step in range(200):
        _observe(small, np.ones((5, 2)), 1000 + 5 * step)
        moves += small._states is not buffer
        buffer = small._states
    assert moves <= 2  # 1000 rows of batches of 5: the window moved about once
