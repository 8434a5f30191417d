"""The function the bound engine bounds, evaluated: in float64, and with rigorous enclosures.

Every upper bound is about the real-valued function of the operators
(:func:`~lipguard.bounds.graph.to_operators`) read from a model's stored weights — lipguard's
layers with their effective weights exactly as stored. A lower bound, a witness check or a
pessimistic reward must be about that same function, not about a float64 copy of the model
(which would recompute lipguard's layers with float64 margins: a different function). This module
evaluates it:

- :class:`OperatorNetwork` — the operators as an ``nn.Module`` in float64 (differentiable, for
  the lower-bound search), optionally with smooth surrogates of the non-smooth activations;
- :func:`enclose` — for a batch of points, intervals ``[low, high]`` that provably contain the
  exact output (every float64 rounding of the evaluation bounded, Higham's ``γ_k``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lipguard.bounds.graph import Activation, Conv, Dense, Operator, Sort
from lipguard.linalg import U64, gamma


class OperatorNetwork(nn.Module):
    """``operators`` as a float64 module on flattened per-sample inputs ``(N, features)``.

    ``temperature`` (a one-element list, changed in place by the caller) switches to smooth
    surrogates: activations with a ``surrogate`` use it, and groups of two are sorted by a
    smoothed max/min. ``None`` evaluates the exact operators.
    """

    def __init__(
        self, operators: Sequence[Operator], temperature: list[float] | None = None
    ) -> None:
        super().__init__()
        self.operators = tuple(operators)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.operators, x.reshape(x.shape[0], -1).to(torch.float64))

    def _run(self, operators: Sequence[Operator], h: torch.Tensor) -> torch.Tensor:
        for operator in operators:
            if isinstance(operator, Dense):
                h = F.linear(h, operator.matrix.value, operator.bias.value)
            elif isinstance(operator, Conv):
                h = operator.apply(h)
            elif isinstance(operator, Activation):
                h = self._activation(operator, h)
            elif isinstance(operator, Sort):
                h = self._sort(operator, h)
            else:
                h = h + self._run(operator.body, h)
        return h

    def _activation(self, operator: Activation, h: torch.Tensor) -> torch.Tensor:
        spec = self.temperature is not None and operator.spec.surrogate
        if spec:
            return operator.spec.surrogate(h, relative_temperature(self.temperature[0], h))
        return operator.spec.function(h)

    def _sort(self, operator: Sort, h: torch.Tensor) -> torch.Tensor:
        groups = h.unflatten(-1, (-1, operator.group_size))
        if self.temperature is not None and operator.group_size == 2:
            t = relative_temperature(self.temperature[0], h)
            a, b = groups.unbind(-1)
            mean, gap = (a + b) / 2, torch.sqrt(((a - b) / 2) ** 2 + t * t)
            pair = (mean + gap, mean - gap) if operator.descending else (mean - gap, mean + gap)
            return torch.stack(pair, -1).flatten(-2)
        return groups.sort(dim=-1, descending=operator.descending).values.flatten(-2)


def relative_temperature(temperature: float, x: torch.Tensor) -> torch.Tensor:
    """A temperature in units of the activation's typical input size (per sample under vmap)."""
    return temperature * (x.detach().abs().mean() + 1e-12)


def enclose(
    operators: Sequence[Operator], points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[low, high]`` (float64, ``(N, outputs)``) containing the exact output of the operators
    at each point of ``points`` ``(N, ...)``; ``±inf`` where float64 overflows."""
    x = points.reshape(points.shape[0], -1).to(torch.float64)
    return _interval(operators, x, x.clone())


def _interval(
    operators: Sequence[Operator], low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    for operator in operators:
        if isinstance(operator, Dense | Conv):
            low, high = dense_interval(operator, low, high)
        elif isinstance(operator, Activation):
            low, high = known(*operator.spec.value_range(low, high))
        elif isinstance(operator, Sort):
            low, high = (_sort(operator, bound) for bound in (low, high))  # monotone
        else:
            body_low, body_high = _interval(operator.body, low, high)
            low, high = rounded(low + body_low, high + body_high)  # one rounding each
    return low, high


def known(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The intervals with every one that is not finite at both ends made ``(-inf, inf)``."""
    finite = torch.isfinite(low) & torch.isfinite(high)
    return torch.where(finite, low, -math.inf), torch.where(finite, high, math.inf)


def rounded(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen ends that each came from one rounded float64 operation by more than its error."""
    pad = 2 * U64 * (low.abs() + high.abs()) + 2.0**-1000
    return known(low - pad, high + pad)


def _outward(mid: torch.Tensor, half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rounded(mid - half, mid + half)


def _centre(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A centre and a radius (rounding included) of the box ``[low, high]``."""
    return (low + high) / 2, (high - low) / 2 + U64 * (low.abs() + high.abs())


def dense_interval(
    operator: Dense | Conv, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of an affine operator over the boxes ``[low, high]`` (rows), rounded outwards;
    unknown inputs (infinite ends) make every output they feed unknown."""
    unbounded = ~(torch.isfinite(low) & torch.isfinite(high))
    if bool(unbounded.any()):
        low, high = torch.where(unbounded, 0.0, low), torch.where(unbounded, 0.0, high)
        fed = _apply_abs(operator, unbounded.to(torch.float64)) > 0
        low, high = (_conv if isinstance(operator, Conv) else _dense)(operator, low, high)
        return torch.where(fed, -math.inf, low), torch.where(fed, math.inf, high)
    return (_conv if isinstance(operator, Conv) else _dense)(operator, low, high)


def _apply_abs(operator: Dense | Conv, h: torch.Tensor) -> torch.Tensor:
    """``|A|·h`` for the operator's matrix ``A`` (its rounding bound included)."""
    if isinstance(operator, Dense):
        magnitude = operator.matrix.value.abs()
        if operator.matrix.error is not None:
            magnitude = magnitude + operator.matrix.error
        return F.linear(h, magnitude)
    return _absolute(operator).apply(h, with_bias=False)


def _absolute(operator: Conv) -> Conv:
    return Conv(
        operator.weight.abs(),
        torch.zeros_like(operator.bias),
        operator.stride,
        operator.padding,
        operator.dilation,
        operator.groups,
        operator.in_shape,
        operator.out_shape,
    )


def _dense(operator: Dense, low: torch.Tensor, high: torch.Tensor):
    centre, radius = _centre(low, high)
    matrix, bias = operator.matrix, operator.bias
    magnitude = matrix.value.abs()
    g = gamma(matrix.value.shape[1] + 2)
    mid = F.linear(centre, matrix.value, bias.value)
    spread = F.linear(radius, magnitude) * (1 + g) + g * (
        F.linear(centre.abs(), magnitude) + bias.value.abs()
    )
    if matrix.error is not None:
        spread = spread + F.linear(centre.abs() + radius, matrix.error)
    if bias.error is not None:
        spread = spread + bias.error
    return _outward(mid, spread * (1 + 2 * g))


def _conv(operator: Conv, low: torch.Tensor, high: torch.Tensor):
    centre, radius = _centre(low, high)
    absolute = _absolute(operator)
    terms = math.prod(operator.weight.shape[1:])
    g = gamma(terms + 2)
    bias = operator.bias.abs().repeat_interleave(math.prod(operator.out_shape[1:]))
    mid = operator.apply(centre)
    spread = absolute.apply(radius) * (1 + g) + g * (absolute.apply(centre.abs()) + bias)
    return _outward(mid, spread * (1 + 2 * g))


def _sort(operator: Sort, h: torch.Tensor) -> torch.Tensor:
    groups = h.unflatten(-1, (-1, operator.group_size))
    return groups.sort(dim=-1, descending=operator.descending).values.flatten(-2)
