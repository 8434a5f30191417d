"""Witnessed lower bounds on the Lipschitz constant.

A lower bound is only as good as its witness, so :func:`lipschitz_lower_bound` returns a pair of
inputs ``(x, y)`` and the value ``||f(x) - f(y)|| / ||x - y||``: anyone can recompute it. For a
model the bound engine converts, ``f`` is the very function the upper bounds are about — the
engine's operators (:mod:`lipguard.bounds.evaluate`), lipguard's layers with their effective
weights as stored — and the ratio is a guaranteed underestimate (both outputs enclosed with
their float64 rounding). For any other model it is the float64 ratio of a float64 copy. The
search runs in two phases:

1. *Gradient ascent on the Jacobian norm* from many starts, on a smooth surrogate of the model
   (ReLU → softplus, MaxMin → a smoothed max/min, with the temperature annealed towards zero),
   because a piecewise-linear network's gradient norm is piecewise constant and gives ascent
   nothing to climb. The objective is the operator norm ``||J(x)||_{p→p}`` (ℓ2: largest singular
   value; ℓ∞: largest row ℓ1 norm).
2. *Pairwise ascent* on the true model: each candidate ``x`` becomes a pair ``(x, x + h·v)`` along
   its Jacobian's top direction, refined by ascent on the difference ratio itself.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipguard import _checks
from lipguard._modules import placed_children
from lipguard._threads import on_idle_cores
from lipguard.bounds.evaluate import GraphFunction, enclose, relative_temperature
from lipguard.bounds.frontend import Shapes, to_graph
from lipguard.bounds.ir import Graph
from lipguard.bounds.network import Network
from lipguard.errors import InvalidArgumentError, LipguardError, ShapeError
from lipguard.linalg import U64
from lipguard.nn.activations import GroupSort
from lipguard.norm import L2, NormLike, parse_norm
from lipguard.results import finite_field, json_field


@dataclass(frozen=True)
class LipschitzLowerBound:
    """``||f(x) - f(y)||_p / ||x - y||_p = value`` for the witnesses ``x`` and ``y`` (float64).

    Attributes:
        value: the witnessed ratio.
        norm: the input norm ``p`` (outputs use the same ℓp norm).
        method: how the witnesses were found.
        x, y: the witness inputs (per-sample shape, float64).
        gradient_norm: ``||J(x)||_{p→p}`` of the function at ``x`` (where differentiable).
        rigorous: True when ``value`` is a guaranteed underestimate of the ratio for the
            function the engine's upper bounds are about (the model's graph, outputs enclosed
            with their rounding); False for a model the engine does not support, where it is
            the float64 ratio of a float64 copy.
        shapes: the model's input shapes when it has several (``x``, ``y`` are then joint
            flat vectors); ``None`` for one input of ``x``'s shape.
    """

    value: float
    norm: float
    method: str
    x: torch.Tensor
    y: torch.Tensor
    gradient_norm: float
    rigorous: bool = True
    shapes: Shapes | None = None

    @property
    def sound(self) -> bool:
        return False  # a lower bound is evidence, never a guarantee on the maximum

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the witnessed claim, witnesses flattened (the norm and the input
        shapes belong to the context: a certificate states them once for both bounds)."""
        return {
            "value": self.value,
            "method": self.method,
            "rigorous": self.rigorous,
            "x": self.x.reshape(-1).tolist(),
            "y": self.y.reshape(-1).tolist(),
            "gradient_norm": self.gradient_norm,
        }

    @classmethod
    def from_dict(cls, data: object, norm: NormLike, shapes: Shapes) -> LipschitzLowerBound:
        """The bound :meth:`to_dict` wrote, about a model with inputs of ``shapes`` in ``norm``;
        a missing, mistyped or mis-sized field is refused by name."""
        if not isinstance(data, Mapping):
            raise InvalidArgumentError("lower bound: expected an object")
        several = len(shapes) > 1
        shape = (sum(math.prod(item) for item in shapes),) if several else tuple(shapes[0])
        witnesses = []
        for key in ("x", "y"):
            values = json_field(data, key, list, "lower bound")
            if len(values) != math.prod(shape) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                raise InvalidArgumentError(
                    f"lower bound: witness {key!r} must hold {math.prod(shape)} numbers"
                )
            witnesses.append(torch.tensor(values, dtype=torch.float64).reshape(shape))
        return cls(
            finite_field(data, "value", "lower bound"),
            parse_norm(norm),
            json_field(data, "method", str, "lower bound"),
            witnesses[0],
            witnesses[1],
            finite_field(data, "gradient_norm", "lower bound"),
            json_field(data, "rigorous", bool, "lower bound"),
            tuple(tuple(item) for item in shapes) if several else None,
        )

    def check(self, model: nn.Module) -> float:
        """Recompute the witnessed ratio on ``model`` (the same function as when it was found)."""
        shapes = self.shapes if self.shapes is not None else (tuple(self.x.shape),)
        return _Target.of(model, shapes).ratio(self.x, self.y, self.norm)


class _Target:
    """The function a lower bound is about, its smooth surrogate and its rigorous ratio.

    Points have per-sample shape of the model's input, or for a model with several inputs are
    their joint flat vector."""

    def __init__(
        self,
        function: nn.Module,
        temperature: list[float],
        smooth: nn.Module,
        graph: Graph | None,
        shapes: Shapes,
    ) -> None:
        self.function, self.temperature, self.smooth = function, temperature, smooth
        self.graph, self.shapes = graph, shapes

    @staticmethod
    def of(model: nn.Module, shapes: Shapes) -> _Target:
        temperature = [1.0]
        try:
            graph = to_graph(model, shapes)
        except LipguardError:
            split = _Split(copy.deepcopy(model).to("cpu", torch.float64).eval(), shapes)
            smooth_split = _Split(_surrogate(split.model, temperature), shapes)
            return _Target(split, temperature, smooth_split, None, shapes)
        exact = _Flat(GraphFunction(graph))
        smooth = _Flat(GraphFunction(graph, temperature))
        return _Target(exact, temperature, smooth, graph, shapes)

    @property
    def rigorous(self) -> bool:
        return self.graph is not None

    def first_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(W_0, b_0)`` when the function starts with an affine map into piecewise-linear
        neurons (where flipping a first-layer neuron is a well-defined move), else ``None``."""
        if self.graph is None:
            return None
        try:
            network = Network.from_graph(self.graph)
        except LipguardError:
            return None
        if not network.hidden or not network.hidden[0].piecewise_linear:
            return None
        return network.weights[0].value, network.biases[0].value

    def ratio(self, x: torch.Tensor, y: torch.Tensor, norm: float) -> float:
        """``||f(x) - f(y)|| / ||x - y||``, a guaranteed underestimate when rigorous."""
        distance = float(_vector_norm((x - y).unsqueeze(0), norm)[0])
        if distance == 0.0:
            return 0.0
        if self.graph is None:
            with torch.no_grad():
                change = self.function(x.unsqueeze(0)) - self.function(y.unsqueeze(0))
            return float(_vector_norm(change, norm)[0]) / distance
        low, high = enclose(self.graph, torch.stack([x.reshape(-1), y.reshape(-1)]))
        centre_gap = (high[1] + low[1]) / 2 - (high[0] + low[0]) / 2
        widths = (high[0] - low[0]) / 2 + (high[1] - low[1]) / 2
        gap = float(torch.linalg.vector_norm(centre_gap, ord=norm))
        slack = float(torch.linalg.vector_norm(widths, ord=norm))
        value = (gap - slack) * (1 - 4 * U64) / (distance * (1 + 4 * U64))
        return value if value > 0.0 else 0.0  # NaN (overflow) and negatives prove nothing


class _Flat(nn.Module):
    """A function of joint flat input vectors, on points of any per-sample shape."""

    def __init__(self, function: nn.Module) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x.reshape(x.shape[0], -1))


class _Split(nn.Module):
    """A model called with its inputs cut out of the points (one input: reshaped)."""

    def __init__(self, model: nn.Module, shapes: Shapes) -> None:
        super().__init__()
        self.model, self.shapes = model, shapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        parts, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            parts.append(flat[:, start : start + size].reshape(x.shape[0], *shape).clone())
            start += size
        return self.model(*parts).reshape(x.shape[0], -1)


class _SmoothReLU(nn.Module):
    def __init__(self, temperature: list[float], slope: float = 0.0) -> None:
        super().__init__()
        self.temperature, self.slope = temperature, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = relative_temperature(self.temperature[0], x)
        return self.slope * x + (1 - self.slope) * t * F.softplus(x / t)


class _SmoothMaxMin(nn.Module):
    def __init__(self, temperature: list[float], descending: bool) -> None:
        super().__init__()
        self.temperature, self.descending = temperature, descending

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = relative_temperature(self.temperature[0], x)
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
        mean, gap = (a + b) / 2, torch.sqrt(((a - b) / 2) ** 2 + t * t)
        high, low = mean + gap, mean - gap
        pair = (high, low) if self.descending else (low, high)
        return torch.stack(pair, -1).flatten(-2)


def _surrogate(model: nn.Module, temperature: list[float]) -> nn.Module:
    """A copy of ``model`` (one the engine does not convert) with non-smooth activations
    replaced by smooth ones."""
    smooth = copy.deepcopy(model)

    def replace(module: nn.Module) -> None:
        for name, child in placed_children(module):
            if type(child) is nn.ReLU:
                setattr(module, name, _SmoothReLU(temperature))
            elif type(child) is nn.LeakyReLU:
                setattr(module, name, _SmoothReLU(temperature, child.negative_slope))
            elif isinstance(child, GroupSort) and child.group_size == 2 and child.dim == -1:
                setattr(module, name, _SmoothMaxMin(temperature, child.descending))
            else:
                replace(child)

    replace(smooth)
    return smooth


def _operator_norms(jacobian: torch.Tensor, norm: float) -> torch.Tensor:
    """``||J||_{p→p}`` per sample for ``J`` of shape ``(N, out, in)``."""
    if norm == math.inf:
        return jacobian.abs().sum(-1).amax(-1)
    if norm == 1.0:
        return jacobian.abs().sum(-2).amax(-1)
    # the largest singular value from the smaller Gram matrix (out × out when out < in): one
    # small symmetric eigenproblem instead of an SVD of the whole Jacobian. Each Jacobian is
    # scaled by its largest entry first (no overflow in the Gram matrix); a non-finite one has
    # a NaN norm, as its SVD would.
    size = jacobian.abs().amax(dim=(-2, -1), keepdim=True)
    usable = torch.isfinite(size) & (size > 0)
    scale = torch.where(usable, size, torch.ones_like(size)).detach()
    unit = torch.where(usable, jacobian / scale, torch.zeros_like(jacobian))
    gram = unit @ unit.mT if unit.shape[-2] <= unit.shape[-1] else unit.mT @ unit
    top = torch.linalg.eigvalsh(gram)[..., -1].clamp(min=1e-300).sqrt() * scale[..., 0, 0]
    top = torch.where(usable[..., 0, 0], top, torch.zeros_like(top))  # a zero Jacobian: 0
    finite = torch.isfinite(size[..., 0, 0])
    return torch.where(finite, top, torch.full_like(top, math.nan))


def _steepest_directions(jacobians: torch.Tensor, norm: float) -> torch.Tensor:
    """Per sample, a unit input direction ``v`` (in ℓp) that ``J`` stretches most: ℓ2 the top
    right singular vector (from the smaller Gram matrix ``JJᵀ``), ℓ∞ the sign vector of the
    steepest row, ℓ1 the coordinate of the steepest column; all ones where ``J`` is not
    finite (e.g. an overflowing exp in float64)."""
    count, _, size = jacobians.shape
    finite = torch.isfinite(jacobians).flatten(1).all(dim=1)
    safe = torch.where(finite[:, None, None], jacobians, torch.zeros_like(jacobians))
    rows = torch.arange(count)
    if norm == 2.0:
        scale = safe.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-300)
        unit = safe / scale
        top = torch.linalg.eigh(unit @ unit.mT)[1][..., -1]  # (N, out)
        direction = (unit.mT @ top[..., None])[..., 0]
    elif norm == math.inf:
        direction = torch.sign(safe[rows, safe.abs().sum(-1).argmax(-1)])
    else:
        direction = torch.zeros(count, size, dtype=jacobians.dtype)
        direction[rows, safe.abs().sum(-2).argmax(-1)] = 1.0
    length = torch.linalg.vector_norm(direction, ord=norm, dim=1, keepdim=True)
    unusable = ~finite[:, None] | (length == 0)
    ones = torch.ones_like(direction) / torch.linalg.vector_norm(
        torch.ones(size, dtype=jacobians.dtype), ord=norm
    )
    return torch.where(unusable, ones, direction / length.clamp_min(1e-300))


def _jacobians(
    function: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, create_graph: bool
) -> torch.Tensor:
    """Per-sample Jacobians ``(N, out, in)`` of ``function`` (batch -> batch)."""
    flat = points.flatten(1)

    def single(x: torch.Tensor) -> torch.Tensor:
        return function(x.reshape(1, *points.shape[1:])).reshape(-1)

    jacobian = torch.func.vmap(torch.func.jacrev(single))(flat)
    return jacobian if create_graph else jacobian.detach()


def _vector_norm(x: torch.Tensor, norm: float) -> torch.Tensor:
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), ord=norm, dim=1)


@on_idle_cores
def lipschitz_lower_bound(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    norm: NormLike = L2,
    *,
    restarts: int = 4,
    steps: int = 200,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> LipschitzLowerBound:
    """Search for the steepest pair of inputs; returns the best witnessed ratio.

    Args:
        model: any ``nn.Module`` mapping a batch ``(N, *shape)`` to ``(N, ...)`` outputs; one the
            bound engine converts is searched and witnessed on exactly the function its upper
            bounds are about.
        inputs: start points ``(N, *shape)`` (e.g. data), or one tensor per input for a model
            with several (the witnesses are then joint flat vectors); ``restarts`` noisy copies
            are added.
        norm: the ℓp norm on inputs and outputs (1, 2 or inf).
        restarts: extra start points per input, perturbed by noise of the inputs' scale.
        steps: gradient-ascent steps in each phase.
        learning_rate: Adam step size, relative to the inputs' scale.
        seed: seeds the perturbations.
    """
    p = parse_norm(norm)
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    for tensor in tensors:
        _checks.finite_tensor("inputs", tensor)
        if tensor.dim() < 2 or tensor.shape[0] == 0 or tensor.shape[0] != tensors[0].shape[0]:
            raise ShapeError(
                f"inputs must be non-empty batches (N, ...) of one size, got {tuple(tensor.shape)}"
            )
    shapes = tuple(tuple(tensor.shape[1:]) for tensor in tensors)
    if len(tensors) > 1:
        inputs = torch.cat([t.detach().to("cpu", torch.float64).flatten(1) for t in tensors], dim=1)
    else:
        inputs = tensors[0]
    target = _Target.of(model, shapes)
    exact = target.function
    generator = torch.Generator().manual_seed(seed)
    base = inputs.detach().to("cpu", torch.float64)
    scale = float(base.std()) if base.numel() > 1 and float(base.std()) > 0 else 1.0
    noise = torch.randn(
        (restarts * base.shape[0], *base.shape[1:]), generator=generator, dtype=torch.float64
    )
    starts = torch.cat([base, base.repeat(restarts, *[1] * (base.dim() - 1)) + noise * scale])

    points = starts.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([points], lr=learning_rate * scale)
    halvings = {steps // 4, steps // 2}
    directions = torch.empty(0)
    for step in range(steps):
        target.temperature[0] = 0.5 * (1e-3) ** (step / max(steps - 1, 1))
        # ||J(x)|| through the difference quotient along its steepest direction v (held fixed):
        # its gradient is ∇||J(x)v|| = ∇||J(x)|| (the envelope theorem) up to O(h), at the cost
        # of first derivatives only (differentiating the Jacobian itself costs one second-order
        # pass per output)
        if step % DIRECTION_EVERY == 0 or directions.shape != points.shape:
            with torch.no_grad():
                jacobians = _jacobians(target.smooth, points.detach(), create_graph=False)
                directions = _steepest_directions(jacobians, p).reshape(points.shape)
        step_size = QUOTIENT_STEP * scale
        change = target.smooth(points + step_size * directions) - target.smooth(points)
        objective = _vector_norm(change, p) / step_size
        if not objective.requires_grad:
            break  # an affine function: its Jacobian is the same everywhere
        if step in halvings and points.shape[0] > 2 * KEPT_STARTS:
            # successive halving: the steeper half of the starts goes on, at half the cost
            kept = torch.argsort(objective.detach(), descending=True)[: points.shape[0] // 2]
            points = points.detach()[kept].clone().requires_grad_(True)
            optimizer = torch.optim.Adam([points], lr=learning_rate * scale)
            continue
        optimizer.zero_grad()
        (-objective.sum()).backward()
        optimizer.step()
    candidates = points.detach()
    true_norms = _operator_norms(_jacobians(exact, candidates, create_graph=False), p)
    true_norms = torch.nan_to_num(true_norms, nan=-1.0)  # non-finite Jacobians rank last
    best = torch.argsort(true_norms, descending=True)[: max(1, min(8, candidates.shape[0]))]
    first_layer = target.first_affine()
    chosen = [candidates[i] for i in best.tolist()]
    if first_layer is not None:
        chosen = [_pattern_search(exact, first_layer, x, p) for x in chosen]
    pairs = [_pair_along_top_direction(target, x, p, scale) for x in chosen]
    pairs = _refine_pairs(target, pairs, p, steps, learning_rate * scale)
    ratios = [target.ratio(x, y, p) for x, y in pairs]
    winner = max(range(len(pairs)), key=lambda i: ratios[i])
    x, y = pairs[winner]
    gradient = float(_operator_norms(_jacobians(exact, x.unsqueeze(0), create_graph=False), p)[0])
    return LipschitzLowerBound(
        ratios[winner],
        p,
        "surrogate ascent + pairwise",
        x,
        y,
        gradient,
        target.rigorous,
        shapes if len(shapes) > 1 else None,
    )


#: the ascent's difference quotient step, relative to the inputs' scale, and how often (in
#: steps) its steepest directions are recomputed from the Jacobians
QUOTIENT_STEP = 1e-4
DIRECTION_EVERY = 4
#: successive halving keeps at least this many starts
KEPT_STARTS = 8
#: first-layer neurons tried per pattern-search sweep (the ones nearest their kink)
PATTERN_FLIPS = 128
#: at most this many pattern-search sweeps (each one batch of Jacobians)
PATTERN_SWEEPS = 8
#: the pattern search runs on first layers of at most this many weights
PATTERN_ENTRIES = 2**20


def _pattern_search(
    model: nn.Module, first: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, norm: float
) -> torch.Tensor:
    """Greedy local search over first-layer activation patterns: flip a neuron by the least
    input change ``x' = x + W_0⁺(z' - z)`` (which, when ``W_0`` has full row rank, leaves every
    other first-layer neuron as it was). Each sweep evaluates, in one batch, the flips of the
    :data:`PATTERN_FLIPS` neurons closest to their kink and all the improving ones at once, and
    moves to the steepest; it stops when nothing improves. First layers beyond
    :data:`PATTERN_ENTRIES` entries are skipped (the pseudo-inverse alone would dominate)."""
    weight, bias = first
    if weight.numel() > PATTERN_ENTRIES:
        return x
    inverse = torch.linalg.pinv(weight)
    shape = x.shape

    def steepness(points: torch.Tensor) -> torch.Tensor:
        jacobians = _jacobians(model, points.reshape(-1, *shape), create_graph=False)
        return torch.nan_to_num(_operator_norms(jacobians, norm), nan=-1.0)

    current = x.flatten()
    best = float(steepness(current[None])[0])
    for _ in range(PATTERN_SWEEPS):
        pre = weight @ current + bias
        margin = 1e-6 * (float(pre.abs().max()) + 1e-12)
        flips = torch.argsort(pre.abs())[:PATTERN_FLIPS]
        flipped = -torch.sign(pre[flips]) * pre[flips].abs().clamp(min=margin)
        flipped = torch.where(pre[flips] == 0, torch.full_like(flipped, margin), flipped)
        moves = (flipped - pre[flips])[:, None] * inverse.T[flips]  # one row per single flip
        values = steepness(current + moves)
        improving = values > best
        if not bool(improving.any()):
            break
        together = current + moves[improving].sum(dim=0)
        joint = float(steepness(together[None])[0])
        single = int(values.argmax())
        if joint > float(values[single]):
            best, current = joint, together
        else:
            best, current = float(values[single]), current + moves[single]
    return current.reshape(shape)


def _pair_along_top_direction(
    target: _Target, x: torch.Tensor, norm: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, x + h·v)`` with ``v`` the direction ``J(x)`` stretches most, for the best of
    several step sizes ``h`` (small enough to stay in ``x``'s linear region if there is one)."""
    jacobian = _jacobians(target.function, x.unsqueeze(0), create_graph=False)
    direction = _steepest_directions(jacobian, norm)[0].reshape(x.shape)
    best_pair, best_ratio = (x, x + 1e-6 * scale * direction), -1.0
    for h in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):  # ratios are rigorous, so the best is honest
        y = x + h * scale * direction
        ratio = target.ratio(x, y, norm)
        if ratio > best_ratio:
            best_pair, best_ratio = (x, y), ratio
    return best_pair


def _refine_pairs(
    target: _Target,
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    norm: float,
    steps: int,
    lr: float,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ascent on ``||f(x) - f(y)|| / ||x - y||`` over both points of every pair at once (one
    batched forward per step), keeping each pair's best iterate (tracked in float64, settled by
    the rigorous ratio at the end)."""
    model = target.function
    a = torch.stack([x for x, _ in pairs]).clone().requires_grad_(True)
    b = torch.stack([y for _, y in pairs]).clone().requires_grad_(True)
    best = [(x.clone(), y.clone()) for x, y in pairs]
    with torch.no_grad():
        best_ratio = _pair_ratios(model, a, b, norm)
    moved = [False] * len(pairs)
    optimizer = torch.optim.Adam([a, b], lr=lr * 1e-2)
    for _ in range(steps // 4):
        ratio = _pair_ratios(model, a, b, norm)
        optimizer.zero_grad()
        (-ratio.sum()).backward()
        optimizer.step()
        with torch.no_grad():
            current = _pair_ratios(model, a, b, norm)
        for i in torch.nonzero(current > best_ratio).flatten().tolist():
            best[i], best_ratio[i], moved[i] = (
                (a[i].detach().clone(), b[i].detach().clone()),
                current[i],
                True,
            )
    settled = []
    for (x, y), pair, changed in zip(pairs, best, moved, strict=True):
        keep = changed and target.ratio(*pair, norm) >= target.ratio(x, y, norm)
        settled.append(pair if keep else (x, y))
    return settled


def _pair_ratios(model: nn.Module, a: torch.Tensor, b: torch.Tensor, norm: float) -> torch.Tensor:
    """``||f(a_i) - f(b_i)|| / ||a_i - b_i||`` per pair (0 where the points coincide)."""
    distance = _vector_norm(a - b, norm)
    safe = torch.where(distance > 0, distance, torch.ones_like(distance))
    change = _vector_norm(model(a) - model(b), norm)
    return torch.where(distance > 0, change / safe, torch.zeros_like(change))
