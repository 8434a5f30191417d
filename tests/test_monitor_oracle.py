"""The monitor against a brute-force oracle: on streams with planted and borderline violations,
``observe`` reports exactly the violating pairs among those it promises to check — each new
observation against the window (the ``window`` observations before its batch), the earlier
observations of its batch and the reference set — whatever path the pair search takes."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lipguard.monitor import AuditError, AuditStore, LipschitzMonitor
from lipguard.monitor import pairs as pairs_module
from lipguard.monitor.drift import ADWIN, PageHinkley
from lipguard.monitor.rounding import FloatingPointSlack
from tests.test_monitor import PATHS as FORCED

#: each forced candidate path, and the one the search chooses itself
PATHS = {"chosen": {}, **FORCED}


def _stream(rng: np.random.Generator, batches: int, dimension: int, lipschitz: float):
    """Batches of (states, rewards) from a function with slope 0.6·L, with planted violations:
    reward spikes, near-duplicate states with different rewards, and pairs placed on the bound
    itself (``|Δr| = L·d`` up to a few ulps, either side)."""
    slope = rng.normal(size=dimension)
    slope *= 0.6 * lipschitz / np.linalg.norm(slope)
    for _ in range(batches):
        size = int(rng.integers(1, 90))
        states = rng.normal(size=(size, dimension))
        rewards = states @ slope
        for _ in range(int(rng.integers(0, 4))):
            kind, i = int(rng.integers(0, 3)), int(rng.integers(0, size))
            if kind == 0:
                rewards[i] += rng.choice([-1, 1]) * rng.uniform(0.5, 5.0)
            elif kind == 1 and size > 1:
                j = (i + 1) % size
                states[j] = states[i] + rng.normal(size=dimension) * 1e-3
                rewards[j] = rewards[i] + rng.uniform(-0.1, 0.1)
            elif size > 1:
                j = (i + 1) % size
                step = rng.normal(size=dimension)
                states[j] = states[i] + step
                distance = float(
                    pairs_module._dense_distances(states[i : i + 1], states[j : j + 1], 2.0)[0, 0]
                )
                rewards[j] = rewards[i] + lipschitz * distance * (
                    1 + rng.choice([-1, 0, 1]) * 1e-15
                )
        yield states, rewards


def _expected(
    history_states: np.ndarray,
    history_rewards: np.ndarray,
    history_slacks: np.ndarray,
    start: int,
    reference: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    window: int,
    lipschitz: float,
    norm: float,
    tolerance: float,
    noise_floor: float,
) -> set[tuple[int, str, int]]:
    """(step, against, other) of every violating pair of the batch at ``start:``, by checking
    every pair the monitor promises to check."""
    found = set()
    steps = np.arange(len(history_states))
    batch = steps[start:]
    pools = [("window", steps[max(0, start - window) : start]), ("batch", batch)]
    for name, ids in pools:
        if len(ids) == 0:
            continue
        distance = pairs_module._dense_distances(history_states[batch], history_states[ids], norm)
        difference = np.abs(history_rewards[batch][:, None] - history_rewards[ids][None, :])
        bound = lipschitz * distance + tolerance
        bound = bound + history_slacks[batch][:, None] + history_slacks[ids][None, :]
        violating = (difference > bound) & (distance >= noise_floor)
        for i, j in zip(*np.nonzero(violating), strict=True):
            if name == "window" or ids[j] > batch[i]:
                found.add((int(batch[i]), name, int(ids[j])))
    if reference is not None:
        states, rewards, slacks = reference
        distance = pairs_module._dense_distances(history_states[batch], states, norm)
        difference = np.abs(history_rewards[batch][:, None] - rewards[None, :])
        bound = lipschitz * distance + tolerance + history_slacks[batch][:, None] + slacks
        violating = (difference > bound) & (distance >= noise_floor)
        for i, j in zip(*np.nonzero(violating), strict=True):
            found.add((int(batch[i]), "reference", int(j)))
    return found


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("seed", range(4))
def test_the_monitor_reports_exactly_the_violations_brute_force_finds(path, seed):
    rng = np.random.default_rng(seed)
    dimension = [3, 8, 12, 20][seed]
    norm = [2.0, np.inf][seed % 2]
    lipschitz = float(rng.uniform(0.5, 5.0))
    window = int(rng.choice([16, 64, 200]))
    tolerance = "auto" if seed == 0 else float(rng.choice([0.0, 0.05]))
    noise_floor = float(rng.choice([0.0, 1e-4]))
    use_reference = seed % 2 == 0
    reference = None
    if use_reference:
        ref_states = rng.normal(size=(120, dimension))
        ref_rewards = ref_states @ (rng.normal(size=dimension) * 0.1)
        ref_rewards[5] += 3.0
        reference = (ref_states, ref_rewards)
    settings = PATHS[path]
    saved = {name: getattr(pairs_module, name) for name in settings}
    for name, value in settings.items():
        setattr(pairs_module, name, value)
    try:
        monitors = {
            mode: LipschitzMonitor(
                lipschitz,
                norm,
                window=window,
                reference=reference,
                tolerance=tolerance,
                noise_floor=noise_floor,
                drift=True,
                pairs=mode,
            )
            for mode in ("all", "worst")
        }
        slack = FloatingPointSlack(None, norm)

        def slacks_of(states: np.ndarray, rewards: np.ndarray) -> np.ndarray:
            if tolerance != "auto":
                return np.zeros(len(states))
            return slack.observations(states, rewards, torch.float64, np.full(len(states), 1.0))

        ref = None
        if reference is not None:
            ref = (*reference, slacks_of(*reference))
        fixed = 0.0 if tolerance == "auto" else float(tolerance)
        states_seen = np.zeros((0, dimension))
        rewards_seen = np.zeros(0)
        slacks_seen = np.zeros(0)
        planted = 0
        for states, rewards in _stream(rng, 14, dimension, lipschitz):
            start = len(states_seen)
            states_seen = np.concatenate([states_seen, states])
            rewards_seen = np.concatenate([rewards_seen, rewards])
            slacks_seen = np.concatenate([slacks_seen, slacks_of(states, rewards)])
            expected = _expected(
                states_seen,
                rewards_seen,
                slacks_seen,
                start,
                ref,
                window,
                lipschitz,
                norm,
                fixed,
                noise_floor,
            )
            planted += len(expected)
            every = monitors["all"].observe(states, rewards).violations
            got = [(e.step, e.details["against"], e.details["other"]) for e in every]
            assert len(got) == len(set(got))  # each pair once
            assert set(got) == expected
            worst = monitors["worst"].observe(states, rewards).violations
            per_step = Counter(step for step, _, _ in expected)
            assert {e.step: e.details["pairs"] for e in worst} == dict(per_step)
            ratios: dict[int, float] = {}
            for event in every:
                ratios[event.step] = max(ratios.get(event.step, 0.0), event.details["ratio"])
            assert {e.step: e.details["ratio"] for e in worst} == ratios
        assert planted > 0  # the stream did plant violations
    finally:
        for name, value in saved.items():
            setattr(pairs_module, name, value)


def test_adwin_shortcut_for_constant_batches_equals_one_at_a_time():
    """The all-clear shortcut (a constant window and batch) gives the same alarms and window as
    value-by-value updates, across clock ticks, window caps and a change after a long calm."""
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [np.zeros(3000), (rng.random(1500) < 0.4).astype(float), np.ones(700), np.zeros(900)]
    )
    for detector_type in (ADWIN, PageHinkley):
        single, batched = detector_type(), detector_type()
        one = [t for t, v in enumerate(values) if single.update(v)]
        many, offset = [], 0
        for chunk in np.array_split(values, 23):
            many += [offset + i for i in batched.update_many(chunk)]
            offset += len(chunk)
        assert one == many, detector_type.__name__
        assert one
        if isinstance(single, ADWIN) and isinstance(batched, ADWIN):
            assert np.array_equal(single.window, batched.window)


def test_detector_copies_are_independent():
    for detector in (ADWIN(clock=4), PageHinkley()):
        detector.update_many(np.zeros(40))
        twin = detector.copy()
        twin.update_many(np.ones(200))
        assert detector.update_many(np.zeros(10)) == []
        if isinstance(detector, ADWIN):
            assert (detector.window == 0).all()
        else:
            assert detector.count == 50


def test_a_failed_store_append_leaves_the_search_state_as_it_was(tmp_path):
    """The window, its buffer and its index only advance after the store append: a batch that
    failed to be logged, observed again, gives what a monitor that never failed gives."""
    rng = np.random.default_rng(11)
    stores = [AuditStore(tmp_path / "failing.db"), AuditStore(tmp_path / "steady.db")]
    failing, steady = (
        LipschitzMonitor(1.0, window=50, store=store, tolerance=0.0) for store in stores
    )
    broken = stores[0].append
    for batch in range(12):
        states = rng.normal(size=(int(rng.integers(5, 40)), 6))
        rewards = states[:, 0] * 0.5
        rewards[int(rng.integers(0, len(states)))] += 4.0
        if batch % 3 == 1:
            stores[0].append = lambda records: (_ for _ in ()).throw(AuditError("disk full"))
            with pytest.raises(AuditError):
                failing.observe(states + 1.0, rewards - 2.0)  # a different batch fails
            stores[0].append = broken
        got = failing.observe(states, rewards).events
        assert got
        assert got == steady.observe(states, rewards).events


@given(
    operations=st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 300), st.sampled_from([0.0, 1.0, 0.5])),
        max_size=40,
    )
)
@settings(max_examples=60, deadline=None)
def test_copies_sharing_a_buffer_behave_as_deep_copies(operations):
    """Copies share the window's buffer until one writes where another's values may lie: any
    interleaving of updates, copies and resets on the copies gives what deep copies give."""
    rng = np.random.default_rng(len(operations))
    shared = [ADWIN(max_window=400, clock=8)]
    deep = [copy.deepcopy(shared[0])]
    for action, count, level in operations:
        k = int(rng.integers(len(shared)))
        if action == 0:  # a copy of one of them joins
            shared.append(shared[k].copy())
            deep.append(copy.deepcopy(deep[k]))
            continue
        if action == 1:
            shared[k].reset()
            deep[k].reset()
            continue
        values = np.full(count, level) if action == 2 else (rng.random(count) < level) * 1.0
        assert shared[k].update_many(values) == deep[k].update_many(values)
        for a, b in zip(shared, deep, strict=True):
            assert np.array_equal(a.window, b.window)
