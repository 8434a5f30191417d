"""The function the bound engine bounds, evaluated: in float64, and with rigorous enclosures.

Every upper bound is about the real-valued function of the graph
(:class:`~lipguard.bounds.ir.Graph`) read from a model's stored weights — lipguard's layers with
their effective weights exactly as stored. A lower bound, a witness check or a pessimistic reward
must be about that same function, not about a float64 copy of the model (which would recompute
lipguard's layers with float64 margins: a different function). This module evaluates it:

- :class:`GraphFunction` — the graph as an ``nn.Module`` in float64 on joint input vectors
  (differentiable, for the lower-bound search), optionally with smooth surrogates of the
  non-smooth operators;
- :func:`enclose` — for a batch of points, intervals ``[low, high]`` that provably contain the
  exact output (every float64 rounding of the evaluation bounded, Higham's ``γ_k``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipguard.bounds import ops
from lipguard.bounds.ir import Graph
from lipguard.bounds.ops import Activation, Conv, Dense, Gather, MaxPool, Scale, Sort, Sum
from lipguard.linalg import U64, gamma


class GraphFunction(nn.Module):
    """``graph`` as a float64 module on joint input vectors ``(N, graph.input_size)``.

    ``temperature`` (a one-element list, changed in place by the caller) switches to smooth
    surrogates: activations with a ``surrogate`` use it, groups of two are sorted by a smoothed
    max/min and max-pools by a log-sum-exp. ``None`` evaluates the exact graph.
    """

    def __init__(self, graph: Graph, temperature: list[float] | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temperature is None:
            return self.graph.evaluate(x)
        return self.graph.evaluate(x, self._smooth)

    def _smooth(self, op: ops.Operator, inputs: list[torch.Tensor]) -> torch.Tensor:
        assert self.temperature is not None  # forward smooths only with a temperature
        t = relative_temperature(self.temperature[0], inputs[0])
        if isinstance(op, Activation) and op.spec.surrogate is not None:
            return op.spec.surrogate(inputs[0], t)
        if isinstance(op, Sort) and op.group_size == 2:
            a, b = inputs[0].unflatten(-1, (-1, 2)).unbind(-1)
            mean, gap = (a + b) / 2, torch.sqrt(((a - b) / 2) ** 2 + t * t)
            pair = (mean + gap, mean - gap) if op.descending else (mean - gap, mean + gap)
            return torch.stack(pair, -1).flatten(-2)
        if isinstance(op, MaxPool):
            windows = op.windows.to(inputs[0].device)
            values = inputs[0][..., windows.clamp(min=0)]
            values = torch.where(windows >= 0, values, -math.inf)
            return t * torch.logsumexp(values / t, dim=-1)
        return ops.apply(op, inputs)


def relative_temperature(temperature: float, x: torch.Tensor) -> torch.Tensor:
    """A temperature in units of the activation's typical input size (per sample under vmap)."""
    return temperature * (x.detach().abs().mean() + 1e-12)


def enclose(graph: Graph, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[low, high]`` (float64, ``(N, outputs)``) containing the exact output of the graph at
    each joint input vector of ``points`` ``(N, ...)``; ``±inf`` where float64 overflows."""
    x = points.reshape(points.shape[0], -1).to("cpu", torch.float64)
    return propagate(graph, x, x.clone())[graph.output]


def propagate(
    graph: Graph, low: torch.Tensor, high: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Intervals of every node's exact value for joint inputs in the boxes ``[low, high]``."""
    intervals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for index, part in zip(graph.inputs, graph.input_slices(), strict=True):
        intervals[index] = (low[:, part], high[:, part])
    for index, node in enumerate(graph.nodes):
        if node.op is not None:
            intervals[index] = interval(node.op, [intervals[i] for i in node.inputs])
    return [intervals[index] for index in range(len(graph.nodes))]


def interval(
    op: ops.Operator, sources: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of ``op`` over boxes of its inputs, rounded outwards."""
    low, high = sources[0]
    if isinstance(op, Dense | Conv):
        return dense_interval(op, low, high)
    if isinstance(op, Activation):
        return known(*op.spec.value_range(low, high))
    if isinstance(op, Sort):  # monotone in every argument
        return ops.sort_groups(op, low), ops.sort_groups(op, high)
    if isinstance(op, MaxPool):  # monotone too
        return ops.max_pool(op, low), ops.max_pool(op, high)
    if isinstance(op, Gather):
        lows = ops.gather(op, [pair[0] for pair in sources])
        highs = ops.gather(op, [pair[1] for pair in sources])
        return lows, highs
    if isinstance(op, Scale):
        return _scale(op, low, high)
    if isinstance(op, Sum):
        return _sum(op, sources)
    raise TypeError(f"{type(op).__name__} is not a graph operator")


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


def _unknown_inputs(
    low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where an end is infinite, and the boxes with those entries made ``[0, 0]``."""
    unbounded = ~(torch.isfinite(low) & torch.isfinite(high))
    return unbounded, torch.where(unbounded, 0.0, low), torch.where(unbounded, 0.0, high)


def dense_interval(
    operator: Dense | Conv, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of an affine operator over the boxes ``[low, high]`` (rows), rounded outwards;
    unknown inputs (infinite ends) make every output they feed unknown."""
    unbounded, low, high = _unknown_inputs(low, high)
    result = (
        _conv(operator, low, high) if isinstance(operator, Conv) else _dense(operator, low, high)
    )
    if not bool(unbounded.any()):
        return result
    fed = apply_abs(operator, unbounded.to(torch.float64)) > 0
    return torch.where(fed, -math.inf, result[0]), torch.where(fed, math.inf, result[1])


def apply_abs(operator: Dense | Conv, h: torch.Tensor, *, with_error: bool = True) -> torch.Tensor:
    """``|A|·h`` for the operator's linear part ``A`` (plus its rounding bound unless
    ``with_error=False``)."""
    if isinstance(operator, Dense):
        magnitude = operator.matrix.value.abs()
        if with_error and operator.matrix.error is not None:
            magnitude = magnitude + operator.matrix.error
        rows = h.reshape(h.shape[0], operator.blocks, -1)
        return F.linear(rows, magnitude).reshape(h.shape[0], -1)
    return operator.absolute().apply(h, with_bias=False)


def _dense(
    operator: Dense, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    centre, radius = _centre(low, high)
    matrix, bias = operator.matrix, operator.bias
    g = gamma(matrix.value.shape[1] + 2)
    mid = ops.apply(operator, [centre])
    size = bias.value.abs().repeat(operator.blocks)
    spread = apply_abs(operator, radius, with_error=False) * (1 + g) + g * (
        apply_abs(operator, centre.abs(), with_error=False) + size
    )
    if matrix.error is not None:
        rows = (centre.abs() + radius).reshape(centre.shape[0], operator.blocks, -1)
        spread = spread + F.linear(rows, matrix.error).reshape(centre.shape[0], -1)
    if bias.error is not None:
        spread = spread + bias.error.repeat(operator.blocks)
    return _outward(mid, spread * (1 + 2 * g))


def _conv(
    operator: Conv, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    centre, radius = _centre(low, high)
    magnitude = operator.absolute()
    g = gamma(math.prod(operator.weight.shape[1:]) + 2)
    mid = operator.apply(centre)
    spread = magnitude.apply(radius, with_bias=False) * (1 + g) + g * magnitude.apply(centre.abs())
    return _outward(mid, spread * (1 + 2 * g))


def _scale(op: Scale, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``s ⊙ x + t`` over the box, with the bounds of ``s`` and ``t`` and two roundings."""
    unbounded, low, high = _unknown_inputs(low, high)
    centre, radius = _centre(low, high)
    s, t = op.scale.value, op.shift.value
    mid = centre * s + t
    spread = radius * s.abs() + op.scale.abs_error() * (centre.abs() + radius)
    spread = spread + 2 * U64 * (centre.abs() * s.abs() + t.abs()) + op.shift.abs_error()
    low, high = _outward(mid, spread * (1 + 4 * U64))
    fed = unbounded & ((s != 0) | (op.scale.abs_error() > 0))
    return torch.where(fed, -math.inf, low), torch.where(fed, math.inf, high)


def _sum(
    op: Sum, sources: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ c_k x_k`` over the boxes: centre and radius, ``γ_n`` for the rounded sum."""
    parts = []  # per input: c·centre, |c|·radius, |c|·(|centre| + radius), unknown entries
    for coefficient, (low, high) in zip(op.coefficients, sources, strict=True):
        unbounded, low, high = _unknown_inputs(low, high)
        centre, half = _centre(low, high)
        term, width = coefficient * centre, abs(coefficient) * half
        size = abs(coefficient) * (centre.abs() + half)
        if coefficient == 0.0:
            unbounded = torch.zeros_like(unbounded)
        parts.append((term, width, size, unbounded))
    mid, radius, magnitude, unknown = parts[0]  # a Sum has at least one input
    for term, width, size, unbounded in parts[1:]:
        mid, radius = mid + term, radius + width
        magnitude, unknown = magnitude + size, unknown | unbounded
    g = gamma(2 * len(op.coefficients) + 2)
    low, high = _outward(mid, (radius + g * magnitude) * (1 + 2 * g))
    return torch.where(unknown, -math.inf, low), torch.where(unknown, math.inf, high)
