"""Models as data: lipguard checkpoints (safetensors + JSON) and ONNX import."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lipguard.errors import InvalidArgumentError, UnsupportedModuleError
from lipguard.io import load_checkpoint, load_onnx, save_checkpoint
from lipguard.nn import (
    GroupSort,
    LipschitzLinearModel,
    LipschitzMLP,
    MaxMin,
    OrthogonalLinear,
    Residual,
    SpectralLinear,
    SVDLinear,
)


def every_supported_module() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.ELU(0.5),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(4 * 6, 8),
        nn.LeakyReLU(0.1),
        SpectralLinear(8, 8, lipschitz=2.0),
        MaxMin(),
        OrthogonalLinear(8, 8),
        GroupSort(4),
        SVDLinear(8, 6),
        nn.GELU(),
        nn.SiLU(),
        Residual(nn.Sequential(nn.Linear(6, 6), nn.Tanh())),
        nn.Sigmoid(),
        nn.Identity(),
        LipschitzMLP(6, 4, (8,), lipschitz=1.5),
        nn.ReLU(),
        LipschitzLinearModel(4, 1, norm="inf"),
    )


def test_checkpoint_round_trip_for_every_module(tmp_path):
    model = every_supported_module().eval()
    save_checkpoint(model, tmp_path / "net", input_shape=(2, 6))
    loaded, shape = load_checkpoint(tmp_path / "net.safetensors")
    assert shape == (2, 6)
    assert isinstance(loaded[16], LipschitzMLP)
    x = torch.randn(5, 2, 6)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_checkpoints_are_data_not_code(tmp_path):
    save_checkpoint(nn.Sequential(nn.Linear(2, 1)), tmp_path / "net")
    spec = (tmp_path / "net.json").read_text().replace('"Linear"', '"os.system"')
    (tmp_path / "net.json").write_text(spec)
    with pytest.raises(InvalidArgumentError, match="unknown module"):
        load_checkpoint(tmp_path / "net")


def test_unsupported_modules_cannot_be_saved(tmp_path):
    with pytest.raises(UnsupportedModuleError, match="Softplus"):
        save_checkpoint(nn.Sequential(nn.Softplus()), tmp_path / "net")


def _onnx_model(nodes, initializers, input_dims) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *input_dims])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    return helper.make_model(graph)


def test_onnx_chain_matches_a_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    conv_bias = rng.standard_normal(3).astype(np.float32)
    w1 = rng.standard_normal((3 * 4 * 4, 5)).astype(np.float32)  # MatMul: (in, out)
    b1 = rng.standard_normal(5).astype(np.float32)
    w2 = rng.standard_normal((2, 5)).astype(np.float32)  # Gemm transB=1: (out, in)
    nodes = [
        helper.make_node("Conv", ["x", "K", "Kb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "W1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["a"]),
        helper.make_node("LeakyRelu", ["a"], ["l"], alpha=0.2),
        helper.make_node("Gemm", ["l", "W2"], ["y"], transB=1),
    ]
    initializers = {
        "K": kernel,
        "Kb": conv_bias,
        "shape": np.array([1, -1], dtype=np.int64),
        "W1": w1,
        "b1": b1,
        "W2": w2,
    }
    path = tmp_path / "net.onnx"
    onnx.save(_onnx_model(nodes, initializers, [1, 4, 4]), path)
    model, shape = load_onnx(path)
    assert shape == (1, 4, 4)
    x = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
    conv = torch.nn.functional.conv2d(
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(kernel, dtype=torch.float64),
        torch.tensor(conv_bias, dtype=torch.float64),
        padding=1,
    )
    hidden = np.maximum(conv.numpy(), 0).reshape(3, -1) @ w1.astype(np.float64) + b1
    expected = np.where(hidden > 0, hidden, 0.2 * hidden) @ w2.T.astype(np.float64)
    with torch.no_grad():
        assert np.allclose(model(torch.tensor(x)).numpy(), expected, atol=1e-4)


def test_unsupported_onnx_operator_is_named(tmp_path):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="head")]
    path = tmp_path / "net.onnx"
    onnx.save(_onnx_model(nodes, {}, [3]), path)
    with pytest.raises(UnsupportedModuleError, match=r"head.*Softmax"):
        load_onnx(path)
