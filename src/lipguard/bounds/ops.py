"""The operators of the bound engine's intermediate representation, and what each computes.

Every value is a per-sample tensor of a known ``shape``, handled flattened (row-major) as a
vector; an operator maps its input vectors to an output vector. Linear operators:

- :class:`Dense` — ``y = W x + b`` on the last axis (``blocks`` rows at once for inputs of shape
  ``(..., n)``: ``nn.Linear`` on sequences);
- :class:`Conv` — a 1-D/2-D convolution (cross-correlation, zero padding) on ``in_shape``;
- :class:`Scale` — ``y = s ⊙ x + t`` entry by entry (batch norm in eval mode, input
  normalisation, multiplication by a constant);
- :class:`Gather` — ``y_i = x_{index_i}`` over the concatenation of its inputs, or a constant
  where ``index_i < 0``: reshape, flatten, permute, transpose, slice, select, concatenation,
  padding, repetition;
- :class:`Sum` — ``y = Σ c_k x_k`` of several branches (residual sums).

Non-linear operators: :class:`Activation` (elementwise), :class:`Sort` (GroupSort / MaxMin on
consecutive groups), :class:`MaxPool` (the largest entry of each window). :class:`Skip` (a
residual block ``x + body(x)``) only appears in operator chains, the vocabulary of module
handlers; graphs spell it as a :class:`Sum`.

:func:`apply` evaluates an operator in float64 on a batch of flattened inputs (differentiable,
for the lower-bound search); enclosures and rounding bounds live in
:mod:`lipguard.bounds.evaluate` and :mod:`lipguard.bounds.rounding`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lipguard.bounds import activations as act
from lipguard.bounds.enclosure import Enclosure
from lipguard.errors import UnsupportedModuleError

Shape = tuple[int, ...]

#: a linear operator is materialised as a dense matrix only up to this many entries
MAX_DENSE_ENTRIES = 2**24


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = W x + b`` applied to the last axis of inputs of shape ``in_shape`` (``W`` and
    ``b`` carry rounding bounds)."""

    matrix: Enclosure
    bias: Enclosure
    in_shape: Shape
    out_shape: Shape

    @property
    def blocks(self) -> int:
        """How many rows of the input the matrix is applied to (1 for flat features)."""
        return math.prod(self.in_shape[:-1])


@dataclass(frozen=True, eq=False)
class Conv:
    """A convolution (cross-correlation, zero padding) on inputs of shape ``in_shape``."""

    weight: torch.Tensor  # float64, (out_channels, in_channels / groups, *kernel)
    bias: torch.Tensor  # float64, (out_channels,)
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    in_shape: Shape
    out_shape: Shape

    def apply(self, x: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """The convolution on a batch of flattened float64 inputs."""
        functional = F.conv1d if len(self.in_shape) == 2 else F.conv2d
        out = functional(
            x.reshape(-1, *self.in_shape),
            self.weight,
            self.bias if with_bias else None,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return out.reshape(x.shape[0], -1)

    def absolute(self) -> Conv:
        """The convolution with ``|kernel|`` and ``|bias|`` (for rounding and interval bounds)."""
        return Conv(
            self.weight.abs(),
            self.bias.abs(),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.in_shape,
            self.out_shape,
        )

    def dense(self) -> Dense:
        """The exact dense matrix (columns are responses to basis vectors: one product each)."""
        size_in, size_out = math.prod(self.in_shape), math.prod(self.out_shape)
        if size_in * size_out > MAX_DENSE_ENTRIES:
            raise UnsupportedModuleError(
                f"a convolution from {self.in_shape} to {self.out_shape} is too large to "
                f"materialise ({size_in}×{size_out}); use method='product'"
            )
        basis = torch.eye(size_in, dtype=torch.float64, device=self.weight.device)
        matrix = self.apply(basis, with_bias=False).T.contiguous()
        bias = self.bias.repeat_interleave(math.prod(self.out_shape[1:]))
        return Dense(Enclosure(matrix), Enclosure(bias), (size_in,), (size_out,))


@dataclass(frozen=True, eq=False)
class Activation:
    """An elementwise activation."""

    spec: act.ActivationSpec
    shape: Shape


@dataclass(frozen=True, eq=False)
class Sort:
    """Sort consecutive groups of ``group_size`` features (GroupSort, MaxMin)."""

    group_size: int
    descending: bool
    shape: Shape


@dataclass(frozen=True, eq=False)
class Skip:
    """A residual block ``x + body(x)`` (operator chains only)."""

    body: tuple[Operator, ...]
    shape: Shape


@dataclass(frozen=True, eq=False)
class Scale:
    """``y = scale ⊙ x + shift`` entry by entry (both flat, with rounding bounds)."""

    scale: Enclosure
    shift: Enclosure
    shape: Shape


@dataclass(frozen=True, eq=False)
class Gather:
    """``y_i = z_{index_i}`` with ``z`` the concatenation of the (flattened) inputs, and
    ``y_i = fill_i`` where ``index_i < 0`` (padding)."""

    index: torch.Tensor  # long, (outputs,)
    fill: torch.Tensor | None  # float64, (outputs,), used where index < 0
    in_sizes: tuple[int, ...]
    out_shape: Shape

    @property
    def multiplicity(self) -> int:
        """The largest number of outputs that copy one input entry (the ℓ2 norm is its root)."""
        return _multiplicity(self.index)


@dataclass(frozen=True, eq=False)
class Sum:
    """``y = Σ_k coefficients[k]·x_k`` of inputs of one shape."""

    coefficients: tuple[float, ...]
    shape: Shape


@dataclass(frozen=True, eq=False)
class MaxPool:
    """The largest entry of each window: ``windows`` ``(outputs, k)`` indexes the flat input,
    ``-1`` marking padding (never the maximum)."""

    windows: torch.Tensor
    in_shape: Shape
    out_shape: Shape

    @property
    def multiplicity(self) -> int:
        """The largest number of windows one input entry belongs to."""
        return _multiplicity(self.windows)


def _multiplicity(index: torch.Tensor) -> int:
    """How often the most frequent non-negative entry of ``index`` occurs (0 if none)."""
    taken = index[index >= 0]
    return int(torch.bincount(taken).max()) if taken.numel() else 0


Operator = Dense | Conv | Activation | Sort | Skip | Scale | Gather | Sum | MaxPool
LINEAR = (Dense, Conv, Scale, Gather, Sum)


def out_shape(operator: Operator) -> Shape:
    """The per-sample shape an operator produces."""
    if isinstance(operator, Dense | Conv | Gather | MaxPool):
        return operator.out_shape
    return operator.shape


def apply(operator: Operator, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Evaluate a (non-chain) operator in float64 on flattened batches ``(N, size)``."""
    if isinstance(operator, Dense):
        x = inputs[0]
        rows = x.reshape(x.shape[0], operator.blocks, -1)
        y = F.linear(rows, operator.matrix.value, operator.bias.value)
        return y.reshape(x.shape[0], -1)
    if isinstance(operator, Conv):
        return operator.apply(inputs[0])
    if isinstance(operator, Activation):
        return operator.spec.function(inputs[0])
    if isinstance(operator, Sort):
        return sort_groups(operator, inputs[0])
    if isinstance(operator, Scale):
        return inputs[0] * operator.scale.value + operator.shift.value
    if isinstance(operator, Gather):
        return gather(operator, inputs)
    if isinstance(operator, Sum):
        total = operator.coefficients[0] * inputs[0]
        for coefficient, x in zip(operator.coefficients[1:], inputs[1:], strict=True):
            total = total + coefficient * x
        return total
    if isinstance(operator, MaxPool):
        return max_pool(operator, inputs[0])
    raise TypeError(f"{type(operator).__name__} is not a graph operator")


def sort_groups(operator: Sort, x: torch.Tensor) -> torch.Tensor:
    groups = x.unflatten(-1, (-1, operator.group_size))
    return groups.sort(dim=-1, descending=operator.descending).values.flatten(-2)


def gather(operator: Gather, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    joined = torch.cat(list(inputs), dim=-1) if len(inputs) > 1 else inputs[0]
    index = operator.index.to(joined.device)
    taken = joined[..., index.clamp(min=0)]
    if operator.fill is None:
        return taken
    return torch.where(index >= 0, taken, operator.fill.to(joined))


def max_pool(operator: MaxPool, x: torch.Tensor) -> torch.Tensor:
    windows = operator.windows.to(x.device)
    values = x[..., windows.clamp(min=0)]
    values = torch.where(windows >= 0, values, -math.inf)
    return values.amax(dim=-1)


def index_map(function: Callable[..., torch.Tensor], shapes: Sequence[Shape]) -> torch.Tensor:
    """The :class:`Gather` index of a linear re-indexing ``function`` (reshape, permute, cat,
    slice, pad with a sentinel, …): ``function`` applied to tensors holding each entry's
    position in the concatenated flat inputs (batch dimension 1); ``-1`` marks entries that
    come from no input."""
    offset = 0
    tensors: list[torch.Tensor] = []
    for shape in shapes:
        size = math.prod(shape)
        tensors.append(torch.arange(offset, offset + size, dtype=torch.float64).reshape(1, *shape))
        offset += size
    out = function(*tensors)
    index = out.reshape(-1)
    if not bool(((index == index.round()) & (index >= -1)).all()):
        raise UnsupportedModuleError("a re-indexing operation mixed entries (not a gather)")
    return index.round().long()
