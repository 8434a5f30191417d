"""Feed-forward networks in normal form: ``f(x) = W_L φ_L(⋯ φ_1(W_0 x + b_0) ⋯) + b_L``.

The compositional, LipSDP, local and exact methods work on this form: affine maps alternating
with layers of elementwise activations, where each neuron has its own activation (so identity
neurons can sit beside ReLUs). :meth:`Network.from_operators` builds it from the engine's
operators:

- consecutive affine maps are multiplied out, with their rounding tracked in
  :class:`~lipguard.bounds.enclosure.Enclosure`;
- convolutions are materialised (exactly: every entry is one kernel value);
- a GroupSort round becomes, for each compared pair ``(a, b)``, the neurons
  ``relu(a - b)``, ``a`` and ``b`` (identity, slopes ``[1, 1]``) and the exact recombination
  ``max = b + relu(a - b)``, ``min = a - relu(a - b)`` (odd–even transposition sort: ``g`` rounds
  sort groups of ``g``);
- residual blocks are not feed-forward and raise :class:`UnsupportedModuleError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lipguard.bounds import activations as act
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.graph import Activation, Conv, Dense, Operator, Skip, Sort
from lipguard.errors import UnsupportedModuleError


@dataclass(frozen=True)
class HiddenLayer:
    """Elementwise activations of one hidden layer: ``segments`` pairs a spec with the
    indices of the neurons it acts on (together they cover ``0..size-1`` once)."""

    segments: tuple[tuple[act.ActivationSpec, torch.Tensor], ...]
    size: int

    @staticmethod
    def uniform(spec: act.ActivationSpec, size: int) -> HiddenLayer:
        return HiddenLayer(((spec, torch.arange(size)),), size)

    def _map(self, per_spec, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
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

    def slope_range(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._map(lambda spec, lo, hi: spec.slope_range(lo, hi), low, high)

    def value_range(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._map(lambda spec, lo, hi: spec.value_range(lo, hi), low, high)

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
        h = x.to(torch.float64)
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
    def from_operators(operators: Sequence[Operator], input_size: int) -> Network:
        builder = _Builder(input_size)
        for operator in operators:
            builder.add(operator)
        return builder.finish()


def _column(vector: Enclosure) -> Enclosure:
    return Enclosure(vector.value[:, None], None if vector.error is None else vector.error[:, None])


def _first_column(error: torch.Tensor | None) -> torch.Tensor | None:
    return None if error is None else error[:, 0]


class _Builder:
    def __init__(self, size: int) -> None:
        self.size = size
        self.weights: list[Enclosure] = []
        self.biases: list[Enclosure] = []
        self.hidden: list[HiddenLayer] = []
        self.pending: tuple[Enclosure, Enclosure] | None = None

    def compose(self, matrix: Enclosure, bias: Enclosure) -> None:
        """Apply ``x ↦ matrix·x + bias`` after the pending affine map."""
        if self.pending is not None:
            previous, previous_bias = self.pending
            image = matrix.matmul(_column(previous_bias))
            bias = Enclosure(image.value[:, 0], _first_column(image.error)).add(bias)
            matrix = matrix.matmul(previous)
        self.pending = (matrix, bias)
        self.size = matrix.value.shape[0]

    def add(self, operator: Operator) -> None:
        if isinstance(operator, Conv):
            operator = operator.dense()
        if isinstance(operator, Dense):
            self.compose(operator.matrix, operator.bias)
        elif isinstance(operator, Activation):
            self.close()
            self.hidden.append(HiddenLayer.uniform(operator.spec, self.size))
        elif isinstance(operator, Sort):
            for round_index in range(operator.group_size):
                self._sort_round(operator, round_index)
        elif isinstance(operator, Skip):
            raise UnsupportedModuleError(
                "residual blocks are not feed-forward networks; use method='product'"
            )

    def _sort_round(self, sort: Sort, round_index: int) -> None:
        group = sort.group_size
        pairs = [
            (start + i, start + i + 1)
            for start in range(0, self.size, group)
            for i in range(round_index % 2, group - 1, 2)
        ]
        if not pairs:
            return
        paired = {index for pair in pairs for index in pair}
        singles = [index for index in range(self.size) if index not in paired]
        hidden = 3 * len(pairs) + len(singles)
        spread = torch.zeros(hidden, self.size, dtype=torch.float64)
        gather = torch.zeros(self.size, hidden, dtype=torch.float64)
        relu_units, identity_units = [], []
        for number, (a, b) in enumerate(pairs):
            r, pa, pb = 3 * number, 3 * number + 1, 3 * number + 2
            spread[r, a], spread[r, b], spread[pa, a], spread[pb, b] = 1.0, -1.0, 1.0, 1.0
            high, low = (a, b) if sort.descending else (b, a)
            gather[high, pb], gather[high, r] = 1.0, 1.0  # max = b + relu(a - b)
            gather[low, pa], gather[low, r] = 1.0, -1.0  # min = a - relu(a - b)
            relu_units.append(r)
            identity_units += [pa, pb]
        for offset, index in enumerate(singles):
            unit = 3 * len(pairs) + offset
            spread[unit, index], gather[index, unit] = 1.0, 1.0
            identity_units.append(unit)
        zeros = torch.zeros(hidden, dtype=torch.float64)
        self.compose(Enclosure(spread), Enclosure(zeros))
        self.close()
        self.hidden.append(
            HiddenLayer(
                (
                    (act.RELU, torch.tensor(relu_units, dtype=torch.long)),
                    (act.IDENTITY, torch.tensor(identity_units, dtype=torch.long)),
                ),
                hidden,
            )
        )
        self.compose(
            Enclosure(gather), Enclosure(torch.zeros(gather.shape[0], dtype=torch.float64))
        )

    def close(self) -> None:
        if self.pending is None:
            self.pending = (
                Enclosure(torch.eye(self.size, dtype=torch.float64)),
                Enclosure(torch.zeros(self.size, dtype=torch.float64)),
            )
        self.weights.append(self.pending[0])
        self.biases.append(self.pending[1])
        self.pending = None

    def finish(self) -> Network:
        self.close()
        return Network(tuple(self.weights), tuple(self.biases), tuple(self.hidden))
