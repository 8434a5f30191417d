"""Import ONNX models (the verification community's format) as ``torch.nn`` modules.

:func:`load_onnx` reads a file into an :class:`OnnxModule`: an ``nn.Module`` whose ``forward``
runs the ONNX graph with PyTorch operations, node by node, with the file's weights as buffers in
the file's dtype. The bound engine reads it like any other module, through ``torch.export``
(:mod:`lipguard.bounds.trace`), so every bound, lower bound and certificate is about the ONNX
graph's own function.

Semantics are ONNX's, not guessed: only the nodes the one declared output depends on run;
broadcasting is numpy's (= PyTorch's); ``Reshape`` keeps ``0`` entries and reads the first entry
as the batch; ``Gemm``'s ``transA``/``transB``/``alpha``/``beta``; ``Conv``/``MaxPool``/
``AveragePool`` pads (symmetric, or ``auto_pad``), strides, dilations and groups; attribute
and input forms of the operators whose signature changed between opsets (``Squeeze``,
``Unsqueeze``, ``Slice``, ``Pad``, ``Clip``, ``Reshape``, reductions). Nodes of a non-standard
domain and operators not listed in :data:`OPERATORS` are refused by name. After import the module
is run on random inputs next to onnx's own reference evaluator
(``onnx.reference.ReferenceEvaluator``); any disagreement refuses the import.

The first dimension of every input is the batch: a graph exported for batch 1 runs on any batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipguard.errors import InvalidArgumentError, UnsupportedModuleError

if TYPE_CHECKING:
    import onnx
    from onnx.reference import ReferenceEvaluator

_STANDARD_DOMAINS = ("", "ai.onnx")
#: random inputs on which an import is compared with onnx's reference evaluator
_REFERENCE_PROBES = 4
#: an ONNX node's attributes: ints, floats, strings, arrays or lists of them, by the operator's
#: specification (``Any``: each operator reads its own attributes as ONNX defines them)
Attributes = dict[str, Any]
#: a value of the graph: a tensor (inputs, float weights, computed values), a numpy array (integer
#: constants: shapes, axes, indices) or ``None`` (an omitted optional input). ``Any``: which one a
#: node input holds is the file's, and each operator reads it as ONNX allows at that position
Value = Any
#: ``(name, op_type, inputs, outputs, attributes)``
Node = tuple[str, str, tuple[str, ...], tuple[str, ...], Attributes]
#: an operator: ``(input values, attributes, node name) -> output value(s)``
Operator = Callable[[list[Value], Attributes, str], Value]
#: the per-sample input shape, or one shape per input for a graph with several
InputShape = tuple[int, ...] | list[tuple[int, ...]]


def load_onnx(path: str | Path) -> tuple[OnnxModule, InputShape]:
    """Read an ONNX file; returns ``(module, per-sample input shape)`` — a list of shapes for a
    graph with several inputs."""
    import onnx
    from onnx import numpy_helper

    try:
        source = Path(path).read_bytes()
        proto = onnx.load_from_string(source)
        onnx.external_data_helper.load_external_data_for_model(proto, str(Path(path).parent))
    except Exception as error:  # onnx raises several types for unreadable files
        raise InvalidArgumentError(f"cannot read ONNX file {path}: {error}") from None
    graph = proto.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    nodes: list[Node] = []
    for node in graph.node:
        name = node.name or node.op_type
        if node.domain not in _STANDARD_DOMAINS:
            raise UnsupportedModuleError(
                f"ONNX node {name}: operator {node.op_type} of domain {node.domain!r} is not a "
                "standard ONNX operator"
            )
        attributes = {a.name: _attribute(a) for a in node.attribute}
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant_value(name, attributes)
            continue
        nodes.append((name, node.op_type, tuple(node.input), tuple(node.output), attributes))
    inputs = [value for value in graph.input if value.name not in constants]
    if not inputs:
        raise UnsupportedModuleError(f"{path}: the graph has no input")
    if len(graph.output) != 1:
        raise UnsupportedModuleError(
            f"{path}: expected one graph output, found {len(graph.output)}"
        )
    shapes: list[tuple[int, ...]] = []
    for value in inputs:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if len(dims) < 2 or any(size < 1 for size in dims[1:]):
            raise UnsupportedModuleError(
                f"{path}: input {value.name!r} needs a batch dimension and a fixed per-sample "
                f"shape, got {dims}"
            )
        shapes.append(tuple(int(size) for size in dims[1:]))
    needed = _needed(nodes, graph.output[0].name)
    for name, op_type, *_ in needed:
        if op_type not in OPERATORS:
            raise UnsupportedModuleError(f"ONNX node {name}: operator {op_type} is not supported")
    module = OnnxModule(needed, constants, [v.name for v in inputs], graph.output[0].name)
    module.source = source
    _compare_with_reference(proto, module, inputs, shapes)
    return module.eval(), shapes[0] if len(shapes) == 1 else shapes


def _attribute(attribute: onnx.AttributeProto) -> Any:  # an attribute of any ONNX type
    import onnx

    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, list | tuple):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _constant_value(name: str, attributes: Attributes) -> np.ndarray:
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in attributes:
            return np.asarray(attributes[key])
    raise UnsupportedModuleError(f"ONNX Constant {name!r}: unsupported value {sorted(attributes)}")


def _needed(nodes: list[Node], output: str) -> list[Node]:
    """The nodes the output depends on, in the file's (topological) order."""
    producers = {out: node for node in nodes for out in node[3]}
    if output not in producers:
        raise UnsupportedModuleError(f"the declared output {output!r} is produced by no node")
    needed: set[int] = set()
    pending = [output]
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        pending += [name for name in node[2] if name]
    return [node for node in nodes if id(node) in needed]


class OnnxModule(nn.Module):
    """An ONNX graph run with PyTorch operations; weights are buffers in the file's dtype."""

    def __init__(
        self,
        nodes: list[Node],
        constants: dict[str, np.ndarray],
        inputs: list[str],
        output: str,
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.inputs, self.output = inputs, output
        #: the file's bytes (what the independent checker reads); set by :func:`load_onnx`
        self.source: bytes | None = None
        self._buffer_names: dict[str, str] = {}
        self._literals: dict[str, np.ndarray] = {}
        used = {name for node in nodes for name in node[2] if name}
        for number, (name, array) in enumerate(constants.items()):
            if name not in used:
                continue
            if np.issubdtype(array.dtype, np.floating):
                buffer = f"constant_{number}"
                self.register_buffer(buffer, torch.from_numpy(np.array(array)))
                self._buffer_names[name] = buffer
            else:  # integer constants are shapes, axes, indices: plain values
                self._literals[name] = np.array(array)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.inputs):
            raise InvalidArgumentError(f"the graph takes {len(self.inputs)} inputs")
        values: dict[str, Value] = dict(zip(self.inputs, inputs, strict=True))
        for name, buffer in self._buffer_names.items():
            values[name] = getattr(self, buffer)
        values.update(self._literals)
        for name, op_type, node_inputs, outputs, attributes in self.nodes:
            arguments = [values.get(item) if item else None for item in node_inputs]
            result = OPERATORS[op_type](arguments, attributes, name)
            results = result if isinstance(result, tuple) else (result,)
            for out, value in zip(outputs, results, strict=False):
                values[out] = value
        return values[self.output]


# operators -------------------------------------------------------------------------------------


def _ints(value: Value) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _gemm(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    a, b = args[0], args[1]
    if attrs.get("transA", 0):
        a = a.transpose(-1, -2)
    if attrs.get("transB", 0):
        b = b.transpose(-1, -2)
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        out = out + attrs.get("beta", 1.0) * args[2]
    return out


def _reshape(args: list[Value], attrs: Attributes, name: str) -> Value:
    x = args[0]
    target = _ints(args[1]) if len(args) > 1 and args[1] is not None else _ints(attrs["shape"])
    if not attrs.get("allowzero", 0):
        target = [
            x.shape[i] if size == 0 and i < x.dim() else size for i, size in enumerate(target)
        ]
    target[0] = x.shape[0]  # the first entry is the batch, whatever batch the file was made for
    return x.reshape(target)


def _flatten(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    axis = attrs.get("axis", 1)
    x = args[0]
    axis = axis % x.dim() if x.dim() else 0
    if axis == 0:
        raise UnsupportedModuleError(f"ONNX node {name}: Flatten with axis 0 merges the batch")
    return x.reshape(*x.shape[:axis], -1) if axis == 1 else x.flatten(axis).flatten(1, axis)


def _transpose(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    x = args[0]
    perm = attrs.get("perm", list(range(x.dim() - 1, -1, -1)))
    if perm[0] != 0:
        raise UnsupportedModuleError(f"ONNX node {name}: Transpose moves the batch dimension")
    return x.permute(*perm)


def _axes(args: list[Value], attrs: Attributes, position: int = 1) -> list[int] | None:
    if len(args) > position and args[position] is not None:
        return _ints(args[position])
    return list(attrs["axes"]) if "axes" in attrs else None


def _squeeze(args: list[Value], attrs: Attributes, name: str) -> Value:
    x, axes = args[0], _axes(args, attrs)
    axes = [a for a in range(x.dim()) if x.shape[a] == 1 and a != 0] if axes is None else axes
    if any(a % x.dim() == 0 for a in axes):
        raise UnsupportedModuleError(f"ONNX node {name}: Squeeze of the batch dimension")
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _unsqueeze(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    x, axes = args[0], _axes(args, attrs)
    if axes is None:
        raise UnsupportedModuleError(f"ONNX node {name}: Unsqueeze without axes")
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        if axis == 0:
            raise UnsupportedModuleError(f"ONNX node {name}: Unsqueeze before the batch")
        x = x.unsqueeze(axis)
    return x


def _concat(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    axis = attrs["axis"]
    if axis % args[0].dim() == 0:
        raise UnsupportedModuleError(f"ONNX node {name}: Concat along the batch dimension")
    parts = [a if isinstance(a, torch.Tensor) else torch.as_tensor(a) for a in args]
    return torch.cat(parts, axis)


def _slice(args: list[Value], attrs: Attributes, name: str) -> Value:
    x = args[0]
    if len(args) > 1:
        starts, ends = _ints(args[1]), _ints(args[2])
        given = len(args) > 3 and args[3] is not None
        axes = _ints(args[3]) if given else list(range(len(starts)))
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        if axis == 0:
            raise UnsupportedModuleError(f"ONNX node {name}: Slice of the batch dimension")
        if step < 1:
            raise UnsupportedModuleError(f"ONNX node {name}: Slice with step {step}")
        size = x.shape[axis]
        index[axis] = slice(max(min(start, size), -size), max(min(end, size), -size - 1), step)
    return x[tuple(index)]


def _pad(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    x = args[0]
    pads = _ints(args[1]) if len(args) > 1 and args[1] is not None else list(attrs["pads"])
    given = len(args) > 2 and args[2] is not None
    value = _scalar(args[2]) if given else float(attrs.get("value", 0.0))
    mode = attrs.get("mode", "constant")
    if mode != "constant":
        raise UnsupportedModuleError(f"ONNX node {name}: {mode} padding")
    rank = len(pads) // 2
    if any(pads[0::rank]):
        raise UnsupportedModuleError(f"ONNX node {name}: padding of the batch dimension")
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):
        torch_pads += [pads[axis], pads[axis + rank]]
    return F.pad(x, torch_pads, value=value)


def _spatial_pads(
    attrs: Attributes,
    x: torch.Tensor,
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    name: str,
) -> list[int]:
    """Symmetric ``pads`` as PyTorch's per-dimension padding, or ``auto_pad`` resolved."""
    spatial = x.dim() - 2
    auto = attrs.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return [0] * spatial
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads: list[int] = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            if total % 2:
                raise UnsupportedModuleError(f"ONNX node {name}: asymmetric auto_pad")
            pads.append(total // 2)
        return pads
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if pads[:spatial] != pads[spatial:]:
        raise UnsupportedModuleError(f"ONNX node {name}: asymmetric padding {pads}")
    return pads[:spatial]


def _conv(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    spatial = weight.dim() - 2
    if spatial not in (1, 2):
        raise UnsupportedModuleError(f"ONNX node {name}: {spatial}-D convolution")
    kernel = list(attrs.get("kernel_shape", weight.shape[2:]))
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    padding = _spatial_pads(attrs, x, kernel, strides, dilations, name)
    functional = F.conv1d if spatial == 1 else F.conv2d
    return functional(x, weight, bias, strides, padding, dilations, attrs.get("group", 1))


def _pool(kind: Literal["max", "average"]) -> Operator:
    def run(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
        x = args[0]
        spatial = x.dim() - 2
        kernel = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides", [1] * spatial))
        dilations = list(attrs.get("dilations", [1] * spatial))
        padding = _spatial_pads(attrs, x, kernel, strides, dilations, name)
        ceil = bool(attrs.get("ceil_mode", 0))
        if kind == "max":
            max_pool = F.max_pool1d if spatial == 1 else F.max_pool2d
            return max_pool(x, kernel, strides, padding, dilations, ceil)
        if dilations != [1] * spatial:
            raise UnsupportedModuleError(f"ONNX node {name}: dilated average pooling")
        include = bool(attrs.get("count_include_pad", 0))
        avg_pool = F.avg_pool1d if spatial == 1 else F.avg_pool2d
        return avg_pool(x, kernel, strides, padding, ceil, include)

    return run


def _batch_norm(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    x, scale, bias, mean, var = args[:5]
    if attrs.get("training_mode", 0):
        raise UnsupportedModuleError(f"ONNX node {name}: BatchNormalization in training mode")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, attrs.get("epsilon", 1e-5))


def _reduce(kind: Literal["mean", "sum"]) -> Operator:
    def run(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
        x = args[0]
        axes = _axes(args, attrs)
        axes = list(range(1, x.dim())) if axes is None else [a % x.dim() for a in axes]
        if 0 in axes:
            raise UnsupportedModuleError(f"ONNX node {name}: a reduction over the batch")
        keep = bool(attrs.get("keepdims", 1))
        return (x.mean if kind == "mean" else x.sum)(dim=axes, keepdim=keep)

    return run


def _clip(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    low = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
    high = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
    return torch.clamp(args[0], _scalar(low), _scalar(high))


def _scalar(value: Value) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu())
    return float(np.asarray(value))


def _gather(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
    x, index = args[0], args[1]
    axis = attrs.get("axis", 0) % x.dim()
    if axis == 0 or isinstance(index, torch.Tensor):
        raise UnsupportedModuleError(
            f"ONNX node {name}: Gather along the batch or with computed indices"
        )
    indices = torch.as_tensor(np.asarray(index), dtype=torch.long)
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    taken = x.index_select(axis, indices.reshape(-1))
    return taken.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :])


def _split(args: list[Value], attrs: Attributes, name: str) -> tuple[torch.Tensor, ...]:
    x = args[0]
    axis = attrs.get("axis", 0) % x.dim()
    if axis == 0:
        raise UnsupportedModuleError(f"ONNX node {name}: Split along the batch")
    sizes = _ints(args[1]) if len(args) > 1 and args[1] is not None else attrs.get("split")
    if sizes is None:
        raise UnsupportedModuleError(f"ONNX node {name}: Split without sizes")
    return tuple(torch.split(x, list(sizes), dim=axis))


def _unary(function: Callable[[Value], Value]) -> Operator:
    return lambda args, attrs, name: function(args[0])


def _binary(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Operator:
    def run(args: list[Value], attrs: Attributes, name: str) -> torch.Tensor:
        a, b = (v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for v in args[:2])
        return function(a, b)

    return run


OPERATORS: dict[str, Operator] = {
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Neg": _unary(torch.neg),
    "Conv": _conv,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("average"),
    "GlobalAveragePool": lambda args, attrs, name: args[0].mean(
        dim=tuple(range(2, args[0].dim())), keepdim=True
    ),
    "BatchNormalization": _batch_norm,
    "Relu": _unary(torch.relu),
    "LeakyRelu": lambda args, attrs, name: F.leaky_relu(args[0], attrs.get("alpha", 0.01)),
    "PRelu": lambda args, attrs, name: F.prelu(args[0], args[1].reshape(-1)),
    "Elu": lambda args, attrs, name: F.elu(args[0], attrs.get("alpha", 1.0)),
    "Selu": lambda args, attrs, name: F.selu(args[0]),
    "Tanh": _unary(torch.tanh),
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": lambda args, attrs, name: torch.clamp(
        attrs.get("alpha", 0.2) * args[0] + attrs.get("beta", 0.5), 0.0, 1.0
    ),
    "HardSwish": _unary(F.hardswish),
    "Abs": _unary(torch.abs),
    "Clip": _clip,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Slice": _slice,
    "Pad": _pad,
    "Gather": _gather,
    "Split": _split,
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "Identity": _unary(lambda x: x),
    "Dropout": _unary(lambda x: x),
}


def reference_evaluator(proto: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx's ``ReferenceEvaluator`` for ``proto``, with ``BatchNormalization`` in inference
    mode: the reference implementation of opsets 9–13 computes batch statistics whenever
    ``momentum`` is set (its default), where the specification, and every runtime, normalise with
    the stored statistics when only ``Y`` is requested."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_batch_normalization import _batchnorm_test_mode

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(
            self,
            x: np.ndarray,
            scale: np.ndarray,
            bias: np.ndarray,
            mean: np.ndarray,
            var: np.ndarray,
            epsilon: float | None = None,
            **_: object,
        ) -> tuple[np.ndarray]:
            epsilon = 1e-5 if epsilon is None else epsilon
            return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=epsilon),)

    return ReferenceEvaluator(proto, new_ops=[BatchNormalization])


def _compare_with_reference(
    proto: onnx.ModelProto,
    module: OnnxModule,
    inputs: Sequence[onnx.ValueInfoProto],
    shapes: list[tuple[int, ...]],
) -> None:
    """Run the module and onnx's reference evaluator on the same random inputs; refuse the
    import if they disagree beyond the file dtype's rounding."""
    from onnx import TensorProto

    try:
        evaluator = reference_evaluator(proto)
    except Exception as error:  # the reference evaluator refuses graphs it cannot run
        raise UnsupportedModuleError(
            f"onnx's reference evaluator cannot run the graph: {error}"
        ) from error
    generator = np.random.default_rng(0)
    for _ in range(_REFERENCE_PROBES):
        feeds: dict[str, np.ndarray] = {}
        for value, shape in zip(inputs, shapes, strict=True):
            double = value.type.tensor_type.elem_type == TensorProto.DOUBLE
            batch = value.type.tensor_type.shape.dim[0].dim_value or 1
            array = generator.standard_normal((batch, *shape))
            feeds[value.name] = array.astype(np.float64 if double else np.float32)
        try:
            (expected,) = evaluator.run(None, feeds)
            with torch.no_grad():
                tensors = [torch.from_numpy(feeds[v.name]) for v in inputs]
                actual = module(*tensors).double().numpy()
        except Exception as error:  # both evaluators raise their own types on a broken graph
            raise InvalidArgumentError(
                f"the ONNX graph cannot run on its declared input shapes {list(shapes)}: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
        expected = np.asarray(expected, dtype=np.float64)
        scale = 1.0 + float(np.abs(expected).max(initial=0.0))
        if expected.shape != actual.shape or not np.allclose(
            actual, expected, rtol=1e-4, atol=1e-4 * scale
        ):
            raise UnsupportedModuleError(
                "the imported network does not compute what onnx's reference evaluator computes "
                f"for this graph (outputs {expected.shape} vs {actual.shape}); refusing the import"
            )
