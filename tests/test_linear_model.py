"""LipschitzLinearModel and row projections (SPEC A4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize

from lipguard.errors import InvalidArgumentError
from lipguard.nn import LipschitzLinearModel, project_rows

NORMS = [(1.0, math.inf), (2.0, 2.0), (math.inf, 1.0)]  # (input norm p, dual q)


@given(
    seed=st.integers(0, 10_000),
    radius=st.floats(0.01, 10.0),
    pair=st.sampled_from(NORMS),
    scale=st.floats(0.01, 100.0),
)
def test_projection_is_feasible_and_optimal(seed, radius, pair, scale):
    _, dual = pair
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 7, generator=generator, dtype=torch.float64) * scale
    projected = project_rows(weight, radius, dual)
    norms = torch.linalg.vector_norm(projected, ord=dual, dim=1)
    assert bool((norms <= radius).all())
    for row in range(3):
        if float(torch.linalg.vector_norm(weight[row], ord=dual)) <= radius:
            assert torch.equal(projected[row], weight[row])  # inside: unchanged
    # Optimality of a Euclidean projection onto a convex set: <w - p, z - p> <= 0 for every
    # feasible z. Check random feasible points (scaled into the ball).
    candidates = torch.randn(200, 7, generator=generator, dtype=torch.float64)
    candidates *= radius / torch.linalg.vector_norm(candidates, ord=dual, dim=1, keepdim=True)
    candidates *= torch.rand(200, 1, generator=generator, dtype=torch.float64)
    for row in range(3):
        inner = (candidates - projected[row]) @ (weight[row] - projected[row])
        assert float(inner.max()) <= 1e-9 * (1 + float(weight[row].abs().max()) ** 2)


@pytest.mark.parametrize(("norm", "dual"), NORMS)
def test_forward_is_lipschitz_with_the_certified_constant(norm, dual):
    model = LipschitzLinearModel(6, 2, lipschitz=0.3, norm=norm)
    with torch.no_grad():
        model.weight.mul_(100)
    bound = model.certified_lipschitz()
    assert bound.sound
    assert bound.value <= 0.3
    assert bound.norm == norm
    x, y = torch.randn(2, 500, 6)
    change = (model(x) - model(y)).abs().amax(dim=1)
    distance = torch.linalg.vector_norm(x - y, ord=norm, dim=1)
    assert bool((change <= bound.value * distance * (1 + 1e-5)).all())


def test_projected_gradient_descent_finds_the_constrained_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=generator, dtype=torch.float64)
    w_true = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    y = x @ w_true + 0.1 * torch.randn(200, generator=generator, dtype=torch.float64)
    radius = 1.5  # the unconstrained solution has norm ~3.8

    model = LipschitzLinearModel(5, 1, lipschitz=radius, norm=2, bias=False).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2000):
        loss = ((model(x).squeeze(-1) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.project_()

    xn, yn = x.numpy(), y.numpy()
    oracle = minimize(
        lambda w: np.mean((xn @ w - yn) ** 2),
        np.zeros(5),
        constraints=[{"type": "ineq", "fun": lambda w: radius**2 - w @ w}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    learned = model.weight.detach().squeeze(0).numpy()
    assert np.allclose(learned, oracle.x, atol=1e-4)
    assert np.linalg.norm(learned) <= radius


def test_errors():
    with pytest.raises(InvalidArgumentError, match="norm"):
        LipschitzLinearModel(3, norm=3)
    with pytest.raises(InvalidArgumentError, match="lipschitz"):
        LipschitzLinearModel(3, lipschitz=-1)
    with pytest.raises(InvalidArgumentError, match="radius"):
        project_rows(torch.ones(2, 2), 0.0, 2.0)
