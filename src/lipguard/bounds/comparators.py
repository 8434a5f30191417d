"""Sorting and max-pooling as ReLU networks, exactly: ``max(a, b) = b + relu(a - b)``.

The normal form of :mod:`lipguard.bounds.network` has elementwise activations only, so
:func:`lower_comparators` rewrites a graph's :class:`~lipguard.bounds.ops.Sort` and
:class:`~lipguard.bounds.ops.MaxPool` nodes into *comparator rounds*: for a set of pairs
``(a, b)``, ``r = relu(x_a - x_b)`` and every output is ``x_b + r`` (the larger), ``x_a - r``
(the smaller) or a copy of one entry. A GroupSort of groups of ``g`` takes ``g`` rounds of
odd–even transposition sort; a max-pool window of ``k`` entries a tournament of
``⌈log₂ k⌉`` rounds. Every step is an exact identity, so the rewritten graph computes the same
function; only gathers, sums and ReLUs are added (nothing dense).
"""

from __future__ import annotations

import math

import torch

from lipguard.bounds import activations as act
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ir import Builder, Graph
from lipguard.bounds.ops import Activation, Gather, MaxPool, Scale, Sort, Sum

#: what one output of a comparator round is: ("max" | "min", pair) or ("copy", entry)
Output = tuple[str, int]


def lower_comparators(graph: Graph) -> Graph:
    """The same function with every Sort and MaxPool node replaced by comparator rounds."""
    if not any(isinstance(node.op, Sort | MaxPool) for node in graph.nodes):
        return graph
    builder = Builder()
    mapping: dict[int, int] = {}
    for index, node in enumerate(graph.nodes):
        if node.op is None:
            mapping[index] = builder.input(node.shape, node.where)
            continue
        sources = [mapping[i] for i in node.inputs]
        if isinstance(node.op, Sort):
            mapping[index] = _sort(builder, sources[0], node.op, node.size, node.where)
        elif isinstance(node.op, MaxPool):
            mapping[index] = _max_pool(builder, sources[0], node.op, node.where)
        else:
            mapping[index] = builder.add(node.op, sources, node.where)
    return builder.finish(mapping[graph.output])


def _sort(builder: Builder, x: int, sort: Sort, size: int, where: str) -> int:
    group = sort.group_size
    for round_index in range(group):
        pairs = [
            (start + i, start + i + 1)
            for start in range(0, size, group)
            for i in range(round_index % 2, group - 1, 2)
        ]
        if not pairs:
            continue
        position = {}
        for number, (a, b) in enumerate(pairs):
            high, low = (a, b) if sort.descending else (b, a)
            position[high], position[low] = ("max", number), ("min", number)
        outputs = [position.get(entry, ("copy", entry)) for entry in range(size)]
        x = comparator_round(
            builder, x, size, pairs, outputs, sort.shape, f"{where}/round{round_index}"
        )
    return x


def _max_pool(builder: Builder, x: int, pool: MaxPool, where: str) -> int:
    """Tournament rounds over each window's valid entries (padding never wins)."""
    windows = [[int(i) for i in row if i >= 0] for row in pool.windows.tolist()]
    size = math.prod(pool.in_shape)
    gathered = [entry for row in windows for entry in row]
    current = builder.add(
        Gather(torch.tensor(gathered, dtype=torch.long), None, (size,), (len(gathered),)),
        (x,),
        f"{where}/windows",
    )
    groups, offset = [], 0
    for row in windows:
        groups.append(list(range(offset, offset + len(row))))
        offset += len(row)
    width, round_index = len(gathered), 0
    while any(len(group) > 1 for group in groups):
        pairs: list[tuple[int, int]] = []
        outputs: list[Output] = []
        next_groups: list[list[int]] = []
        for group in groups:
            survivors = []
            for first in range(0, len(group) - 1, 2):
                pairs.append((group[first], group[first + 1]))
                survivors.append(len(outputs))
                outputs.append(("max", len(pairs) - 1))
            if len(group) % 2:
                survivors.append(len(outputs))
                outputs.append(("copy", group[-1]))
            next_groups.append(survivors)
        current = comparator_round(
            builder, current, width, pairs, outputs, (len(outputs),), f"{where}/round{round_index}"
        )
        groups, width, round_index = next_groups, len(outputs), round_index + 1
    order = torch.tensor([group[0] for group in groups], dtype=torch.long)
    return builder.add(Gather(order, None, (width,), pool.out_shape), (current,), f"{where}/out")


def comparator_round(
    builder: Builder,
    x: int,
    size: int,
    pairs: list[tuple[int, int]],
    outputs: list[Output],
    shape: tuple[int, ...],
    where: str,
) -> int:
    """``r = relu(x_a - x_b)`` for each pair, then each output as ``outputs`` says."""
    count = len(pairs)
    firsts = torch.tensor([a for a, _ in pairs], dtype=torch.long)
    seconds = torch.tensor([b for _, b in pairs], dtype=torch.long)
    a = builder.add(Gather(firsts, None, (size,), (count,)), (x,), f"{where}/a")
    b = builder.add(Gather(seconds, None, (size,), (count,)), (x,), f"{where}/b")
    difference = builder.add(Sum((1.0, -1.0), (count,)), (a, b), f"{where}/a-b")
    relu = builder.add(Activation(act.RELU, (count,)), (difference,), f"{where}/relu")
    base = [
        pairs[i][1] if kind == "max" else pairs[i][0] if kind == "min" else i for kind, i in outputs
    ]
    signs = [1.0 if kind == "max" else -1.0 if kind == "min" else 0.0 for kind, _ in outputs]
    picks = [i if kind != "copy" else 0 for kind, i in outputs]
    out = len(outputs)
    kept = builder.add(
        Gather(torch.tensor(base, dtype=torch.long), None, (size,), (out,)), (x,), f"{where}/base"
    )
    moved = builder.add(
        Gather(torch.tensor(picks, dtype=torch.long), None, (count,), (out,)),
        (relu,),
        f"{where}/pick",
    )
    signed = builder.add(
        Scale(
            Enclosure(torch.tensor(signs, dtype=torch.float64)),
            Enclosure(torch.zeros(out, dtype=torch.float64)),
            (out,),
        ),
        (moved,),
        f"{where}/sign",
    )
    return builder.add(Sum((1.0, 1.0), shape), (kept, signed), where)
