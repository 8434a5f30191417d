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
- sorting is exact and 1-Lipschitz in each group's ℓ∞ norm; a residual sum adds one rounding.

Assumptions (stated, not checked): IEEE arithmetic in the dtype with round-to-nearest, any
summation order (FMA allowed); half and bfloat16 matrix products accumulate in float32 and round
once (PyTorch's CPU and CUDA kernels do); float32 products follow
``torch.get_float32_matmul_precision()`` (``"high"`` means TF32 inputs, ``"medium"`` bfloat16);
library ``tanh``/``exp``/``erf`` within :data:`ACTIVATION_ULPS` ulps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lipguard.bounds import activations as act
from lipguard.bounds.evaluate import dense_interval, known, rounded
from lipguard.bounds.graph import Activation, Conv, Dense, Operator, Sort
from lipguard.linalg import underflow_unit, unit_roundoff

#: accuracy assumed of a library activation (tanh, sigmoid, exp, erf), in ulps of the result
ACTIVATION_ULPS = 8


def forward_error(
    operators: Sequence[Operator], points: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Per point and output, a bound on ``|f̂(x) - f(x)|`` where ``f̂`` evaluates the operators in
    ``dtype`` on the input ``x`` exactly as given (float64 ``(N, ...)`` points representable in
    ``dtype``); ``inf`` where no bound holds (e.g. a sum too long for ``dtype``)."""
    x = points.reshape(points.shape[0], -1).to(torch.float64)
    error = torch.zeros_like(x)
    return _propagate(operators, x, x.clone(), error, _Units(dtype))[2]


def _overflow(error: torch.Tensor, low, high, units: _Units) -> torch.Tensor:
    """``inf`` wherever a computed value may leave the dtype's range (it would become ±inf)."""
    reach = torch.maximum(low.abs(), high.abs()) + error
    return torch.where(reach < units.largest, error, math.inf)


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


def _propagate(operators, low, high, error, units: _Units):
    for operator in operators:
        if isinstance(operator, Dense | Conv):
            error = _affine_error(operator, low, high, error, units)
            low, high = dense_interval(operator, low, high)
        elif isinstance(operator, Activation):
            error = _activation_error(operator.spec, low, high, error, units)
            low, high = known(*operator.spec.value_range(low, high))
        elif isinstance(operator, Sort):
            group = operator.group_size
            largest = error.unflatten(-1, (-1, group)).amax(-1, keepdim=True)
            error = largest.expand(*largest.shape[:-1], group).flatten(-2)
            low, high = (_sorted(operator, bound) for bound in (low, high))
        else:
            body_low, body_high, body_error = _propagate(operator.body, low, high, error, units)
            low, high = rounded(low + body_low, high + body_high)
            magnitude = torch.maximum(low.abs(), high.abs())
            error = (error + body_error) * (1 + 2 * units.result) + units.result * magnitude
            error = error + units.floor
        error = _overflow(error, low, high, units)
    return low, high, error


def _sorted(operator: Sort, h: torch.Tensor) -> torch.Tensor:
    groups = h.unflatten(-1, (-1, operator.group_size))
    return groups.sort(dim=-1, descending=operator.descending).values.flatten(-2)


def _affine_error(operator, low, high, error, units: _Units) -> torch.Tensor:
    """``|W|e + γ_k(|W|(|h| + e) + |b|) + u|y| + floor`` (the last two: rounding the result)."""
    if isinstance(operator, Dense):
        weight = operator.matrix.value
        bias = operator.bias.value
        apply = lambda h, w: F.linear(h, w)  # noqa: E731
        terms = (weight != 0).sum(dim=1) + (bias != 0)
    else:
        weight = operator.weight
        bias = operator.bias.repeat_interleave(math.prod(operator.out_shape[1:]))
        apply = lambda h, w: _conv(operator, h, w)  # noqa: E731
        per_output = (weight != 0).flatten(1).sum(dim=1)
        terms = per_output.repeat_interleave(math.prod(operator.out_shape[1:])) + (bias != 0)
    magnitude = torch.maximum(low.abs(), high.abs())
    absolute = weight.abs()
    propagated = apply(error, absolute)
    reach = apply(magnitude + error, absolute)
    inputs = 2 * units.product_inputs * (1 + units.product_inputs) * reach  # TF32/bf16 operands
    accumulated = units.gamma(terms + 1) * (reach + bias.abs())
    result = reach + bias.abs() + accumulated
    total = propagated + inputs + accumulated + units.result * result + units.floor * (terms + 1)
    return torch.where(torch.isfinite(total), total * (1 + 1e-12), math.inf)


def _conv(operator: Conv, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    functional = F.conv1d if len(operator.in_shape) == 2 else F.conv2d
    out = functional(
        h.reshape(-1, *operator.in_shape),
        weight,
        None,
        operator.stride,
        operator.padding,
        operator.dilation,
        operator.groups,
    )
    return out.reshape(h.shape[0], -1)


def _activation_error(
    spec: act.ActivationSpec, low, high, error, units: _Units
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
