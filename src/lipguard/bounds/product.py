"""The product bound over a graph: every node's Lipschitz constant from its inputs', proven.

With respect to a set of the graph's inputs (the others held fixed), a node's constant ``L`` is
``1`` for a chosen input and ``0`` for another, and otherwise follows from its operator:

- a single-input operator multiplies by its own constant (the operator norm of a dense or
  convolutional map, ``max |s|`` of a scaling, an activation's slope bound, ``1`` for sorting,
  ``√m`` in ℓ2 for a max-pool whose windows overlap ``m`` times);
- a sum adds ``|c_k|·L_k`` (the triangle inequality: a residual block is ``1 + Lip(body)``);
- a gather that copies an entry at most ``m`` times is ``√m·(Σ L_k²)^{1/2}`` in ℓ2 over its
  inputs (concatenation) and ``max L_k`` in ℓ∞.

Every product and sum is rounded upwards.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from lipguard.bounds.ir import Graph
from lipguard.bounds.norms import operator_norm, scale_norm
from lipguard.bounds.ops import Activation, Conv, Dense, Gather, MaxPool, Operator, Scale, Sort, Sum
from lipguard.linalg import up


def operator_lipschitz(operator: Operator, norm: float) -> float:
    """A sound Lipschitz constant of a single-input operator in the ℓp norm (p = 2 or ∞)."""
    if isinstance(operator, Dense | Conv):
        return operator_norm(operator, norm)
    if isinstance(operator, Scale):
        return scale_norm(operator.scale)
    if isinstance(operator, Activation):
        return operator.spec.lipschitz  # elementwise: the same in every ℓp
    if isinstance(operator, Sort):
        return 1.0  # sorting is 1-Lipschitz in every ℓp
    if isinstance(operator, MaxPool):
        return 1.0 if norm == math.inf else up(math.sqrt(operator.multiplicity))
    if isinstance(operator, Gather) and len(operator.in_sizes) == 1:
        return _gather(operator, [1.0], norm)  # a re-indexing of one input
    raise TypeError(f"{type(operator).__name__} is not a single-input operator")


def product_bound(graph: Graph, norm: float, inputs: Collection[int] | None = None) -> float:
    """``L`` of the graph's output with respect to the inputs numbered ``inputs`` (positions in
    the argument list; all of them by default), jointly, each factor sound."""
    chosen = set(range(len(graph.inputs))) if inputs is None else set(inputs)
    constants: list[float] = [0.0] * len(graph.nodes)
    for position, index in enumerate(graph.inputs):
        constants[index] = 1.0 if position in chosen else 0.0
    for index, node in enumerate(graph.nodes):
        if node.op is None:
            continue
        sources = [constants[i] for i in node.inputs]
        if isinstance(node.op, Sum):
            total = 0.0
            for coefficient, value in zip(node.op.coefficients, sources, strict=True):
                total = up(total + up(abs(coefficient) * value))
            constants[index] = total
        elif isinstance(node.op, Gather):
            constants[index] = _gather(node.op, sources, norm)
        elif sources[0] == 0.0:
            constants[index] = 0.0  # constant with respect to the chosen inputs
        else:
            constants[index] = up(sources[0] * operator_lipschitz(node.op, norm))
    return constants[graph.output]


def _gather(operator: Gather, sources: list[float], norm: float) -> float:
    if operator.multiplicity == 0:
        return 0.0
    if norm == math.inf:
        return max(sources)
    joint = math.sqrt(up(sum(up(value * value) for value in sources)))
    return up(up(joint) * up(math.sqrt(operator.multiplicity)))
