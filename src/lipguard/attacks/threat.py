"""The threat model: which perturbed inputs an attack may return.

A :class:`ThreatModel` is a norm ball ``||x' - x|| <= eps`` (ℓ∞ or ℓ2), optionally intersected
with a box ``low <= x' <= high`` (valid pixel or feature ranges) and restricted to a mask of
attackable features (the others stay exactly at their clean values). :meth:`project` maps any
point into that set. For ℓ∞ the set is a box per coordinate, ``[max(x - eps, low),
min(x + eps, high)]`` (a single point ``x_i`` outside the mask), and the projection is one clamp to
it — exact and idempotent. For ℓ2 it zeroes masked-out coordinates, projects exactly onto the
ball, then clips to the box (clipping only shrinks each coordinate's distance to ``x``, so the
result stays in the ball). Every attack's result goes through it, so no attack can return an
out-of-budget point; :meth:`ThreatModel.projector` prepares the same projection once per clean
batch for attack loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lipguard import _checks
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.norm import LINF, NormLike, parse_norm

SUPPORTED_NORMS = (2.0, math.inf)


def _flat_norm(delta: torch.Tensor, p: float) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if p == math.inf else flat.norm(dim=1)


def _view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


#: a box ``(low, high)`` for every feature: floats or tensors broadcastable to a sample
Bounds = tuple[float | torch.Tensor, float | torch.Tensor]


@dataclass(frozen=True, init=False)
class ThreatModel:
    """``{x' : ||x' - x||_p <= eps, low <= x' <= high, x'_i = x_i outside mask}``.

    Args:
        eps: the budget (>= 0).
        norm: 2 or ``inf`` (any spelling :class:`lipguard.norm.Norm` parses); stored as the
            order ``p``, a float.
        bounds: optional ``(low, high)`` box for every feature (floats or tensors broadcastable to
            a sample).
        mask: optional boolean tensor of a sample's shape; ``True`` = attackable.
    """

    eps: float
    norm: float
    bounds: Bounds | None
    mask: torch.Tensor | None

    def __init__(
        self,
        eps: float,
        norm: NormLike = LINF,
        bounds: Bounds | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        value = float(eps)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"eps must be finite and >= 0, got {eps!r}")
        object.__setattr__(self, "eps", value)
        p = parse_norm(norm)
        if p not in SUPPORTED_NORMS:
            raise InvalidArgumentError(f"attacks support the ℓ2 and ℓ∞ norms, got {norm!r}")
        object.__setattr__(self, "norm", p)
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "mask", mask)
        if self.bounds is not None:
            low, high = self.bounds
            if not bool((torch.as_tensor(low) < torch.as_tensor(high)).all()):
                raise InvalidArgumentError("bounds must satisfy low < high (and not be NaN)")
        if self.mask is not None and self.mask.dtype != torch.bool:
            raise InvalidArgumentError("mask must be a boolean tensor (True = attackable)")

    def with_eps(self, eps: float) -> ThreatModel:
        return ThreatModel(eps, self.norm, self.bounds, self.mask)

    def check_inputs(self, x: torch.Tensor) -> None:
        """Clean inputs must be finite, batched, inside the box and match the mask's shape."""
        _checks.finite_tensor("x", x)
        if not x.is_floating_point() or x.dim() < 2:
            raise ShapeError("x must be a floating-point batch of shape (N, *input_shape)")
        if self.mask is not None and tuple(self.mask.shape) != tuple(x.shape[1:]):
            raise ShapeError(f"mask has shape {tuple(self.mask.shape)}; samples {x.shape[1:]}")
        if self.bounds is not None:
            low, high = self._box(x)
            if bool((x < low).any() or (x > high).any()):
                raise InvalidArgumentError("clean inputs lie outside the threat model's bounds")

    def _box(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bounds is None:  # callers check first
            raise InvalidArgumentError("this threat model has no bounds")
        low, high = self.bounds
        return (
            torch.as_tensor(low, dtype=like.dtype, device=like.device),
            torch.as_tensor(high, dtype=like.dtype, device=like.device),
        )

    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        """``||delta_i||_p`` for each sample."""
        return _flat_norm(delta, self.norm)

    def interval(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ℓ∞ only: the threat set of each clean point as per-coordinate bounds ``(lo, hi)``:
        ``[max(x - eps, low), min(x + eps, high)]``, and ``[x_i, x_i]`` outside the mask. For
        ``x`` in the box (:meth:`check_inputs`) ``lo <= x <= hi``; both bounds are clamped into
        the box, so a clean point outside it still yields points inside. ``x ± eps`` is rounded
        once, so a bound may exceed the budget by one rounding of ``x ± eps``."""
        if self.norm != math.inf:
            raise InvalidArgumentError("interval() describes the ℓ∞ threat set only")
        lo, hi = x - self.eps, x + self.eps
        if self.bounds is not None:
            low, high = self.bounds
            if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
                low, high = self._box(x)
                lo, hi = torch.clamp(lo, low, high), torch.clamp(hi, low, high)
            else:
                lo, hi = lo.clamp_(float(low), float(high)), hi.clamp_(float(low), float(high))
        if self.mask is not None:
            mask = self.mask.to(x.device)
            lo, hi = torch.where(mask, lo, x), torch.where(mask, hi, x)
        return lo, hi

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """The point of the threat set for ``x`` obtained from ``x_adv`` (mask, ball, box). ℓ∞:
        the exact Euclidean projection, one clamp to :meth:`interval` (points of the set come
        back bit for bit); ℓ2: the exact projection onto the ball, then clipping to the box."""
        if self.norm == math.inf:
            lo, hi = self.interval(x)
            return torch.clamp(x_adv, lo, hi)
        delta = x_adv - x
        if self.mask is not None:
            delta = delta * self.mask.to(delta.device)
        size = _flat_norm(delta, 2.0)
        scale = torch.where(size > self.eps, self.eps / size.clamp_min(1e-30), 1.0)
        result = x + delta * _view(scale, delta)
        if self.bounds is not None:
            low, high = self._box(x)
            return torch.maximum(torch.minimum(result, high), low)
        return result

    def projector(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`project` for the clean batch ``x``, prepared once for an attack loop: the
        returned function overwrites its argument (a detached batch of points) with its
        projection and returns it. ℓ∞: one in-place clamp to the precomputed :meth:`interval`."""
        if self.norm == math.inf:
            lo, hi = self.interval(x)
            return lambda points: points.clamp_(lo, hi)
        return lambda points: points.copy_(self.project(x, points))

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A random point of the threat set: uniform in the ℓ∞ box, or uniform in the ℓ2 ball."""
        if self.norm == math.inf:
            delta = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            delta = (2 * delta - 1) * self.eps
        else:
            direction = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            direction = direction / _view(_flat_norm(direction, 2.0).clamp_min(1e-30), x)
            dimension = math.prod(x.shape[1:])
            radius = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
            delta = direction * _view(self.eps * radius ** (1.0 / dimension), x)
        return self.project(x, x + delta)

    def ascent_direction(
        self, gradient: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The steepest-ascent direction of unit ``p``-norm: ``sign(g)`` for ℓ∞,
        ``g/||g||₂`` for ℓ2 (zero where the gradient is zero, and outside the mask); written
        into ``out`` when given (which may be ``gradient`` itself; not when it is a broadcast view
        such as autograd's zero gradient of an input the output does not depend on)."""
        if out is not None and not out.is_contiguous():
            out = None
        if self.mask is not None:
            gradient = gradient * self.mask.to(gradient.device)
        if self.norm == math.inf:
            return torch.sign(gradient, out=out) if out is not None else gradient.sign()
        size = _view(_flat_norm(gradient, 2.0).clamp_min(1e-30), gradient)
        return torch.div(gradient, size, out=out) if out is not None else gradient / size

    def contains(self, x: torch.Tensor, x_adv: torch.Tensor, tolerance: float = 1e-6) -> bool:
        """Whether every ``x_adv[i]`` is in the threat set of ``x[i]`` (up to ``tolerance``)."""
        delta = x_adv - x
        ok = bool((self.norm_of(delta) <= self.eps * (1 + tolerance) + tolerance).all())
        if self.mask is not None:
            ok &= bool((delta[:, ~self.mask.to(delta.device)] == 0).all())
        if self.bounds is not None:
            low, high = self._box(x)
            ok &= bool((x_adv >= low).all() and (x_adv <= high).all())
        return ok
