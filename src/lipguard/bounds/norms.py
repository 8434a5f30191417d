"""Sound operator norms of the engine's linear operators, in ℓ2 and ℓ∞.

Dense matrices use :func:`lipguard.linalg.spectral_norm_certificate` (ℓ2) and rounded-up row ℓ1
sums (ℓ∞), plus their enclosure's rounding bound. A convolution's ℓ2 norm comes from its
frequency response, never from the reshaped kernel (whose spectral norm can be smaller than the
operator's): a zero-padded convolution on an input of spatial size ``n`` is a restriction of
the circular convolution on a grid of size ``N >= n + (k - 1)·dilation`` (no wrap-around), whose
singular values are those of the matrices ``K̂(ω) = Σ_t K_t e^{-i⟨ω, t⟩}`` at the ``N``-point DFT
frequencies (Sedghi, Gupta & Long, 2019). So ``||conv||₂ <= max_ω σ_max(K̂(ω))``; a stride only
subsamples the output (norm <= 1). Each ``K̂(ω)`` is computed tap by tap in float64 with its
rounding bound and certified through its real form ``[[Re, -Im], [Im, Re]]``, which has the same
singular values. ℓ∞: the largest absolute row sum of the kernel.
"""

from __future__ import annotations

import itertools
import math

import torch

from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ops import Conv, Dense
from lipguard.linalg import U64, gamma, spectral_norm_certificate, spectral_norm_upper_bounds

#: convolutions with at most this many matrix entries are also certified as dense matrices
_DENSE_CONV_ENTRIES = 2**20


def up(value: float) -> float:
    """``value`` rounded one ulp towards +inf (for sums and products of bounds)."""
    return math.nextafter(value, math.inf)


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
    bound = _conv_spectral_norm(operator)
    if math.prod(operator.in_shape) * math.prod(operator.out_shape) <= _DENSE_CONV_ENTRIES:
        bound = min(bound, matrix_norm(operator.dense().matrix, norm))  # exact when small
    return bound


def _conv_spectral_norm(conv: Conv) -> float:
    kernel = conv.weight  # (out, in / groups, *taps)
    spatial = conv.in_shape[1:]
    taps = kernel.shape[2:]
    grid = tuple(
        size + (tap - 1) * dilation
        for size, tap, dilation in zip(spatial, taps, conv.dilation, strict=True)
    )
    frequencies = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.int64) for n in grid], indexing="ij"), -1
    ).reshape(-1, len(grid))
    real = torch.zeros(frequencies.shape[0], *kernel.shape[:2], dtype=torch.float64)
    imag = torch.zeros_like(real)
    for tap in itertools.product(*[range(t) for t in taps]):
        # phase 2π·Σ_d (ω_d·tap_d·dilation_d mod N_d)/N_d; the reduction is exact in integers
        phase = torch.zeros(frequencies.shape[0], dtype=torch.float64)
        for d, (offset, dilation, n) in enumerate(zip(tap, conv.dilation, grid, strict=True)):
            phase += ((frequencies[:, d] * offset * dilation) % n).to(torch.float64) / n
        angle = 2 * math.pi * phase
        weights = kernel[(slice(None), slice(None), *tap)]
        real += torch.cos(angle)[:, None, None] * weights
        imag -= torch.sin(angle)[:, None, None] * weights
    # Rounding: a sum of len(taps) products, each with a cos/sin off by a few ulps (the angle
    # itself is rounded relatively once, and cos/sin are accurate to about an ulp).
    count = math.prod(taps)
    entry_error = (gamma(count + 1) + 16 * U64) * kernel.abs().flatten(2).sum(dim=2)
    groups = conv.groups
    out_per_group = kernel.shape[0] // groups
    bounds = []
    for group in range(groups):
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        r, i = real[:, rows], imag[:, rows]
        embedded = torch.cat([torch.cat([r, -i], dim=2), torch.cat([i, r], dim=2)], dim=1)
        error = entry_error[rows]
        # the real form repeats every entry twice: ||E||_F = √2·||(E_re, E_im)||_F
        error_fro = math.sqrt(4 * float((error * error).sum()) * (1 + gamma(error.numel() + 1)))
        bounds.append(float(spectral_norm_upper_bounds(embedded).max()) + error_fro)
    return up(max(bounds) * (1 + 4 * U64))
