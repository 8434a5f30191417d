"""The network a certificate is about, as exact steps on flat vectors, and its enclosed evaluation.

Two sources. A dense chain: the certificate's ``checkable.layers`` naming tensors of a
safetensors file. An ONNX file: the graph is the file's own, one input (the first dimension the
batch) and one output, with the operators ``MatMul``, ``Gemm`` (``alpha = beta = 1``, no
``transA``), ``Conv`` (2-D, explicit pads, strides, dilations, groups), ``Add``/``Sub`` of a
constant (a bias) or ``Add`` of two values (a residual sum), ``Relu``, ``LeakyRelu``,
``Sigmoid``, ``Tanh``, ``Flatten``/``Reshape``/``Transpose`` (permutations of the flat values,
folded into the next matrix's columns), ``Identity`` and ``Constant``; any other operator,
attribute value or domain is refused by name. A convolution becomes its exact dense matrix (each
entry a kernel weight placed, never computed). Weights are exact binary floats widened to
float64; the function is the exact real one the graph denotes (no rounding of its own).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from mpmath import iv  # type: ignore[import-untyped]

from lipguard.check.psd import Matrix

#: each activation's slope range [α, β] (leaky_relu: [a, 1] for its slope a)
SLOPES = {"relu": (0.0, 1.0), "tanh": (0.0, 1.0), "sigmoid": (0.0, 0.25), "identity": (1.0, 1.0)}
LIMIT = 2.0**64  # largest magnitude of a weight, multiplier or bound the checker accepts
_ONNX_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": ""}


@dataclass(frozen=True)
class Step:
    """``affine``: ``x ↦ W(x + Σ shifts) + Σ biases`` (``weight`` None: the identity); ``act``: φ
    of ``kind`` elementwise, slopes in ``slopes``; ``add``: the sum of two steps' values. Step 0
    is the input; ``inputs`` index earlier steps; ``size`` is the number of values."""

    op: str
    size: int
    inputs: tuple[int, ...] = ()
    weight: Matrix | None = None
    shifts: tuple[Matrix, ...] = ()
    biases: tuple[Matrix, ...] = ()
    kind: str = ""
    slopes: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))


def activation(kind: str, slope: float = 0.0) -> Step:
    """An ``act`` step's semantics (size and input set by the caller)."""
    if kind == "leaky_relu":
        if not 0 <= slope <= 1:
            raise ValueError(f"leaky_relu slope {slope!r} is outside [0, 1]")
        return Step("act", 0, kind=kind, slopes=(Fraction(slope), Fraction(1)))
    if kind not in SLOPES:
        raise ValueError(f"activation {kind!r} is not in this checker's family")
    return Step("act", 0, kind=kind, slopes=(Fraction(SLOPES[kind][0]), Fraction(SLOPES[kind][1])))


def reachable(steps: list[Step]) -> list[int]:
    """The steps the output (the last step) depends on, in order."""
    seen, stack = set(), [len(steps) - 1]
    while stack:
        index = stack.pop()
        if index not in seen:
            seen.add(index)
            stack.extend(steps[index].inputs)
    return sorted(seen)


def weights(steps: list[Step]) -> list[tuple[int, Matrix]]:
    """The matrices the output depends on, in order: the ones norm claims are about."""
    return [(i, w) for i in reachable(steps) if (w := steps[i].weight) is not None]


def chain(steps: list[Step]) -> list[Step] | None:
    """``[affine, act, affine, …, affine]`` when the steps are ``W_k φ(⋯ φ(W_1 x)⋯)`` (the form
    LipSDP and the cut/merge programme are about); else ``None``."""
    order = reachable(steps)
    path = [steps[i] for i in order[1:]]
    linked = all(steps[j].inputs == (i,) for i, j in itertools.pairwise(order))
    pattern = all(
        (s.op == "affine" and s.weight is not None) if n % 2 == 0 else s.op == "act"
        for n, s in enumerate(path)
    )
    return path if linked and pattern and len(path) % 2 == 1 else None


def read_onnx(data: bytes) -> tuple[list[Step], list[int]]:
    """The steps of an ONNX file's graph and its per-sample input shape; raises
    :class:`ValueError` naming what is outside the family."""
    import onnx  # the file's parser, part of the trusted base for ONNX input
    from onnx import helper, numpy_helper

    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # protobuf raises several types
        raise ValueError(f"not a readable ONNX file ({error})") from None
    graph = model.graph
    if model.functions or graph.sparse_initializer:  # a function may redefine an operator
        raise ValueError("model-local functions and sparse initializers are not read")
    defined = {item.name for item in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:  # each value assigned once, before it is read
        if not set(node.input) - {""} <= defined or defined & set(node.output):
            raise ValueError(f"not valid ONNX: node {node.name!r} reads or rewrites out of order")
        defined |= set(node.output)
    tensors = [*graph.initializer] + [
        a.t for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise ValueError("weights stored outside the file are not read")
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [item for item in graph.input if item.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError("the graph must have one input and one output")
    shape = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim][1:]
    if not shape or min(shape) <= 0 or math.prod(shape) > 2**20:
        raise ValueError(f"the input needs a fixed per-sample shape of at most 2^20, got {shape}")
    steps = [Step("input", math.prod(shape))]
    values: dict[str, tuple[int, Any, tuple[int, ...]]] = {inputs[0].name: (0, None, tuple(shape))}
    for node in graph.node:
        where = f"ONNX node {node.name or node.op_type} ({node.op_type})"
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):  # (no local function can redefine these)
            raise ValueError(f"{where}: domain {node.domain!r} is not standard ONNX")
        if node.op_type == "Constant" and list(attributes) == ["value"]:
            constants[node.output[0]] = numpy_helper.to_array(attributes["value"])
            continue
        names = list(node.input)
        if node.op_type == "Add" and len(names) == 2 and names[0] not in values:
            names.reverse()  # a constant first: the sum commutes
        given = [values.get(name) for name in names]
        arrays = [constants.get(name) for name in names]
        if given[0] is None or len(node.output) != 1:
            raise ValueError(f"{where}: the first input must be a computed value")
        values[node.output[0]] = _lower(steps, node.op_type, given, arrays, attributes, where)
    output = values.get(graph.output[0].name)
    if output is None or output[0] != len(steps) - 1:
        raise ValueError("the output must be the graph's last computed value")
    return steps, shape


def _lower(
    steps: list[Step],
    op: str,
    given: list[Any],
    arrays: list[Any],
    attributes: dict[str, Any],
    where: str,
) -> tuple[int, Any, tuple[int, ...]]:
    """One ONNX node: appends its steps, returns its value ``(step, permutation, shape)`` (the
    value's flat entries are the step's at the permutation's indices)."""
    (source, order, shape), size = given[0], math.prod(given[0][2])
    constant: list[Any] = [_float(a, where) for a in arrays[1:]]
    if op == "Identity":
        return given[0]
    if op == "Flatten" and attributes.get("axis", 1) == 1:
        return source, order, (size,)
    if op == "Reshape" and constant and constant[0] is not None and not attributes.get("allowzero"):
        if constant[0].reshape(-1)[:1].tolist() not in ([-1], [0], [1]):
            raise ValueError(f"{where}: the first entry of the shape must keep the batch")
        target = [int(t) for t in constant[0].reshape(-1)[1:]]
        target = [shape[i] if t == 0 and i < len(shape) else t for i, t in enumerate(target)]
        if target.count(-1) == 1:
            target[target.index(-1)] = size // max(1, -math.prod(target))
        if math.prod(target) != size or min(target, default=1) <= 0:
            raise ValueError(f"{where}: cannot reshape {shape} to {target}")
        return source, order, tuple(target)
    if op == "Transpose" and list(attributes.get("perm", [1]))[:1] == [0]:
        axes = [p - 1 for p in attributes["perm"][1:]]
        moved = np.arange(size).reshape(shape).transpose(axes)
        index = moved.reshape(-1) if order is None else order[moved.reshape(-1)]
        return source, index, moved.shape
    if op in _ONNX_ACTIVATIONS:
        kind = _ONNX_ACTIVATIONS[op] or "leaky_relu"
        step = activation(kind, float(attributes.get("alpha", 0.01)))
        steps.append(Step("act", size, (source,), kind=step.kind, slopes=step.slopes))
        return len(steps) - 1, order, shape
    if op == "Add" and len(given) == 2 and given[1] is not None:
        if given[1][2] != shape or not _same(given[1][1], order):
            raise ValueError(f"{where}: the two values differ in shape or layout")
        steps.append(Step("add", size, (source, given[1][0])))
        return len(steps) - 1, order, shape
    if op in ("Add", "Sub") and len(constant) == 1 and constant[0] is not None:
        added = np.broadcast_to(constant[0], (1, *shape)).reshape(-1)
        return _affine(steps, given[0], None, -added if op == "Sub" else added, shape)
    if op == "MatMul" and constant and constant[0] is not None and constant[0].ndim == 2:
        if len(shape) != 1 or constant[0].shape[0] != size:
            raise ValueError(f"{where}: {shape} times {constant[0].shape}")
        return _affine(steps, given[0], constant[0].T, None, (constant[0].shape[1],))
    if op in ("Gemm", "Conv") and (not constant or constant[0] is None):
        raise ValueError(f"{where}: the weight must be a constant")
    if op == "Gemm" and attributes.get("alpha", 1.0) == attributes.get("beta", 1.0) == 1.0:
        matrix = constant[0] if attributes.get("transB", 0) else constant[0].T
        if attributes.get("transA", 0) or len(shape) != 1 or matrix.shape[1:] != (size,):
            raise ValueError(f"{where}: transA or shapes {shape}, {matrix.shape}")
        row_bias = None if len(constant) < 2 else np.broadcast_to(constant[1], matrix.shape[:1])
        return _affine(steps, given[0], matrix, row_bias, matrix.shape[:1])
    if op == "Conv" and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
        matrix, out = convolution(constant[0], shape, attributes, where)
        channel_bias = None if len(constant) < 2 else np.repeat(constant[1], math.prod(out[1:]))
        return _affine(steps, given[0], matrix, channel_bias, out)
    raise ValueError(f"{where}: not in this checker's family (or attributes {attributes})")


def _float(array: Any, where: str) -> Matrix | None:
    """A float constant widened exactly; integer constants (shapes) as they are."""
    if array is None or array.dtype.kind in "iu":
        return array
    wide = np.asarray(array, np.float64) if array.dtype.kind == "f" else np.array([np.nan])
    if not (np.abs(wide) <= LIMIT).all():  # NaN and inf fail too
        raise ValueError(f"{where}: a constant is not a finite float within 2^64")
    return wide


def _same(first: Any, second: Any) -> bool:
    return (first is None and second is None) or (
        first is not None and second is not None and bool((first == second).all())
    )


def _affine(
    steps: list[Step],
    value: tuple[int, Any, tuple[int, ...]],
    matrix: Matrix | None,
    bias: Matrix | None,
    shape: tuple[int, ...],
) -> tuple[int, Any, tuple[int, ...]]:
    """``matrix·value + bias``. A bias after an affine step becomes a copy of that step with one
    more bias; an identity step before a matrix becomes its input shift; the value's
    permutation moves into the matrix's columns (or, for a bias alone, into the bias)."""
    source, order, _ = value
    previous = steps[source]
    for array in (matrix, bias):
        if array is not None and (array.dtype != np.float64 or max(array.shape) > 2**20):
            raise ValueError("weights must be floats, matrices at most 2^20 wide")
    if bias is not None and bias.shape != (previous.size if matrix is None else len(matrix),):
        raise ValueError(f"a bias of shape {bias.shape} does not fit its values")
    if matrix is None:  # bias only: kept in the source's order
        placed = np.asarray(bias, np.float64) if order is None else np.empty_like(bias)
        if order is not None:
            placed[order] = bias
        if previous.op == "affine":
            biases, inputs = (*previous.biases, placed), previous.inputs
            steps.append(
                Step("affine", previous.size, inputs, previous.weight, previous.shifts, biases)
            )
        else:
            steps.append(Step("affine", previous.size, (source,), biases=(placed,)))
        return len(steps) - 1, order, shape
    if order is not None:
        moved = np.empty_like(matrix)
        moved[:, order] = matrix
        matrix = moved
    shifts: tuple[Matrix, ...] = ()
    inputs = (source,)
    if previous.op == "affine" and previous.weight is None:
        shifts, inputs = previous.shifts + previous.biases, previous.inputs
    biases = () if bias is None else (np.asarray(bias, np.float64),)
    steps.append(Step("affine", matrix.shape[0], inputs, matrix, shifts, biases))
    return len(steps) - 1, None, shape


def convolution(
    kernel: Matrix, shape: tuple[int, ...], attributes: dict[str, Any], where: str
) -> tuple[Matrix, tuple[int, int, int]]:
    """The exact dense matrix of a 2-D convolution (ONNX ``Conv``: cross-correlation, zero
    padding) on ``(C, H, W)`` inputs, and the output shape."""
    groups = int(attributes.get("group", 1))
    channels, height, width = shape if len(shape) == 3 else (0, 0, 0)
    outs, per_group, kh, kw = kernel.shape if kernel.ndim == 4 else (0, 1, 0, 0)
    sh, sw = attributes.get("strides", [1, 1])
    dh, dw = attributes.get("dilations", [1, 1])
    top, left, bottom, right = attributes.get("pads", [0, 0, 0, 0])
    if min(sh, sw, dh, dw, top, left, bottom, right) < 0 or min(sh, sw) == 0:
        raise ValueError(f"{where}: strides, dilations and pads must be positive")
    rows = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    columns = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    if (
        kernel.dtype != np.float64
        or outs * rows * columns * channels * height * width > 2**28
        or not channels
        or per_group * groups != channels
        or outs % groups
        or min(rows, columns, sh, sw, dh, dw) <= 0
        or list(attributes.get("kernel_shape", [kh, kw])) != [kh, kw]
    ):
        raise ValueError(f"{where}: kernel {kernel.shape} does not fit input {shape}")
    o, c, i, j, y, x = np.meshgrid(
        *(np.arange(n) for n in (outs, per_group, kh, kw, rows, columns)), indexing="ij"
    )
    source_y, source_x = y * sh - top + i * dh, x * sw - left + j * dw
    inside = (source_y >= 0) & (source_y < height) & (source_x >= 0) & (source_x < width)
    channel = (o // (outs // groups)) * per_group + c
    matrix = np.zeros((outs * rows * columns, channels * height * width))
    out_index = ((o * rows + y) * columns + x)[inside]
    in_index = ((channel * height + source_y) * width + source_x)[inside]
    matrix[out_index, in_index] = kernel[o, c, i, j][inside]  # each pair once: placed, exact
    return matrix, (outs, rows, columns)


def _dyadic(array: Matrix) -> tuple[Any, int]:
    """``(integers, e)`` with ``array = integers / 2^e`` exactly."""
    ratios = [value.as_integer_ratio() for value in np.asarray(array).reshape(-1).tolist()]
    e = max((d.bit_length() - 1 for _, d in ratios), default=0)
    return np.array([n << (e - d.bit_length() + 1) for n, d in ratios] + [0], object)[:-1], e


def _lift(array: Matrix, enclosed: bool) -> tuple[Any, int]:
    if enclosed:  # binary64 fits the working precision: exact point intervals
        return np.array([iv.mpf(v) for v in array.reshape(-1).tolist()] + [0], object)[:-1], 0
    return _dyadic(array)


def _sum(first: tuple[Any, int], second: tuple[Any, int]) -> tuple[Any, int]:
    e = max(first[1], second[1])
    return first[0] * (1 << (e - first[1])) + second[0] * (1 << (e - second[1])), e


def _phi(kind: str, slope: Fraction, value: Any) -> Any:
    """φ at a point interval, enclosed (outward rounding)."""
    if kind == "tanh":
        return 2 / (1 + iv.exp(-2 * value)) - 1
    if kind == "sigmoid":
        return 1 / (1 + iv.exp(-value))
    return value if value.a >= 0 else value * iv.mpf(slope.numerator) / slope.denominator


def evaluate(steps: list[Step], x: Matrix) -> list[Any]:
    """``f(x)`` for a float64 input: exact rationals when every activation is piecewise linear,
    else intervals (mpmath, the caller's precision) enclosing each output."""
    enclosed = any(steps[i].kind in ("tanh", "sigmoid") for i in reachable(steps))
    values: dict[int, tuple[Any, int]] = {0: _lift(x, enclosed)}
    for index in reachable(steps)[1:]:
        step = steps[index]
        value = values[step.inputs[0]]
        if step.op == "add":
            value = _sum(value, values[step.inputs[1]])
        elif step.op == "act" and enclosed:  # every φ is nondecreasing: φ([a, b]) ⊆ [φ(a), φ(b)]
            ends = [
                [_phi(step.kind, step.slopes[0], iv.mpf(e)) for e in (v.a, v.b)] for v in value[0]
            ]
            value = (np.array([iv.mpf([a.a, b.b]) for a, b in ends] + [0], object)[:-1], 0)
        elif step.op == "act":
            low, shift = step.slopes[0], step.slopes[0].denominator.bit_length() - 1
            ints = value[0]
            value = (
                np.where(ints >= 0, ints * (1 << shift), ints * low.numerator),
                value[1] + shift,
            )
        else:
            for offset in step.shifts:
                value = _sum(value, _lift(offset, enclosed))
            if step.weight is not None:
                rows, columns = np.nonzero(step.weight)
                entries, e = _lift(step.weight[rows, columns], enclosed)
                total = np.array([iv.mpf(0) if enclosed else 0] * step.size + [0], object)[:-1]
                np.add.at(total, rows, entries * value[0][columns])
                value = (total, e + value[1])
            for bias in step.biases:
                value = _sum(value, _lift(bias, enclosed))
        values[index] = value
    ints, e = values[len(steps) - 1]
    return [v if enclosed else Fraction(v, 1 << e) for v in ints]
