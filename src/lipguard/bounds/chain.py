"""Compositional bounds of convolutional chains, without materialising a convolution.

A *chain* is a graph with one input in which every node reads only the node before it: linear
*segments* (dense maps, convolutions, scalings, re-indexings such as a flatten) between layers of
one elementwise activation each — the shape of VGG-style and "4C3F" CNNs. Its normal form (one
dense matrix per segment) is too large to build for CIFAR-sized convolutions, but the cut/merge
programme of :mod:`lipguard.bounds.compositional` does not need it. With the global slope range
``[α_k, β_k]`` of layer ``k``'s activation split as ``c_k ± γ_k`` (scalars), every block of the
programme is a product ``P(i, j) = W_j c_j W_{j-1} ⋯ c_{i+1} W_i`` scaled by ``√γ`` at its ends,
so only the norms ``||P(i, j)||`` are needed. Each is bounded by the smaller of:

- the product of its factors' norms (convolutions through their frequency responses,
  :func:`~lipguard.convolution.conv_spectral_norm`), split at the best layer;
- where the block has at most :data:`MAX_BLOCK_ENTRIES` entries, the norm of the block itself:
  the identity on its output pulled back through every operator's adjoint (a convolution's by
  its exact transposed convolution, computed by autograd as sums of at most
  ``out_channels/groups · taps`` products), every rounding error bounded entrywise in an
  :class:`~lipguard.bounds.enclosure.Enclosure`, then certified by
  :func:`~lipguard.bounds.norms.matrix_norm`. Blocks that end at a narrow dense layer (the
  classifier head of a CNN) are the ones that fit, and merge with every convolution before them.

The result is sound in ℓ2 and ℓ∞ for every pair of inputs. Assumption, shared with the rest of
the engine: float64 convolutions on the CPU are computed as plain sums of products (no FFT or
Winograd algorithm), so each entry's rounding is bounded by Higham's ``γ_k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.grad  # conv1d_input / conv2d_input (not re-exported by torch.nn)

from lipguard.bounds.compositional import split_slopes
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ir import Graph
from lipguard.bounds.norms import matrix_norm, scale_norm
from lipguard.bounds.ops import Activation, Conv, Dense, Gather, Operator, Scale, out_shape
from lipguard.bounds.product import operator_lipschitz
from lipguard.linalg import U64, gamma, spectral_norm_certificate, up

#: a block is materialised (pulled back through the adjoints) only up to this many entries
MAX_BLOCK_ENTRIES = 2**24
#: and its ℓ2 norm certified only up to this many floating-point operations (its Gram matrix)
MAX_CERTIFICATE_FLOPS = 2 * 10**10

_Linear = Dense | Conv | Scale | Gather


@dataclass(frozen=True)
class Segment:
    """Linear operators applied in order between two activation layers."""

    ops: tuple[_Linear, ...]
    in_size: int
    out_size: int


@dataclass(frozen=True)
class Chain:
    """``segments[0]``, activation layer 1, ``segments[1]``, …, ``segments[L]``, with each
    layer's global slope range ``(α, β)``."""

    segments: tuple[Segment, ...]
    slopes: tuple[tuple[float, float], ...]


def as_chain(graph: Graph) -> Chain | None:
    """The chain form of ``graph``, or ``None`` when it is not a chain of linear operators and
    elementwise activations (a branch, a second input, sorting, max-pooling, …)."""
    if len(graph.inputs) != 1:
        return None
    path = [graph.output]
    while graph.nodes[path[-1]].op is not None:
        node = graph.nodes[path[-1]]
        if len(node.inputs) != 1:
            return None
        path.append(node.inputs[0])
    if path[-1] != graph.inputs[0]:
        return None
    segments: list[Segment] = []
    slopes: list[tuple[float, float]] = []
    ops: list[_Linear] = []
    size = start = graph.nodes[path[-1]].size
    for index in reversed(path[:-1]):
        op = graph.nodes[index].op
        if isinstance(op, Activation):
            segments.append(Segment(tuple(ops), start, size))
            slopes.append((op.spec.slope_low, op.spec.slope_high))
            ops, start = [], size
        elif isinstance(op, Dense | Conv | Scale) or (
            isinstance(op, Gather) and len(op.in_sizes) == 1
        ):
            ops.append(op)
        else:
            return None
        size = graph.nodes[index].size
    segments.append(Segment(tuple(ops), start, size))
    return Chain(tuple(segments), tuple(slopes))


def chain_bound(chain: Chain, norm: float) -> float:
    """The cut/merge programme over the chain's layers with the block norms described in the
    module docstring (sound, ℓ2 or ℓ∞)."""
    depth = len(chain.slopes)
    centres, roots = [], []
    for alpha, beta in chain.slopes:
        centre, root = split_slopes(
            torch.tensor([alpha], dtype=torch.float64), torch.tensor([beta], dtype=torch.float64)
        )
        centres.append(float(centre[0]))
        roots.append(float(root[0]))
    blocks = _block_norms(chain, centres, norm)
    best = [1.0]  # best[i]: the bound for the part before segment i
    for j in range(depth + 1):
        total = 0.0
        for i in range(j + 1):
            term = up(best[i] * blocks[i][j])
            if j < depth:  # cut after the block: √γ_{j+1} on the left
                term = up(term * roots[j])
            if i > 0:  # cut before the block: √γ_i on the right (√γ·√γ may exceed γ by ulps)
                term = up(up(term * roots[i - 1]) * (1 + 8 * U64))
            total = up(total + term)
        best.append(total)
    return best[-1]


def _block_norms(chain: Chain, centres: list[float], norm: float) -> list[list[float]]:
    """``blocks[i][j] >= ||P(i, j)||`` for every ``i <= j``."""
    count = len(chain.segments)
    blocks = [[math.inf] * count for _ in range(count)]
    cache: dict[int, tuple[float, float]] = {}  # ℓ2 norms of each operator, computed once
    for j, segment in enumerate(chain.segments):
        blocks[j][j] = _segment_norm(segment, norm, cache)
    for length in range(1, count):
        for i in range(count - length):
            j = i + length
            blocks[i][j] = min(
                up(up(blocks[m + 1][j] * abs(centres[m])) * blocks[i][m]) for m in range(i, j)
            )
    for j in range(count):
        for i, value in _pulled_back_norms(chain, centres, j, norm, cache):
            blocks[i][j] = min(blocks[i][j], value)
    return blocks


def _segment_norm(segment: Segment, norm: float, cache: dict[int, tuple[float, float]]) -> float:
    value = 1.0
    for op in segment.ops:
        factor = _norms(op, cache)[0] if norm == 2.0 else operator_lipschitz(op, norm)
        value = up(value * factor)
    return value


def _pulled_back_norms(
    chain: Chain, centres: list[float], j: int, norm: float, cache: dict[int, tuple[float, float]]
) -> list[tuple[int, float]]:
    """``(i, bound on ||P(i, j)||)`` for every ``i <= j`` whose block fits: the rows of
    ``P(i, j)`` are the identity on segment ``j``'s output pulled back to segment ``i``'s
    input."""
    rows = chain.segments[j].out_size
    if rows * rows > MAX_BLOCK_ENTRIES:
        return []
    pulled = _Rows(torch.eye(rows, dtype=torch.float64), 0.0)
    found: list[tuple[int, float]] = []
    for i in range(j, -1, -1):
        if i < j:
            pulled = pulled.times(centres[i])
        for op in reversed(chain.segments[i].ops):
            if rows * _in_size(op) > MAX_BLOCK_ENTRIES:
                return found
            pulled = _pull_back(op, pulled, cache)
        smaller, larger = sorted(pulled.value.shape)
        if norm == math.inf or 2 * smaller * smaller * larger <= MAX_CERTIFICATE_FLOPS:
            found.append((i, pulled.norm(norm)))
    return found


@dataclass(frozen=True)
class _Rows:
    """A computed matrix and a bound on the Frobenius distance to the exact one.

    Pulling back through ``W`` computes ``fl(V·W) = V·W + F`` with ``|F| <= γ_k·|V|·|W|``
    entrywise (every entry a sum of at most ``k`` products) plus, for results in the subnormal
    range, at most ``k + 1`` half-ulps of absolute error; so ``||F||_F <= γ_k·||V||_F·|||W|||₂
    + (k + 1)·2⁻¹⁰⁷⁵·√entries``, and an earlier error ``E`` becomes ``E·W`` with
    ``||E·W||_F <= ||E||_F·||W||₂``. Tracking one number instead of an entrywise bound halves the
    work of every pull-back."""

    value: torch.Tensor
    error: float

    def frobenius(self) -> float:
        """An upper bound on ``||value||_F`` (the sum of squares rounded upwards)."""
        squares = float((self.value * self.value).sum())
        return math.sqrt(squares * (1 + gamma(self.value.numel() + 1))) * (1 + 2 * U64)

    def after(self, value: torch.Tensor, terms: int, norm: float, abs_norm: float) -> _Rows:
        """The rows of ``value = fl(self·W)``, each entry a sum of ``terms`` products, for a
        ``W`` with ``||W||₂ <= norm`` and ``|||W|||₂ <= abs_norm``."""
        rounding = gamma(terms + 1) * self.frobenius() * abs_norm
        underflow = (terms + 1) * 2.0**-1075 * math.sqrt(value.numel())
        return _Rows(value, up(up(rounding + underflow + self.error * norm) * (1 + 8 * U64)))

    def times(self, factor: float) -> _Rows:
        """``factor·rows``, one rounding per entry."""
        return self.after(self.value * factor, 1, abs(factor), abs(factor))

    def norm(self, p: float) -> float:
        """A sound norm of the exact matrix (ℓ2, or ℓ∞ with ``||E||_∞ <= √n·||E||_F``)."""
        if p == math.inf:
            row_sums = float(self.value.abs().sum(dim=1).max())
            row_sums *= 1 + gamma(self.value.shape[1] + 1)
            return up(row_sums + up(self.error * math.sqrt(self.value.shape[1])))
        return up(spectral_norm_certificate(self.value).upper + self.error)


def _in_size(op: _Linear) -> int:
    if isinstance(op, Gather):
        return op.in_sizes[0]
    if isinstance(op, Dense | Conv):
        return math.prod(op.in_shape)
    return math.prod(out_shape(op))


def _pull_back(op: Operator, rows: _Rows, cache: dict[int, tuple[float, float]]) -> _Rows:
    """``rows·W`` for the operator's matrix ``W`` (its adjoint applied to every row)."""
    count = rows.value.shape[0]
    if isinstance(op, Dense):
        matrix = op.matrix
        stacked = rows.value.reshape(count * op.blocks, -1)
        value = (stacked @ matrix.value).reshape(count, -1)
        result = rows.after(value, matrix.value.shape[0], *_norms(op, cache))
        # the matrix's own error: ||V·ΔW||_F <= ||V||_F·||ΔW||_F (per block)
        own = rows.frobenius() * matrix.frobenius_error()
        return _Rows(value, up(result.error + up(own * (1 + 2 * U64))))
    if isinstance(op, Conv):
        terms = (op.weight.shape[0] // op.groups) * math.prod(op.weight.shape[2:])
        return rows.after(_conv_adjoint(op, rows.value), terms, *_norms(op, cache))
    if isinstance(op, Scale):
        largest = scale_norm(op.scale)
        result = rows.after(rows.value * op.scale.value, 1, largest, largest)
        # the scale's own error: ||V·diag(Δs)||_F <= ||V||_F·max|Δs|
        own = rows.frobenius() * float(op.scale.abs_error().max())
        return _Rows(result.value, up(result.error + up(own * (1 + 2 * U64))))
    assert isinstance(op, Gather)
    multiplicity = op.multiplicity
    taken = op.index >= 0
    value = torch.zeros(count, op.in_sizes[0], dtype=torch.float64)
    value.index_add_(1, op.index[taken], rows.value[:, taken])
    if multiplicity <= 1:  # a permutation or selection: every entry copied exactly
        return _Rows(value, rows.error)
    root = up(math.sqrt(multiplicity))
    return rows.after(value, multiplicity, root, root)


def _norms(op: _Linear, cache: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """``(||W||₂, |||Ŵ|||₂)`` of the exact operator and of the stored one's absolute values,
    computed once per operator."""
    if id(op) not in cache:
        if isinstance(op, Dense):
            absolute = matrix_norm(Enclosure(op.matrix.value.abs()), 2.0)
        elif isinstance(op, Conv):
            absolute = _abs_conv_norm(op)
        else:  # scalings and re-indexings: |W| has the same norm bound
            absolute = operator_lipschitz(op, 2.0)
        cache[id(op)] = (operator_lipschitz(op, 2.0), absolute)
    return cache[id(op)]


def _abs_conv_norm(op: Conv) -> float:
    """``|||W|||₂ <= √(||·||₁·||·||_∞)`` of the convolution with ``|K|``: a row of ``|W|`` sums at
    most ``Σ_{c,t}|K_{o,c,t}|``, a column at most ``Σ_{o,t}|K_{o,c,t}|`` (within a group)."""
    magnitude = op.weight.abs().to(torch.float64)
    rows = float(magnitude.flatten(1).sum(dim=1).max())
    per_group = magnitude.reshape(op.groups, -1, *magnitude.shape[1:])
    columns = float(per_group.transpose(1, 2).flatten(2).sum(dim=2).max())
    margin = 1 + gamma(max(magnitude[0].numel(), per_group[0, :, 0].numel()) + 1)
    return up(math.sqrt(up(rows * columns) * margin) * (1 + 2 * U64))


def _conv_adjoint(op: Conv, rows: torch.Tensor) -> torch.Tensor:
    """The transposed convolution applied to each row: the exact adjoint, as autograd computes
    it (``torch.nn.grad``, or autograd itself for an asymmetric ``'same'`` padding)."""
    taps = op.weight.shape[2:]
    if op.padding == "valid":
        padding: tuple[int, ...] | None = (0,) * len(taps)
    elif op.padding == "same":
        total = [(k - 1) * d for k, d in zip(taps, op.dilation, strict=True)]
        padding = tuple(t // 2 for t in total) if all(t % 2 == 0 for t in total) else None
    else:
        assert not isinstance(op.padding, str)  # torch accepts only "valid" and "same"
        padding = tuple(op.padding)
    count = rows.shape[0]
    if padding is not None:
        adjoint = torch.nn.grad.conv1d_input if len(taps) == 1 else torch.nn.grad.conv2d_input
        result = adjoint(
            (count, *op.in_shape),
            op.weight,
            rows.reshape(count, *op.out_shape),
            op.stride,
            padding,
            op.dilation,
            op.groups,
        )
        return result.reshape(count, -1)
    start = torch.zeros(count, math.prod(op.in_shape), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (result,) = torch.autograd.grad(op.apply(start, with_bias=False), start, rows)
    return result
