"""Models as the bound engine bounds them: a directed acyclic graph of operators.

A :class:`Graph` holds its :class:`Node` s in topological order. Input nodes (one per argument of
the model's ``forward``) carry no operator; every other node applies one operator of
:mod:`lipguard.bounds.ops` to the values of earlier nodes. Values are per-sample tensors of the
node's ``shape``, handled flattened; the graph's input vector is the concatenation of its
flattened inputs, in argument order. ``where`` says where a node came from (a module path, an
ONNX node, a traced op), so every refusal and every certificate can name it.

Front ends build graphs: the module registry (:func:`lipguard.bounds.graph.to_operators`, chains
of operators with residual :class:`~lipguard.bounds.ops.Skip` blocks), ``torch.export``
(:mod:`lipguard.bounds.trace`, any module) and ONNX (:mod:`lipguard.io.onnx_import`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lipguard.bounds import ops
from lipguard.bounds.ops import Operator, Shape, Skip, Sum


@dataclass(frozen=True, eq=False)
class Node:
    """One value of the graph: ``op`` applied to the nodes ``inputs`` (``op is None`` for a
    model input)."""

    op: Operator | None
    inputs: tuple[int, ...]
    shape: Shape
    where: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, eq=False)
class Graph:
    """Nodes in topological order, the input nodes in argument order, the output node."""

    nodes: tuple[Node, ...]
    inputs: tuple[int, ...]
    output: int

    @property
    def input_shapes(self) -> tuple[Shape, ...]:
        return tuple(self.nodes[i].shape for i in self.inputs)

    @property
    def input_size(self) -> int:
        """Length of the joint input vector (all inputs flattened and concatenated)."""
        return sum(self.nodes[i].size for i in self.inputs)

    @property
    def output_size(self) -> int:
        return self.nodes[self.output].size

    def input_slices(self) -> list[slice]:
        """Where each input sits in the joint input vector."""
        slices, start = [], 0
        for index in self.inputs:
            size = self.nodes[index].size
            slices.append(slice(start, start + size))
            start += size
        return slices

    def operators(self) -> list[Operator]:
        return [node.op for node in self.nodes if node.op is not None]

    def consumers(self) -> list[list[int]]:
        """For each node, the nodes that read it (and, for the output, nothing more)."""
        readers: list[list[int]] = [[] for _ in self.nodes]
        for index, node in enumerate(self.nodes):
            for source in node.inputs:
                readers[source].append(index)
        return readers

    def evaluate(
        self,
        x: torch.Tensor,
        apply: Callable[[Operator, list[torch.Tensor]], torch.Tensor] = ops.apply,
    ) -> torch.Tensor:
        """The graph's function in float64 on joint input vectors ``(N, input_size)``
        (differentiable); ``apply`` evaluates one operator (default: exactly)."""
        values: dict[int, torch.Tensor] = {}  # filled in topological order
        flat = x.reshape(x.shape[0], -1).to("cpu", torch.float64)
        for index, part in zip(self.inputs, self.input_slices(), strict=True):
            values[index] = flat[:, part]
        for index, node in enumerate(self.nodes):
            if node.op is not None:
                values[index] = apply(node.op, [values[i] for i in node.inputs])
        return values[self.output]

    @staticmethod
    def from_chain(operators: Sequence[Operator], input_shape: Shape, where: str) -> Graph:
        """The graph of an operator chain (a module handler's result) on one input."""
        builder = Builder()
        start = builder.input(input_shape, "input")
        end = builder.chain(operators, start, where)
        return builder.finish(end)


class Builder:
    """Appends nodes in topological order."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.inputs: list[int] = []

    def input(self, shape: Shape, where: str) -> int:
        self.nodes.append(Node(None, (), tuple(shape), where))
        self.inputs.append(len(self.nodes) - 1)
        return len(self.nodes) - 1

    def add(self, op: Operator, inputs: Sequence[int], where: str) -> int:
        self.nodes.append(Node(op, tuple(inputs), ops.out_shape(op), where))
        return len(self.nodes) - 1

    def chain(
        self,
        operators: Sequence[Operator],
        start: int,
        where: str,
        labels: dict[int, str] | None = None,
    ) -> int:
        """Append a chain of operators reading node ``start``; returns the last node.
        ``labels`` names operators by id (module paths)."""
        current = start
        for number, op in enumerate(operators):
            label = (labels or {}).get(id(op), f"{where}[{number}]")
            if isinstance(op, Skip):
                body = self.chain(op.body, current, f"{label}.body", labels)
                current = self.add(Sum((1.0, 1.0), op.shape), (current, body), label)
            else:
                current = self.add(op, (current,), label)
        return current

    def finish(self, output: int) -> Graph:
        return Graph(tuple(self.nodes), tuple(self.inputs), output)
