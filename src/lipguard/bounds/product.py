"""The product bound: ``Lip(f_k ∘ ⋯ ∘ f_1) <= Π Lip(f_i)``, every factor proven."""

from __future__ import annotations

from collections.abc import Sequence

from lipguard.bounds.graph import Activation, Conv, Dense, Operator, Skip, Sort
from lipguard.bounds.norms import operator_norm, up


def operator_lipschitz(operator: Operator, norm: float) -> float:
    """A sound Lipschitz constant of one operator in the ℓp norm (p = 2 or ∞)."""
    if isinstance(operator, Dense | Conv):
        return operator_norm(operator, norm)
    if isinstance(operator, Activation):
        return operator.spec.lipschitz  # elementwise: the same in every ℓp
    if isinstance(operator, Sort):
        return 1.0  # sorting is 1-Lipschitz in every ℓp
    assert isinstance(operator, Skip)
    return up(1.0 + product_bound(operator.body, norm))  # ||x + g(x) - y - g(y)||


def product_bound(operators: Sequence[Operator], norm: float) -> float:
    """``Π Lip(operator)``, each factor sound, the product rounded upwards."""
    value = 1.0
    for operator in operators:
        value = up(value * operator_lipschitz(operator, norm))
    return value
