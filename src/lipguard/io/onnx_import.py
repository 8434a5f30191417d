"""Import ONNX models (the verification community's format) as ``torch.nn`` modules.

Supported: a chain of ``Gemm``, ``MatMul`` (+ ``Add`` of a constant bias), ``Conv`` (1-D/2-D,
symmetric padding), ``Relu``, ``LeakyRelu``, ``Tanh``, ``Sigmoid``, ``Elu``, ``Flatten``,
``Reshape`` to ``(batch, -1)``, ``Identity`` and ``Dropout``, from the graph's one input to its
one declared output. Weights become float64 so that folding ``Gemm``'s ``alpha``/``beta`` adds at
most one rounding; with the usual ``alpha = beta = 1`` the imported network computes exactly the
ONNX graph's function.

The graph's semantics are followed, not guessed:

- only the nodes the declared output depends on are imported (nodes after it, or on dead
  branches, are ignored), and the chain must end at that output;
- a bias ``Add`` must broadcast to the layer's output without changing its shape, and a
  convolution's bias must be the same at every position of a channel;
- the data operand of ``MatMul``/``Gemm`` must be the first one (``x·W``), the weight a constant
  matrix;
- nodes of any domain other than the standard one (``""``/``ai.onnx``) are refused, whatever
  their name.

Anything else raises :class:`UnsupportedModuleError` naming the node. After import, the network is
run on random inputs next to onnx's own reference evaluator
(``onnx.reference.ReferenceEvaluator``); outputs that differ raise
:class:`UnsupportedModuleError` too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lipguard.errors import InvalidArgumentError, UnsupportedModuleError

_ACTIVATIONS = {"Relu": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid}
_STANDARD_DOMAINS = ("", "ai.onnx")
#: random inputs on which the import is compared with onnx's reference evaluator
_REFERENCE_PROBES = 4


def load_onnx(path: str | Path) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Read an ONNX file; returns ``(model, per-sample input shape)``."""
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(path))
    except Exception as error:  # onnx raises several types for unreadable files
        raise InvalidArgumentError(f"cannot read ONNX file {path}: {error}") from None
    graph = proto.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        _check_domain(node)
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant_value(node)
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise UnsupportedModuleError(f"{path}: expected one graph input, found {len(inputs)}")
    if len(graph.output) != 1:
        raise UnsupportedModuleError(
            f"{path}: expected one graph output, found {len(graph.output)}"
        )
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    shape = tuple(int(d) for d in dims[1:])
    if not shape or any(size < 1 for size in shape):
        raise UnsupportedModuleError(
            f"{path}: the input needs a fixed per-sample shape, got {dims}"
        )
    output = graph.output[0].name
    current = inputs[0].name
    layers: list[nn.Module] = []
    for node in _needed_nodes(graph.node, output):
        if node.op_type == "Constant":
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        data = [name for name in node.input if name and name not in constants]
        if data != [current]:
            raise UnsupportedModuleError(
                f"ONNX node {node.name or node.op_type}: only chains are supported "
                f"(it reads {list(node.input)})"
            )
        layers += _convert(node, attributes, constants, layers, shape)
        current = node.output[0]
    if current != output:
        raise UnsupportedModuleError(
            f"{path}: the declared output {output!r} is not the end of the chain from the input"
        )
    model = nn.Sequential(*layers).double().eval()
    _compare_with_reference(proto, model, inputs[0], shape)
    return model, shape


def _check_domain(node) -> None:
    if node.domain not in _STANDARD_DOMAINS:
        raise UnsupportedModuleError(
            f"ONNX node {node.name or node.op_type}: operator {node.op_type} of domain "
            f"{node.domain!r} is not a standard ONNX operator"
        )


def _constant_value(node) -> np.ndarray:
    import onnx

    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if "value" in attributes:
        return onnx.numpy_helper.to_array(attributes["value"])
    for key in ("value_float", "value_int"):
        if key in attributes:
            return np.asarray(attributes[key])
    for key in ("value_floats", "value_ints"):
        if key in attributes:
            return np.asarray(list(attributes[key]))
    raise UnsupportedModuleError(
        f"ONNX Constant {node.name!r}: unsupported value {sorted(attributes)}"
    )


def _needed_nodes(nodes, output: str) -> list:
    """The nodes the graph's output depends on, in the file's (topological) order."""
    producers = {name: node for node in nodes for name in node.output}
    needed: set[int] = set()
    pending = [output]
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        pending += [name for name in node.input if name]
    return [node for node in nodes if id(node) in needed]


def _output_shape(layers: list[nn.Module], shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        probe = torch.zeros(1, *shape, dtype=torch.float64)
        return tuple(nn.Sequential(*layers).double()(probe).shape[1:])


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float64))


def _per_sample_bias(constant: np.ndarray, out_shape: tuple[int, ...], name: str) -> np.ndarray:
    """``constant`` broadcast against outputs of shape ``(N, *out_shape)``, per sample; refuses a
    constant that would change the output's shape."""
    full = (1, *out_shape)
    try:
        broadcast = np.broadcast_shapes(np.shape(constant), full)
    except ValueError:
        broadcast = None
    if broadcast != full:
        raise UnsupportedModuleError(
            f"ONNX node {name}: adding a constant of shape {tuple(np.shape(constant))} to outputs "
            f"of shape (N, {', '.join(map(str, out_shape))}) broadcasts them to {broadcast}"
        )
    return np.broadcast_to(np.asarray(constant, dtype=np.float64), full)[0]


def _convert(
    node, attributes: dict, constants: dict, layers: list[nn.Module], shape: tuple[int, ...]
) -> list[nn.Module]:
    op = node.op_type
    name = node.name or op
    if op == "Gemm":
        if attributes.get("transA", 0):
            raise UnsupportedModuleError(f"ONNX node {name}: Gemm with transA=1")
        weight = _constant_matrix(constants, node, name)
        weight = weight if attributes.get("transB", 0) else weight.T
        weight = weight * float(attributes.get("alpha", 1.0))
        layer = _linear(weight, None)
        if len(node.input) > 2 and node.input[2]:
            bias = _per_sample_bias(constants[node.input[2]], (weight.shape[0],), name)
            with torch.no_grad():
                layer.bias = nn.Parameter(_tensor(bias) * float(attributes.get("beta", 1.0)))
        return [layer]
    if op == "MatMul":
        return [_linear(_constant_matrix(constants, node, name).T, None)]
    if op == "Add":
        constant = [n for n in node.input if n in constants]
        previous = layers[-1] if layers else None
        if len(constant) != 1 or not isinstance(previous, nn.Linear | nn.Conv1d | nn.Conv2d):
            raise UnsupportedModuleError(
                f"ONNX node {name}: Add only as the bias of Gemm/MatMul/Conv"
            )
        bias = _per_sample_bias(constants[constant[0]], _output_shape(layers, shape), name)
        if isinstance(previous, nn.Conv1d | nn.Conv2d):
            per_channel = bias.reshape(bias.shape[0], -1)
            if not (per_channel == per_channel[:, :1]).all():
                raise UnsupportedModuleError(
                    f"ONNX node {name}: a bias that differs between positions of a channel"
                )
            bias = per_channel[:, 0]
        with torch.no_grad():
            addition = _tensor(bias).to(previous.weight.dtype)
            if previous.bias is None:
                previous.bias = nn.Parameter(addition)
            else:
                previous.bias += addition
        return []
    if op in _ACTIVATIONS:
        return [_ACTIVATIONS[op]()]
    if op == "LeakyRelu":
        return [nn.LeakyReLU(float(attributes.get("alpha", 0.01)))]
    if op == "Elu":
        return [nn.ELU(float(attributes.get("alpha", 1.0)))]
    if op in ("Identity", "Dropout"):
        return []
    if op == "Flatten":
        if attributes.get("axis", 1) != 1:
            raise UnsupportedModuleError(f"ONNX node {name}: Flatten with axis != 1")
        return [nn.Flatten()]
    if op == "Reshape":
        target = constants.get(node.input[1])
        if target is not None and len(target) == 2 and target[1] == -1 and target[0] in (0, 1, -1):
            return [nn.Flatten()]
        raise UnsupportedModuleError(f"ONNX node {name}: Reshape other than to (batch, -1)")
    if op == "Conv":
        return [_conv(node, attributes, constants, name)]
    raise UnsupportedModuleError(f"ONNX node {name}: operator {op} is not supported")


def _constant_matrix(constants: dict, node, name: str) -> torch.Tensor:
    """The constant second operand of ``MatMul``/``Gemm`` (``x·W``), as a float64 matrix."""
    if node.input[0] in constants or node.input[1] not in constants:
        raise UnsupportedModuleError(
            f"ONNX node {name}: {node.op_type} must multiply the data (first operand) by a "
            "constant matrix (second operand)"
        )
    matrix = _tensor(constants[node.input[1]])
    if matrix.dim() != 2:
        raise UnsupportedModuleError(
            f"ONNX node {name}: {node.op_type} with a {matrix.dim()}-D constant operand"
        )
    return matrix


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.reshape(-1))
    return layer


def _conv(node, attributes: dict, constants: dict, name: str) -> nn.Module:
    weight = _tensor(constants[node.input[1]])
    spatial = weight.dim() - 2
    if spatial not in (1, 2):
        raise UnsupportedModuleError(f"ONNX node {name}: {spatial}-D convolution")
    pads = list(attributes.get("pads", [0] * 2 * spatial))
    if pads[:spatial] != pads[spatial:]:
        raise UnsupportedModuleError(f"ONNX node {name}: asymmetric padding {pads}")
    if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedModuleError(f"ONNX node {name}: auto_pad is not supported")
    groups = int(attributes.get("group", 1))
    cls = nn.Conv1d if spatial == 1 else nn.Conv2d
    layer = cls(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tuple(attributes.get("strides", [1] * spatial)),
        padding=tuple(pads[:spatial]),
        dilation=tuple(attributes.get("dilations", [1] * spatial)),
        groups=groups,
        bias=len(node.input) > 2 and bool(node.input[2]),
        dtype=torch.float64,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.copy_(_tensor(constants[node.input[2]]))
    return layer


def _compare_with_reference(proto, model: nn.Module, graph_input, shape: tuple[int, ...]) -> None:
    """Run ``model`` and onnx's reference evaluator on the same random inputs; refuse the import
    if they disagree beyond float32 rounding."""
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(proto)
    double = graph_input.type.tensor_type.elem_type == TensorProto.DOUBLE
    batch = graph_input.type.tensor_type.shape.dim[0].dim_value or 1
    generator = np.random.default_rng(0)
    for _ in range(_REFERENCE_PROBES):
        x = generator.standard_normal((batch, *shape)).astype(np.float64 if double else np.float32)
        (expected,) = evaluator.run(None, {graph_input.name: x})
        with torch.no_grad():
            actual = model(torch.from_numpy(x.astype(np.float64))).numpy()
        expected = np.asarray(expected, dtype=np.float64)
        scale = 1.0 + float(np.abs(expected).max(initial=0.0))
        if expected.shape != actual.shape or not np.allclose(
            actual, expected, rtol=1e-4, atol=1e-4 * scale
        ):
            raise UnsupportedModuleError(
                "the imported network does not compute what onnx's reference evaluator computes "
                f"for this graph (outputs {expected.shape} vs {actual.shape}); refusing the import"
            )
