"""Compositional bounds: split each activation into a fixed part and a bounded remainder.

Between two inputs, neuron ``j`` of hidden layer ``k`` acts as multiplication by some
``d ∈ [α_kj, β_kj]``, so ``f(x) - f(y) = W_L D_L ⋯ D_1 W_0 (x - y)`` with diagonal ``D_k``. Write
``D_k = C_k + Γ_k^{1/2} S_k Γ_k^{1/2}`` with ``C = (α + β)/2``, ``Γ = (β - α)/2`` and a diagonal
``|S_k| <= 1`` (norm <= 1 in every ℓp). Expanding the product, every term keeps ``C`` at some
layers ("merged") and ``S`` at the others ("cuts"); a term's norm is at most the product of the
norms of its blocks ``Γ^{1/2} W_j C_j ⋯ C_{i+1} W_i Γ^{1/2}`` between cuts. Summing over all cut
sets by dynamic programming gives a sound bound with ``O(L²)`` block norms (Combettes & Pesquet,
2020, for averaged activations; per-neuron ranges make it exact on a linear region, where every
``Γ`` is zero, and it works for ℓ∞ as well as ℓ2).

:func:`dp_bound` is that bound; in ℓ2, :func:`compositional_bound` also runs the fast
LipSDP-style certificate of :mod:`lipguard.bounds.lmi` and returns the smaller proven value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lipguard.bounds import lmi
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.network import Network
from lipguard.bounds.norms import matrix_norm
from lipguard.linalg import U64, up

#: the fast LipSDP-style certificate is tried up to this many rows of its matrix inequality
#: (each evaluation of ρ factorises a dense matrix of that size: ~1 s at 4,000 rows here)
FAST_LMI_ROWS = 4000


@dataclass(frozen=True)
class CompositionalResult:
    """A proven bound and how it was obtained."""

    value: float
    method: str  # "dp" or "lipsdp-fast"
    proof: lmi.LipSDPProof | None = None


def split_slopes(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, √Γ)`` with ``[α, β] ⊆ [C - Γ, C + Γ]`` despite rounding."""
    centre = (alpha + beta) / 2
    radius = (beta - alpha) / 2 * (1 + 2 * U64) + U64 * (alpha.abs() + beta.abs())
    root = torch.sqrt(radius) * (1 + 2 * U64)  # root² >= radius
    return centre, root


def dp_bound(network: Network, slopes: lmi.Slopes, norm: float) -> float:
    """The cut/merge dynamic programme over the network's hidden layers (sound, ℓ2 or ℓ∞)."""
    weights = network.weights
    depth = len(network.hidden)
    centres, roots = (
        zip(*(split_slopes(a, b) for a, b in slopes), strict=True) if depth else ((), ())
    )
    best = [1.0]  # best[i] = bound for the part before block i (F(i - 1))
    blocks: list[Enclosure | None] = [None] * (depth + 1)  # blocks[i] = B(i, j) for current j
    for j in range(depth + 1):
        total = 0.0
        for i in range(j + 1):
            if i == j:
                blocks[i] = weights[j]
            else:
                previous = blocks[i]
                assert previous is not None
                blocks[i] = weights[j].scale_columns(centres[j - 1]).matmul(previous)
            block = blocks[i]
            assert block is not None
            if j < depth:  # cut after block: Γ_{j+1}^{1/2} on the left
                block = block.T.scale_columns(roots[j]).T
            if i > 0:  # cut before block: Γ_i^{1/2} on the right
                block = block.scale_columns(roots[i - 1])
            term = up(best[i] * matrix_norm(block, norm))
            if i > 0:
                term = up(term * (1 + 8 * U64))  # √Γ·√Γ may exceed Γ by a few ulps
            total = up(total + term)
        best.append(total)
    return best[-1]


def compositional_bound(
    network: Network,
    norm: float,
    slopes: lmi.Slopes | None = None,
    *,
    seconds: float = 0.5,
) -> CompositionalResult:
    """The smaller of the dynamic-programming bound and (ℓ2 only, up to :data:`FAST_LMI_ROWS`
    rows) a fast LipSDP certificate: closed-form multipliers refined by gradient descent for at
    most ``seconds``, then proven."""
    slopes = lmi.global_slopes(network) if slopes is None else slopes
    result = CompositionalResult(dp_bound(network, slopes, norm), "dp")
    if norm != 2.0 or not network.hidden or lmi.has_linear_neurons(slopes):
        return result
    if network.input_size + sum(layer.size for layer in network.hidden) > FAST_LMI_ROWS:
        return result  # one evaluation of ρ would take longer than the whole budget
    start = lmi.initial_multipliers(network, slopes)
    multipliers = lmi.refine_multipliers(network, slopes, start, seconds=seconds, smooth=False)
    rho = float(lmi.rho_for_multipliers(network, slopes, multipliers))
    proof = lmi.verify(network, slopes, multipliers, rho) if math.isfinite(rho) else None
    if proof is not None and proof.value < result.value:
        return CompositionalResult(proof.value, "lipsdp-fast", proof)
    return result
