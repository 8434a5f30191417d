"""Local Lipschitz bounds over a ball ``B(x, r)``.

Interval bound propagation gives, for every neuron, a range ``[l, u]`` that contains its
pre-activation for all inputs in the ball (the first layer exactly: ``w·x + b ± r·||w||_q``,
later layers by centre/radius propagation through ``|W|``), rounded outwards. Over ``[l, u]`` a
neuron's slopes lie in a narrower range than globally — a ReLU that is always active has slope
exactly 1, one always inactive has slope 0 — and the compositional bound of
:mod:`lipguard.bounds.compositional` with these per-neuron ranges holds for all pairs of points
in the ball. Where every neuron is stable the network is linear on the ball and the bound is the
norm of its Jacobian there.

Every interval that is not finite at both ends (the radius or the weights overflow float64, or an
evaluation gave ``inf - inf``) is treated as unknown, ``(-inf, inf)``: its neuron gets its global
slope range, never a fixed pattern, and only the outputs it actually feeds become unknown.
"""

from __future__ import annotations

import math

import torch

from lipguard.bounds import lmi
from lipguard.bounds.network import Network
from lipguard.linalg import U64, gamma


def interval_slopes(
    network: Network, center: torch.Tensor, radius: float, norm: float
) -> lmi.Slopes:
    """Per hidden layer, slope ranges ``(α, β)`` valid for every input within ``radius`` (ℓp)
    of ``center`` (float64, flat)."""
    return propagate(network, center, radius, norm)[0]


def propagate(
    network: Network, center: torch.Tensor, radius: float, norm: float
) -> tuple[lmi.Slopes, torch.Tensor, torch.Tensor]:
    """Interval propagation from the ball ``B(center, radius)`` (ℓp): the slope ranges of every
    hidden layer and an enclosure ``[low, high]`` of the outputs."""
    dual = {2.0: 2.0, math.inf: 1.0, 1.0: math.inf}[norm]
    weight, bias = network.weights[0], network.biases[0]
    w = weight.value
    mid = w @ center + bias.value
    spread = radius * torch.linalg.vector_norm(w, ord=dual, dim=1) * (1 + gamma(w.shape[1] + 2))
    error = gamma(w.shape[1] + 2) * (w.abs() @ center.abs() + bias.value.abs())
    if weight.error is not None:  # the exact weights differ by at most `error` entrywise
        spread = spread + radius * torch.linalg.vector_norm(weight.error, ord=dual, dim=1)
        error = error + weight.error @ center.abs()
    if bias.error is not None:
        error = error + bias.error
    low, high = _outward(mid, spread + error)
    slopes = []
    for index, layer in enumerate(network.hidden):
        slopes.append(layer.slope_range(low, high))
        value_low, value_high = _known(*layer.value_range(low, high))
        low, high = _affine_interval(network, index + 1, value_low, value_high)
    return slopes, low, high


def _known(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The intervals with every one that is not finite at both ends replaced by
    ``(-inf, inf)``: an overflowed or NaN end says nothing about where the value lies."""
    finite = torch.isfinite(low) & torch.isfinite(high)
    return torch.where(finite, low, -math.inf), torch.where(finite, high, math.inf)


def _outward(mid: torch.Tensor, half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low, high = mid - half, mid + half
    pad = 2 * U64 * (low.abs() + high.abs()) + 2.0**-1000
    return _known(low - pad, high + pad)


def _affine_interval(
    network: Network, index: int, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of ``W x + b`` for ``x`` in the box ``[low, high]``, rounded outwards. Inputs
    that are unknown (infinite ends) make every output they feed with a non-zero weight
    unknown; the others are computed from the finite inputs alone."""
    weight, bias = network.weights[index], network.biases[index]
    unbounded = ~(torch.isfinite(low) & torch.isfinite(high))
    low = torch.where(unbounded, 0.0, low)
    high = torch.where(unbounded, 0.0, high)
    centre = (low + high) / 2
    half = (high - low) / 2 + U64 * (low.abs() + high.abs())
    w = weight.value
    mid = w @ centre + bias.value
    g = gamma(w.shape[1] + 2)
    spread = (w.abs() @ half) * (1 + g) + g * (w.abs() @ centre.abs() + bias.value.abs())
    if weight.error is not None:
        spread = spread + weight.error @ (centre.abs() + half)
    if bias.error is not None:
        spread = spread + bias.error
    low, high = _outward(mid, spread)
    if bool(unbounded.any()):
        magnitude = w.abs() if weight.error is None else w.abs() + weight.error
        fed = (magnitude[:, unbounded] > 0).any(dim=1)
        low, high = torch.where(fed, -math.inf, low), torch.where(fed, math.inf, high)
    return low, high
