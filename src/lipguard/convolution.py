"""Sound ℓ2 operator norms of convolutions from their frequency responses.

A convolution's ℓ2 norm comes from its frequency response, never from the reshaped kernel (whose
spectral norm can be smaller than the operator's). A strided convolution is first written as a
stride-1 convolution on the *phases* of its input (position ``stride·q + r`` is entry ``q`` of phase
``r``), which is exact — where ignoring the stride would overestimate by up to ``√(stride^d)``. A
zero-padded stride-1 convolution is a restriction of the circular convolution on any grid ``N`` on
which no index a kept output reads wraps onto the input (``N >= ⌈n/stride⌉ - min offset`` and ``N >
max offset read``), whose singular values are those of the matrices ``K̂(ω) = Σ_t K_t e^{-i⟨ω, t⟩}``
at the ``N``-point DFT frequencies (Sedghi, Gupta & Long, 2019). So ``||conv||₂ <= max_ω
σ_max(K̂(ω))``, over half the frequencies (a real kernel's ``K̂(-ω)`` is the conjugate of ``K̂(ω)``)
and one frequency along an axis with a single tap. Each ``K̂(ω)`` is computed in float64 with its
rounding bound, and the largest is certified through the real form ``[[Re, -Im], [Im, Re]]`` (same
singular values) by :func:`lipguard.linalg.max_gram_eigenvalue_bound`.

Shared by the bound engine (:mod:`lipguard.bounds.norms`) and lipguard's convolutional layers
(:mod:`lipguard.nn.conv`), so it lives below both.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import torch

from lipguard.errors import InvalidArgumentError
from lipguard.linalg import U64, gamma, max_gram_eigenvalue_bound, up

#: Gram entries per batch of frequency responses (memory: 8 bytes each)
_GRAM_ENTRIES = 2**24


class ConvGeometry(Protocol):
    """A convolution (cross-correlation, zero padding) as the norm needs it: its kernel
    ``(out, in / groups, *taps)`` and the geometry it is applied with, per-sample shapes
    ``(channels, *spatial)``."""

    @property
    def weight(self) -> torch.Tensor: ...
    @property
    def stride(self) -> tuple[int, ...]: ...
    @property
    def padding(self) -> tuple[int, ...] | str: ...
    @property
    def dilation(self) -> tuple[int, ...]: ...
    @property
    def groups(self) -> int: ...
    @property
    def in_shape(self) -> tuple[int, ...]: ...
    @property
    def out_shape(self) -> tuple[int, ...]: ...


def conv_spectral_norm(conv: ConvGeometry) -> float:
    """A sound ``||conv||₂`` from the polyphase frequency responses on the smallest exact grid
    (see the module docstring), batched over frequencies and groups."""
    kernel = conv.weight  # (out, in / groups, *taps)
    # the proof's rounding model needs finite entries within 2^±400 (as max_spectral_norm
    # checks): a Gram entry beyond float64's range made eigh fail with an unrelated message
    magnitude_max = float(kernel.detach().abs().max()) if kernel.numel() else 0.0
    if not math.isfinite(magnitude_max):
        raise InvalidArgumentError("the convolution kernel holds NaN or infinity")
    if magnitude_max > 2.0**400 or 0.0 < magnitude_max < 2.0**-400:
        raise InvalidArgumentError(
            f"convolution kernels with largest entry {magnitude_max:.3g} (beyond 2^±400) are not "
            "supported by the frequency-domain bound"
        )
    poly = _polyphase(conv)
    frequencies = _half_spectrum(poly.grid)
    # Rounding: each entry sums at most len(taps) products, each with a cos/sin off by a few
    # ulps (the angle itself is rounded relatively once, cos/sin are accurate to about an ulp).
    count = math.prod(kernel.shape[2:])
    magnitude = kernel.abs().flatten(2).to(torch.float64)
    per_phase = torch.stack(
        [magnitude[..., poly.phase == r].sum(dim=2) for r in range(poly.phases)]
    )
    entry_error = (gamma(count + 1) + 16 * U64) * per_phase  # (phases, out, in / groups)
    groups = conv.groups
    per_group = entry_error.transpose(0, 1).reshape(groups, -1)
    # the real form repeats every entry twice: ||E||_F = √2·||(E_re, E_im)||_F
    error_fro = math.sqrt(
        4 * float((per_group * per_group).sum(dim=1).max()) * (1 + gamma(per_group.shape[1] + 1))
    )
    rows, columns = kernel.shape[0] // groups, kernel.shape[1] * poly.phases
    side = 2 * min(rows, columns)
    chunk = max(1, _GRAM_ENTRIES // (groups * side * side))
    level = 0.0
    for start in range(0, frequencies.shape[0], chunk):
        real, imag = _symbol(kernel, poly, frequencies[start : start + chunk])
        real = real.reshape(-1, groups, rows, columns).flatten(0, 1)
        imag = imag.reshape(-1, groups, rows, columns).flatten(0, 1)
        gram, inner = _real_form_gram(real, imag)
        value = max_gram_eigenvalue_bound(gram, inner)
        level = value if not value <= level else level  # a NaN is kept, never dropped by max()
    return up((level + error_fro) * (1 + 4 * U64))


@dataclass(frozen=True)
class _Polyphase:
    """A strided convolution as a stride-1 one on its input's phases: input position
    ``stride·q + r`` is entry ``q`` of phase ``r``, and tap ``t`` reads phase
    ``(dilation·t - left) mod stride`` at offset ``⌊(dilation·t - left)/stride⌋`` from the
    output position."""

    phase: torch.Tensor  # (taps,) the phase combination each tap reads (numbered among the used)
    offset: torch.Tensor  # (taps, dims) its offset on the phase grids
    phases: int
    grid: tuple[int, ...]  # the circular grid per dimension


def _polyphase(conv: ConvGeometry) -> _Polyphase:
    """The polyphase form and its smallest exact circular grid: along each dimension, every
    phase index ``q`` a kept output reads must land, modulo ``N``, on ``q`` itself when the
    phase has an entry there and on a position the phase does not occupy otherwise, so
    ``N >= ⌈n/stride⌉ - min q`` and ``N > max q``. A dimension with a single tap does not mix
    positions: its symbol is constant, one frequency covers it."""
    taps = conv.weight.shape[2:]
    keys: dict[tuple[int, ...], int] = {}
    phase: list[int] = []
    offsets: list[list[int]] = []
    for tap in itertools.product(*[range(t) for t in taps]):
        positions = [
            dilation * t - left
            for t, dilation, left in zip(tap, conv.dilation, _left_padding(conv), strict=True)
        ]
        key = tuple(p % s for p, s in zip(positions, conv.stride, strict=True))
        phase.append(keys.setdefault(key, len(keys)))
        offsets.append([p // s for p, s in zip(positions, conv.stride, strict=True)])
    offset = torch.tensor(offsets, dtype=torch.int64)
    grid: list[int] = []
    for d, length in enumerate(taps):
        if length == 1:
            grid.append(1)
            continue
        occupied = -(-conv.in_shape[1 + d] // conv.stride[d])
        lowest, highest = int(offset[:, d].min()), int(offset[:, d].max())
        grid.append(max(occupied - min(lowest, 0), conv.out_shape[1 + d] + highest, 1))
    return _Polyphase(torch.tensor(phase), offset, len(keys), tuple(grid))


def _left_padding(conv: ConvGeometry) -> tuple[int, ...]:
    taps = conv.weight.shape[2:]
    if conv.padding == "valid":
        return (0,) * len(taps)
    if conv.padding == "same":
        return tuple((k - 1) * d // 2 for k, d in zip(taps, conv.dilation, strict=True))
    assert not isinstance(conv.padding, str)  # torch accepts only "valid" and "same"
    return tuple(conv.padding)


def _half_spectrum(grid: tuple[int, ...]) -> torch.Tensor:
    """The DFT frequencies of ``grid`` up to conjugation: one of each pair ``{ω, -ω}`` (a real
    kernel's symbols at ``ω`` and ``-ω`` are complex conjugates, with the same singular values)."""
    axes = [torch.arange(n, dtype=torch.int64) for n in grid]
    frequencies = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(grid))
    sizes = torch.tensor(grid, dtype=torch.int64)
    strides = torch.tensor([math.prod(grid[d + 1 :]) for d in range(len(grid))])
    flat = (frequencies * strides).sum(dim=1)
    negated = (((sizes - frequencies) % sizes) * strides).sum(dim=1)
    return frequencies[flat <= negated]


def _symbol(
    kernel: torch.Tensor, poly: _Polyphase, frequencies: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the polyphase symbol at ``frequencies``: entry
    ``(o, (c, r))`` is ``Σ_{t reads phase r} K[o, c, t]·e^{-2πi⟨ω, offset_t⟩/N}``, float64
    ``(F, out, in / groups · phases)``."""
    # phase angle 2π·Σ_d (ω_d·offset_d mod N_d)/N_d; the reduction is exact in integers
    grid = torch.tensor(poly.grid, dtype=torch.int64)
    turns = ((poly.offset[:, None, :] * frequencies[None]) % grid).to(torch.float64) / grid
    angle = 2 * math.pi * turns.sum(dim=-1)  # (taps, F)
    weights = kernel.to(torch.float64).flatten(2)  # (out, in, taps): one dot product per entry
    real, imag = [], []
    for r in range(poly.phases):
        chosen = poly.phase == r
        real.append(weights[..., chosen] @ torch.cos(angle[chosen]))
        imag.append(-(weights[..., chosen] @ torch.sin(angle[chosen])))
    # (out, in, phases, F) -> (F, out, in·phases)
    return (
        torch.stack(real, dim=2).flatten(1, 2).permute(2, 0, 1),
        torch.stack(imag, dim=2).flatten(1, 2).permute(2, 0, 1),
    )


def _real_form_gram(real: torch.Tensor, imag: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The Gram matrices ``MᵀM`` of the real forms ``M = [[R, -I], [I, R]]`` of complex matrices
    ``R + iI`` (taken conjugate-transposed when wider than tall, which keeps the singular values),
    and the length of the dot products behind each entry.

    ``MᵀM = [[P, Q], [Qᵀ, P]]`` with ``P = RᵀR + IᵀI`` and ``Q = IᵀR - RᵀI``, each entry one dot
    product of length ``2·rows`` — the same computation, entry by entry, as forming ``MᵀM``
    directly, at half the cost.
    """
    if real.shape[-1] > real.shape[-2]:
        real, imag = real.transpose(-1, -2), -imag.transpose(-1, -2)
    stacked = torch.cat([real, imag], dim=-2)
    p = stacked.transpose(-1, -2) @ stacked
    q = torch.cat([imag, -real], dim=-2).transpose(-1, -2) @ stacked
    top = torch.cat([p, q], dim=-1)
    bottom = torch.cat([q.transpose(-1, -2), p], dim=-1)
    return torch.cat([top, bottom], dim=-2), 2 * real.shape[-2]
