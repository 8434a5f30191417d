"""Float64 matrices with entrywise rounding-error bounds.

An :class:`Enclosure` holds a computed matrix ``value`` and a non-negative ``error`` such that the
exact matrix ``A*`` it stands for satisfies ``|A* - value| <= error`` entrywise. Products and
sums propagate the bound with Higham's ``γ_k`` (any summation order, FMA allowed); the bound's
own computation is inflated by a relative ``(1 + 2γ_k)`` so that rounding in it cannot make it
too small. The bound engine uses this to build matrices (merged layers, LipSDP matrices, block
products) whose rounding it can then add to a proof.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lipguard.linalg import U64, gamma


@dataclass(frozen=True)
class Enclosure:
    """``value`` (float64) and an entrywise bound ``error`` on its distance to the exact matrix;
    ``error is None`` means exact."""

    value: torch.Tensor
    error: torch.Tensor | None = None

    @staticmethod
    def exact(tensor: torch.Tensor) -> Enclosure:
        """A float64 copy of ``tensor`` on the CPU (where the engine proves everything); exact
        when ``tensor`` is float64 or narrower."""
        return Enclosure(tensor.detach().to("cpu", torch.float64))

    @property
    def T(self) -> Enclosure:
        return Enclosure(self.value.T, None if self.error is None else self.error.T)

    def abs_error(self) -> torch.Tensor:
        return torch.zeros_like(self.value) if self.error is None else self.error

    def matmul(self, other: Enclosure) -> Enclosure:
        """``self @ other`` with the error of the product and of both factors."""
        inner = self.value.shape[-1]
        value = self.value @ other.value
        g = gamma(inner + 1)
        bound = g * (self.value.abs() @ other.value.abs())
        if other.error is not None:
            bound = bound + (self.value.abs() + self.abs_error()) @ other.error
        if self.error is not None:
            bound = bound + self.error @ other.value.abs()
        return Enclosure(value, bound * (1 + 2 * g))

    def scale_columns(self, factors: torch.Tensor, relative_error: float = 0.0) -> Enclosure:
        """``self @ diag(factors)`` (one rounding per entry); ``relative_error`` bounds how far
        the computed ``factors`` may be from the exact ones, relatively."""
        value = self.value * factors
        bound = (U64 + relative_error * (1 + U64)) * value.abs() * (1 + U64)
        if self.error is not None:
            bound = bound + self.error * factors.abs() * (1 + relative_error)
        return Enclosure(value, bound * (1 + 4 * U64))

    def add(self, other: Enclosure, sign: float = 1.0) -> Enclosure:
        """``self + sign·other`` (``sign`` ±1)."""
        value = self.value + sign * other.value
        bound = U64 * value.abs()
        for error in (self.error, other.error):
            if error is not None:
                bound = bound + error
        return Enclosure(value, bound * (1 + 4 * U64))

    def frobenius_error(self) -> float:
        """An upper bound on ``||A* - value||_F`` (hence on the spectral-norm distance)."""
        if self.error is None:
            return 0.0
        squares = float((self.error * self.error).sum())
        return (squares * (1 + gamma(self.error.numel() + 1))) ** 0.5 * (1 + 2 * U64)

    def row_abs_sums(self) -> torch.Tensor:
        """Upper bounds on the exact matrix's row ℓ1 norms (for ℓ∞ operator norms)."""
        total = self.value.abs() + self.abs_error()
        return total.sum(dim=-1) * (1 + gamma(total.shape[-1] + 1))
