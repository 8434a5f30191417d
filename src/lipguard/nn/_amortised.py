"""Cheaper certificates for weights that change a little at a time.

Used by :class:`lipguard.nn._guard.SpectralGuard`: :func:`drift_bound` proves
``||W - W_c||_F`` for two matrices as stored, so that a full certificate ``σ_max(W_c) <= b_c``
gives ``σ_max(W) <= b_c + ||W - W_c||₂ <= b_c + ||W - W_c||_F`` (triangle inequality) for the
price of one pass over the weight; :func:`amortised_certificate` packages that bound.
"""

from __future__ import annotations

import math

import torch

from lipguard.linalg import (
    U64,
    SpectralNormCertificate,
    gamma,
    up,
)


def drift_bound(current: torch.Tensor, reference: torch.Tensor) -> float:
    """A proven upper bound on ``||current - reference||_F`` for two same-shape float64 tensors
    holding the matrices exactly (any narrower floating-point matrix converts exactly); ``inf``
    if it cannot be bounded (non-finite entries or overflow).

    Each difference ``d̂ = fl(a - b)`` errs by at most ``u`` relative (and is exact when it is
    subnormal), so ``|a - b| <= |d̂|/(1 - u)``; the sum of the ``N`` squares, in any order,
    errs by at most ``γ_N`` relative, plus one subnormal unit per square that underflows.
    """
    difference = (current - reference).reshape(-1)
    squares = float(torch.dot(difference, difference))
    if not math.isfinite(squares):
        return math.inf
    count = difference.numel()
    bound = squares / (1.0 - gamma(max(count, 1))) + count * 2.0**-1074
    bound = bound / (1.0 - U64) ** 2
    return up(math.sqrt(up(bound)) * (1.0 + 2.0 * U64))


def amortised_certificate(
    base: SpectralNormCertificate, drift: float, current: torch.Tensor
) -> SpectralNormCertificate:
    """The certificate ``σ_max(W) <= base.upper + drift`` for the float64 matrix ``current``
    (``drift`` from :func:`drift_bound` against the matrix ``base`` was proven for), rounded
    up. Its witness is ``base``'s right vector; ``lower`` and the left vector are recomputed for
    ``current`` (one matrix-vector product)."""
    upper = up(up(base.upper + drift) * (1.0 + 4.0 * U64))
    right = base.right_vector.to(device=current.device)
    image = current @ right
    lower = float(torch.linalg.vector_norm(image))
    left = image / lower if lower > 0.0 else base.left_vector
    return SpectralNormCertificate(
        upper=upper,
        lower=min(lower, upper),
        right_vector=right,
        left_vector=left,
        method="amortised",
        margin=(upper / base.upper) * (1.0 + base.margin) - 1.0 if base.upper > 0 else 0.0,
    )
