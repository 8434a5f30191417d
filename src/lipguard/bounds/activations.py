"""Elementwise activations as the bound engine sees them: slope ranges, value ranges, surrogates.

An activation ``φ`` is *slope-restricted* in ``[α, β]`` when
``α <= (φ(a) - φ(b)) / (a - b) <= β`` for all ``a != b``; its Lipschitz constant is
``max(|α|, |β|)``. These are the facts product, compositional and LipSDP bounds rely on, so every
constant here is rounded outwards (the exact extrema of GELU' and SiLU' were computed to 40
digits with mpmath). Over an interval ``[l, u]`` the slope range is the range of ``φ'`` there,
found from its values at ``l``, ``u`` and the critical points of ``φ'`` inside, widened by a
rounding margin; the value range is found the same way from ``φ`` at ``l``, ``u`` and the
interior points where ``φ`` has a local extremum (non-monotone activations: GELU, SiLU, a
LeakyReLU with a negative slope). Intervals may be unbounded; wherever an evaluation is not a
number (``-inf·0``) the range falls back to the global one, never to a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lipguard.linalg import up

#: absolute + relative widening of slopes and values evaluated in float64 (a few ulps of exp/erf)
_EVAL_MARGIN = 1e-12

#: ``surrogate(x, temperature)``, the temperature a number or a scalar tensor (one per sample
#: under ``vmap``)
Surrogate = Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor]


@dataclass(frozen=True)
class ActivationSpec:
    """One elementwise activation.

    Attributes:
        name: e.g. ``"relu"``.
        function: the activation on float64 tensors.
        derivative: its derivative (one-sided value at kinks is irrelevant: ranges use limits).
        slope_low, slope_high: global slope range ``[α, β]`` (sound, rounded outwards).
        slope_critical_points: zeros of ``φ''`` (where ``φ'`` may have interior extrema) and kinks.
        kink_limits: for piecewise functions, ``(point, left_slope, right_slope)``.
        value_extrema: the points where ``φ`` has a local minimum or maximum (where ``φ'``
            changes sign); empty for monotone ``φ``.
        piecewise_linear: ``φ`` is piecewise linear (the exact oracle can enumerate it).
        surrogate: a smooth function with the same large-scale shape, for gradient ascent on
            ``||∇f||`` (lower bounds); ``temperature`` -> 0 recovers ``φ``.
    """

    name: str
    function: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]
    slope_low: float
    slope_high: float
    slope_critical_points: tuple[float, ...] = ()
    kink_limits: tuple[tuple[float, float, float], ...] = ()
    value_extrema: tuple[float, ...] = ()
    piecewise_linear: bool = False
    surrogate: Surrogate | None = field(default=None)

    @property
    def lipschitz(self) -> float:
        """``max(|α|, |β|)``: the activation's Lipschitz constant."""
        return max(abs(self.slope_low), abs(self.slope_high))

    def slope_range(
        self, low: torch.Tensor, high: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element ``[α, β]`` valid for all pairs of points in ``[low, high]`` (float64;
        the ends may be infinite)."""
        candidates = [self.derivative(low), self.derivative(high)]
        for point in self.slope_critical_points:
            inside = (low <= point) & (point <= high)
            value = self.derivative(torch.full_like(low, point))
            candidates.append(torch.where(inside, value, candidates[0]))
        for point, left, right in self.kink_limits:  # an end at the kink counts: both sides
            inside = (low <= point) & (point <= high)
            for limit in (left, right):
                candidates.append(torch.where(inside, torch.full_like(low, limit), candidates[0]))
        stacked = torch.stack(candidates)
        unknown = torch.isnan(stacked).any(dim=0)
        slope_low = stacked.min(dim=0).values
        slope_high = stacked.max(dim=0).values
        if not self.piecewise_linear:  # evaluated slopes carry rounding; linear pieces are exact
            slope_low = slope_low - _EVAL_MARGIN * (1 + slope_low.abs())
            slope_high = slope_high + _EVAL_MARGIN * (1 + slope_high.abs())
        slope_low = torch.where(unknown, self.slope_low, slope_low)
        slope_high = torch.where(unknown, self.slope_high, slope_high)
        return (
            slope_low.clamp(min=self.slope_low, max=self.slope_high),
            slope_high.clamp(min=self.slope_low, max=self.slope_high),
        )

    def value_range(
        self, low: torch.Tensor, high: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element range of ``φ`` over ``[low, high]`` (float64, widened for rounding;
        ``±inf`` where the range is unbounded or could not be evaluated)."""
        candidates = [self.function(low), self.function(high)]
        for point in self.value_extrema:
            inside = (low <= point) & (point <= high)
            value = self.function(torch.full_like(low, point))
            candidates.append(torch.where(inside, value, candidates[0]))
        stacked = torch.stack(candidates)
        unknown = torch.isnan(stacked).any(dim=0)
        lower = stacked.min(dim=0).values
        upper = stacked.max(dim=0).values
        lower = lower - _EVAL_MARGIN * (1 + lower.abs())
        upper = upper + _EVAL_MARGIN * (1 + upper.abs())
        return (
            torch.where(unknown, -math.inf, lower),
            torch.where(unknown, math.inf, upper),
        )


def _relu_surrogate(x: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    return temperature * F.softplus(x / temperature)


def _leaky_surrogate(slope: float) -> Surrogate:
    def surrogate(x: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
        return slope * x + (1 - slope) * _relu_surrogate(x, temperature)

    return surrogate


def _step(slope: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))


IDENTITY = ActivationSpec(
    "identity",
    lambda x: x,
    torch.ones_like,
    1.0,
    1.0,
    piecewise_linear=True,
    surrogate=lambda x, _: x,
)
RELU = ActivationSpec(
    "relu",
    torch.relu,
    _step(0.0),
    0.0,
    1.0,
    kink_limits=((0.0, 0.0, 1.0),),
    piecewise_linear=True,
    surrogate=_relu_surrogate,
)


def leaky_relu(negative_slope: float) -> ActivationSpec:
    """LeakyReLU with slope ``a`` below zero: slope-restricted in ``[min(a, 1), max(a, 1)]``;
    for ``a < 0`` it is not monotone (its minimum is at 0)."""
    a = float(negative_slope)
    return ActivationSpec(
        f"leaky_relu({a!r})",
        lambda x: F.leaky_relu(x, a),
        _step(a),
        min(a, 1.0),
        max(a, 1.0),
        kink_limits=((0.0, a, 1.0),),
        value_extrema=(0.0,) if a < 0 else (),
        piecewise_linear=True,
        surrogate=_leaky_surrogate(a),
    )


def elu(alpha: float) -> ActivationSpec:
    """ELU: ``φ' = α·eˣ`` below zero (in ``(0, α]``), 1 above; requires ``α >= 0``."""
    a = float(alpha)
    return ActivationSpec(
        f"elu({a!r})",
        lambda x: F.elu(x, a),
        lambda x: torch.where(x > 0, torch.ones_like(x), a * torch.exp(torch.clamp(x, max=0.0))),
        0.0,
        max(1.0, a),
        kink_limits=((0.0, a, 1.0),),
    )


def _sigmoid_derivative(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


TANH = ActivationSpec(
    "tanh", torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, 0.0, 1.0, slope_critical_points=(0.0,)
)
SIGMOID = ActivationSpec(
    "sigmoid", torch.sigmoid, _sigmoid_derivative, 0.0, 0.25, slope_critical_points=(0.0,)
)


_SQRT2 = math.sqrt(2.0)


def _gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1 + torch.special.erf(x / _SQRT2))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return cdf + x * pdf


# GELU'(±√2) = 1.12890414518515..., -0.12890414518515...; min of GELU at -0.75179152469356...
GELU = ActivationSpec(
    "gelu",
    F.gelu,
    _gelu_derivative,
    -0.128905,
    1.128905,
    slope_critical_points=(-_SQRT2, _SQRT2),
    value_extrema=(-0.7517915246935645,),
)


def _silu_derivative(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


# SiLU'(±2.39935728051546...) = 1.09983932012886..., -0.09983932012886...; min at -1.27846454...
SILU = ActivationSpec(
    "silu",
    F.silu,
    _silu_derivative,
    -0.0998394,
    1.0998394,
    slope_critical_points=(-2.3993572805154677, 2.3993572805154677),
    value_extrema=(-1.2784645427610738,),
)


def clamp(low: float | None, high: float | None) -> ActivationSpec:
    """``min(max(x, low), high)`` (Hardtanh, ReLU6, ``torch.clamp``): slopes in ``[0, 1]``."""
    a = -math.inf if low is None else float(low)
    b = math.inf if high is None else float(high)
    kinks = tuple(
        (point, left, right)
        for point, left, right in ((a, 0.0, 1.0), (b, 1.0, 0.0))
        if math.isfinite(point)
    )
    return ActivationSpec(
        f"clamp({a!r}, {b!r})",
        lambda x: x.clamp(min=None if low is None else a, max=None if high is None else b),
        lambda x: ((x > a) & (x < b)).to(x.dtype),
        0.0,
        1.0,
        kink_limits=kinks,
        piecewise_linear=True,
    )


ABS = ActivationSpec(
    "abs",
    torch.abs,
    lambda x: torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x)),
    -1.0,
    1.0,
    kink_limits=((0.0, -1.0, 1.0),),
    value_extrema=(0.0,),
    piecewise_linear=True,
)


def softplus(beta: float) -> ActivationSpec:
    """``log(1 + e^{βx})/β`` without PyTorch's switch to the identity (``threshold=inf``): its
    slope ``σ(βx)`` lies in ``(0, 1)``. (With a finite threshold PyTorch's Softplus jumps by
    ``log(1 + e^{-t})/β`` there and is not Lipschitz.)"""
    b = float(beta)
    return ActivationSpec(
        f"softplus({b!r})",
        lambda x: F.softplus(x, b, math.inf),
        lambda x: torch.sigmoid(b * x),
        0.0,
        1.0,
    )


def _hardswish_derivative(x: torch.Tensor) -> torch.Tensor:
    inner = (2 * x + 3) / 6
    return torch.where(x < -3, torch.zeros_like(x), torch.where(x > 3, torch.ones_like(x), inner))


# hardswish(x) = x·relu6(x + 3)/6: slope 0, (2x + 3)/6, 1 on the three pieces; minimum at -1.5
HARDSWISH = ActivationSpec(
    "hardswish",
    lambda x: x * (x + 3).clamp(0.0, 6.0) / 6,  # F.hardswish has no double backward
    _hardswish_derivative,
    -0.5,
    1.5,
    kink_limits=((-3.0, 0.0, -0.5), (3.0, 1.5, 1.0)),
    value_extrema=(-1.5,),
)
_SIXTH = up(1.0 / 6.0)  # >= 1/6 (1/6 itself rounds down)
# relu6(x + 3)/6: its evaluated slopes are rounded, so it gets the evaluation margins
HARDSIGMOID = ActivationSpec(
    "hardsigmoid",
    lambda x: (x + 3).clamp(0.0, 6.0) / 6,  # F.hardsigmoid has no double backward
    lambda x: ((x > -3) & (x < 3)).to(x.dtype) * _SIXTH,
    0.0,
    _SIXTH,
    kink_limits=((-3.0, 0.0, _SIXTH), (3.0, _SIXTH, 0.0)),
)


def _mish_derivative(x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(F.softplus(x))
    return t + x * torch.sigmoid(x) * (1 - t * t)


# Mish'(-2.25637639636079...) = -0.11252612238946..., Mish'(1.49057117948542...) =
# 1.08849816125172... (mpmath, 50 digits); minimum of Mish at -1.19243121451549...
MISH = ActivationSpec(
    "mish",
    lambda x: x * torch.tanh(F.softplus(x)),
    _mish_derivative,
    -0.1125262,
    1.0884982,
    slope_critical_points=(-2.2563763963607931, 1.4905711794854285),
    value_extrema=(-1.1924312145154952,),
)
