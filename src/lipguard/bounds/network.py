"""Feed-forward networks in normal form: ``f(x) = W_L φ_L(⋯ φ_1(W_0 x + b_0) ⋯) + b_L``.

The compositional, LipSDP, local and exact methods work on this form: affine maps alternating
with layers of elementwise activations, where each neuron has its own activation (so identity
neurons can sit beside ReLUs). :meth:`Network.from_graph` builds it from any graph:

- Sort and MaxPool nodes become exact ReLU comparator rounds
  (:mod:`lipguard.bounds.comparators`);
- every node gets a *stage*, the number of activations on its longest path from the inputs;
  hidden layer ``k`` holds the activations of stage ``k`` and, as identity neurons (slopes
  ``[1, 1]``), every earlier value still read later (a residual branch, a GroupSort operand, an
  input used again): so a DAG becomes a chain;
- the linear nodes between two hidden layers are composed into one affine map with their
  rounding tracked in :class:`~lipguard.bounds.enclosure.Enclosure` (convolutions applied to the
  columns, gathers as row selections), refusing any matrix beyond ``MAX_DENSE_ENTRIES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lipguard.bounds import activations as act
from lipguard.bounds.comparators import lower_comparators
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ir import Graph
from lipguard.bounds.ops import (
    MAX_DENSE_ENTRIES,
    Activation,
    Conv,
    Dense,
    Gather,
    Operator,
    Scale,
    Sum,
)
from lipguard.errors import UnsupportedModuleError
from lipguard.linalg import U64, gamma


@dataclass(frozen=True)
class HiddenLayer:
    """Elementwise activations of one hidden layer: ``segments`` pairs a spec with the
    indices of the neurons it acts on (together they cover ``0..size-1`` once)."""

    segments: tuple[tuple[act.ActivationSpec, torch.Tensor], ...]
    size: int

    @staticmethod
    def uniform(spec: act.ActivationSpec, size: int) -> HiddenLayer:
        return HiddenLayer(((spec, torch.arange(size)),), size)

    def _map(
        self,
        per_spec: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
        *tensors: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        results: list[torch.Tensor] | None = None
        for spec, index in self.segments:
            parts = per_spec(spec, *(tensor[..., index] for tensor in tensors))
            parts = parts if isinstance(parts, tuple) else (parts,)
            if results is None:
                results = [torch.empty_like(tensors[0]) for _ in parts]
            for result, part in zip(results, parts, strict=True):
                result[..., index] = part
        assert results is not None
        return tuple(results)

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        return self._map(lambda spec, x: spec.function(x), z)[0]

    def slope_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Global per-neuron slope range ``(α, β)`` (float64)."""
        alpha = torch.empty(self.size, dtype=torch.float64)
        beta = torch.empty(self.size, dtype=torch.float64)
        for spec, index in self.segments:
            alpha[index], beta[index] = spec.slope_low, spec.slope_high
        return alpha, beta

    def slope_range(
        self, low: torch.Tensor, high: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lowest, highest = self._map(lambda spec, lo, hi: spec.slope_range(lo, hi), low, high)
        return lowest, highest

    def value_range(
        self, low: torch.Tensor, high: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lowest, highest = self._map(lambda spec, lo, hi: spec.value_range(lo, hi), low, high)
        return lowest, highest

    @property
    def piecewise_linear(self) -> bool:
        return all(spec.piecewise_linear for spec, _ in self.segments)


@dataclass(frozen=True)
class Network:
    """Affine maps ``W_0..W_L`` (with biases) and the ``L`` hidden layers between them."""

    weights: tuple[Enclosure, ...]
    biases: tuple[Enclosure, ...]
    hidden: tuple[HiddenLayer, ...]

    @property
    def input_size(self) -> int:
        return self.weights[0].value.shape[1]

    @property
    def exact(self) -> bool:
        """True when no weight carries a rounding error (nothing was multiplied out)."""
        return all(w.error is None for w in self.weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate in float64 (rows of ``x`` are inputs)."""
        h = x.to("cpu", torch.float64)
        for weight, bias, layer in zip(
            self.weights, self.biases, (*self.hidden, None), strict=True
        ):
            h = h @ weight.value.T + bias.value
            if layer is not None:
                h = layer.apply(h)
        return h

    def restrict_inputs(self, index: torch.Tensor) -> Network:
        """The same network as a function of the inputs in ``index`` only (others fixed)."""
        first = self.weights[0]
        columns = Enclosure(
            first.value[:, index], None if first.error is None else first.error[:, index]
        )
        return Network((columns, *self.weights[1:]), self.biases, self.hidden)

    @staticmethod
    def from_graph(graph: Graph) -> Network:
        """The normal form of ``graph`` (see the module docstring)."""
        return _Layering(lower_comparators(graph)).network()


_Expression = tuple[Enclosure, Enclosure]  # (A, c): a value as A·h + c in the current state h


class _Layering:
    """Stages, hidden layers and the affine maps between them."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes = graph.nodes
        self.alive = sorted(_ancestors(graph))
        self.stage = [0] * len(self.nodes)
        for index in self.alive:
            node = self.nodes[index]
            if node.op is None:
                continue
            stage = max(self.stage[i] for i in node.inputs)
            self.stage[index] = stage + 1 if isinstance(node.op, Activation) else stage
        alive = set(self.alive)
        self.readers = [[r for r in readers if r in alive] for readers in graph.consumers()]

    def network(self) -> Network:
        depth = self.stage[self.graph.output]
        size = self.graph.input_size
        state: dict[int, _Expression] = {}
        for index, part in zip(self.graph.inputs, self.graph.input_slices(), strict=True):
            state[index] = _selection(part.start, part.stop, size)
        weights, biases, hidden = [], [], []
        for stage in range(depth + 1):
            self._linear(stage, state, size)
            if stage == depth:
                break
            layer, carried = self._next_layer(stage)
            units = layer + carried
            neurons = sum(self.nodes[i].size for i in units)
            rows = [state[self.nodes[i].inputs[0]] if i in layer else state[i] for i in units]
            matrix, bias = _stack(rows, size)
            weights.append(matrix)
            biases.append(bias)
            segments, offset, state = [], 0, {}
            for index in units:
                count = self.nodes[index].size
                spec = act.IDENTITY
                if index in layer:
                    op = self.nodes[index].op
                    assert isinstance(op, Activation)  # _next_layer picks activation nodes
                    spec = op.spec
                segments.append((spec, torch.arange(offset, offset + count)))
                state[index] = _selection(offset, offset + count, neurons)
                offset += count
            hidden.append(_merge(segments, neurons))
            size = neurons
        weight, bias = state[self.graph.output]
        weights.append(weight)
        biases.append(bias)
        return Network(tuple(weights), tuple(biases), tuple(hidden))

    def _next_layer(self, stage: int) -> tuple[list[int], list[int]]:
        """The activations of stage ``stage + 1``, and the values of earlier stages that a
        later node still reads (carried as identity neurons)."""
        layer = [
            i
            for i in self.alive
            if self.stage[i] == stage + 1 and isinstance(self.nodes[i].op, Activation)
        ]
        chosen = set(layer)
        carried = [
            i
            for i in self.alive
            if self.stage[i] <= stage
            and any(self.stage[r] >= stage + 1 and r not in chosen for r in self.readers[i])
        ]
        return layer, carried

    def _linear(self, stage: int, state: dict[int, _Expression], size: int) -> None:
        """Express every linear node of this stage in the current state."""
        for index in self.alive:
            node = self.nodes[index]
            if node.op is None or isinstance(node.op, Activation) or index in state:
                continue
            if self.stage[index] != stage:
                continue
            _check_size(node.size, size, node.where)
            state[index] = _compose(node.op, [state[i] for i in node.inputs])


def _ancestors(graph: Graph) -> set[int]:
    alive: set[int] = set()
    pending = [graph.output]
    while pending:
        index = pending.pop()
        if index not in alive:
            alive.add(index)
            pending += list(graph.nodes[index].inputs)
    return alive


def _check_size(rows: int, columns: int, where: str) -> None:
    if rows * columns > MAX_DENSE_ENTRIES:
        raise UnsupportedModuleError(
            f"{where}: its normal form needs a {rows}×{columns} matrix, too large to "
            "materialise; use method='product'"
        )


def _selection(start: int, stop: int, size: int) -> _Expression:
    _check_size(stop - start, size, "a hidden layer")
    matrix = torch.zeros(stop - start, size, dtype=torch.float64)
    matrix[:, start:stop] = torch.eye(stop - start, dtype=torch.float64)
    return Enclosure(matrix), Enclosure(torch.zeros(stop - start, dtype=torch.float64))


def _stack(rows: list[_Expression], size: int) -> _Expression:
    if not rows:
        return (
            Enclosure(torch.zeros(0, size, dtype=torch.float64)),
            Enclosure(torch.zeros(0, dtype=torch.float64)),
        )
    return _concat([matrix for matrix, _ in rows]), _concat([bias for _, bias in rows])


def _concat(parts: list[Enclosure]) -> Enclosure:
    value = torch.cat([p.value for p in parts])
    if all(p.error is None for p in parts):
        return Enclosure(value)
    return Enclosure(value, torch.cat([p.abs_error() for p in parts]))


def _merge(segments: list[tuple[act.ActivationSpec, torch.Tensor]], size: int) -> HiddenLayer:
    """One segment per distinct activation (specs with one name are one function)."""
    by_name: dict[str, tuple[act.ActivationSpec, list[torch.Tensor]]] = {}
    for spec, index in segments:
        by_name.setdefault(spec.name, (spec, []))[1].append(index)
    return HiddenLayer(tuple((spec, torch.cat(parts)) for spec, parts in by_name.values()), size)


def _compose(op: Operator, sources: list[_Expression]) -> _Expression:
    """The expression of ``op`` applied to values whose expressions are ``sources``."""
    if isinstance(op, Dense):
        return _dense(op, *sources[0])
    if isinstance(op, Conv):
        return _conv(op, *sources[0])
    if isinstance(op, Scale):
        return _scale(op, *sources[0])
    if isinstance(op, Gather):
        return _gather(op, sources)
    if isinstance(op, Sum):
        matrix, bias = _times(sources[0], op.coefficients[0])
        for coefficient, source in zip(op.coefficients[1:], sources[1:], strict=True):
            other_matrix, other_bias = _times(source, coefficient)
            matrix, bias = matrix.add(other_matrix), bias.add(other_bias)
        return matrix, bias
    raise UnsupportedModuleError(f"{type(op).__name__} has no affine normal form")


def _column(vector: Enclosure) -> Enclosure:
    return Enclosure(vector.value[:, None], None if vector.error is None else vector.error[:, None])


def _first_column(error: torch.Tensor | None) -> torch.Tensor | None:
    return None if error is None else error[:, 0]


def _reshaped(enclosure: Enclosure, *shape: int) -> Enclosure:
    error = None if enclosure.error is None else enclosure.error.reshape(*shape)
    return Enclosure(enclosure.value.reshape(*shape), error)


def _dense(op: Dense, matrix: Enclosure, bias: Enclosure) -> _Expression:
    """``W`` applied to each of the ``blocks`` row groups of ``A`` and of ``c``."""
    blocks, columns = op.blocks, matrix.value.shape[1]
    product = op.matrix.matmul(_reshaped(matrix, blocks, -1, columns))
    image = op.matrix.matmul(_reshaped(bias, blocks, -1, 1))
    repeated = Enclosure(
        op.bias.value.repeat(blocks),
        None if op.bias.error is None else op.bias.error.repeat(blocks),
    )
    return _reshaped(product, -1, columns), _reshaped(image, -1).add(repeated)


def _scale(op: Scale, matrix: Enclosure, bias: Enclosure) -> _Expression:
    """``diag(s)·A`` and ``s ⊙ c + t``, each entry one rounding (plus ``s``'s own bound)."""
    s, s_error = op.scale.value, op.scale.abs_error()
    rows = matrix.value * s[:, None]
    rows_error = U64 * rows.abs() + matrix.abs_error() * (s.abs() + s_error)[:, None]
    rows_error = rows_error + matrix.value.abs() * s_error[:, None]
    shift = bias.value * s + op.shift.value
    shift_error = 2 * U64 * (bias.value.abs() * s.abs() + op.shift.value.abs())
    shift_error = shift_error + bias.abs_error() * (s.abs() + s_error)
    shift_error = shift_error + bias.value.abs() * s_error + op.shift.abs_error()
    return (
        Enclosure(rows, rows_error * (1 + 4 * U64)),
        Enclosure(shift, shift_error * (1 + 4 * U64)),
    )


def _gather(op: Gather, sources: list[_Expression]) -> _Expression:
    """Rows of the concatenated inputs' expressions (exact), constants where ``index < 0``."""
    matrices = _concat([matrix for matrix, _ in sources])
    biases = _concat([bias for _, bias in sources])
    index = op.index.clamp(min=0)
    taken = op.index >= 0
    fill = op.fill if op.fill is not None else torch.zeros(len(op.index), dtype=torch.float64)
    matrix_error = None if matrices.error is None else matrices.error[index] * taken[:, None]
    bias_error = None if biases.error is None else biases.error[index] * taken
    return (
        Enclosure(matrices.value[index] * taken[:, None], matrix_error),
        Enclosure(torch.where(taken, biases.value[index], fill), bias_error),
    )


def _times(source: _Expression, coefficient: float) -> _Expression:
    """``coefficient·(A, c)`` (exact for ±1)."""
    if coefficient in (1.0, -1.0):
        matrix, bias = source
        return (
            Enclosure(coefficient * matrix.value, matrix.error),
            Enclosure(coefficient * bias.value, bias.error),
        )
    matrix, bias = source
    rows = matrix.value.shape[0]
    factor = Enclosure(torch.full((rows,), coefficient, dtype=torch.float64))
    zeros = Enclosure(torch.zeros(rows, dtype=torch.float64))
    return _scale(Scale(factor, zeros, (rows,)), matrix, bias)


def _conv(op: Conv, matrix: Enclosure, bias: Enclosure) -> _Expression:
    """The convolution applied to every column of ``A`` and to ``c`` (with its bias); each
    output entry is a sum of ``k`` products, its rounding bounded by ``γ_{k+2}``."""
    absolute = op.absolute()
    g = gamma(math.prod(op.weight.shape[1:]) + 2)
    columns = matrix.value.T
    image = op.apply(columns, with_bias=False).T
    error = g * absolute.apply(columns.abs(), with_bias=False).T
    if matrix.error is not None:
        error = error + absolute.apply(matrix.error.T, with_bias=False).T
    shifted = op.apply(bias.value[None])[0]
    bias_error = g * absolute.apply(bias.value.abs()[None])[0]
    if bias.error is not None:
        bias_error = bias_error + absolute.apply(bias.error[None], with_bias=False)[0]
    return (
        Enclosure(image.contiguous(), error.contiguous() * (1 + 2 * g)),
        Enclosure(shifted, bias_error * (1 + 2 * g)),
    )
