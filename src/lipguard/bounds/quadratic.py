"""Sound bounds on a quadratic network's output over a ball: the S-lemma / Shor SDP (SPEC B6).

A network with one hidden layer of quadratic activations, ``y = V·(Wx + a)² + Ux + d``, has
outputs (and output differences ``y_i - y_j``) that are exactly quadratic forms
``f(x) = xᵀAx + bᵀx + c``. Over the ball ``||x - x₀|| <= ε`` write ``x = x₀ + z`` and
``f = zᵀAz + b'ᵀz + c'`` with ``b' = b + 2Ax₀``, ``c' = f(x₀)``. If multipliers ``λ >= 0`` make

    M(λ, t) = [[A + Λ, b'/2], [b'ᵀ/2, c' - t - ε²·Σλ_i]] ⪰ 0

(``Λ = λI`` with one multiplier for the ℓ2 ball, ``Λ = diag(λ)`` with one per coordinate for the
ℓ∞ box, whose constraints are ``z_i² <= ε²``), then for every ``z`` in the ball
``f(x₀ + z) - t = [z; 1]ᵀ M [z; 1] + Σ_i λ_i·(ε² - z_i²)`` (``λ·(ε² - ||z||²)`` for ℓ2) is
``>= 0``: ``t`` is a lower bound on the minimum. The largest such ``t`` is a semidefinite program
(Shor's relaxation); for one quadratic over an ℓ2 ball the S-lemma makes it exact (the
trust-region problem has no duality gap), over a box it is a relaxation.

No solver output is trusted. :func:`verify_lower_bound` rebuilds ``M`` for the exact form —
the expansion of the stored weights and the shift to ``x₀`` in
:class:`~lipguard.bounds.enclosure.Enclosure` arithmetic, the corner rounded downwards (a
smaller corner only makes the claim stronger) — and proves it PSD with
:func:`lipguard.linalg.prove_psd`. :func:`quadratic_minimum` takes the solver's multipliers,
computes the best ``t`` for them, lowers it by a growing margin until the proof goes through,
and reports only a proven ``t``. A local search supplies a witness point, so every bound comes
with the value it cannot be above (or below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import sparse
from torch import nn

from lipguard import _checks
from lipguard.bounds.enclosure import Enclosure
from lipguard.errors import InvalidArgumentError, ShapeError, SolverError
from lipguard.linalg import U64, down, prove_psd, up
from lipguard.norm import Norm, NormLike

Solver = Literal["clarabel", "scs"]
SOLVERS: tuple[Solver, ...] = ("clarabel", "scs")
#: relative margins (of the problem's scale) tried by the proof: multipliers raised and ``t``
#: lowered by this much before each attempt
_LADDER = tuple(2.0**-k for k in range(44, 0, -4))
#: stored values (weights, centre, radius) must be 0 or within 2^±_RANGE in magnitude, so that
#: no product of the expansion and the shift can underflow by more than _UNDERFLOW covers
_RANGE = 100
_UNDERFLOW = 2.0**-800
#: local search: random starts, projected-gradient steps
_STARTS = 32
_STEPS = 200


@dataclass(frozen=True)
class QuadraticForm:
    """``f(x) = xᵀA*x + b*ᵀx + c*`` for an exact form within the stated errors of the stored one.

    Attributes:
        A: symmetric ``n × n`` float64 matrix (other floating dtypes are converted exactly).
        b: float64 vector of length ``n``.
        c: the constant.
        A_error, b_error, c_error: entrywise bounds ``|A* - A| <= A_error`` (etc.) on the distance
            to the exact form; ``None`` / ``0`` means the stored values are exact.
    """

    A: torch.Tensor
    b: torch.Tensor
    c: float
    A_error: torch.Tensor | None = None
    b_error: torch.Tensor | None = None
    c_error: float = 0.0

    def __post_init__(self) -> None:
        a = _checks.matrix("A", self.A).detach().to("cpu", torch.float64)
        if a.shape[0] != a.shape[1]:
            raise ShapeError(f"A must be square, got shape {tuple(a.shape)}")
        if not torch.equal(a, a.T):
            raise InvalidArgumentError("A must be symmetric; pass (A + A.T) / 2")
        b = _checks.finite_tensor("b", self.b).detach().to("cpu", torch.float64)
        if b.shape != (a.shape[0],):
            raise ShapeError(f"b must have shape ({a.shape[0]},), got {tuple(b.shape)}")
        object.__setattr__(self, "A", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", _finite("c", self.c))
        object.__setattr__(self, "c_error", _error_scalar("c_error", self.c_error))
        object.__setattr__(self, "A_error", _error_tensor("A_error", self.A_error, tuple(a.shape)))
        object.__setattr__(self, "b_error", _error_tensor("b_error", self.b_error, tuple(b.shape)))

    @property
    def size(self) -> int:
        """The input dimension ``n``."""
        return self.A.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``f`` at each row of ``x`` (shape ``(..., n)``), in float64 (an estimate: rounded)."""
        x = x.detach().to("cpu", torch.float64)
        return ((x @ self.A) * x).sum(-1) + x @ self.b + self.c

    def __neg__(self) -> QuadraticForm:
        return QuadraticForm(-self.A, -self.b, -self.c, self.A_error, self.b_error, self.c_error)

    def offset(self, delta: float) -> QuadraticForm:
        """``f + delta`` (the constant's rounding added to ``c_error``)."""
        c = self.c + _finite("delta", delta)
        error = up(self.c_error + up(2.0 * U64 * abs(c)))
        return QuadraticForm(self.A, self.b, c, self.A_error, self.b_error, error)


class QuadraticNetwork(nn.Module):
    """``y = V·(Wx + a)² + Ux + d``: one hidden layer with the activation ``s ↦ s²``.

    ``hidden`` holds ``W, a``, ``output`` holds ``V, d`` and ``skip`` (when ``skip=True``) the
    linear term ``U``. Every output is a quadratic form of the input: :func:`quadratic_forms`.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        *,
        skip: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _checks.positive_int("in_features", in_features)
        _checks.positive_int("hidden", hidden)
        _checks.positive_int("out_features", out_features)
        self.hidden = nn.Linear(in_features, hidden, dtype=dtype)
        self.output = nn.Linear(hidden, out_features, dtype=dtype)
        self.skip = nn.Linear(in_features, out_features, bias=False, dtype=dtype) if skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.output(self.hidden(x).square())
        return y if self.skip is None else y + self.skip(x)


def quadratic_forms(network: QuadraticNetwork) -> tuple[QuadraticForm, ...]:
    """Each output of ``network`` as a :class:`QuadraticForm`, with a rigorous bound on the
    expansion's rounding: the forms are the exact real functions of the stored weights."""
    outputs = network.output.weight.shape[0]
    return tuple(_expand(network, _output_row(network, k)) for k in range(outputs))


def margin_form(network: QuadraticNetwork, label: int, other: int) -> QuadraticForm:
    """``y_label - y_other`` as a :class:`QuadraticForm` (rounding of the difference included)."""
    outputs = network.output.weight.shape[0]
    for name, index in (("label", label), ("other", other)):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < outputs:
            raise InvalidArgumentError(
                f"{name} must be an output index in [0, {outputs}), got {index!r}"
            )
    (v, u, d), (v_other, u_other, d_other) = (
        _output_row(network, label),
        _output_row(network, other),
    )
    difference = (v.add(v_other, -1.0), u.add(u_other, -1.0), d.add(d_other, -1.0))
    return _expand(network, difference)


@dataclass(frozen=True)
class ExtremeBound:
    """A sound bound on the minimum (``sense="min"``) or maximum of ``f`` over a ball.

    Attributes:
        bound: ``bound <= min f`` (or ``max f <= bound``) over the ball, for the exact form, all
            rounding included. Sound.
        witness: a point of the ball found by local search (float64).
        witness_value: ``f(witness)`` in float64: ``min f <= witness_value`` (``max f >=``) up
            to that evaluation's rounding. Not a guarantee.
        multipliers: the S-lemma multipliers ``λ`` whose matrix was proven PSD (for the form
            ``f`` when ``sense="min"``, for ``-f`` when ``"max"``); empty when ``ε = 0``.
        sense: ``"min"`` or ``"max"``.
    """

    bound: float
    witness: torch.Tensor
    witness_value: float
    multipliers: torch.Tensor
    sense: Literal["min", "max"]

    @property
    def gap(self) -> float:
        """``|witness_value - bound|``: how far the true extreme can be from the bound."""
        return abs(self.witness_value - self.bound)


@dataclass(frozen=True)
class QuadraticBounds:
    """Sound ``lower <= f(x) <= upper`` for every ``x`` with ``||x - center|| <= eps``."""

    minimum: ExtremeBound
    maximum: ExtremeBound
    norm: float
    eps: float
    method: str = "s-lemma-sdp"
    sound: bool = True

    @property
    def lower(self) -> float:
        return self.minimum.bound

    @property
    def upper(self) -> float:
        return self.maximum.bound


@dataclass(frozen=True)
class DecisionCertificate:
    """Whether a decision provably cannot change in the ball.

    Attributes:
        certified: every margin's sound lower bound is ``> 0``.
        label: the predicted class at the centre (``None`` for a threshold decision).
        others: per margin, the competing class (``-1`` for the threshold).
        margins: per margin ``y_label - y_other`` (or ``±(f - threshold)``), its
            :class:`ExtremeBound` on the minimum over the ball.
        norm, eps: the ball.
    """

    certified: bool
    label: int | None
    others: tuple[int, ...]
    margins: tuple[ExtremeBound, ...]
    norm: float
    eps: float

    @property
    def counterexample(self) -> torch.Tensor | None:
        """A witness whose float64 margin is ``< 0`` (the attack flips the decision), if any."""
        for margin in self.margins:
            if margin.witness_value < 0.0:
                return margin.witness
        return None


def quadratic_minimum(
    form: QuadraticForm,
    center: torch.Tensor,
    eps: float,
    norm: NormLike = 2,
    *,
    solver: Solver = "clarabel",
) -> ExtremeBound:
    """A sound lower bound on ``min f(x)`` over ``||x - center|| <= eps`` (ℓ2 or ℓ∞).

    Assumes nothing of the solver: its multipliers are re-proven by :func:`verify_lower_bound`.
    Exact for the ℓ2 ball by the S-lemma, up to the proof's margin (below 1e-7 of the scale
    ``max(ε²·|A|, ε·|b'|)`` in the tests).

    Raises:
        InvalidArgumentError: ``eps < 0``, a norm other than 2 or inf, values beyond 2^±100.
        ShapeError: ``center`` is not a vector of length ``form.size``.
        SolverError: neither the solver nor the margins produced a provable bound.
    """
    p, radius = _ball(norm, eps)
    x0 = _center(form, center)
    if solver not in SOLVERS:
        raise InvalidArgumentError(f"solver must be one of {SOLVERS}, got {solver!r}")
    a, b, c = _shift(form, x0)
    if radius == 0.0:
        bound = float(down(float(c.value) - float(c.abs_error())))
        empty = torch.empty(0, dtype=torch.float64)
        return ExtremeBound(bound, x0, float(form(x0)), empty, "min")
    infinity = p == math.inf
    count = form.size if infinity else 1
    scaled_a, scaled_b = a.value * radius**2, b.value[:, 0] * radius
    # the constant c' is left out of the SDP (it only shifts t): the scale is that of the
    # variable part, however small it is next to c'
    scale = max(float(scaled_a.abs().max()), float(scaled_b.abs().max()))
    scale = scale if scale > 0.0 else 1.0
    multipliers, start = _solve(scaled_a / scale, scaled_b / scale, count, solver)
    bound, proven = _prove(a, b, c, radius, multipliers * scale, scale, scaled_a, scaled_b)
    witness = _search(a.value, b.value[:, 0], radius, infinity, start * radius)
    point = x0 + witness
    return ExtremeBound(bound, point, float(form(point)), proven, "min")


def quadratic_bounds(
    model: QuadraticForm | QuadraticNetwork,
    center: torch.Tensor,
    eps: float,
    norm: NormLike = 2,
    *,
    output: int | None = None,
    solver: Solver = "clarabel",
) -> QuadraticBounds:
    """Sound ``lower <= f(x) <= upper`` over the ball ``||x - center|| <= eps`` (ℓ2 or ℓ∞).

    ``model`` is a form or a :class:`QuadraticNetwork` (then ``output`` picks the output; it may
    be omitted for one output). The maximum is ``-(lower bound on min of -f)``. See
    :func:`quadratic_minimum` for the guarantee and the errors raised.
    """
    form = _form_of(model, output)
    minimum = quadratic_minimum(form, center, eps, norm, solver=solver)
    negated = quadratic_minimum(-form, center, eps, norm, solver=solver)
    maximum = ExtremeBound(
        -negated.bound, negated.witness, -negated.witness_value, negated.multipliers, "max"
    )
    return QuadraticBounds(minimum, maximum, Norm.parse(norm).p, float(eps))


def certify_decision(
    model: QuadraticForm | QuadraticNetwork,
    center: torch.Tensor,
    eps: float,
    norm: NormLike = 2,
    *,
    threshold: float | None = None,
    above: bool = True,
    solver: Solver = "clarabel",
) -> DecisionCertificate:
    """Prove that a decision cannot change anywhere in the ball ``||x - center|| <= eps``.

    Without ``threshold``, ``model`` is a classifier network: its prediction ``c`` at the
    centre (the float forward pass) is certified when, for every other class ``j``, the sound
    lower bound on ``min (y_c - y_j)`` is ``> 0``. With ``threshold``, ``model`` is a scalar score
    (a form or a one-output network) and the claim is ``f > threshold`` (``above=True``) or
    ``f < threshold`` on the whole ball. Each margin also carries an attack's witness.
    """
    if threshold is not None:
        form = _form_of(model, None)
        margin = form.offset(-threshold) if above else (-form).offset(threshold)
        bound = quadratic_minimum(margin, center, eps, norm, solver=solver)
        return DecisionCertificate(
            bound.bound > 0.0, None, (-1,), (bound,), Norm.parse(norm).p, float(eps)
        )
    if not isinstance(model, QuadraticNetwork) or model.output.weight.shape[0] < 2:
        raise InvalidArgumentError("without a threshold, model must be a network with >= 2 outputs")
    x = _checks.finite_tensor("center", center)
    with torch.no_grad():
        label = int(model(x.to(model.output.weight.dtype)[None]).argmax(-1)[0])
    others = tuple(j for j in range(model.output.weight.shape[0]) if j != label)
    margins = tuple(
        quadratic_minimum(margin_form(model, label, j), center, eps, norm, solver=solver)
        for j in others
    )
    certified = all(m.bound > 0.0 for m in margins)
    return DecisionCertificate(certified, label, others, margins, Norm.parse(norm).p, float(eps))


def verify_lower_bound(
    form: QuadraticForm,
    center: torch.Tensor,
    eps: float,
    norm: NormLike,
    t: float,
    multipliers: torch.Tensor,
) -> bool:
    """Prove ``f(x) >= t`` on the ball from the S-lemma certificate ``(λ, t)``: ``True`` only
    if ``M(λ, t)`` of the exact form is proven PSD (``False`` proves nothing; negative or
    non-finite multipliers are refused). ``multipliers`` has one entry for ℓ2, ``n`` for ℓ∞."""
    p, radius = _ball(norm, eps)
    x0 = _center(form, center)
    count = form.size if p == math.inf else 1
    lam = multipliers.detach().to("cpu", torch.float64).reshape(-1)
    if lam.numel() != count:
        raise ShapeError(f"expected {count} multipliers for this norm, got {lam.numel()}")
    if not math.isfinite(t) or not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
        return False
    return _proven(*_shift(form, x0), radius, lam, t)


# --- the expansion of a network ---------------------------------------------------------------


def _output_row(network: QuadraticNetwork, k: int) -> tuple[Enclosure, Enclosure, Enclosure]:
    """Output ``k``'s coefficients: its row of ``V``, of ``U`` (zero without skip), and ``d_k``."""
    v = _parameter("output.weight", network.output.weight)[k : k + 1]
    d = _parameter("output.bias", network.output.bias)[k : k + 1, None]
    if network.skip is None:
        u = torch.zeros(1, network.hidden.weight.shape[1], dtype=torch.float64)
    else:
        u = _parameter("skip.weight", network.skip.weight)[k : k + 1]
    return Enclosure(v), Enclosure(u), Enclosure(d)


def _expand(
    network: QuadraticNetwork, row: tuple[Enclosure, Enclosure, Enclosure]
) -> QuadraticForm:
    """``Σ_j v_j (w_jᵀx + a_j)² + uᵀx + d`` as ``xᵀAx + bᵀx + c``: ``A = Wᵀdiag(v)W``,
    ``b = 2Wᵀ(v∘a) + u``, ``c = aᵀdiag(v)a + d``, every product's rounding bounded."""
    v, u, d = row
    w = Enclosure(_parameter("hidden.weight", network.hidden.weight))
    a = Enclosure(_parameter("hidden.bias", network.hidden.bias)[:, None])
    scale = Enclosure(torch.diag(v.value[0]), None if v.error is None else torch.diag(v.error[0]))
    a_matrix = w.T.matmul(scale).matmul(w)
    linear = w.T.matmul(scale.matmul(a))
    b = Enclosure(2.0 * linear.value, 2.0 * linear.abs_error()).add(u.T)  # 2·: exact
    c = a.T.matmul(scale).matmul(a).add(d)
    value, error = _mirror(a_matrix.value), _mirror(a_matrix.abs_error())
    return QuadraticForm(
        value, b.value[:, 0], float(c.value), error, b.abs_error()[:, 0], float(c.abs_error())
    )


def _mirror(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix with ``matrix``'s lower triangle (the exact ``A`` is symmetric, so
    a bound on a lower entry's error holds for its mirror too)."""
    lower = torch.tril(matrix)
    return lower + torch.tril(matrix, diagonal=-1).T


def _parameter(name: str, tensor: torch.Tensor) -> torch.Tensor:
    return _checks.finite_tensor(name, tensor).detach().to("cpu", torch.float64)


# --- validation -------------------------------------------------------------------------------


def _finite(name: str, value: float) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(result):
        raise InvalidArgumentError(f"{name} must be finite, got {value!r}")
    return result


def _error_scalar(name: str, value: float) -> float:
    result = _finite(name, value)
    if result < 0.0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {value!r}")
    return result


def _error_tensor(
    name: str, tensor: torch.Tensor | None, shape: tuple[int, ...]
) -> torch.Tensor | None:
    if tensor is None:
        return None
    error = _checks.finite_tensor(name, tensor).detach().to("cpu", torch.float64)
    if tuple(error.shape) != shape:
        raise ShapeError(f"{name} must have shape {shape}, got {tuple(error.shape)}")
    if bool((error < 0).any()):
        raise InvalidArgumentError(f"{name} must be >= 0 entrywise")
    return error


def _ball(norm: NormLike, eps: float) -> tuple[float, float]:
    p = Norm.parse(norm).p
    if p not in (2.0, math.inf):
        raise InvalidArgumentError(f"norm must be 2 or inf for quadratic bounds, got {norm!r}")
    radius = _finite("eps", eps)
    if radius < 0.0:
        raise InvalidArgumentError(f"eps must be >= 0, got {eps!r}")
    _in_range("eps", torch.tensor([radius]))
    return p, radius


def _center(form: QuadraticForm, center: torch.Tensor) -> torch.Tensor:
    x0 = _checks.finite_tensor("center", center).detach().to("cpu", torch.float64)
    if x0.shape != (form.size,):
        raise ShapeError(f"center must have shape ({form.size},), got {tuple(x0.shape)}")
    for name, tensor in (("center", x0), ("A", form.A), ("b", form.b)):
        _in_range(name, tensor)
    _in_range("c", torch.tensor([form.c]))
    return x0


def _in_range(name: str, tensor: torch.Tensor) -> None:
    magnitude = tensor.abs()
    nonzero = magnitude[magnitude > 0]
    if bool(((nonzero < 2.0**-_RANGE) | (nonzero > 2.0**_RANGE)).any()):
        raise InvalidArgumentError(
            f"{name} has entries beyond 2^±{_RANGE}, which are not supported"
        )


def _form_of(model: QuadraticForm | QuadraticNetwork, output: int | None) -> QuadraticForm:
    if isinstance(model, QuadraticForm):
        return model
    if not isinstance(model, QuadraticNetwork):
        raise InvalidArgumentError(
            f"model must be a QuadraticForm or QuadraticNetwork, got {type(model).__name__}"
        )
    forms = quadratic_forms(model)
    if output is None and len(forms) == 1:
        return forms[0]
    if isinstance(output, bool) or not isinstance(output, int) or not 0 <= output < len(forms):
        raise InvalidArgumentError(f"output must be an index in [0, {len(forms)}), got {output!r}")
    return forms[output]


# --- the rigorous check -----------------------------------------------------------------------


def _shift(form: QuadraticForm, x0: torch.Tensor) -> tuple[Enclosure, Enclosure, Enclosure]:
    """``A``, ``b' = b + 2Ax₀`` (a column) and ``c' = x₀ᵀAx₀ + bᵀx₀ + c`` (1 × 1) as
    enclosures of the exact shifted form."""
    a = Enclosure(form.A, form.A_error)
    b = Enclosure(form.b[:, None], None if form.b_error is None else form.b_error[:, None])
    x = Enclosure(x0[:, None])
    ax = a.matmul(x)
    shifted_b = b.add(Enclosure(2.0 * ax.value, 2.0 * ax.abs_error()))
    c = Enclosure(
        torch.tensor([[form.c]], dtype=torch.float64),
        torch.tensor([[form.c_error]], dtype=torch.float64),
    )
    shifted_c = x.T.matmul(ax).add(b.T.matmul(x)).add(c)
    return a, shifted_b, shifted_c


def _certificate_matrix(
    a: Enclosure, b: Enclosure, c: Enclosure, radius: float, lam: torch.Tensor, t: float
) -> Enclosure:
    """``M(λ, t)`` with ``|M* - value| <= error`` off the corner; the corner is a proven lower
    bound on the exact one (which only adds a PSD term ``δ·e eᵀ``, ``δ >= 0``, to ``M*``)."""
    n = a.value.shape[0]
    top = a.add(Enclosure(torch.diag(lam.expand(n))))
    value = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    error = torch.zeros_like(value)
    value[:n, :n], error[:n, :n] = top.value, top.abs_error()
    half, half_error = b.value[:, 0] / 2.0, b.abs_error()[:, 0] / 2.0
    value[:n, n], value[n, :n] = half, half
    error[:n, n], error[n, :n] = half_error, half_error
    penalty = up(up(radius * radius) * up(float(lam.sum()) * (1.0 + 2.0 * n * U64)))
    corner = down(float(c.value) - float(c.abs_error()))
    value[n, n] = down(down(corner - t) - penalty)
    # products that underflow escape the relative bounds; with every stored value within
    # 2^±100 their total effect is far below this floor
    return Enclosure(value, error + _UNDERFLOW)


def _proven(
    a: Enclosure, b: Enclosure, c: Enclosure, radius: float, lam: torch.Tensor, t: float
) -> bool:
    """Prove ``M(λ, t) ⪰ 0`` after an exact power-of-two equilibration ``DMD``."""
    matrix = _certificate_matrix(a, b, c, radius, lam, t)
    _, exponent = torch.frexp(matrix.value.diagonal().abs())
    exponent = torch.where(matrix.value.diagonal() > 0, -(exponent // 2), 0).clamp(-500, 500)
    factors = torch.ldexp(torch.ones_like(matrix.value), exponent[:, None] + exponent[None, :])
    value = matrix.value * factors  # one exact scaling by a power of two (or an underflow,
    error = matrix.abs_error() * factors + 2.0**-1074  # whose error is covered here)
    if not bool(torch.isfinite(value).all() and torch.isfinite(error).all()):
        return False
    return prove_psd(value, Enclosure(value, error).frobenius_error())


def _prove(
    a: Enclosure,
    b: Enclosure,
    c: Enclosure,
    radius: float,
    multipliers: torch.Tensor,
    scale: float,
    scaled_a: torch.Tensor,
    scaled_b: torch.Tensor,
) -> tuple[float, torch.Tensor]:
    """The largest ``t`` on a ladder of margins that :func:`_proven` accepts, with its ``λ``.

    In the coordinates ``z = ε·w`` (where the solver worked) the multipliers are raised by a
    margin, ``t`` is set to the best value for them (a Schur complement) and lowered by it."""
    base = multipliers.clamp_min(0.0)
    n = scaled_a.shape[0]
    for step in _LADDER:
        lam_w = base + step * scale
        rise = _best_t(scaled_a, scaled_b, lam_w.expand(n), float(lam_w.sum()))
        if rise is None:
            continue
        t = float(c.value) + rise - step * scale
        lam = lam_w / radius**2
        if _proven(a, b, c, radius, lam, t):
            return t, lam
    raise SolverError("the S-lemma certificate could not be proven PSD at any margin")


def _best_t(
    a: torch.Tensor, b: torch.Tensor, diagonal: torch.Tensor, penalty: float
) -> float | None:
    """``-Σλ - ¼ bᵀ(A + Λ)⁻¹b`` (radius 1, constant 0): the largest ``t`` with ``M ⪰ 0`` for
    these multipliers, or ``None`` when ``A + Λ`` is not positive definite (an estimate)."""
    factor, info = torch.linalg.cholesky_ex(a + torch.diag(diagonal))
    if int(info):
        return None
    solved = torch.cholesky_solve(b[:, None], factor)[:, 0]
    return -penalty - 0.25 * float(b @ solved)


# --- the SDP ------------------------------------------------------------------------------------


def _solve(
    a: torch.Tensor, b: torch.Tensor, count: int, solver: Solver
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise ``t`` s.t. ``M(λ, t) ⪰ 0``, ``λ >= 0`` for ``zᵀAz + bᵀz`` over the unit ball
    (``count`` = 1: ℓ2, ``n``: ℓ∞). Returns ``λ`` and the point the dual moment matrix suggests
    (unit-ball coordinates). Clarabel falls back to SCS when it fails."""
    n = a.shape[0]
    size = n + 1
    base = np.zeros((size, size))
    base[:n, :n] = a.numpy()
    base[:n, n] = base[n, :n] = b.numpy() / 2.0
    corner = np.zeros((size, size))
    corner[n, n] = 1.0
    constraints = []
    for i in range(count):
        f = np.zeros((size, size))
        if count == 1:
            f[np.arange(n), np.arange(n)] = 1.0
        else:
            f[i, i] = 1.0
        f[n, n] = -1.0
        constraints.append(f)
    order = np.tril_indices(size) if solver == "clarabel" else np.triu_indices(size)
    try:
        x, moment = _conic(base, corner, constraints, order, solver)
    except SolverError:
        if solver == "scs":
            raise
        x, moment = _conic(base, corner, constraints, np.triu_indices(size), "scs")
    multipliers = torch.tensor(x[1:], dtype=torch.float64)
    point = moment[:n, n] / moment[n, n] if moment[n, n] > 0 else np.zeros(n)
    return multipliers, torch.tensor(point, dtype=torch.float64)


def _conic(
    base: np.ndarray,
    corner: np.ndarray,
    constraints: list[np.ndarray],
    order: tuple[np.ndarray, np.ndarray],
    solver: Solver,
) -> tuple[np.ndarray, np.ndarray]:
    """``min -t`` s.t. ``svec(base) - t·svec(corner) + Σ λ_i svec(F_i) ∈ PSD``, ``λ >= 0``;
    the non-negative rows first, then the packed PSD cone (Clarabel: upper triangle by columns;
    SCS: lower by columns; off-diagonal entries scaled by √2). Returns ``x = (t, λ)`` and the
    dual (moment) matrix."""
    rows, cols = order
    weights = np.where(rows == cols, 1.0, math.sqrt(2.0))
    count = len(constraints)
    psd = np.column_stack(
        [corner[rows, cols] * weights] + [-f[rows, cols] * weights for f in constraints]
    )
    nonnegative = np.hstack([np.zeros((count, 1)), -np.eye(count)])
    a = sparse.csc_matrix(np.vstack([nonnegative, psd]))
    b = np.concatenate([np.zeros(count), base[rows, cols] * weights])
    q = np.zeros(count + 1)
    q[0] = -1.0
    if solver == "clarabel":
        x, z = _clarabel(q, a, b, count, base.shape[0])
    else:
        x, z = _scs(q, a, b, count)
    moment = np.zeros_like(base)
    moment[rows, cols] = z[count:] / weights
    moment[cols, rows] = z[count:] / weights
    return x, moment


def _clarabel(
    q: np.ndarray, a: sparse.csc_matrix, b: np.ndarray, count: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    import clarabel  # ships no type information

    cones = [clarabel.NonnegativeConeT(count), clarabel.PSDTriangleConeT(size)]
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    variables = q.shape[0]
    result = clarabel.DefaultSolver(
        sparse.csc_matrix((variables, variables)), q, a, b, cones, settings
    ).solve()
    if str(result.status) not in ("Solved", "AlmostSolved"):
        raise SolverError(f"Clarabel returned {result.status}")
    return np.asarray(result.x), np.asarray(result.z)


def _scs(
    q: np.ndarray, a: sparse.csc_matrix, b: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    import scs  # ships no type information

    size = round((math.sqrt(8 * (b.shape[0] - count) + 1) - 1) / 2)
    result = scs.SCS(
        {"A": a, "b": b, "c": q},
        {"l": count, "s": [size]},
        verbose=False,
        eps_abs=1e-9,
        eps_rel=1e-9,
    ).solve()
    if not str(result["info"]["status"]).startswith("solved"):
        raise SolverError(f"SCS returned {result['info']['status']}")
    return np.asarray(result["x"]), np.asarray(result["y"])


# --- the witness --------------------------------------------------------------------------------


def _search(
    a: torch.Tensor, b: torch.Tensor, radius: float, infinity: bool, suggestion: torch.Tensor
) -> torch.Tensor:
    """A point ``z`` of the ball with small ``zᵀAz + bᵀz``: projected gradient descent from the
    SDP's suggestion, the centre, ±the lowest eigenvectors, ``-b`` and seeded random points."""
    n = a.shape[0]
    inner = radius * (1.0 - 8.0 * U64)
    generator = torch.Generator().manual_seed(0xB6)
    values, vectors = torch.linalg.eigh(a)
    directions = [vectors[:, 0], vectors[:, min(1, n - 1)], b]
    if infinity:
        edges = [inner * torch.sign(d) for d in directions]
        random = inner * (2.0 * torch.rand(_STARTS, n, generator=generator, dtype=a.dtype) - 1.0)
        random[: _STARTS // 2] = inner * torch.sign(random[: _STARTS // 2])
    else:
        edges = [inner * d / torch.linalg.vector_norm(d).clamp_min(1e-300) for d in directions]
        random = torch.randn(_STARTS, n, generator=generator, dtype=a.dtype)
    starts = torch.cat([torch.stack([suggestion, torch.zeros(n, dtype=a.dtype), *edges]), random])
    starts = torch.cat([starts, -starts[2:5]])
    rate = 1.0 / max(
        2.0 * float(values.abs().max()), float(torch.linalg.vector_norm(b)) / radius, 1e-300
    )
    z = _project(starts, inner, infinity)
    for _ in range(_STEPS):
        z = _project(z - rate * (2.0 * z @ a + b), inner, infinity)
    objective = ((z @ a) * z).sum(-1) + z @ b
    return z[int(objective.argmin())]


def _project(z: torch.Tensor, radius: float, infinity: bool) -> torch.Tensor:
    if infinity:
        return z.clamp(-radius, radius)
    norms = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    return z * (radius / norms.clamp_min(radius))
