"""How far a floating-point forward pass can be from the function the bounds are about.

Every bound of :mod:`lipguard.bounds` is about the real-valued function ``f`` of the stored
weights. A deployed model computes ``f̂(x)``, ``f`` evaluated in its dtype, which differs from
``f(x)`` by rounding: two float32 inputs one ulp apart can give outputs whose difference, divided
by the distance, is far above a certified ``L`` — rounding, not a Lipschitz violation.
:func:`forward_error` bounds ``|f̂(x) - f(x)|`` per output by running error analysis along the
operators, with the exact intermediate values enclosed (:mod:`lipguard.bounds.evaluate`):

- affine maps ``W h + b`` (dense and convolutional): ``|W|·e + γ_{k}·(|W|(|h| + e) + |b|)`` plus
  the subnormal floor, with ``k`` the number of non-zero terms in each output's sum;
- elementwise activations: ``Lip(φ)·e`` plus :data:`ACTIVATION_ULPS` ulps of the result (ReLU
  and identity are exact, LeakyReLU one rounding);
- entrywise scalings ``s ⊙ x + t``: ``|s|·e`` plus :data:`SCALE_ROUNDINGS` roundings;
- sums of branches: ``Σ|c_k|·e_k`` plus ``γ`` of the sum; gathers copy exactly;
- sorting and max-pooling are exact and 1-Lipschitz in each group's (window's) ℓ∞ norm.

Assumptions (stated, not checked): IEEE arithmetic in the dtype with round-to-nearest, any
summation order (FMA allowed); half and bfloat16 matrix products accumulate in float32 and round
once (PyTorch's CPU and CUDA kernels do); float32 products follow
``torch.get_float32_matmul_precision()`` (``"high"`` means TF32 inputs, ``"medium"`` bfloat16);
library ``tanh``/``exp``/``erf`` within :data:`ACTIVATION_ULPS` ulps.
"""

from __future__ import annotations

import math

import torch

from lipguard.bounds import activations as act
from lipguard.bounds import ops
from lipguard.bounds.evaluate import apply_abs, propagate
from lipguard.bounds.ir import Graph
from lipguard.bounds.ops import Activation, Conv, Dense, Gather, MaxPool, Scale, Sort, Sum
from lipguard.linalg import underflow_unit, unit_roundoff

#: accuracy assumed of a library activation (tanh, sigmoid, exp, erf), in ulps of the result
ACTIVATION_ULPS = 8
#: roundings allowed for an entrywise scaling (batch norm: x - μ, its computed 1/√(σ² + ε),
#: two products and a sum)
SCALE_ROUNDINGS = 6

#: ``(low, high)``: an enclosure of exact values
_Interval = tuple[torch.Tensor, torch.Tensor]


def forward_error(
    graph: Graph, points: torch.Tensor, dtype: torch.dtype, high: torch.Tensor | None = None
) -> torch.Tensor:
    """Per point and output, a bound on ``|f̂(x) - f(x)|`` where ``f̂`` evaluates the graph in
    ``dtype`` on the joint input ``x`` exactly as given (float64 ``(N, ...)`` points
    representable in ``dtype``); ``inf`` where no bound holds (a sum too long for ``dtype``, a
    value that may overflow it).

    With ``high``, ``points`` and ``high`` are the corners of boxes and the bound holds for every
    point of each box representable in ``dtype``: each operator's error bound depends on its
    inputs only through their enclosures, which then cover the whole box."""
    x = points.reshape(points.shape[0], -1).to("cpu", torch.float64)
    top = x.clone() if high is None else high.reshape(x.shape).to("cpu", torch.float64)
    units = _Units(dtype)
    intervals = propagate(graph, x, top)
    errors: dict[int, torch.Tensor] = {}
    for index, part in zip(graph.inputs, graph.input_slices(), strict=True):
        errors[index] = torch.zeros_like(x[:, part])
    for index, node in enumerate(graph.nodes):
        if node.op is None:
            continue
        sources = [(intervals[i], errors[i]) for i in node.inputs]
        error = _error(node.op, sources, intervals[index], units)
        low, high = intervals[index]
        errors[index] = _overflow(error, low, high, units)
    return errors[graph.output]


def _overflow(
    error: torch.Tensor, low: torch.Tensor, high: torch.Tensor, units: _Units
) -> torch.Tensor:
    """``inf`` wherever a computed value may leave the dtype's range (it would become ±inf)."""
    reach = torch.maximum(low.abs(), high.abs()) + error
    return torch.where(reach < units.largest, error, math.inf)


def _error(
    op: ops.Operator,
    sources: list[tuple[_Interval, torch.Tensor]],
    result: _Interval,
    units: _Units,
) -> torch.Tensor:
    """The error bound of one node from its inputs' intervals and error bounds."""
    (low, high), error = sources[0]
    if isinstance(op, Dense | Conv):
        return _affine_error(op, low, high, error, units)
    if isinstance(op, Activation):
        return _activation_error(op.spec, low, high, error, units)
    if isinstance(op, Sort):  # exact, and 1-Lipschitz in each group's ℓ∞ norm
        group = op.group_size
        largest = error.unflatten(-1, (-1, group)).amax(-1, keepdim=True)
        return largest.expand(*largest.shape[:-1], group).flatten(-2)
    if isinstance(op, MaxPool):  # exact, and 1-Lipschitz in each window's ℓ∞ norm
        return ops.max_pool(op, error).clamp(min=0.0)
    if isinstance(op, Gather):  # exact copies; constants carry no error
        return ops.gather(op, [e for _, e in sources]) * (op.index >= 0)
    magnitude = torch.maximum(result[0].abs(), result[1].abs())
    if isinstance(op, Scale):  # up to SCALE_ROUNDINGS roundings (batch norm computes its scale)
        s = op.scale.value.abs() + op.scale.abs_error()
        reach = (torch.maximum(low.abs(), high.abs()) + error) * s + op.shift.value.abs()
        roundings = SCALE_ROUNDINGS
        return s * error + roundings * units.result * reach + roundings * units.floor
    if not isinstance(op, Sum):
        raise TypeError(f"{type(op).__name__} is not a graph operator")
    # Sum: c_k·x_k (one rounding each unless c = ±1), then the additions
    total = torch.zeros_like(magnitude)
    reach = torch.zeros_like(magnitude)
    for coefficient, ((lo, hi), e) in zip(op.coefficients, sources, strict=True):
        term = abs(coefficient) * (torch.maximum(lo.abs(), hi.abs()) + e)
        total = total + abs(coefficient) * e
        reach = reach + term
    terms = len(op.coefficients)
    return total + units.gamma(torch.tensor(2 * terms)) * reach + terms * units.floor


class _Units:
    """The roundings of one dtype: results, accumulation, subnormal floor."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.result = unit_roundoff(dtype)
        self.floor = underflow_unit(dtype)
        self.largest = torch.finfo(dtype).max / 2
        accumulate = dtype
        if dtype in (torch.float16, torch.bfloat16):
            accumulate = torch.float32
        self.accumulate = unit_roundoff(accumulate)
        if dtype == torch.float32:
            precision = torch.get_float32_matmul_precision()
            inputs = {"highest": 0.0, "high": 2.0**-11, "medium": 2.0**-8}[precision]
            self.product_inputs = inputs  # operands rounded before the product
        else:
            self.product_inputs = 0.0

    def gamma(self, terms: torch.Tensor) -> torch.Tensor:
        """``γ_k`` of the accumulation for each count ``k`` (``inf`` where ``k·u >= 1/2``)."""
        ku = terms.to(torch.float64) * self.accumulate
        return torch.where(ku < 0.5, ku / (1 - ku), math.inf)


def _affine_error(
    operator: Dense | Conv,
    low: torch.Tensor,
    high: torch.Tensor,
    error: torch.Tensor,
    units: _Units,
) -> torch.Tensor:
    """``|W|e + γ_k(|W|(|h| + e) + |b|) + u|y| + floor`` (the last two: rounding the result),
    ``k`` the number of non-zero terms in each output's sum."""
    if isinstance(operator, Dense):
        weight, bias = operator.matrix.value, operator.bias.value
        terms = ((weight != 0).sum(dim=1) + (bias != 0)).repeat(operator.blocks)
        bias = bias.abs().repeat(operator.blocks)
    else:
        positions = math.prod(operator.out_shape[1:])
        bias = operator.bias.abs().repeat_interleave(positions)
        per_output = (operator.weight != 0).flatten(1).sum(dim=1)
        terms = per_output.repeat_interleave(positions) + (operator.bias != 0).repeat_interleave(
            positions
        )
    magnitude = torch.maximum(low.abs(), high.abs())
    propagated = apply_abs(operator, error, with_error=False)
    reach = apply_abs(operator, magnitude + error, with_error=False)
    inputs = 2 * units.product_inputs * (1 + units.product_inputs) * reach  # TF32/bf16 operands
    accumulated = units.gamma(terms + 1) * (reach + bias)
    result = reach + bias + accumulated
    total = propagated + inputs + accumulated + units.result * result + units.floor * (terms + 1)
    return torch.where(torch.isfinite(total), total * (1 + 1e-12), math.inf)


def _activation_error(
    spec: act.ActivationSpec,
    low: torch.Tensor,
    high: torch.Tensor,
    error: torch.Tensor,
    units: _Units,
) -> torch.Tensor:
    """``Lip(φ)·e`` plus the rounding of ``φ`` at the computed point."""
    propagated = spec.lipschitz * error
    if spec.name in ("relu", "identity"):
        return propagated
    value_low, value_high = spec.value_range(low - error, high + error)
    magnitude = torch.maximum(value_low.abs(), value_high.abs())
    ulps = 1 if spec.piecewise_linear else ACTIVATION_ULPS
    total = propagated + ulps * units.result * magnitude + ulps * units.floor
    return torch.where(torch.isfinite(total), total * (1 + 1e-12), math.inf)
