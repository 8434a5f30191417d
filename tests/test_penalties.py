"""gradient_penalty against its closed form for f(x) = w·x."""

from __future__ import annotations

import math

import pytest
import torch

from lipguard.errors import InvalidArgumentError, NonFiniteError, ShapeError
from lipguard.nn import gradient_penalty

W = torch.tensor([3.0, -4.0, 12.0], dtype=torch.float64)  # ℓ1 19, ℓ2 13, ℓ∞ 12


def linear(weight: torch.Tensor):
    return lambda x: x @ weight


@pytest.mark.parametrize(
    ("norm", "gradient_norm"), [(2, 13.0), (math.inf, 19.0), (1, 12.0), ("l2", 13.0)]
)
@pytest.mark.parametrize("target", [5.0, 13.0, 30.0])
def test_one_sided_closed_form(norm, gradient_norm, target):
    x = torch.randn(16, 3, dtype=torch.float64)
    penalty = gradient_penalty(linear(W), x, target, norm=norm)
    assert float(penalty) == pytest.approx(max(0.0, gradient_norm - target) ** 2)


def test_two_sided_closed_form_and_interpolates():
    x, y = torch.randn(2, 8, 3, dtype=torch.float64)
    penalty = gradient_penalty(linear(W), x, 20.0, one_sided=False, interpolate_with=y)
    assert float(penalty) == pytest.approx((13.0 - 20.0) ** 2)


def test_penalty_is_differentiable_in_the_parameters():
    weight = W.clone().requires_grad_(True)
    penalty = gradient_penalty(linear(weight), torch.randn(4, 3, dtype=torch.float64), 5.0)
    penalty.backward()
    expected = 2 * (13.0 - 5.0) * W / 13.0  # d/dw (||w|| - L)²
    assert torch.allclose(weight.grad, expected)


def test_zero_gradient_gives_a_finite_penalty_gradient():
    weight = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    for one_sided in (True, False):
        penalty = gradient_penalty(
            linear(weight), torch.randn(4, 3, dtype=torch.float64), 1.0, one_sided=one_sided
        )
        penalty.backward()
        assert torch.isfinite(weight.grad).all()


def test_model_outputs_of_shape_n_by_1_accepted():
    model = torch.nn.Linear(3, 1).double()
    assert gradient_penalty(model, torch.randn(5, 3, dtype=torch.float64), 0.01) > 0


class TestErrors:
    def test_vector_output_is_refused(self):
        with pytest.raises(ShapeError, match="one scalar output per sample"):
            gradient_penalty(torch.nn.Linear(3, 2), torch.randn(4, 3), 1.0)

    def test_target_must_be_positive(self):
        with pytest.raises(InvalidArgumentError):
            gradient_penalty(linear(W), torch.randn(4, 3, dtype=torch.float64), 0.0)

    def test_non_finite_input(self):
        x = torch.randn(4, 3)
        x[0, 0] = math.nan
        with pytest.raises(NonFiniteError):
            gradient_penalty(linear(W.float()), x, 1.0)

    def test_empty_batch(self):
        with pytest.raises(ShapeError):
            gradient_penalty(linear(W), torch.zeros(0, 3, dtype=torch.float64), 1.0)

    def test_unknown_norm(self):
        with pytest.raises(InvalidArgumentError, match="norm"):
            gradient_penalty(linear(W), torch.randn(2, 3, dtype=torch.float64), 1.0, norm=3)
