"""Proven operator norms of 2-D convolution kernels, as lipguard's conv layers need them.

Every bound here is about the *exact* convolution with the kernel's stored values (float64
copies of them, which are exact), zero padding, and holds after the bound's own floating-point
rounding. Two kinds:

- :func:`schur_bound` — for every input size, padding and stride at once: the convolution on
  the infinite grid ``ℤ²`` has the Gram operator ``G`` with blocks ``G_d = Σ_t K_tᵀ K_{t+d}``
  (one ``c_in × c_in`` block per shift ``d``), and the Schur test gives
  ``||conv||₂² <= max_j (1/w_j) Σ_{d,i} |G_d|_{ji} w_i`` for any positive weights ``w``. A
  zero-padded, possibly strided convolution on a finite input is a restriction of that operator
  (embed the input with zeros, keep some outputs), so its norm is no larger (Prach & Lampert,
  2022, the AOL bound). ``G`` is computed in float64 by a convolution of the kernel with itself
  (plain sums of products on the CPU); each entry sums at most ``c_out·k_h·k_w`` products, so
  it is off by at most ``γ`` of that length times the same sum over ``|K|``, which is added.
- :func:`absolute_bound` — ``||conv(|D|)||₂ <= √(||·||₁·||·||∞)`` from the kernel's largest
  absolute column and row sums; it bounds the effect of a rounding perturbation ``D``.

:func:`fit_kernel` turns a kernel with a proven bound into the kernel a layer stores, with a
proven bound on *that* (rounded) kernel: the rounding of ``kernel·scale`` to the layer's dtype
is measured, not assumed, so subnormal results and every dtype are covered.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lipguard.errors import InvalidArgumentError
from lipguard.linalg import U64, gamma, unit_roundoff, up

#: relative room left below the target before the stored kernel is measured
_HEADROOM = 2.0**-20
#: attempts at shrinking a kernel whose rounding took it over the target
_FIT_TRIES = 4


def gram_blocks(kernel: torch.Tensor) -> torch.Tensor:
    """``G[j, i, d] = Σ_o Σ_t K[o, j, t]·K[o, i, t + d]`` for every shift ``d`` (differentiable,
    in the kernel's dtype): the infinite-grid Gram operator of ``conv2d(·, kernel)``,
    ``(c_in, c_in, 2k_h - 1, 2k_w - 1)``."""
    columns = kernel.transpose(0, 1)  # (c_in, c_out, k_h, k_w)
    taps = kernel.shape[2:]
    return F.conv2d(columns, columns, padding=(taps[0] - 1, taps[1] - 1))


def schur_row_sums(kernel: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Proven upper bounds on ``r_j = Σ_{d,i} |G_d|_{ji}·w_i`` for every input channel ``j``
    (float64; ``weights`` default to 1), for the exact kernel values."""
    exact = kernel.detach().to(torch.float64)
    w = torch.ones(exact.shape[1], dtype=torch.float64) if weights is None else weights.double()
    if not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise InvalidArgumentError("Schur weights must be finite and positive")
    gram = gram_blocks(exact).abs()  # (c_in, c_in, shifts)
    length = exact.shape[0] * exact.shape[2] * exact.shape[3]
    # the rounding of each G entry: γ_length·Σ_o Σ_t |K[o,j,t]|·|K[o,i,t+d]|, summed over d and
    # weighted over i: Σ_o (Σ_t |K[o,j,t]|)·(Σ_{i,t'} |K[o,i,t']|·w_i)
    magnitude = exact.abs()
    per_out = magnitude.sum(dim=(2, 3))  # (c_out, c_in)
    error = per_out.T @ (per_out @ w)  # (c_in,)
    terms = gram.shape[1] * gram.shape[2] * gram.shape[3]
    total = gram.sum(dim=(2, 3)) @ w + gamma(length) * error
    # Products that land in float64's subnormal range err by up to 2⁻¹⁰⁷⁵ *absolutely*, which
    # the relative γ terms miss (a kernel or weights near 1e-160 made the Gram underflow and the
    # bound come out 0, or too small by a whole subnormal ulp). Each G entry has <= `length`
    # such products, weighted by w over the shifts, plus one per product of the sums above.
    # A channel whose kernel slice is zero has r_j = 0 exactly (all products are exact zeros).
    shifts = gram.shape[2] * gram.shape[3]
    underflow = (
        length * shifts * float(w.sum()) + exact.shape[0] + exact.shape[1] + 4
    ) * 2.0**-1073
    total = total + (per_out.sum(dim=0) > 0).to(torch.float64) * underflow
    return total * (1.0 + gamma(terms + exact.shape[0] + 2) + 4 * U64)


def schur_bound(kernel: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """A proven ``||conv2d(·, kernel)||₂`` for every input size, zero padding and stride (see the
    module docstring); ``weights`` are the Schur test's positive weights per input channel."""
    w = (
        torch.ones(kernel.shape[1], dtype=torch.float64)
        if weights is None
        else weights.detach().double()
    )
    rows = schur_row_sums(kernel, w) / w
    if not rows.numel():
        return 0.0
    # + 2⁻¹⁰⁷⁴: the division errs absolutely (not relatively) when its result is subnormal
    return up((float(rows.max()) + 2.0**-1074) ** 0.5 * (1.0 + 4 * U64))


def absolute_bound(kernel: torch.Tensor) -> float:
    """A proven ``||conv2d(·, |kernel|)||₂`` for every input size, padding and stride:
    ``√(max_j Σ_{o,t}|K[o,j,t]| · max_o Σ_{j,t}|K[o,j,t]|)`` (ℓ1 and ℓ∞ operator norms)."""
    magnitude = kernel.detach().to(torch.float64).abs()
    if magnitude.numel() == 0:
        return 0.0
    columns = float(magnitude.sum(dim=(0, 2, 3)).max())
    rows = float(magnitude.sum(dim=(1, 2, 3)).max())
    count = max(magnitude.shape[0], magnitude.shape[1]) * magnitude.shape[2] * magnitude.shape[3]
    # √c·√r, not √(c·r): the product of two small sums underflows (to 0 below ~1e-162 each)
    return up(up(columns**0.5 * rows**0.5) * (1.0 + gamma(count + 4)))


def fit_kernel(
    kernel: torch.Tensor,
    bound: float,
    lipschitz: float,
    *,
    normalize: bool,
    prove: Callable[[torch.Tensor], float] | None = None,
) -> tuple[torch.Tensor, float, float]:
    """The kernel a layer stores: ``fl(kernel·s)`` in the kernel's dtype, with its proven norm.

    ``bound`` must be a proven ``||conv(kernel)||₂`` (for the sizes the layer promises).
    ``normalize=True`` scales to the target (``s ≈ lipschitz / bound``), ``False`` only shrinks
    (``s = 1`` when the bound already fits, and the kernel is returned as it is). The stored
    kernel's norm is proven as ``s·bound + ||conv(fl(kernel·s) - kernel·s)||₂``, the rounding
    measured entry by entry in float64 (:func:`absolute_bound` of the difference plus the
    float64 product's own rounding); ``prove`` (if given) may prove a tighter bound of the
    stored kernel directly, and the smaller one counts. Returns ``(stored, scale, proven)``.

    Raises:
        InvalidArgumentError: the target is so small that rounding to the dtype cannot meet it.
    """
    exact = kernel.detach().to(torch.float64)
    if bound == 0.0:
        return kernel.detach().clone(), 1.0, 0.0
    target = lipschitz * (1.0 - _HEADROOM)
    if not normalize and bound * (1.0 + 4 * U64) <= target:
        scale = 1.0  # fits as it is: nothing is rounded
    else:  # leave room for rounding kernel·scale to the dtype (measured below)
        room = 2 * unit_roundoff(kernel.dtype) * absolute_bound(kernel)
        scale = target / (bound + room)
        if not normalize:
            scale = min(1.0, scale)
    for _ in range(_FIT_TRIES):
        # the product is formed in float64 and rounded once to the dtype: a scale beyond the
        # dtype's range (a tiny or zero kernel) would otherwise become inf in it, and inf·0 NaN
        stored = kernel.detach() if scale == 1.0 else (exact * scale).to(kernel.dtype)
        rounding = stored.to(torch.float64) - exact * scale
        # the float64 reference ``exact·scale`` is itself off by <= u64 relative, and by up to
        # 2⁻¹⁰⁷⁵ absolutely where it is subnormal (then `rounding` measures nothing: it is 0)
        slack = absolute_bound(
            rounding.abs() * (1 + 4 * U64) + 2 * U64 * (exact * scale).abs() + 2.0**-1074
        )
        proven = up(up(scale * bound * (1.0 + 2 * U64)) + slack)
        if prove is not None and proven > lipschitz:
            proven = min(proven, prove(stored))
        if proven <= lipschitz:
            return stored, scale, proven
        scale *= target / proven
    raise InvalidArgumentError(
        f"lipschitz={lipschitz:g} cannot be met by a {tuple(kernel.shape)} {kernel.dtype} kernel: "
        f"rounding to {kernel.dtype} alone moves its norm past it; use a wider dtype or a larger "
        "bound"
    )
