"""Active learning reaches a target error with fewer oracle calls than random sampling."""

from __future__ import annotations

import math

import torch

from lipguard.train.active import RandomFeatureRidge, active_learning, random_sampling


def oracle(x: torch.Tensor) -> torch.Tensor:
    """A gentle slope with two narrow bumps: uniform sampling wastes calls on the slope."""
    t = x[:, 0].double()
    return 0.3 * t + torch.exp(-300 * (t - 0.6) ** 2) - torch.exp(-300 * (t + 0.3) ** 2)


def test_active_learning_needs_fewer_oracle_calls():
    pool = torch.linspace(-1, 1, 2001)[:, None]
    x_test = torch.linspace(-1, 1, 501)[:, None]
    y_test = oracle(x_test)
    target = 0.03
    learner = RandomFeatureRidge(features=300, length_scale=0.05)
    options = dict(learner=learner, per_round=5, budget=150)
    active_calls, random_calls = [], []
    for seed in range(3):
        active = active_learning(oracle, pool, x_test, y_test, tolerance=0.01, seed=seed, **options)
        baseline = random_sampling(oracle, pool, x_test, y_test, seed=seed, **options)
        active_calls.append(active.calls_to_reach(target) or math.inf)
        random_calls.append(baseline.calls_to_reach(target) or math.inf)
    assert sorted(active_calls)[1] < sorted(random_calls)[1]  # medians over seeds
    assert max(active_calls) < math.inf


def test_active_learning_stops_when_confident():
    pool = torch.linspace(-1, 1, 201)[:, None]
    smooth = lambda x: 0.5 * x[:, 0].double()  # noqa: E731
    curve = active_learning(smooth, pool, pool, smooth(pool), tolerance=0.5, budget=100)
    assert curve.stopped_confident
    assert curve.calls[-1] < 100
