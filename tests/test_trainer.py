"""The trainer: every task, robust evaluation, certification, early stopping, divergence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipguard.nn import LipschitzMLP
from lipguard.train import DivergenceError, fit, oscillation


@pytest.fixture(scope="module")
def digits(shuffled_digits):
    x, y = shuffled_digits
    return x[:1000], y[:1000]


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_adversarial_training_buys_robust_accuracy(digits):
    options = dict(
        epochs=20,
        batch_size=64,
        learning_rate=3e-3,
        robust_eps=0.1,
        bounds=(0.0, 1.0),
        progress=False,
    )
    plain = fit(_mlp(), digits, "classification", "none", **options)
    robust = fit(
        _mlp(),
        digits,
        "classification",
        "pgd_at",
        regularizer_options={"eps": 0.1, "steps": 5, "bounds": (0.0, 1.0)},
        **options,
    )
    last_plain, last_robust = plain.history[-1], robust.history[-1]
    assert last_plain.clean_metric > 0.9
    assert last_robust.robust_metric > last_plain.robust_metric + 0.1
    assert len(robust.history) == 20
    assert robust.history[-1].gradient_norm_mean > 0


def test_aajr_trains_and_lowers_the_adversarial_jacobian(digits):
    options = dict(epochs=4, learning_rate=3e-3, progress=False, seed=1)
    plain = fit(_mlp(1), digits, "classification", "none", **options)
    aajr = fit(
        _mlp(1),
        digits,
        "classification",
        "aajr",
        regularizer_options={"weight": 1.0, "eps": 0.1, "steps": 3},
        **options,
    )
    assert aajr.history[-1].clean_metric > 0.8
    assert aajr.history[-1].gradient_norm_mean < plain.history[-1].gradient_norm_mean


def test_constrained_regression_is_certified():
    torch.manual_seed(0)
    x = torch.randn(512, 3)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1]
    model = LipschitzMLP(3, 1, hidden=(32,), lipschitz=1.5)
    result = fit(
        model,
        (x, y),
        "regression",
        "constraint",
        epochs=10,
        learning_rate=1e-2,
        certify=True,
        progress=False,
    )
    assert result.history[-1].clean_metric < 0.1  # MSE
    assert all(m.certified_lipschitz <= 1.5 for m in result.history)
    assert result.history[-1].gradient_norm_max <= 1.5


def test_preference_task_learns_a_reward():
    torch.manual_seed(0)
    w = torch.tensor([1.0, -2.0, 0.5])
    pairs = torch.randn(800, 2, 3)
    labels = (pairs[:, 0] @ w > pairs[:, 1] @ w).float()
    reward = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    result = fit(
        reward,
        (pairs, labels),
        "preference",
        "gradient_penalty",
        regularizer_options={"weight": 0.1, "lipschitz": 5.0},
        epochs=15,
        learning_rate=1e-2,
        progress=False,
    )
    assert result.history[-1].clean_metric > 0.9


def test_early_stopping_restores_the_best_weights():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = x[:, 0] + 0.01 * torch.randn(200)
    model = nn.Sequential(nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 1))
    result = fit(
        model, (x, y), "regression", epochs=60, learning_rate=3e-2, patience=2, progress=False
    )
    assert result.stopped_early
    best = result.history[result.best_epoch].validation_loss
    assert min(m.validation_loss for m in result.history) == best


def test_divergence_stops_with_the_last_good_weights():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = 1e3 * torch.randn(256)
    model = nn.Linear(4, 1)
    with pytest.raises(DivergenceError, match="diverged"):
        fit(
            model,
            (x, y),
            "regression",
            epochs=5,
            learning_rate=1e6,
            divergence_factor=10.0,
            progress=False,
        )
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_oscillation_metric():
    assert oscillation([5, 4, 3, 2, 1]).sign_change_rate == 0.0
    assert oscillation([1, 2, 1, 2, 1, 2]).sign_change_rate == 1.0
    assert oscillation([1.0] * 20).variance == 0.0
