"""Guaranteed error envelopes: where a model's output can go when its input is off by ``δ``.

:func:`error_envelope` returns, for each input ``x_i`` of a batch and each output ``k``, an
interval ``[lower_ik, upper_ik]`` with the guarantee

    ``f_k(x') ∈ [lower_ik, upper_ik]`` for every ``x'`` with ``‖x' - x_i‖ <= δ_i``

(ℓ2 or ℓ∞), for two functions at once:

- ``f``, the real-valued function of the stored weights (what every bound of
  :mod:`lipguard.bounds` is about);
- ``f̂``, the model evaluated in its own dtype (float32, say) on any such ``x'`` representable in
  that dtype and passed to the model as it is: both sides are widened by a bound on
  ``|f̂(x') - f(x')|`` valid over the whole ball (the running error analysis of
  :mod:`lipguard.bounds.rounding` with the intermediate values enclosed over the ball's
  enclosing box).

The value of ``f`` at the centre is itself enclosed rigorously
(:func:`~lipguard.bounds.evaluate.enclose`) and every endpoint is rounded outwards, so the
guarantee includes every floating-point operation used to compute it. Methods:

- ``"global"``: ``f(x) ± L·δ`` with ``L`` the sound global bound
  (:func:`~lipguard.bounds.lipschitz_bound`). For several outputs, each output gets the bound of
  its own map ``x ↦ f_k(x)`` where the engine proves one, else the bound of the whole map, which
  is valid per output too: ``|f_k(x') - f_k(x)| <= ‖f(x') - f(x)‖`` in ℓ2 and ℓ∞.
- ``"local"``: ``f(x) ± L(x, δ)·δ`` with ``L(x, δ)`` the sound local bound over the ball
  (:func:`~lipguard.bounds.local_lipschitz_bound`, same output-norm argument).
- ``"interval"``: interval propagation of the ball through the network: of the enclosing box
  (the ℓ∞ ball itself) through every operator, and for ℓ2 balls also through the normal form
  with the first layer seeing the ball exactly; the intersection of the two.
- ``"tightest"``: the intersection of the three (an intersection of sound intervals is sound);
  the method that gave each side is recorded. A method that refuses the model is left out.

The global envelope is tightest for small ``δ`` on models whose local and global constants
agree (linear models: it is exact); the local one where the ball fixes many ReLUs; intervals
for small networks and small ``δ`` where one output's dependence on the input varies in sign
across coordinates, and for large ``δ`` on saturating activations (tanh is bounded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import nn

from lipguard import _checks
from lipguard._placement import placement
from lipguard.bounds import evaluate, rounding
from lipguard.bounds.api import Method, lipschitz_bound, local_lipschitz_bound, read_model
from lipguard.bounds.graph import infer_input_shape
from lipguard.bounds.ir import Graph
from lipguard.bounds.local import propagate
from lipguard.bounds.network import Network
from lipguard.errors import InvalidArgumentError, LipguardError, ShapeError
from lipguard.linalg import down, up
from lipguard.norm import L2, Norm, NormLike

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: a ``method`` of :func:`error_envelope`
EnvelopeMethod = Literal["tightest", "global", "local", "interval"]
#: every ``method`` name :func:`error_envelope` accepts
ENVELOPE_METHODS: tuple[EnvelopeMethod, ...] = get_args(EnvelopeMethod)
#: the methods ``"tightest"`` intersects, in the order ties are attributed
_SINGLE: tuple[EnvelopeMethod, ...] = ("global", "local", "interval")

#: ``(lower, upper)``, float64 ``(N, outputs)``
Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ErrorEnvelope:
    """Guaranteed output ranges under bounded input error (see :func:`error_envelope`).

    Attributes:
        prediction: the model's own output at each input, ``(N, outputs)`` in its dtype (CPU).
        lower, upper: float64 ``(N, outputs)``: for every ``x'`` with
            ``‖x' - x_i‖ <= input_error[i]``, both ``f(x')`` (the exact function of the stored
            weights) and the model's evaluation at ``x'`` in ``dtype`` lie in
            ``[lower[i], upper[i]]``.
        lower_method, upper_method: per input, per output, the method that gave that side.
        input_error: the radius ``δ_i`` of each input's ball, float64 ``(N,)``.
        norm: the norm of the balls.
        dtype: the dtype of the evaluation the envelope also covers.
        parts: each method's own envelope ``(lower, upper)`` (for ``"tightest"``, every method
            that applied); not part of equality.
    """

    prediction: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    lower_method: tuple[tuple[str, ...], ...]
    upper_method: tuple[tuple[str, ...], ...]
    input_error: torch.Tensor
    norm: Norm
    dtype: torch.dtype
    parts: Mapping[str, Interval] = field(default_factory=dict, compare=False, repr=False)

    @property
    def method(self) -> tuple[str, ...]:
        """Per input, the method(s) that gave its sides, ``"+"``-joined in a fixed order."""
        return tuple(
            "+".join(name for name in _SINGLE if name in low + high)
            for low, high in zip(self.lower_method, self.upper_method, strict=True)
        )

    @property
    def width(self) -> torch.Tensor:
        """``upper - lower`` (float64 ``(N, outputs)``)."""
        return self.upper - self.lower

    def contains(self, values: torch.Tensor) -> torch.Tensor:
        """Whether each of ``values`` (``(N, outputs)``, or the model's output shape) lies in
        its interval; a boolean ``(N, outputs)`` tensor."""
        flat = values.detach().to("cpu", torch.float64).reshape(self.lower.shape)
        return (flat >= self.lower) & (flat <= self.upper)


def error_envelope(
    model: nn.Module,
    x: torch.Tensor,
    input_error: float | torch.Tensor,
    *,
    norm: NormLike = L2,
    method: EnvelopeMethod = "tightest",
    bound_method: Method = "auto",
) -> ErrorEnvelope:
    """Guaranteed output intervals of ``model`` around each input of the batch ``x``.

    Guarantee: for every ``i``, every output ``k`` and every ``x'`` with
    ``‖x' - x[i]‖ <= δ_i``, ``f_k(x')`` lies in ``[lower[i, k], upper[i, k]]``, where ``f`` is the
    real-valued function of the stored weights; so does the model's own evaluation at ``x'`` in its
    dtype when ``x'`` is representable in it (rounding errors over the ball are bounded and
    included). Assumptions: those of :mod:`lipguard.bounds.rounding` about the floating-point
    evaluation (IEEE round-to-nearest, library activations within a few ulps).

    Args:
        model: a single-input module the bound engine reads (in eval mode while evaluated).
        x: inputs ``(N, ...)`` with ``N >= 1``, finite, in the model's dtype.
        input_error: the radius ``δ >= 0``: one number for every input or a tensor ``(N,)``.
        norm: 2 or ``inf``: the norm of the input balls.
        method: ``"global"``, ``"local"``, ``"interval"`` or ``"tightest"`` (their
            intersection; see the module documentation).
        bound_method: the :func:`~lipguard.bounds.lipschitz_bound` method of ``"global"``.

    Returns:
        An :class:`ErrorEnvelope`.
    """
    if method not in ENVELOPE_METHODS:
        raise InvalidArgumentError(f"method must be one of {ENVELOPE_METHODS}, got {method!r}")
    p = Norm.parse(norm)
    if p not in (2.0, math.inf):
        raise InvalidArgumentError(f"error envelopes are available in ℓ2 and ℓ∞, got {norm!r}")
    _checks.finite_tensor("x", x)
    if x.dim() < 2 or len(x) == 0:
        raise ShapeError(f"x must be a batch (N, ...) with N >= 1, got shape {tuple(x.shape)}")
    where = placement(model)
    dtype = where.dtype
    x = x.to(where.device)
    if x.dtype != dtype:
        raise InvalidArgumentError(f"x must have the model's dtype {dtype}, got {x.dtype}")
    delta = _radii(input_error, len(x))
    shape = tuple(x.shape[1:])
    _check_input_shape(model, shape)
    with _checks.evaluating(model), torch.no_grad():
        return _envelope(model, x, delta, p, method, bound_method, dtype)


def _envelope(
    model: nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor,
    p: Norm,
    method: EnvelopeMethod,
    bound_method: Method,
    dtype: torch.dtype,
) -> ErrorEnvelope:
    """:func:`error_envelope` on checked arguments (model in eval mode, without gradients)."""
    graph = read_model(model, (tuple(x.shape[1:]),))
    prediction = model(x).reshape(len(x), -1).cpu()
    points = x.detach().to("cpu", torch.float64).reshape(len(x), -1)
    box = (down(points - delta[:, None]), up(points + delta[:, None]))
    slack = rounding.forward_error(graph, box[0], dtype, high=box[1])
    centre = evaluate.enclose(graph, points)
    makers = {
        "global": lambda: _spread(
            centre, _global_constants(model, graph, p, bound_method)[None, :] * delta[:, None]
        ),
        "local": lambda: _spread(centre, (_local_constants(model, x, delta, p) * delta)[:, None]),
        "interval": lambda: _interval(graph, points, delta, box, p),
    }
    parts: dict[str, Interval] = {}
    for name in _SINGLE if method == "tightest" else (method,):
        try:
            low, high = makers[name]()
        except LipguardError:
            if method != "tightest" or name == "interval":
                raise
            continue  # e.g. no normal form for the local bound: the others still hold
        parts[name] = (down(low - slack), up(high + slack))
    names = list(parts)
    lower, low_index = torch.stack([parts[n][0] for n in names]).max(dim=0)
    upper, high_index = torch.stack([parts[n][1] for n in names]).min(dim=0)
    return ErrorEnvelope(
        prediction=prediction,
        lower=lower,
        upper=upper,
        lower_method=tuple(tuple(names[j] for j in row) for row in low_index.tolist()),
        upper_method=tuple(tuple(names[j] for j in row) for row in high_index.tolist()),
        input_error=delta,
        norm=p,
        dtype=dtype,
        parts=parts,
    )


def _radii(input_error: float | torch.Tensor, count: int) -> torch.Tensor:
    """``δ`` as float64 ``(N,)`` after checking it is finite and ``>= 0``."""
    if isinstance(input_error, torch.Tensor):
        delta = input_error.detach().to(torch.float64).cpu()
        if delta.dim() > 1 or (delta.dim() == 1 and len(delta) != count):
            raise ShapeError(
                f"input_error must be a number or a tensor ({count},), "
                f"got shape {tuple(delta.shape)}"
            )
    elif isinstance(input_error, bool) or not isinstance(input_error, int | float):
        raise InvalidArgumentError(f"input_error must be a number >= 0, got {input_error!r}")
    else:
        delta = torch.tensor(float(input_error), dtype=torch.float64)
    if not bool(torch.isfinite(delta).all()) or bool((delta < 0).any()):
        raise InvalidArgumentError(f"input_error must be finite and >= 0, got {input_error!r}")
    return delta.expand(count).clone()


def _check_input_shape(model: nn.Module, shape: tuple[int, ...]) -> None:
    """A clear error when the model's first linear layer takes another input size."""
    try:
        expected = infer_input_shape(model)
    except InvalidArgumentError:
        return  # no first linear layer: the engine's own forward check decides
    if math.prod(expected) != math.prod(shape):
        raise ShapeError(f"x has per-sample shape {shape}, the model takes {expected}")


def _spread(centre: Interval, radius: torch.Tensor) -> Interval:
    """``[low - r, high + r]`` rounded outwards, ``r`` rounded up first."""
    r = up(radius)
    return down(centre[0] - r), up(centre[1] + r)


def _global_constants(model: nn.Module, graph: Graph, p: float, method: Method) -> torch.Tensor:
    """Per output ``(outputs,)``: the sound global bound of that output's map where the engine
    proves one below the whole map's, else the whole map's."""
    shape = graph.input_shapes[0]
    whole = lipschitz_bound(model, p, method, input_shape=shape).value
    outputs = graph.output_size
    constants = torch.full((outputs,), whole, dtype=torch.float64)
    if outputs == 1:
        return constants
    where = placement(model)
    for k in range(outputs):
        select = nn.Linear(outputs, 1, bias=False, dtype=where.dtype, device=where.device)
        with torch.no_grad():
            select.weight.zero_()
            select.weight[0, k] = 1.0
        try:
            row = lipschitz_bound(
                nn.Sequential(model, nn.Flatten(), select), p, method, input_shape=shape
            )
        except LipguardError:  # the engine cannot read the composition: keep the whole bound
            continue
        constants[k] = min(whole, row.value)
    return constants


def _local_constants(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, p: float
) -> torch.Tensor:
    """Per input ``(N,)``: the sound local bound over its ball (one engine call per radius)."""
    constants = torch.empty_like(delta)
    for radius in torch.unique(delta).tolist():
        chosen = delta == radius
        bounds = local_lipschitz_bound(model, x[chosen], radius, p)
        constants[chosen] = torch.tensor([b.value for b in bounds], dtype=torch.float64)
    return constants


def _interval(
    graph: Graph, points: torch.Tensor, delta: torch.Tensor, box: Interval, p: float
) -> Interval:
    """Interval propagation through the graph on the enclosing box (the ℓ∞ ball itself); for
    ℓ2 balls intersected with propagation through the normal form, whose first layer sees the
    ball exactly (when the model has a normal form)."""
    low, high = evaluate.propagate(graph, *box)[graph.output]
    if p != 2.0:
        return low, high
    try:
        network = Network.from_graph(graph)
    except LipguardError:
        return low, high
    for i, (point, r) in enumerate(zip(points, delta.tolist(), strict=True)):
        ball_low, ball_high = propagate(network, point, r, p)[1:]
        low[i], high[i] = torch.maximum(low[i], ball_low), torch.minimum(high[i], ball_high)
    return low, high


def plot_envelope(
    envelope: ErrorEnvelope,
    time: torch.Tensor | None = None,
    *,
    truth: torch.Tensor | None = None,
    output: int = 0,
    ax: Axes | None = None,
    label: str = "prediction",
) -> Figure:
    """The prediction and its guaranteed band for one output over a 1-D index (time, by default
    ``0..N-1``), and ``truth`` if given; returns the figure (matplotlib is imported here)."""
    import matplotlib

    outputs = envelope.lower.shape[1]
    if not 0 <= output < outputs:
        raise InvalidArgumentError(f"output must be in 0..{outputs - 1}, got {output}")
    steps = torch.arange(len(envelope.lower)) if time is None else time.detach().cpu()
    if steps.shape != (len(envelope.lower),):
        raise ShapeError(f"time must have shape ({len(envelope.lower)},), got {tuple(steps.shape)}")
    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(8, 3.5))
    t = steps.numpy()
    low, high = envelope.lower[:, output].numpy(), envelope.upper[:, output].numpy()
    ax.fill_between(t, low, high, color="tab:blue", alpha=0.25, lw=0, label="guaranteed band")
    ax.plot(
        t, envelope.prediction[:, output].detach().cpu().double().numpy(), "tab:blue", label=label
    )
    if truth is not None:
        ax.plot(
            t, truth.detach().cpu().double().reshape(len(t)).numpy(), "k--", lw=1, label="truth"
        )
    radius = envelope.input_error
    scale = f"δ = {float(radius[0]):.4g}" if bool((radius == radius[0]).all()) else "δ per input"
    ax.set_title(f"guaranteed envelope ({envelope.norm.label}, {scale})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax.figure.figure
