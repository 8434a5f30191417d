"""The price-of-robustness sweep, its Pareto front and matched comparison."""

from __future__ import annotations

import torch
from torch import nn

from lipguard.train import (
    SweepPoint,
    at_matched,
    pareto_front,
    plot_price_of_robustness,
    price_of_robustness,
)


def _point(name, clean, robust, seed=0, options=None):
    return SweepPoint(name, options or {}, seed, clean, robust, 0.1)


def test_pareto_front_keeps_only_undominated_points():
    points = [
        _point("a", 0.9, 0.1),
        _point("b", 0.8, 0.5),
        _point("c", 0.7, 0.4),
        _point("d", 0.6, 0.6),
        _point("e", 0.9, 0.05),
    ]
    assert [p.regularizer for p in pareto_front(points)] == ["a", "b", "d"]


def test_matched_comparison_uses_seed_medians():
    points = [_point("x", 0.9, 0.30, s, {"w": 1}) for s in range(3)]
    points += [_point("x", 0.8, r, s, {"w": 10}) for s, r in enumerate((0.48, 0.5, 0.9))]
    points += [_point("y", 0.85, 0.52, s) for s in range(3)]
    chosen = at_matched(points, target=0.5)
    assert chosen["x"].options == {"w": 10}
    assert chosen["x"].robust_metric == 0.5
    assert chosen["y"].clean_metric == 0.85


def test_sweep_runs_end_to_end(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(300, 5)
    y = (x[:, 0] + x[:, 1] > 0).long()
    grid = {"none": [{}], "aajr": [{"weight": 1.0, "eps": 0.2, "steps": 2}]}
    points = price_of_robustness(
        lambda seed: nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2)),
        (x[:200], y[:200]),
        grid,
        validation=(x[200:], y[200:]),
        robust_eps=0.2,
        seeds=(0, 1),
        epochs=3,
        learning_rate=1e-2,
        progress=False,
    )
    assert len(points) == 4
    assert all(0 <= p.robust_metric <= p.clean_metric + 0.2 for p in points)
    plot_price_of_robustness(points, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 1000
