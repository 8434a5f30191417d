"""ONNX networks of the verification community's families: the VNN-COMP fixtures and generated
variants (deeper ERAN MNIST nets with Sub/Div normalisation and Sigmoid/Tanh/ReLU, ACAS Xu nets,
TensorFlow-style NHWC CNNs, ResNets with 1×1-conv shortcuts, batch norm and pooling) load, match
onnx's reference evaluator, and get sound upper bounds and witnessed lower bounds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lipguard.bounds import lipschitz_bound, lipschitz_lower_bound
from lipguard.cli import app
from lipguard.io import load_onnx
from lipguard.io.onnx_import import reference_evaluator
from tests.soundness.oracles import gradient_norms

FIXTURES = Path(__file__).parent / "fixtures" / "onnx"
RNG = np.random.default_rng(0)


class Net:
    """Builds an ONNX graph node by node."""

    def __init__(self, input_shape: list[int]) -> None:
        self.nodes, self.initializers, self.count = [], [], 0
        self.input_shape = input_shape
        self.last = "x"

    def constant(self, array: np.ndarray) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        self.count += 1
        out = f"v{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attributes))
        self.last = out
        return out

    def save(self, path: Path, opset: int = 13) -> Path:
        graph = helper.make_graph(
            self.nodes,
            "net",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.input_shape)],
            [helper.make_tensor_value_info(self.last, TensorProto.FLOAT, None)],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.save(model, str(path))
        return path


def dense(net: Net, x: str, fan_in: int, fan_out: int, activation: str | None) -> str:
    h = net.op(
        "MatMul", x, net.constant(RNG.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in))
    )
    h = net.op("Add", h, net.constant(RNG.standard_normal(fan_out) * 0.1))
    return net.op(activation, h) if activation else h


def eran_mnist(path: Path, depth: int, width: int, activation: str) -> Path:
    net = Net([1, 1, 7, 7])
    x = net.op("Sub", "x", net.constant(np.full((1, 1, 1, 1), 0.1307)))
    x = net.op("Div", x, net.constant(np.full((1, 1, 1, 1), 0.3081)))
    x = net.op("Reshape", x, _shape(net, [1, 49]))
    fan_in = 49
    for _ in range(depth):
        x = dense(net, x, fan_in, width, activation)
        fan_in = width
    dense(net, x, fan_in, 10, None)
    return net.save(path)


def _shape(net: Net, values: list[int]) -> str:
    net.count += 1
    name = f"s{net.count}"
    net.initializers.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name


def acas_xu(path: Path, depth: int, width: int) -> Path:
    net = Net([1, 1, 1, 5])
    x = net.op("Sub", "x", net.constant(RNG.standard_normal((1, 1, 1, 5))))
    x = net.op("Flatten", x, axis=1)
    fan_in = 5
    for _ in range(depth):
        x = dense(net, x, fan_in, width, "Relu")
        fan_in = width
    dense(net, x, fan_in, 5, None)
    return net.save(path)


def conv(net: Net, x: str, c_in: int, c_out: int, k: int, **attributes) -> str:
    weight = net.constant(RNG.standard_normal((c_out, c_in, k, k)) / math.sqrt(c_in * k * k))
    return net.op("Conv", x, weight, net.constant(RNG.standard_normal(c_out) * 0.1), **attributes)


def tf_cifar(path: Path, channels: tuple[int, int], size: int) -> Path:
    net = Net([1, size, size, 3])
    x = net.op("Transpose", "x", perm=[0, 3, 1, 2])
    x = net.op("Relu", conv(net, x, 3, channels[0], 4, strides=[2, 2]))
    x = net.op("Relu", conv(net, x, channels[0], channels[1], 4, strides=[2, 2]))
    spatial = ((size - 4) // 2 + 1 - 4) // 2 + 1
    x = net.op("Transpose", x, perm=[0, 2, 3, 1])
    x = net.op("Reshape", x, _shape(net, [-1, channels[1] * spatial * spatial]))
    x = dense(net, x, channels[1] * spatial * spatial, 16, "Relu")
    dense(net, x, 16, 10, None)
    return net.save(path)


def resnet(path: Path, blocks: int, channels: int, size: int, with_norm: bool) -> Path:
    net = Net([1, 3, size, size])
    x = net.op("Relu", conv(net, "x", 3, channels, 3, pads=[1, 1, 1, 1]))
    for _ in range(blocks):
        h = net.op("Relu", conv(net, x, channels, channels, 3, pads=[1, 1, 1, 1]))
        h = conv(net, h, channels, channels, 3, pads=[1, 1, 1, 1])
        if with_norm:
            h = net.op(
                "BatchNormalization",
                h,
                net.constant(RNG.uniform(0.5, 1.5, channels)),
                net.constant(RNG.standard_normal(channels) * 0.1),
                net.constant(RNG.standard_normal(channels) * 0.1),
                net.constant(RNG.uniform(0.5, 2.0, channels)),
            )
        shortcut = conv(net, x, channels, channels, 1)
        x = net.op("Relu", net.op("Add", h, shortcut))
    x = net.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
    x = net.op("AveragePool", x, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    x = net.op("Flatten", x, axis=1)
    features = channels * (size // 2) ** 2
    weight = net.constant(RNG.standard_normal((10, features)) / math.sqrt(features))
    net.op("Gemm", x, weight, net.constant(RNG.standard_normal(10) * 0.1), transB=1)
    return net.save(path)


VARIANTS = {
    "eran-relu-3x16": lambda p: eran_mnist(p, 3, 16, "Relu"),
    "eran-sigmoid-4x12": lambda p: eran_mnist(p, 4, 12, "Sigmoid"),
    "eran-tanh-2x20": lambda p: eran_mnist(p, 2, 20, "Tanh"),
    "acas-6x10": lambda p: acas_xu(p, 6, 10),
    "acas-3x20": lambda p: acas_xu(p, 3, 20),
    "tf-cifar-4-8": lambda p: tf_cifar(p, (4, 8), 14),
    "tf-cifar-6-6": lambda p: tf_cifar(p, (6, 6), 16),
    "resnet-1-4": lambda p: resnet(p, 1, 4, 6, False),
    "resnet-2-4-norm": lambda p: resnet(p, 2, 4, 6, True),
}


def reference_agrees(path: Path, model, shape, tolerance: float = 1e-5) -> None:
    proto = onnx.load(str(path))
    evaluator = reference_evaluator(proto)
    constants = {init.name for init in proto.graph.initializer}
    name = next(v.name for v in proto.graph.input if v.name not in constants)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, *shape)).astype(np.float32)
        (expected,) = evaluator.run(None, {name: x})
        with torch.no_grad():
            actual = model(torch.from_numpy(x)).double().numpy()
        scale = 1.0 + float(np.abs(expected).max())
        np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


def sampled_steepness(model, shape, count: int = 48) -> float:
    import copy

    replica = copy.deepcopy(model).double()
    points = torch.randn(count, *shape, dtype=torch.float64)
    return float(gradient_norms(replica, points, 2.0).max())


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_generated_family_members_load_match_and_are_bounded(tmp_path, name):
    path = VARIANTS[name](tmp_path / f"{name}.onnx")
    model, shape = load_onnx(path)
    reference_agrees(path, model, shape)
    observed = sampled_steepness(model, shape)
    upper = min(
        lipschitz_bound(model, 2, method, input_shape=shape).value
        for method in ("product", "compositional")
    )
    assert upper >= observed
    lower = lipschitz_lower_bound(model, torch.randn(2, *shape), restarts=1, steps=20)
    assert lower.rigorous
    assert lower.value <= upper


FIXTURE_FILES = (
    "ACASXU_run2a_1_1_batch_2000.onnx",
    "mnist-net_256x2.onnx",
    "cifar10_small.onnx",
    "resnet_2b.onnx",
)


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_vnncomp_fixtures_load_match_and_are_bounded(name):
    path = FIXTURES / name
    model, shape = load_onnx(path)
    reference_agrees(path, model, shape)
    upper = lipschitz_bound(model, 2, "product", input_shape=shape).value
    lower = lipschitz_lower_bound(model, torch.randn(2, *shape), restarts=0, steps=10)
    assert 0 < lower.value <= upper
    assert sampled_steepness(model, shape, 8) <= upper


def test_lipguard_certify_prints_the_sandwich_of_an_onnx_file():
    result = CliRunner().invoke(app, ["certify", str(FIXTURES / "mnist-net_256x2.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.output)
    assert data["upper"]["value"] >= data["lower"]["value"] > 0
    assert data["gap"] == pytest.approx(data["upper"]["value"] / data["lower"]["value"])
