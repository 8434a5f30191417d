"""Import ONNX models (the verification community's format) as ``torch.nn`` modules.

Supported: a chain of ``Gemm``, ``MatMul`` (+ ``Add`` of a constant bias), ``Conv`` (1-D/2-D,
symmetric padding), ``Relu``, ``LeakyRelu``, ``Tanh``, ``Sigmoid``, ``Elu``, ``Flatten``,
``Reshape`` to ``(batch, -1)``, ``Identity`` and ``Dropout``. Weights become float64 so that
folding ``Gemm``'s ``alpha``/``beta`` adds at most one rounding; with the usual ``alpha = beta =
1`` the imported network computes exactly the ONNX graph's function. Anything else raises
:class:`UnsupportedModuleError` naming the node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lipguard.errors import InvalidArgumentError, UnsupportedModuleError

_ACTIVATIONS = {"Relu": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid}


def load_onnx(path: str | Path) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Read an ONNX file; returns ``(model, per-sample input shape)``."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as error:  # onnx raises several types for unreadable files
        raise InvalidArgumentError(f"cannot read ONNX file {path}: {error}") from None
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise UnsupportedModuleError(f"{path}: expected one graph input, found {len(inputs)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    shape = tuple(int(d) for d in dims[1:])
    current = inputs[0].name
    layers: list[nn.Module] = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        data = [name for name in node.input if name and name not in constants]
        if data != [current]:
            raise UnsupportedModuleError(
                f"ONNX node {node.name or node.op_type}: only chains are supported "
                f"(it reads {list(node.input)})"
            )
        layers += _convert(node, attributes, constants, layers)
        current = node.output[0]
    return nn.Sequential(*layers).double().eval(), shape


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float64))


def _convert(node, attributes: dict, constants: dict, layers: list[nn.Module]) -> list[nn.Module]:
    op = node.op_type
    name = node.name or op
    if op == "Gemm":
        if attributes.get("transA", 0):
            raise UnsupportedModuleError(f"ONNX node {name}: Gemm with transA=1")
        weight = _tensor(constants[node.input[1]])
        weight = weight if attributes.get("transB", 0) else weight.T
        weight = weight * float(attributes.get("alpha", 1.0))
        bias = (
            _tensor(constants[node.input[2]]) * float(attributes.get("beta", 1.0))
            if len(node.input) > 2 and node.input[2]
            else None
        )
        return [_linear(weight, bias)]
    if op == "MatMul":
        return [_linear(_tensor(constants[node.input[1]]).T, None)]
    if op == "Add":
        constant = next(n for n in node.input if n in constants)
        previous = layers[-1] if layers else None
        if isinstance(previous, nn.Linear | nn.Conv1d | nn.Conv2d):
            bias = _tensor(constants[constant]).reshape(-1)
            with torch.no_grad():
                if previous.bias is None:
                    previous.bias = nn.Parameter(bias.to(previous.weight.dtype))
                else:
                    previous.bias += bias.to(previous.weight.dtype)
            return []
        raise UnsupportedModuleError(f"ONNX node {name}: Add only as the bias of Gemm/MatMul/Conv")
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
        if target is not None and len(target) == 2 and target[1] == -1:
            return [nn.Flatten()]
        raise UnsupportedModuleError(f"ONNX node {name}: Reshape other than to (batch, -1)")
    if op == "Conv":
        return [_conv(node, attributes, constants, name)]
    raise UnsupportedModuleError(f"ONNX node {name}: operator {op} is not supported")


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
