"""The exact Lipschitz constant of a small piecewise-linear network (a test oracle).

A network of affine maps and ReLU / LeakyReLU / identity neurons (GroupSort after its exact
expansion) is piecewise linear and continuous, so its Lipschitz constant is the largest operator
norm of its Jacobian over the linear regions with non-empty interior. :func:`exact_lipschitz`
enumerates those regions by depth-first search over neuron signs, layer by layer: a branch is
kept only if a linear program (scipy's HiGHS) finds a point strictly inside all sign
constraints so far. The number of regions grows quickly with width and input dimension, so this
is for networks of a few dozen neurons; ``max_regions`` stops it with an error instead of
running for ever. Floating point enters through the LPs and the final norms (float64), so the
value is exact up to ~1e-12 relative, which is what a test oracle needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import OptimizeResult, linprog

from lipguard.bounds.network import HiddenLayer, Network
from lipguard.errors import InvalidArgumentError, UnsupportedModuleError

_INTERIOR = 1e-9
#: ``(g, h)``: the half-space ``g·x + h > 0`` of one neuron's sign
_Constraint = tuple[np.ndarray, float]


@dataclass(frozen=True)
class ExactLipschitz:
    """The largest Jacobian norm over all linear regions, a point inside the steepest region,
    and how many regions were visited."""

    value: float
    norm: float
    witness: torch.Tensor
    regions: int


@dataclass
class _Search:
    """The enumeration so far: regions visited, the steepest norm and a point of its region."""

    regions: int
    best: float
    witness: np.ndarray


def exact_lipschitz(network: Network, norm: float, *, max_regions: int = 100_000) -> ExactLipschitz:
    """Enumerate the linear regions of a piecewise-linear :class:`Network`."""
    if not all(layer.piecewise_linear for layer in network.hidden):
        raise UnsupportedModuleError("the exact oracle needs ReLU / LeakyReLU / identity neurons")
    weights = [w.value.cpu().numpy() for w in network.weights]
    biases = [b.value.cpu().numpy() for b in network.biases]
    slopes = [_piece_slopes(layer) for layer in network.hidden]
    size = weights[0].shape[1]
    state = _Search(0, -1.0, np.zeros(size))

    def descend(
        layer: int,
        neuron: int,
        a: np.ndarray,
        c: np.ndarray,
        rows: list[_Constraint],
        d: np.ndarray,
    ) -> None:
        # a, c: pre-activations of hidden layer `layer` as a·x + c; d: slopes chosen so far
        if layer == len(network.hidden):
            jacobian = a  # output = a·x + c here
            value = _operator_norm(jacobian, norm)
            state.regions += 1
            if state.regions > max_regions:
                raise InvalidArgumentError(f"more than {max_regions} linear regions; too large")
            if value > state.best:
                state.best, state.witness = value, _interior_point(rows, size)
            return
        width = a.shape[0]
        if neuron == width:
            scaled_a, scaled_c = d[:, None] * a, d * c
            descend(
                layer + 1,
                0,
                weights[layer + 1] @ scaled_a,
                weights[layer + 1] @ scaled_c + biases[layer + 1],
                rows,
                np.empty(weights[layer + 1].shape[0]),
            )
            return
        below, above = slopes[layer][neuron]
        if below == above:  # linear neuron: nothing to branch on
            d[neuron] = below
            descend(layer, neuron + 1, a, c, rows, d)
            return
        for sign, slope in ((1.0, above), (-1.0, below)):
            constraint = (sign * a[neuron], sign * c[neuron])  # sign·(a x + c) > 0
            branch = [*rows, constraint]
            if _has_interior(branch, size):
                d_branch = d.copy()
                d_branch[neuron] = slope
                descend(layer, neuron + 1, a, c, branch, d_branch)

    if not network.hidden:
        value = _operator_norm(weights[0], norm)
        return ExactLipschitz(value, norm, torch.zeros(size, dtype=torch.float64), 1)
    descend(0, 0, weights[0], biases[0], [], np.empty(weights[0].shape[0]))
    witness = torch.tensor(state.witness, dtype=torch.float64)
    return ExactLipschitz(float(state.best), norm, witness, int(state.regions))


def _piece_slopes(layer: HiddenLayer) -> list[tuple[float, float]]:
    """Per neuron, the slopes of its pieces below and above the kink at 0 (every supported
    piecewise-linear activation is ``slope·z`` on each side: ReLU, LeakyReLU, identity)."""
    result: list[tuple[float, float]] = [(1.0, 1.0)] * layer.size
    for spec, index in layer.segments:
        below = float(spec.derivative(torch.tensor(-1.0, dtype=torch.float64)))
        above = float(spec.derivative(torch.tensor(1.0, dtype=torch.float64)))
        for neuron in index.tolist():
            result[neuron] = (below, above)
    return result


def _operator_norm(matrix: np.ndarray, norm: float) -> float:
    if norm == math.inf:
        return float(np.abs(matrix).sum(axis=1).max())
    return float(np.linalg.norm(matrix, 2))


def _lp(rows: list[_Constraint], size: int) -> OptimizeResult:
    """max t s.t. g·x + h >= t for each (g, h) in rows, t <= 1; variables (x, t)."""
    g = np.array([row[0] for row in rows])
    h = np.array([row[1] for row in rows])
    scale = np.maximum(np.linalg.norm(g, axis=1), 1e-300)  # normalise: t is a distance
    a_ub = np.hstack([-g / scale[:, None], np.ones((len(rows), 1))])
    objective = np.zeros(size + 1)
    objective[-1] = -1.0
    bounds = [(None, None)] * size + [(None, 1.0)]
    return linprog(objective, A_ub=a_ub, b_ub=h / scale, bounds=bounds, method="highs")


def _has_interior(rows: list[_Constraint], size: int) -> bool:
    result = _lp(rows, size)
    return bool(result.status == 0 and -result.fun > _INTERIOR)


def _interior_point(rows: list[_Constraint], size: int) -> np.ndarray:
    if not rows:
        return np.zeros(size)
    return np.asarray(_lp(rows, size).x[:size])
