"""A NumPy snapshot of a reward model, for the per-step reward calls of an environment wrapper.

Environments step one small batch at a time, where PyTorch's per-call overhead (tens of
microseconds per layer, plus lipguard's certificate checks) dwarfs the arithmetic.
:class:`FrozenReward` reads the model once through the bound engine's graph (a chain of dense
layers — lipguard's constrained layers with their effective weights —, scalings, ReLU, tanh,
GroupSort/MaxMin) and compiles it into a float64 NumPy program: consecutive affine maps are
multiplied into one, and the rows of the dense layer before a GroupSort are reordered so that the
entries it sorts together lie in contiguous blocks (a MaxMin becomes one ``fmin`` and one
``maximum`` of two halves — NaN sorts last, as in torch; the next layer's columns follow the new
order); biases ride in the products (a column of ones). Each batch size gets preallocated
buffers (per thread), so a call allocates nothing but its result. The program computes the
model's function, rounded differently: in float64, with the products folded — which is why
float16 and bfloat16 models are refused rather than evaluated more precisely than they compute.

Before every call a :class:`~lipguard.rl.watch.ModuleWatch` compares the model with the
snapshot's sources (every parameter, buffer, module, setting, hook and the global call path) and
the model is re-read when anything differs, so it never serves a stale reward. Models with other
operators raise :class:`~lipguard.errors.UnsupportedModuleError` (call the module directly).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from lipguard.bounds.graph import Graph, infer_input_shape, module_graph
from lipguard.bounds.ops import Activation, Dense, Scale, Sort
from lipguard.errors import InvalidArgumentError, ShapeError, UnsupportedModuleError
from lipguard.rl.watch import ModuleWatch

#: the operators of a program, each a tuple ``(kind, *arrays)``. As read from the graph, in the
#: model's feature order: ``("affine", W, b)`` is ``W x + b`` (``W`` as ``(out, in)``),
#: ``("scale", s, t)`` is ``s ⊙ x + t``, ``("relu",)``, ``("tanh",)``, ``("sort", g, descending)``.
#: Compiled, on rows in the stored order: ``("affine", A)`` is ``[x, 1] @ A`` (the bias is the
#: last row of ``A``), ``("sort", g)`` sorts each column of a row's ``(g, width / g)`` blocks
#: (ascending), ``("gather", index)`` is ``x[:, index]``; the others as above.
Step = tuple
_ELEMENTWISE = {"relu", "tanh"}
#: batch sizes up to this keep their buffers between calls (at most this many sizes at once)
_CACHED_ROWS, _CACHED_SIZES = 4096, 16


def _operators(graph: Graph) -> list[Step]:
    """The graph's chain as steps in the model's own feature order (matrices ``(out, in)``)."""
    steps: list[Step] = []
    for index, node in enumerate(graph.nodes[1:], start=1):
        op = node.op
        if node.inputs != (index - 1,):
            raise UnsupportedModuleError(
                "FrozenReward evaluates chains of layers only; call the model itself"
            )
        if isinstance(op, Dense) and op.blocks == 1:
            steps.append(("affine", _array(op.matrix.value), _array(op.bias.value)))
        elif isinstance(op, Scale):
            width = op.shape[-1] if op.shape else 1
            scale, shift = (np.broadcast_to(_array(e.value), width) for e in (op.scale, op.shift))
            steps.append(("scale", scale.copy(), shift.copy()))
        elif isinstance(op, Activation) and op.spec.name in ("relu", "tanh", "identity"):
            if op.spec.name != "identity":
                steps.append((op.spec.name,))
        elif isinstance(op, Sort) and op.shape and op.shape[-1] % op.group_size == 0:
            steps.append(("sort", op.group_size, op.descending))
        else:
            raise UnsupportedModuleError(
                f"FrozenReward evaluates dense layers, scalings, ReLU, tanh and GroupSort "
                f"only, not {type(op).__name__} ({node.where}); call the model itself"
            )
    return steps


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A float64 copy (never a view of the model's memory)."""
    return np.array(tensor.detach().to("cpu", torch.float64).numpy())


def _compose(first: Step, second: Step) -> Step:
    """One affine step computing ``second(first(x))`` (both ``affine`` or ``scale``)."""
    if first[0] == "scale" and second[0] == "scale":
        return ("scale", second[1] * first[1], second[1] * first[2] + second[2])
    if second[0] == "scale":  # rows of the matrix scaled
        return ("affine", second[1][:, None] * first[1], second[1] * first[2] + second[2])
    if first[0] == "scale":  # columns scaled
        return ("affine", second[1] * first[1][None, :], second[1] @ first[2] + second[2])
    return ("affine", second[1] @ first[1], second[1] @ first[2] + second[2])


def _fold(steps: list[Step]) -> list[Step]:
    folded: list[Step] = []
    for step in steps:
        if folded and {folded[-1][0], step[0]} <= {"affine", "scale"}:
            folded[-1] = _compose(folded[-1], step)
        else:
            folded.append(step)
    return folded


def _reorder(step: Step, order: np.ndarray) -> Step:
    """``step`` with its outputs (an affine step's columns, a scaling's entries) in ``order``."""
    if step[0] == "affine":
        return ("affine", step[1][:, order], step[2][order])
    if step[0] == "scale":
        return ("scale", step[1][order], step[2][order])
    return step


def _with_bias_row(step: Step) -> Step:
    """An affine step as one matrix: the inputs get a column of ones, the matrix the bias."""
    if step[0] != "affine":
        return step
    return ("affine", np.ascontiguousarray(np.vstack([step[1], step[2][None, :]])))


def _lay_out(steps: list[Step], width: int) -> tuple[list[Step], int]:
    """The steps on features stored in the order that suits them, and the column of output 0.

    ``stored[j]`` is the feature that column ``j`` holds. A sort of groups of ``g`` wants column
    ``r·k + i`` (``k`` groups) to hold feature ``g·i + r``; the dense layer before it (with only
    elementwise steps in between) produces that order for free, else a gather does.
    """
    stored = np.arange(width)
    laid: list[Step] = []
    free: int | None = None  # the affine step whose output order may still change
    for step in steps:
        position = np.argsort(stored)  # the column that holds each feature
        if step[0] == "affine":
            matrix, bias = step[1], step[2]
            laid.append(("affine", np.ascontiguousarray(matrix[:, stored].T), bias))
            stored, free = np.arange(len(bias)), len(laid) - 1
        elif step[0] == "scale":
            laid.append(("scale", step[1][stored], step[2][stored]))
        elif step[0] in _ELEMENTWISE:
            laid.append(step)
        else:  # sort
            group, descending = step[1], step[2]
            count = len(stored) // group
            ranks, groups = np.arange(group)[:, None], np.arange(count)[None, :]
            wanted = (group * groups + ranks).reshape(-1)
            if free is not None:
                laid[free:] = [_reorder(s, position[wanted]) for s in laid[free:]]
            elif not np.array_equal(stored, wanted):
                laid.append(("gather", position[wanted]))
            laid.append(("sort", group))
            rank = group - 1 - ranks if descending else ranks
            stored, free = (group * groups + rank).reshape(-1), None
    return [*map(_with_bias_row, laid)], int(np.argsort(stored)[0])


def _buffer(rows: int, width: int, ones: bool) -> tuple[np.ndarray, np.ndarray]:
    """A ``(rows, width)`` buffer, and the whole buffer: with ``ones``, one more column of ones
    (an affine step's bias is its matrix's last row)."""
    whole = np.empty((rows, width + ones))
    whole[:, width:] = 1.0
    return whole[:, :width], whole


class _Plan:
    """The calls of a program on a batch of ``rows`` rows, bound to preallocated buffers.

    A step that feeds an affine step writes into a buffer with a column of ones, so that
    ``np.dot`` adds the bias as part of the product (the matrix's last row); the others write in
    place where they can.
    """

    def __init__(self, steps: list[Step], width: int, column: int, rows: int) -> None:
        self.calls: list[Callable[[], object]] = []
        add = self.calls.append
        feeds = [step[0] == "affine" for step in steps] + [False]  # feeds[i + 1]: step i feeds one
        self.input, whole = _buffer(rows, width, feeds[0])
        source = self.input
        for step, ones in zip(steps, feeds[1:], strict=True):
            kind, out_width = step[0], source.shape[1]
            if kind == "affine":
                source = np.empty((rows, step[1].shape[1]))
                add(partial(np.dot, whole, step[1], source))  # dot: the fastest with out
                whole = source
                continue
            if kind == "scale":  # never feeds an affine step: the two are folded
                add(partial(np.multiply, source, step[1][None, :], out=source))
                add(partial(np.add, source, step[2][None, :], out=source))
                continue
            if kind == "gather":
                out_width = len(step[1])
            fresh = ones or kind == "gather" or (kind == "sort" and step[1] == 2)
            target, whole = _buffer(rows, out_width, ones) if fresh else (source, whole)
            if kind == "relu":
                add(partial(np.maximum, source, np.zeros((1, out_width)), out=target))
            elif kind == "tanh":
                add(partial(np.tanh, source, out=target))
            elif kind == "gather":
                add(partial(np.take, source, step[1], 1, out=target))
            elif step[1] == 2:  # MaxMin: the smaller of each pair, then the larger
                half = out_width // 2
                low, high = source[:, :half], source[:, half:]
                # torch's sort puts NaN last: fmin skips it, maximum keeps it
                add(partial(np.fmin, low, high, out=target[:, :half]))
                add(partial(np.maximum, low, high, out=target[:, half:]))
            else:  # each row's blocks sorted in place (the source buffer is whole)
                blocks = source.reshape(rows, step[1], out_width // step[1])
                add(partial(np.ndarray.sort, blocks, 1))
                if target is not source:
                    add(partial(np.copyto, target, source))
            source = target
        self.output = source[:, column]


class _PlansPerThread(threading.local):
    def __init__(self) -> None:
        self.plans: dict[int, _Plan] = {}  # each thread its own (run for each thread)


class _Program:
    """A compiled chain: ``features (N, width) -> output 0 (N,)`` in float64."""

    def __init__(self, graph: Graph, width: int) -> None:
        self.width = width
        self.steps, self.column = _lay_out(_fold(_operators(graph)), width)
        self._local = _PlansPerThread()

    def __call__(self, features: np.ndarray) -> np.ndarray:
        rows = np.asarray(features)
        if rows.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"reward features must be real numbers, got {rows.dtype}")
        if rows.ndim == 0:
            raise ShapeError(f"reward features must be (N, {self.width}), got a scalar")
        count = len(rows)
        if rows.size != count * self.width:
            raise ShapeError(f"reward features must be (N, {self.width}), got {rows.shape}")
        plans = self._local.plans
        plan = plans.get(count)
        if plan is None:
            plan = _Plan(self.steps, self.width, self.column, count)
            if count <= _CACHED_ROWS:
                if len(plans) >= _CACHED_SIZES:
                    plans.clear()
                plans[count] = plan
        np.copyto(plan.input, rows.reshape(count, self.width))
        for call in plan.calls:
            call()
        return plan.output.copy()


#: what reading a model NumPy cannot evaluate raises
Refusal = UnsupportedModuleError | InvalidArgumentError | ShapeError


class FrozenReward:
    """``features (N, d) -> rewards (N,)`` computed with NumPy from a snapshot of ``model``.

    Raises :class:`~lipguard.errors.UnsupportedModuleError` (or ``InvalidArgumentError`` /
    ``ShapeError`` for a model whose input shape it cannot tell) when the model, now, is not one
    it can evaluate; a refused model is read again once anything in it changes (a removed hook),
    and until then the refusal is raised again without a new read."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._state: tuple[ModuleWatch, _Program] | None = None
        self._refusal: tuple[ModuleWatch, Refusal] | None = None
        self._read()

    def _read(self) -> tuple[ModuleWatch, _Program]:
        self._state = None
        try:
            program = self._compile()
        except (UnsupportedModuleError, InvalidArgumentError, ShapeError) as error:
            self._refusal = (ModuleWatch(self.model), error)
            raise
        self._refusal = None
        # watched after the read, which may fill caches the layers keep
        self._state = state = (ModuleWatch(self.model), program)
        return state

    def _compile(self) -> _Program:
        narrow = {t.dtype for t in (*self.model.parameters(), *self.model.buffers())}
        narrow -= {torch.float32, torch.float64}
        if any(dtype.is_floating_point for dtype in narrow):
            raise UnsupportedModuleError(
                f"FrozenReward evaluates float32 and float64 models (in float64), not "
                f"{sorted(map(str, narrow))}: its rewards would not round like the model's; "
                "call the model itself"
            )
        shape = infer_input_shape(self.model)
        with torch.no_grad():
            return _Program(module_graph(self.model, shape), math.prod(shape))

    def numpy(self, features: np.ndarray) -> np.ndarray:
        """Rewards ``(N,)`` (float64) of the rows of ``features``."""
        state = self._state
        if state is None or state[0].changed():
            refusal = self._refusal
            if refusal is not None and not refusal[0].changed():
                raise type(refusal[1])(str(refusal[1]))  # the same model: the same answer
            state = self._read()
        return state[1](features)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.numpy(torch.as_tensor(features).detach().cpu().numpy()))
