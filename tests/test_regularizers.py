"""Regularizers against their closed forms (REFERENCES.md), AAJR's oracles and JVP checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipguard.attacks import CustomObjective
from lipguard.errors import InvalidArgumentError
from lipguard.nn import LipschitzMLP
from lipguard.train import (
    AAJR,
    REGULARIZERS,
    Classification,
    GradientPenalty,
    JacobianPenalty,
    Preference,
    Regression,
    make_regularizer,
)


def test_hoffman_estimator_is_unbiased_for_half_the_frobenius_norm():
    torch.manual_seed(0)
    model = nn.Linear(6, 4, bias=False)
    x = torch.randn(4000, 6)
    penalty = JacobianPenalty(projections=1)
    estimate = 0.5 * penalty.frobenius(model, Classification(), x, create_graph=False).mean()
    exact = 0.5 * float(model.weight.detach().pow(2).sum())
    assert float(estimate) == pytest.approx(exact, rel=0.05)
    exact_mode = JacobianPenalty(exact=True).frobenius(model, Classification(), x[:3])
    assert exact_mode.detach().numpy() == pytest.approx([2 * exact] * 3, rel=1e-5)


def test_gradient_penalty_on_a_linear_reward():
    torch.manual_seed(0)
    reward = nn.Linear(5, 1)
    x, y = torch.randn(16, 5), torch.randn(16)
    result = GradientPenalty(weight=1.0, lipschitz=0.5)(reward, Regression(), x, y)
    excess = max(0.0, float(reward.weight.detach().norm()) - 0.5)
    assert result.penalty == pytest.approx(excess**2, rel=1e-5)
    loose = GradientPenalty(weight=1.0, lipschitz=100.0)(reward, Regression(), x, y)
    assert loose.penalty == 0.0


def test_aajr_on_a_linear_map_is_at_most_sigma_max_squared():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for norm in ("inf", 2):
        value = AAJR(eps=0.3, norm=norm, steps=5).penalty(model, Classification(), x, y)
        sigma = float(torch.linalg.matrix_norm(model.weight.detach(), 2))
        assert 0 < float(value.detach()) <= sigma**2 * (1 + 1e-5)


def test_aajr_penalises_only_the_attacked_output():
    """f = (a·x, b·x), b ⟂ a, adversary on output 1: AAJR = ||a||², Jacobian = ||a||² + ||b||²."""
    a = torch.tensor([1.0, 2.0, 0.0, 0.0])
    b = torch.tensor([0.0, 0.0, 3.0, -1.0])
    model = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.stack([a, b]))
    x, y = torch.randn(8, 4), torch.zeros(8)
    first = lambda y: CustomObjective(lambda out, _: out[:, 0])  # noqa: E731
    # no random start, a ball too large to project: every step is exactly along a
    aajr = AAJR(eps=10.0, norm=2, steps=3, step_size=0.5, objective=first, random_start=False)
    value = aajr.penalty(model, Classification(), x, y)
    assert float(value.detach()) == pytest.approx(float(a @ a), rel=1e-5)
    jacobian = JacobianPenalty(exact=True).frobenius(model, Classification(), x)
    assert float(jacobian[0].detach()) == pytest.approx(float(a @ a + b @ b), rel=1e-5)


def test_aajr_one_l2_step_from_zero_is_the_squared_gradient():
    torch.manual_seed(0)
    reward = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(10, 4), torch.zeros(10)
    up = lambda y: CustomObjective(lambda out, _: out)  # noqa: E731
    aajr = AAJR(eps=0.01, norm=2, steps=1, step_size=0.01, objective=up, random_start=False)
    value = aajr.penalty(reward, Regression(), x, y)
    points = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(reward(points).sum(), points)
    assert float(value.detach()) == pytest.approx(float(gradient.pow(2).sum(1).mean()), rel=1e-5)


def test_jvp_matches_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, u = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    _, tangent = torch.func.jvp(model, (x,), (u,))
    h = 1e-6
    difference = (model(x + h * u) - model(x - h * u)) / (2 * h)
    assert tangent.detach().numpy() == pytest.approx(difference.detach().numpy(), abs=1e-8)


def test_aajr_guards_zero_steps():
    model = nn.Linear(3, 2)
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    zero = lambda y: CustomObjective(lambda out, _: 0 * out.sum(1))  # noqa: E731
    result = AAJR(eps=0.1, steps=3, objective=zero)(model, Classification(), x, y)
    assert math.isfinite(float(result.total.detach()))
    result.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_every_regularizer_gives_a_differentiable_loss(name):
    torch.manual_seed(0)
    model = LipschitzMLP(4, 3, hidden=(8,), lipschitz=2.0)
    options = {"eps": 0.1, "steps": 2} if name in ("pgd_at", "trades", "aajr") else {}
    regularizer = make_regularizer(name, **options)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    result = regularizer(model, Classification(), x, y, torch.Generator().manual_seed(0))
    result.total.backward()
    assert math.isfinite(result.task_loss)
    assert result.penalty >= 0 or name == "pgd_at"
    assert any(p.grad is not None for p in model.parameters())


def test_preference_task_and_refusals():
    torch.manual_seed(0)
    reward = nn.Linear(3, 1)
    pairs, labels = torch.randn(6, 2, 3), torch.randint(0, 2, (6,)).float()
    result = make_regularizer("aajr", eps=0.1, steps=2)(reward, Preference(), pairs, labels)
    assert math.isfinite(float(result.total.detach()))
    with pytest.raises(InvalidArgumentError):
        make_regularizer("constraint")(
            nn.Linear(3, 2), Classification(), torch.randn(2, 3), torch.zeros(2, dtype=torch.long)
        )
    with pytest.raises(InvalidArgumentError):
        make_regularizer("nope")
