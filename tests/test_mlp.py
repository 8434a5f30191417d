"""LipschitzMLP: the bound split over layers, never exceeded, and reached."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lipguard.errors import InvalidArgumentError
from lipguard.linalg import mul_up
from lipguard.nn import LipschitzMLP, split_lipschitz

COMBINATIONS = [
    (layer, activation)
    for layer in ("spectral", "orthogonal", "svd")
    for activation in ("groupsort", "maxmin", "relu")
]


def gradient_norms(model, x: torch.Tensor) -> torch.Tensor:
    points = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(points).sum(), points)
    return gradient.norm(dim=1)


def steepest_gradient(model, x: torch.Tensor, steps: int = 30) -> float:
    """Gradient ascent on ||∇f(x)||: a witnessed lower bound on the Lipschitz constant."""
    points = x.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([points], lr=0.05)
    best = 0.0
    for _ in range(steps):
        (gradient,) = torch.autograd.grad(model(points).sum(), points, create_graph=True)
        norms = gradient.norm(dim=1)
        best = max(best, float(norms.detach().max()))
        optimizer.zero_grad()
        (-norms.sum()).backward()
        optimizer.step()
    return best


@given(lipschitz=st.floats(1e-3, 1e3), parts=st.integers(1, 12))
def test_split_multiplies_back_to_at_most_the_bound(lipschitz, parts):
    factors = split_lipschitz(lipschitz, parts)
    product = 1.0
    for factor in factors:
        product = mul_up(product, factor)
    assert product <= lipschitz
    assert product >= lipschitz * (1 - 1e-12)
    assert all(f == pytest.approx(lipschitz ** (1 / parts), rel=1e-12) for f in factors)


@pytest.mark.parametrize(("layer", "activation"), COMBINATIONS)
def test_certified_bound_is_within_target(layer, activation):
    model = LipschitzMLP(5, 2, (8, 8), lipschitz=4.0, layer=layer, activation=activation)
    bound = model.certified_lipschitz()
    assert bound.sound
    assert bound.method == "product"
    assert bound.value <= 4.0


@given(
    combination=st.sampled_from(COMBINATIONS),
    hidden=st.lists(st.sampled_from([4, 8, 12]), min_size=0, max_size=3),
    lipschitz=st.floats(0.1, 10.0),
    seed=st.integers(0, 10_000),
)
def test_gradient_ascent_never_exceeds_the_certificate(combination, hidden, lipschitz, seed):
    layer, activation = combination
    torch.manual_seed(seed)
    model = LipschitzMLP(
        6, 1, hidden, lipschitz=lipschitz, layer=layer, activation=activation, group_size=4
    )
    certified = model.certified_lipschitz().value
    assert certified <= lipschitz
    x = torch.randn(32, 6) * 3
    assert steepest_gradient(model, x) <= certified * (1 + 1e-5)
    with torch.no_grad():  # finite differences over random pairs, in float64
        model64 = model.double()
        a, b = torch.randn(2, 256, 6, dtype=torch.float64)
        ratio = (model64(a) - model64(b)).norm(dim=1) / (a - b).norm(dim=1)
        assert float(ratio.max()) <= certified * (1 + 1e-9)


def test_orthogonal_group_sort_network_reaches_its_bound_everywhere():
    model = LipschitzMLP(16, 1, (16, 16), lipschitz=3.0, layer="orthogonal", group_size=4)
    norms = gradient_norms(model, torch.randn(100, 16))
    assert float(norms.min()) >= 0.95 * 3.0
    assert float(norms.max()) <= 3.0


def test_spectral_group_sort_network_learns_a_slope_at_its_bound():
    torch.manual_seed(0)
    model = LipschitzMLP(4, 1, (32, 32), lipschitz=2.0, layer="spectral")
    x = torch.randn(512, 4)
    target = 2.0 * x[:, :1]  # the steepest function the bound allows
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = ((model(x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(gradient_norms(model, x).max()) >= 0.95 * 2.0
    assert model.certified_lipschitz().value <= 2.0


def test_no_hidden_layer_is_a_single_constrained_layer():
    model = LipschitzMLP(3, 2, (), lipschitz=0.5)
    assert len(model) == 1
    assert model.certified_lipschitz().value <= 0.5


class TestErrors:
    def test_unknown_layer(self):
        with pytest.raises(InvalidArgumentError, match="layer"):
            LipschitzMLP(2, 1, layer="dense")

    def test_unknown_activation(self):
        with pytest.raises(InvalidArgumentError, match="activation"):
            LipschitzMLP(2, 1, activation="tanh")

    def test_group_size_must_divide_hidden_widths(self):
        with pytest.raises(InvalidArgumentError, match="do not divide"):
            LipschitzMLP(2, 1, (6, 8), group_size=4)

    @pytest.mark.parametrize("bad", [0, -2.0, math.inf])
    def test_lipschitz_must_be_positive(self, bad):
        with pytest.raises(InvalidArgumentError):
            LipschitzMLP(2, 1, lipschitz=bad)
