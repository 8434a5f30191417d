"""Lipschitz-constrained linear models trained by projection (SPEC A4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipguard import _checks
from lipguard.errors import InvalidArgumentError
from lipguard.linalg import U64, gamma, underflow_unit, unit_roundoff
from lipguard.norm import L2, Norm, NormLike, dual_norm, parse_norm
from lipguard.results import LipschitzBound


def row_dual_norms(weight: torch.Tensor, dual: float) -> torch.Tensor:
    """Upper bounds on ``||w_i||_q`` for every row, computed in float64 with rounding included."""
    rows = weight.detach().to(torch.float64).abs()
    count = rows.shape[-1]
    if dual == math.inf:
        return rows.amax(dim=-1)
    if dual == 1.0:
        return rows.sum(dim=-1) * (1.0 + gamma(count)) * (1.0 + 2 * U64)
    return torch.sqrt((rows * rows).sum(dim=-1) * (1.0 + gamma(count))) * (1.0 + 2 * U64)


def project_rows(weight: torch.Tensor, radius: float, dual: float) -> torch.Tensor:
    """Project every row of ``weight`` onto the ball ``{w : ||w||_q <= radius}``.

    Euclidean projection: scaling for q = 2, soft-thresholding with the sort-based threshold of
    Duchi et al. (2008) for q = 1, clipping for q = ∞. Rows already inside are unchanged. The
    thresholds are computed without gradient, so the result is differentiable like a
    straight-through rescaling. A final check in float64 shrinks any row that rounding left
    outside, so ``||w_i||_q <= radius`` holds for the returned tensor exactly as stored.

    Raises:
        InvalidArgumentError: ``radius`` is so small that rounding in the weight's dtype (its
            subnormal range) could take half of it.
    """
    radius = _checks.positive_float("radius", radius)
    floor = _underflow_norm(weight, dual)
    if floor >= radius / 2:
        raise InvalidArgumentError(
            f"a row-norm bound of {radius:g} is too small for {weight.dtype} rows of "
            f"{weight.shape[-1]} entries: rounding alone can move a row norm by {floor:.3g}"
        )
    if dual == math.inf:
        projected = weight.clamp(-radius, radius)
    elif dual == 2.0:
        norms = row_dual_norms(weight, 2.0)
        factor = torch.clamp(radius / norms.clamp_min(1e-300), max=1.0)
        projected = weight * factor.to(weight.dtype).unsqueeze(-1)
    else:
        projected = weight.sign() * F.relu(weight.abs() - _l1_thresholds(weight, radius))
    return _shrink_outside_rows(projected, radius, dual)


def _l1_thresholds(weight: torch.Tensor, radius: float) -> torch.Tensor:
    """Per-row θ with ``Σ max(|w_j| - θ, 0) = radius`` (θ = 0 for rows inside the ball)."""
    magnitudes = weight.detach().to(torch.float64).abs()
    ordered = magnitudes.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(dim=-1) - radius
    ranks = torch.arange(1, ordered.shape[-1] + 1, dtype=torch.float64, device=weight.device)
    active = ordered - cumulative / ranks > 0
    count = active.sum(dim=-1, keepdim=True).clamp_min(1)
    theta = cumulative.gather(-1, count - 1) / count
    inside = magnitudes.sum(dim=-1, keepdim=True) <= radius
    return torch.where(inside, torch.zeros_like(theta), theta.clamp_min(0.0)).to(weight.dtype)


def _underflow_norm(weight: torch.Tensor, dual: float) -> float:
    """``||d||_q`` for a row ``d`` of absolute rounding errors in the subnormal range."""
    count = weight.shape[-1]
    size = {math.inf: 1.0, 2.0: math.sqrt(count), 1.0: float(count)}[dual]
    return underflow_unit(weight.dtype) * size * (1.0 + 4.0 * U64)


def _shrink_outside_rows(weight: torch.Tensor, radius: float, dual: float) -> torch.Tensor:
    """Scale every row whose stored norm exceeds ``radius`` so that the rounded result does not:
    ``||fl(w·f)||_q <= f·||w||_q·(1 + u) + ||d||_q`` with ``d`` the subnormal-range errors, so
    ``f = (radius - ||d||_q)·(1 - 4u)/||w||_q`` suffices. Checked again after scaling."""
    u = unit_roundoff(weight.dtype)
    target = radius - _underflow_norm(weight, dual)
    for _ in range(4):
        norms = row_dual_norms(weight, dual)
        if bool((norms <= radius).all()):
            return weight
        factor = torch.where(
            norms > radius, target / norms * (1.0 - 4.0 * u), torch.ones_like(norms)
        )
        weight = weight * factor.to(weight.dtype).unsqueeze(-1)
    raise RuntimeError("rounding kept a row outside the constraint set")


class LipschitzLinearModel(nn.Module):
    """A linear model ``f(x) = W x + b`` whose outputs are each ``lipschitz``-Lipschitz in ℓp.

    Hölder's inequality gives ``|w_iᵀ(x - y)| <= ||w_i||_q·||x - y||_p``, so the constraint
    ``||w_i||_q <= L`` (``q`` the dual of the input norm ``p``) is exactly "output ``i`` is
    ``L``-Lipschitz". The forward pass always uses the projected weight, so the guarantee holds at
    every call; :meth:`project_` also writes the projection into the parameter, which turns any
    optimiser into projected gradient descent (call it after ``optimizer.step()``).

    Args:
        in_features: input size.
        out_features: number of outputs (each constrained separately).
        lipschitz: the bound ``L`` per output.
        norm: the input norm ``p``: 1, 2 or ``inf``.
        bias: learn an additive bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        *,
        lipschitz: float = 1.0,
        norm: NormLike = L2,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = _checks.positive_int("in_features", in_features)
        self.out_features = _checks.positive_int("out_features", out_features)
        self.lipschitz = lipschitz
        self.norm = norm
        reference = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight = nn.Parameter(reference.weight.detach().clone())
        self.bias = nn.Parameter(reference.bias.detach().clone()) if bias else None

    @property
    def lipschitz(self) -> float:
        """The bound ``L`` per output; may be changed at any time (validated: finite, > 0)."""
        return self._lipschitz

    @lipschitz.setter
    def lipschitz(self, value: float) -> None:
        self._lipschitz = _checks.positive_float("lipschitz", value)

    @property
    def norm(self) -> float:
        """The input norm ``p`` (1, 2 or ``inf``); may be changed at any time."""
        return self._norm

    @norm.setter
    def norm(self, value: NormLike) -> None:
        self._norm = parse_norm(value)

    @property
    def dual(self) -> float:
        """The dual norm ``q`` the rows are constrained in."""
        return dual_norm(self._norm)

    def effective_weight(self) -> torch.Tensor:
        """The weight in use: ``weight`` projected onto the constraint set."""
        return project_rows(self.weight, self.lipschitz, self.dual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    @torch.no_grad()
    def project_(self) -> LipschitzLinearModel:
        """Replace the parameter by its projection (in place)."""
        self.weight.copy_(self.effective_weight())
        return self

    def certified_lipschitz(self) -> LipschitzBound:
        """The largest ``||w_i||_q`` of the weight in use, rounded upwards: each output is
        Lipschitz with this constant w.r.t. ``||·||_p`` (an ℓp → ℓ∞ operator norm)."""
        value = float(row_dual_norms(self.effective_weight(), self.dual).max())
        return LipschitzBound(value=value, norm=self.norm, method="dual-norm, per output")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"lipschitz={self.lipschitz:g}, norm={Norm(self.norm).name}"
        )
