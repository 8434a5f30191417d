"""Sound operator norms of the engine's linear operators, in ℓ2 and ℓ∞.

Dense matrices use :func:`lipguard.linalg.spectral_norm_certificate` (ℓ2) and rounded-up row ℓ1
sums (ℓ∞), plus their enclosure's rounding bound. A convolution's ℓ2 norm comes from its
frequency response (:func:`lipguard.convolution.conv_spectral_norm`), never from the reshaped
kernel. ℓ∞: the largest absolute row sum of the kernel.
"""

from __future__ import annotations

import math

from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ops import Conv, Dense
from lipguard.convolution import conv_spectral_norm
from lipguard.linalg import (
    gamma,
    spectral_norm_certificate,
    up,
)

#: convolutions with at most this many matrix entries are also certified as dense matrices
_DENSE_CONV_ENTRIES = 2**20


def matrix_norm(matrix: Enclosure, norm: float) -> float:
    """A sound ``||A*||_{p→p}`` for the exact matrix ``A*`` enclosed by ``matrix``."""
    if matrix.value.numel() == 0:
        return 0.0
    if norm == math.inf:
        return up(float(matrix.row_abs_sums().max()))
    return up(spectral_norm_certificate(matrix.value).upper + matrix.frobenius_error())


def scale_norm(scale: Enclosure) -> float:
    """``max_i |s_i|`` of an entrywise scaling (its rounding bound included): its operator norm
    in every ℓp."""
    if scale.value.numel() == 0:
        return 0.0
    return up(float((scale.value.abs() + scale.abs_error()).max()))


def operator_norm(operator: Dense | Conv, norm: float) -> float:
    """A sound operator norm of a dense or convolutional operator (ℓ2 or ℓ∞); a dense map on
    several row blocks is block-diagonal, with the norm of its matrix."""
    if isinstance(operator, Dense):
        return matrix_norm(operator.matrix, norm)
    if norm == math.inf:
        kernel = operator.weight.abs().flatten(1)
        return up(float(kernel.sum(dim=1).max()) * (1 + gamma(kernel.shape[1] + 1)))
    bound = conv_spectral_norm(operator)
    if math.prod(operator.in_shape) * math.prod(operator.out_shape) <= _DENSE_CONV_ENTRIES:
        bound = min(bound, matrix_norm(operator.dense().matrix, norm))  # exact when small
    return bound
