"""The runtime monitor: exact pruning, planted violations, drift, tamper-evident storage."""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipguard.bounds import weights_sha256
from lipguard.errors import InvalidArgumentError
from lipguard.monitor import (
    ADWIN,
    AuditStore,
    LipschitzMonitor,
    PageHinkley,
    brute_force_violations,
    find_violations,
)
from lipguard.monitor import pairs as pairs_module

#: module settings that force each candidate path: the sweep, the KD-tree, dense blocks, and a
#: low sweep limit (crowded buckets fall back to the sorted sweep, then to the tree)
PATHS = {
    "sweep": {"SWEEP_PER_POINT": 10**9, "DENSE_LIMIT": 0},
    "crowded": {"SWEEP_PER_POINT": 8, "DENSE_LIMIT": 0},
    "tree": {"SWEEP_PER_POINT": -1, "DENSE_LIMIT": 0},
    "dense": {"SWEEP_PER_POINT": -1, "DENSE_LIMIT": 10**9},
}


@contextlib.contextmanager
def forced(settings: dict[str, int]) -> Iterator[None]:
    """The pair search's module settings replaced while the block runs."""
    saved = {name: getattr(pairs_module, name) for name in settings}
    for name, value in settings.items():
        setattr(pairs_module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(pairs_module, name, value)


@given(
    seed=st.integers(0, 10_000),
    lipschitz=st.floats(0.1, 50.0),
    tolerance=st.floats(0.0, 0.5),
    noise_floor=st.floats(0.0, 0.3),
    norm=st.sampled_from([2.0, float("inf")]),
    path=st.sampled_from(sorted(PATHS)),
    dimension=st.sampled_from([3, 8, 20]),
    budget=st.sampled_from([None, 1, 5_000]),
    spike=st.booleans(),
    worst=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 1e6]),
    index=st.sampled_from(["buckets", "prepared"]),
    far=st.booleans(),
)
def test_pruned_search_equals_brute_force(
    seed,
    lipschitz,
    tolerance,
    noise_floor,
    norm,
    path,
    dimension,
    budget,
    spike,
    worst,
    scale,
    index,
    far,
):
    """Equal to brute force on every path: the sweep (by buckets for a one-off pool, by binary
    search in a prepared index), the tree, dense blocks, tiny memory budgets (one query row, one
    candidate per block), an outlier reward that widens every radius, an outlier state that
    crowds every other pool point into a few buckets, states far from the origin (rounding of
    the sweep's ``x ± R``) and the per-query worst pair."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(size=dimension) * scale
    states = offset + rng.normal(size=(40, dimension))
    pool = offset + rng.normal(size=(60, dimension))
    rewards, pool_rewards = rng.normal(size=40), rng.normal(size=60)
    if spike:
        pool_rewards[7] = 1e4
    if far:
        pool[11] += 1e5 * scale
    settings = {**PATHS[path]}
    if budget is not None:
        settings.update(MEMORY_BUDGET=budget, CANDIDATE_BLOCK=budget)
    with forced(settings):
        found = find_violations(
            states,
            rewards,
            pool,
            pool_rewards,
            lipschitz,
            norm=norm,
            tolerance=tolerance,
            noise_floor=noise_floor,
            worst=worst,
            index=pairs_module.PoolIndex(pool) if index == "prepared" else None,
        )
    expected = brute_force_violations(
        states,
        rewards,
        pool,
        pool_rewards,
        lipschitz,
        norm=norm,
        tolerance=tolerance,
        noise_floor=noise_floor,
    )
    pairs = set(zip(found.first.tolist(), found.second.tolist(), strict=True))
    if not worst:
        assert pairs == expected
        return
    assert pairs <= expected
    per_query = Counter(i for i, _ in expected)
    assert dict(zip(found.first.tolist(), found.count.tolist(), strict=True)) == per_query
    distance = pairs_module._dense_distances(states, pool, norm)
    ratio = np.abs(rewards[:, None] - pool_rewards[None, :]) / distance
    for i, j in pairs:
        assert ratio[i, j] == max(ratio[i, k] for k in range(60) if (i, k) in expected)


def test_buckets_crowded_by_a_far_state_fall_back_to_the_sorted_sweep(monkeypatch):
    """One state far from the others puts every other pool point in one bucket; the search
    falls back to the sorted sweep (binary searches) and still equals brute force."""
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(2000, 6))
    pool[5] += 1e6
    states = pool[:100] + rng.normal(size=(100, 6)) * 1e-3
    pool_rewards = pool[:, 1] * 0.5
    rewards = states[:, 1] * 0.5
    rewards[::7] += 0.05  # violations at distances about 1e-3
    sorted_sweeps = []
    original = pairs_module._sweep_ranges
    monkeypatch.setattr(
        pairs_module,
        "_sweep_ranges",
        lambda *args: sorted_sweeps.append(1) or original(*args),
    )
    found = find_violations(states, rewards, pool, pool_rewards, 1.0)
    expected = brute_force_violations(states, rewards, pool, pool_rewards, 1.0)
    assert sorted_sweeps == [1]
    assert expected
    assert set(zip(found.first.tolist(), found.second.tolist(), strict=True)) == expected


def test_a_spike_in_a_large_batch_stays_small_and_fast():
    """One outlier reward in a 4096×64 batch widens every search radius; the search stays in
    bounded blocks (measured in a fresh process: peak memory, wall time)."""
    script = textwrap.dedent("""
        import time
        import numpy as np
        from lipguard.monitor import LipschitzMonitor
        rng = np.random.default_rng(0)
        weights = rng.normal(size=64) / 8
        monitor = LipschitzMonitor(1.0, window=1024, tolerance=0.0, pairs="worst", drift=False)
        states = rng.normal(size=(1024, 64))
        monitor.observe(states, states @ weights)
        states = rng.normal(size=(4096, 64))
        rewards = states @ weights
        rewards[17] += 1e6
        def status(field):
            with open("/proc/self/status") as handle:
                return next(int(line.split()[1]) for line in handle if line.startswith(field))
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset the peak resident size (Linux)
        except OSError:
            pass  # then the peak since start counts: a looser check
        base = status("VmRSS:")
        started = time.perf_counter()
        events = monitor.observe(states, rewards).violations
        seconds = time.perf_counter() - started
        extra = status("VmHWM:") - base
        spike = [e for e in events if e.step == 1041]
        print(len(events), spike[0].details["pairs"], seconds, extra)
    """)
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    events, spike_pairs, seconds, extra_kib = (
        int(output[0]),
        int(output[1]),
        float(output[2]),
        int(output[3]),
    )
    assert spike_pairs > 4000  # the spike violates against nearly everything it meets
    assert 0 < events < 100  # ... and the others only against the spike: one event each at most
    assert extra_kib < 1024 * 1024  # < 1 GiB above the process's baseline
    assert seconds < 10.0  # 1.2-1.8 s here; generous for shared CI machines


def _stream(rng, n, slope):
    states = rng.normal(size=(n, 4))
    return states, states @ slope


def test_planted_violation_is_found_and_a_compliant_stream_is_clean():
    rng = np.random.default_rng(0)
    slope = np.array([0.5, -0.5, 0.3, 0.0])  # ||w||₂ < 1: a 1-Lipschitz reward
    monitor = LipschitzMonitor(1.0, window=256, drift=False)
    for _ in range(10):
        assert monitor.observe(*_stream(rng, 64, slope)).violations == []
    states, rewards = _stream(rng, 64, slope)
    rewards[17] += 5.0  # a spike no 1-Lipschitz function allows next to its neighbours
    found = monitor.observe(states, rewards).violations
    assert found
    assert all(640 + 17 in (e.step, e.details["other"]) for e in found)
    assert all(e.details["ratio"] > 1.0 for e in found)


def test_noise_floor_pairs_are_ignored():
    states = np.array([[0.0, 0.0], [0.001, 0.0], [3.0, 0.0]])
    rewards = np.array([0.0, 0.5, 0.0])  # slope 500 between two points 0.001 apart
    noisy = LipschitzMonitor(1.0, noise_floor=0.01, drift=False).observe(states, rewards)
    assert noisy.violations == []
    strict = LipschitzMonitor(1.0, drift=False).observe(states, rewards)
    assert len(strict.violations) == 1


def test_reference_set_envelope_model_checks_and_state_dependent_bounds(tmp_path):
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(200, 2))
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0]]))  # slope 3
    reference_rewards = model(torch.tensor(reference, dtype=torch.float32)).detach().numpy()[:, 0]
    certified = weights_sha256(model)
    store = AuditStore(tmp_path / "audit.db")
    monitor = LipschitzMonitor(
        lambda s: np.where(s[:, 0] > 0, 4.0, 2.0),  # tighter where s₁ <= 0
        reference=(reference, reference_rewards),
        envelope_radius=1.5,
        model=model,
        weights_sha256=certified,
        store=store,
        drift=False,
    )
    far = np.array([[10.0, 10.0]])
    events = monitor.observe(far, model(torch.tensor(far, dtype=torch.float32)).detach()[:, 0])
    assert events.of_kind("out_of_envelope")
    gradient_alarms = monitor.observe(np.array([[-0.5, 0.0]]), np.array([0.0])).of_kind("gradient")
    assert gradient_alarms[0].details["bound"] == 2.0  # slope 3 > L(s) = 2 where s₁ <= 0
    with torch.no_grad():
        model.weight.add_(0.01)
    changed = monitor.observe(np.array([[0.5, 0.0]]), np.array([1.5])).of_kind("weights_changed")
    assert changed
    assert changed[0].details["action"] == "re-certification required"
    kinds = {record.kind for record in store.records()}
    assert {"out_of_envelope", "gradient", "weights_changed"} <= kinds
    assert store.verify().ok


def test_drift_detectors_fire_after_a_change_and_stay_quiet_otherwise():
    for detector_type in (PageHinkley, ADWIN):
        rng = random.Random(0)
        quiet = detector_type()
        assert not any(quiet.update(float(rng.random() < 0.02)) for _ in range(5000))
        detector = detector_type()
        alarms = [
            t
            for t in range(3000)
            if detector.update(float(rng.random() < (0.02 if t < 1000 else 0.5)))
        ]
        assert alarms, detector_type.__name__
        assert 1000 <= alarms[0] <= 1200, (detector_type.__name__, alarms[0])


def test_batched_drift_updates_equal_one_at_a_time():
    rng = np.random.default_rng(3)
    values = (rng.random(4000) < np.where(np.arange(4000) < 2000, 0.02, 0.4)).astype(float)
    for detector_type in (PageHinkley, ADWIN):
        single, batched = detector_type(), detector_type()
        one = [t for t, v in enumerate(values) if single.update(v)]
        many, offset = [], 0
        for chunk in np.array_split(values, 37):
            many += [offset + i for i in batched.update_many(chunk)]
            offset += len(chunk)
        assert one == many, detector_type.__name__
        assert one


def test_adwin_window_is_capped():
    detector = ADWIN(max_window=100, clock=7)
    detector.update_many(np.zeros(1234))
    for value in np.ones(50):
        detector.update(value)
    assert len(detector.window) <= 100
    assert detector.window[-1] == 1.0


def test_worst_pair_mode_reports_each_offending_observation_once():
    rng = np.random.default_rng(5)
    states = rng.normal(size=(300, 3))
    rewards = 3.0 * states[:, 0] + rng.normal(0, 0.05, 300)  # slope 3 against a bound of 1
    reference = (rng.normal(size=(100, 3)), rng.normal(size=100))
    every = LipschitzMonitor(1.0, window=128, reference=reference, drift=False)
    worst = LipschitzMonitor(1.0, window=128, reference=reference, drift=False, pairs="worst")
    for chunk in np.array_split(np.arange(300), 5):
        all_pairs = every.observe(states[chunk], rewards[chunk]).violations
        per_step = worst.observe(states[chunk], rewards[chunk]).violations
        by_step: dict[int, list] = {}
        for event in all_pairs:
            by_step.setdefault(event.step, []).append(event.details["ratio"])
        assert [e.step for e in per_step] == sorted(by_step)
        for event in per_step:
            assert event.details["ratio"] == max(by_step[event.step])
            assert event.details["pairs"] == len(by_step[event.step])
    with pytest.raises(InvalidArgumentError):
        LipschitzMonitor(1.0, pairs="some")


def test_pair_search_refuses_the_l1_norm_instead_of_measuring_l2():
    from lipguard.errors import InvalidArgumentError
    from lipguard.monitor import brute_force_violations, find_violations

    states, rewards = np.zeros((3, 2)), np.zeros(3)
    for search in (find_violations, brute_force_violations):
        with pytest.raises(InvalidArgumentError, match="ℓ2 or ℓ∞"):
            search(states, rewards, states, rewards, 1.0, norm=1)


NASTY = [
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    1e-308,
    1e-300,
    1.0,
    1.0 + 2**-52,
    -1.0,
    1e8,
    1e8 + 1.5e-8,
    1e150,
    -1e150,
    1e300,
    -1e300,
]


@given(
    data=st.data(),
    size=st.integers(1, 12),
    dimension=st.integers(1, 3),
    lipschitz=st.sampled_from([1e-300, 1e-3, 1.0, 1e3, 1e300]),
    norm=st.sampled_from([2.0, float("inf")]),
    path=st.sampled_from(sorted(PATHS)),
    within=st.booleans(),
    prepared=st.booleans(),
)
def test_extreme_values_never_hide_a_violation(
    data, size, dimension, lipschitz, norm, path, within, prepared
):
    """States and rewards from subnormals, signed zeros, neighbouring floats and values near
    overflow (bucket widths that underflow or overflow, runs at bucket edges, a single pool
    point), against a pool that holds the queries (``exclude_self``) or not, prepared or not:
    equal to brute force."""
    values = st.sampled_from(NASTY)
    rows = st.lists(
        st.lists(values, min_size=dimension, max_size=dimension), min_size=1, max_size=size
    )
    states = np.array(data.draw(rows))
    rewards = np.array(data.draw(st.lists(values, min_size=len(states), max_size=len(states))))
    earlier = np.array(data.draw(rows))  # a window before the queries, or another pool
    earlier_rewards = np.array(
        data.draw(st.lists(values, min_size=len(earlier), max_size=len(earlier)))
    )
    pool, pool_rewards, offset = earlier, earlier_rewards, 0
    if within:
        pool = np.concatenate([earlier, states])
        pool_rewards = np.concatenate([earlier_rewards, rewards])
        offset = len(earlier)
    problem = (states, rewards, pool, pool_rewards, lipschitz)
    index = pairs_module.PoolIndex(pool) if prepared else None
    with np.errstate(all="ignore"), forced(PATHS[path]):
        found = find_violations(
            *problem, norm=norm, exclude_self=within, self_offset=offset, index=index
        )
    with np.errstate(all="ignore"):
        expected = brute_force_violations(*problem, norm=norm)
    if within:  # the pairs a pool that holds the queries skips: (i, offset + j) with j <= i
        expected = {(i, j) for i, j in expected if j < offset or j > i + offset}
    assert set(zip(found.first.tolist(), found.second.tolist(), strict=True)) == expected


@pytest.mark.parametrize("norm", [2.0, float("inf")])
def test_distances_far_beyond_float64_squares_are_exact(norm):
    """States 1e200 apart violate a bound of 1e-300 with rewards 1 apart (a distance computed
    through squares would be infinite and hide it); states 1e-200 apart with rewards 1e-210 apart
    do not violate L = 1 (a squared distance would underflow to 0 and raise a false alarm)."""
    far = np.array([[0.0, 0.0], [1e200, 1e200]])
    found = find_violations(far[:1], np.zeros(1), far[1:], np.ones(1), 1e-300, norm=norm)
    assert found.first.tolist() == [0]
    assert found.distance[0] == pytest.approx(1e200 * (np.sqrt(2) if norm == 2.0 else 1.0))
    near = np.array([[0.0, 0.0], [1e-200, 1e-200]])
    quiet = find_violations(near[:1], np.zeros(1), near[1:], np.full(1, 1e-210), 1.0, norm=norm)
    assert len(quiet.first) == 0
    monitor = LipschitzMonitor(1e-300, norm, window=4, tolerance=0.0, drift=False)
    assert len(monitor.observe(far, np.array([0.0, 1.0])).violations) == 1


def test_columns_in_another_dtype_are_refused():
    """The narrowing's margins assume float64 differences: float32 columns would round them."""
    states = np.random.default_rng(0).normal(size=(5, 3))
    pairs_module.Columns(np.arange(3), states.T.copy())
    with pytest.raises(InvalidArgumentError, match="float64"):
        pairs_module.Columns(np.arange(3), states.T.astype(np.float32))
