"""Matrices with rigorous error bounds, and a rigorous positive-semidefiniteness test.

Assumptions: IEEE 754 binary64 arithmetic with rounding to nearest (numpy's float64 and its
BLAS/LAPACK, any order of summation, fused multiply-add allowed); unit roundoff ``u = 2^-53``,
smallest subnormal ``η = 2^-1074``; ``γ_k = k·u/(1 - k·u)``. Inputs are finite with magnitudes
at most ``2^64`` and dimensions at most ``2^20`` (checked by the caller), so nothing overflows and
every underflow allowance below is far under :data:`TINY`.

An :class:`Enclosed` matrix ``(V, E)`` stands for an exact real matrix ``A`` with
``|A - V| <= E`` entrywise. Products use the standard bound (Higham, *Accuracy and Stability of
Numerical Algorithms*, §3.5) ``|fl(XY) - XY| <= γ_m·|X||Y| + m·η`` for an inner dimension ``m``.
Error bounds are themselves computed in floating point from non-negative terms, each with fewer
than ten roundings of factor at most ``(1 + u)``; they are multiplied by :data:`SLACK`
(``1 + 2^-20``, far above ``(1 + u)^10``) and get :data:`TINY` added (far above the ``m·η``
underflow terms), so every stored ``E`` bounds the true error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

U = 2.0**-53
ETA = 2.0**-1074
TINY = 2.0**-1000
SLACK = 1.0 + 2.0**-20
Matrix = NDArray[np.float64]


def gamma(k: int) -> float:
    """``γ_k`` rounded up (exact rational, then a relative ``2^-50`` margin)."""
    exact = Fraction(k) * Fraction(U) / (1 - k * Fraction(U))
    return float(exact) * (1 + 2.0**-50)


class Enclosed(NamedTuple):
    """``value`` with ``|exact - value| <= error`` entrywise."""

    value: Matrix
    error: Matrix


def exact(value: Matrix) -> Enclosed:
    """A float matrix that is itself the exact matrix."""
    return Enclosed(value, np.zeros_like(value))


def scale_rows(scale: Sequence[Fraction], matrix: Matrix) -> Enclosed:
    """``diag(scale)·matrix`` for exact rationals ``scale`` and an exact float ``matrix``.

    ``ŝ = float(s)`` is correctly rounded, ``|s - ŝ| <= u|ŝ| + η``; the product rounds by
    ``<= u|result| + η``; together ``<= 4u·|result| + TINY``."""
    rounded = np.array([float(s) for s in scale], dtype=np.float64)
    value = rounded[:, None] * matrix
    return Enclosed(value, SLACK * (4 * U * np.abs(value)) + TINY)


def scale_columns(matrix: Matrix, scale: Sequence[Fraction]) -> Enclosed:
    """``matrix·diag(scale)``, as :func:`scale_rows`."""
    moved = scale_rows(scale, matrix.T)
    return Enclosed(moved.value.T.copy(), moved.error.T.copy())


def product(left: Matrix, right: Enclosed) -> Enclosed:
    """``left·R`` for an exact float ``left`` and an enclosed ``R``: the rounding of the product
    (``γ_m`` of ``|left||R̂|``, itself computed with relative error ``<= γ_m``) plus the
    propagated ``|left|·E_R``."""
    m = left.shape[1]
    value = left @ right.value
    scale = gamma(m) / (1 - gamma(m))
    size = np.abs(left) @ np.abs(right.value)
    carried = np.abs(left) @ right.error
    return Enclosed(value, SLACK * (scale * size + carried / (1 - gamma(m))) + TINY)


def add(first: Enclosed, second: Enclosed) -> Enclosed:
    """The sum: errors add, plus the rounding ``<= u|result|`` (no underflow in a sum)."""
    value = first.value + second.value
    return Enclosed(value, SLACK * (first.error + second.error + U * np.abs(value)) + TINY)


def negate(matrix: Enclosed) -> Enclosed:
    return Enclosed(-matrix.value, matrix.error)


def block(rows: list[list[Enclosed]]) -> Enclosed:
    """Assemble a block matrix."""
    values, errors = ([[item[i] for item in row] for row in rows] for i in (0, 1))
    return Enclosed(np.block(values), np.block(errors))


def prove_psd(matrix: Enclosed) -> str | None:
    """Prove that every real symmetric ``A`` with ``|A - V| <= E`` is positive semidefinite;
    returns ``None`` when proven, else the reason it is not.

    Theorem (Demmel 1989; Rump, "Verification of positive definiteness", BIT 46, 2006, §2): if
    floating-point Cholesky runs to completion on a symmetric ``B ∈ F^{n×n}`` (binary64, round to
    nearest, any order of evaluation, ``(n+1)u < 1/2``), then the computed factor ``R`` has
    ``RᵀR = B + Δ`` with ``|Δ| <= γ_{n+1}|Rᵀ||R|`` (plus underflow), hence
    ``λ_min(B) >= -γ_{n+1}(1 - γ_{n+1})⁻¹·tr(B) - δ_η``, where we take the underflow allowance
    ``δ_η = 2^10·n·(n + 2 + max b_ii)·η`` (generously above Rump's).

    Here ``B = fl(V - cI)`` for a shift ``c``; then (Weyl) ``λ_min(A) >= λ_min(B) +
    min_i(v_ii - b_ii) - ||A - V||₂`` and ``||A - V||₂ <= ||E||₂ <= max_i Σ_j e_ij``
    (``E`` symmetric, non-negative). The inequality ``min_i(v_ii - b_ii) >= γ-term + δ_η +
    max row sum of E`` is checked after the factorisation in exact rational arithmetic (the row
    sums by :func:`math.fsum`, correctly rounded, times ``1 + 2^-51``). ``V`` must be symmetric:
    the lower triangle is mirrored from the upper (``A`` is symmetric, so ``E``'s upper triangle
    bounds both)."""
    value, error = matrix
    n = value.shape[0]
    if n == 0:
        return None
    value = np.triu(value) + np.triu(value, 1).T
    error = np.maximum(error, error.T)
    if not (np.isfinite(value).all() and np.isfinite(error).all()):
        return "the matrix has a non-finite entry (overflow)"
    rows = max(math.fsum(row) for row in error.tolist())
    spread = Fraction(rows) * (1 + Fraction(2) ** -51)
    g = Fraction(gamma(n + 1))
    shift = float((g / (1 - g)) * max(Fraction(float(np.trace(value))), Fraction(0)) + spread)
    # room for the rounding of v_ii - shift (<= u|v_ii|), checked exactly below anyway
    shift = shift * (1 + 2.0**-10) + 4 * U * float(np.abs(np.diagonal(value)).max()) + TINY
    shifted = value - shift * np.eye(n)
    try:
        np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:
        return "the shifted matrix is not positive definite in floating point (Cholesky failed)"
    diagonal = [Fraction(d) for d in np.diagonal(shifted).tolist()]
    trace = sum(diagonal, Fraction(0))
    largest = max(diagonal)
    underflow = Fraction(2**10 * n) * (n + 2 + largest) * Fraction(ETA)
    needed = (g / (1 - g)) * trace + underflow + spread
    gap = min(Fraction(v) - d for v, d in zip(np.diagonal(value).tolist(), diagonal, strict=True))
    if gap < needed:
        return "the diagonal shift does not cover the rounding allowance"
    return None
