"""Regression tests for the thirteen soundness findings of issue 14, one (or a few) each.

Each test reproduces the reported counterexample and asserts that lipguard now either refuses
the model by name or returns a bound that the true function respects.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from typer.testing import CliRunner

from lipguard.bounds import (
    Certificate,
    CertificateError,
    block_lipschitz_bounds,
    certify,
    lipschitz_bound,
    lipschitz_lower_bound,
    local_lipschitz_bound,
)
from lipguard.cli import app
from lipguard.errors import InvalidArgumentError, UnsupportedModuleError
from lipguard.io import load_onnx, save_checkpoint
from lipguard.nn import (
    LipschitzLinearModel,
    LipschitzMLP,
    OrthogonalLinear,
    Residual,
    SpectralLinear,
    SVDLinear,
    vanilla,
)
from lipguard.rl import PessimisticReward
from lipguard.rl.frozen import FrozenReward
from tests.soundness.oracles import gradient_norms, largest_slope

runner = CliRunner()


# 1. Local bounds, non-monotone activations ------------------------------------------------------


def leaky_negative_model() -> nn.Sequential:
    """x → LeakyReLU(-0.5) → Linear(w=-1, b=0.25) → ReLU → Linear(1): slope 1 near x = 0+."""
    model = nn.Sequential(nn.LeakyReLU(-0.5), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        model[1].weight.fill_(-1.0)
        model[1].bias.fill_(0.25)
        model[3].weight.fill_(1.0)
        model[3].bias.zero_()
    return model.double().eval()


def test_finding_01_local_bound_with_a_negative_leaky_slope():
    model = leaky_negative_model()
    bound = local_lipschitz_bound(model, torch.zeros(1, 1, dtype=torch.float64), 1.0)[0]
    assert bound.value >= 1.0
    points = torch.linspace(-1, 1, 2001, dtype=torch.float64)[:, None]
    assert bound.value >= gradient_norms(model, points, 2.0).max()


def test_finding_01_pessimistic_reward_with_a_negative_leaky_slope():
    model = nn.Sequential(nn.LeakyReLU(-0.5), nn.Linear(1, 1)).double().eval()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.fill_(10.0)
    pessimistic = PessimisticReward(model, eps=1.0, local=True, input_shape=(1,))
    value = float(pessimistic(torch.zeros(1, 1, dtype=torch.float64))[0])
    assert value <= 10.0  # min over [-1, 1] of 10 + leaky(x) is 10 (at x = 0)


# 2. Local bounds, overflow ----------------------------------------------------------------------


def deep_model(activation, scale: float) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 8), activation(), nn.Linear(8, 8), activation(), nn.Linear(8, 1)
    ).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model.eval()


def test_finding_02_local_bound_at_a_radius_that_overflows():
    model = deep_model(nn.ReLU, 100.0)  # the case: bound 4.7e-322 at radius 1e307
    center = torch.zeros(1, 3, dtype=torch.float64)
    points = torch.randn(256, 3, dtype=torch.float64) * 10
    steepest = float(gradient_norms(model, points, 2.0).max())
    for radius in (1e300, 1e307, 1.7e308):
        bound = local_lipschitz_bound(model, center, radius)[0]
        assert math.isfinite(bound.value)
        assert bound.value >= steepest * (1 - 1e-12), radius


@pytest.mark.parametrize(
    "activation",
    [nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, lambda: nn.LeakyReLU(-0.5)],
)
def test_finding_02_unbounded_intervals_through_every_activation(activation):
    model = deep_model(activation, 100.0)
    points = torch.randn(256, 3, dtype=torch.float64) * 5
    steepest = float(gradient_norms(model, points, 2.0).max())
    for norm in (2.0, math.inf):
        bound = local_lipschitz_bound(model, torch.zeros(1, 3, dtype=torch.float64), 1e307, norm)
        steep = steepest if norm == 2.0 else float(gradient_norms(model, points, norm).max())
        assert math.isfinite(bound[0].value)
        assert bound[0].value >= steep * (1 - 1e-9)


# 3. In-place activations --------------------------------------------------------------------------


def inplace_residual() -> nn.Sequential:
    torch.manual_seed(0)
    body = nn.Sequential(nn.LeakyReLU(5.0, inplace=True), nn.Linear(2, 2))
    with torch.no_grad():
        body[1].weight.mul_(1e-3)
    return nn.Sequential(nn.Linear(2, 2), Residual(body)).double().eval()


def test_finding_03_inplace_activation_at_the_start_of_a_residual_body_is_refused():
    model = inplace_residual()
    with pytest.raises(UnsupportedModuleError, match="in-place"):
        lipschitz_bound(model, method="product")


def test_finding_03_inplace_behind_views_is_refused_too():
    body = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Dropout(0.0), nn.ReLU(inplace=True))
    model = nn.Sequential(nn.Linear(2, 2), Residual(body)).eval()
    with pytest.raises(UnsupportedModuleError, match="in-place"):
        lipschitz_bound(model, method="product")


def test_finding_03_inplace_after_a_fresh_tensor_is_accepted_and_sound():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(5.0, inplace=True), nn.Linear(2, 2))
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=True), Residual(body)).double().eval()
    bound = lipschitz_bound(model, method="product")
    assert bound.value >= largest_slope(model, torch.randn(64, 2, dtype=torch.float64))


def test_finding_03_checkpoint_cannot_switch_inplace_on(tmp_path):
    torch.manual_seed(0)
    body = nn.Sequential(nn.LeakyReLU(5.0), nn.Linear(2, 2))
    model = nn.Sequential(nn.Linear(2, 2), Residual(body)).eval()
    path = save_checkpoint(model, tmp_path / "model", input_shape=(2,))
    data = json.loads(path.read_text())
    data["model"]["children"][1]["body"]["children"][0]["inplace"] = True
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["certify", str(path), "--json"])
    assert result.exit_code == 2, result.output
    assert "inplace" in result.output
    data["model"]["children"][1]["body"]["children"][0].pop("inplace")
    data["model"]["children"][1]["body"]["children"][0]["evil"] = 1
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["certify", str(path), "--json"])
    assert result.exit_code == 2, result.output
    assert "evil" in result.output


# 4. Forward overrides and global hooks ------------------------------------------------------------


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).eval()


def test_finding_04_instance_forward_override_is_refused():
    model = small_model()
    original = model[2].forward
    model[2].forward = lambda x: 200.0 * original(x)
    with pytest.raises(UnsupportedModuleError, match="forward"):
        lipschitz_bound(model)


def test_finding_04_instance_call_impl_override_is_refused():
    model = small_model()
    model[0]._call_impl = lambda x: 200.0 * F.linear(x, model[0].weight, model[0].bias)
    with pytest.raises(UnsupportedModuleError, match="_call_impl"):
        lipschitz_bound(model)


def test_finding_04_class_forward_patch_is_refused(monkeypatch):
    model = small_model()
    original = nn.Tanh.forward
    monkeypatch.setattr(nn.Tanh, "forward", lambda self, x: 100 * original(self, x))
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    with pytest.raises(UnsupportedModuleError, match="forward"):
        lipschitz_bound(model)


def test_finding_04_global_forward_hook_is_refused():
    model = small_model()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o * 1000.0)
    try:
        with pytest.raises(UnsupportedModuleError, match="global forward hook"):
            lipschitz_bound(model)
    finally:
        handle.remove()
    assert lipschitz_bound(model).value > 0  # and works again once the hook is gone
    handle = nn.modules.module.register_module_forward_pre_hook(lambda m, i: (i[0] * 1000.0,))
    try:
        with pytest.raises(UnsupportedModuleError, match="global forward"):
            lipschitz_bound(model)
    finally:
        handle.remove()


def test_finding_04_compiled_call_is_refused():
    model = small_model()
    model[0]._compiled_call_impl = lambda x: 200.0 * x.sum(-1, keepdim=True).repeat(1, 4)
    with pytest.raises(UnsupportedModuleError, match="compile"):
        lipschitz_bound(model)


# 5. Stale caches ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_type", [OrthogonalLinear, SVDLinear, SpectralLinear])
def test_finding_05_changing_lipschitz_changes_the_weight(layer_type):
    torch.manual_seed(0)
    layer = layer_type(6, 6, lipschitz=1.0)
    with torch.no_grad():
        layer(torch.randn(3, 6))  # fill the caches
        if isinstance(layer, SVDLinear):
            layer.singular_values.fill_(10.0)
        layer.lipschitz = 4.0
        x = torch.randn(64, 6, dtype=torch.float64)
        slope = largest_slope(layer.double(), x)
    bound = lipschitz_bound(layer, input_shape=(6,)).value
    assert slope > 3.9
    assert bound >= slope * (1 - 1e-9)  # the oracle's float64 ratios carry ~1e-12 of rounding
    exported = vanilla(layer)
    assert torch.equal(exported.weight, layer.effective_weight())
    with pytest.raises(InvalidArgumentError):
        layer.lipschitz = -1.0
    with pytest.raises(InvalidArgumentError):
        layer.lipschitz = math.nan


# 6. ONNX semantics --------------------------------------------------------------------------------


def onnx_file(path, nodes, initializers, inputs, outputs, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_finding_06_nodes_after_the_declared_output_are_not_folded_in(tmp_path):
    big = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 256, "big")
    tiny = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 1e-3, "tiny")
    path = onnx_file(
        tmp_path / "after.onnx",
        [
            helper.make_node("MatMul", ["x", "big"], ["y"]),
            helper.make_node("MatMul", ["y", "tiny"], ["z"]),
        ],
        [big, tiny],
        [value("x", [1, 4])],
        [value("y", [1, 4])],
    )
    model, shape = load_onnx(path)
    assert lipschitz_bound(model, input_shape=shape).value >= 256.0


def test_finding_06_broadcasting_add_is_refused(tmp_path):
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    bias = numpy_helper.from_array(np.ones((100, 1, 4), dtype=np.float32), "b")
    path = onnx_file(
        tmp_path / "broadcast.onnx",
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        [weight, bias],
        [value("x", [1, 4])],
        [value("y", [100, 1, 4])],
    )
    model, shape = load_onnx(path)  # the import computes ONNX's function (outputs (100, N, 4))
    with pytest.raises(UnsupportedModuleError, match="broadcast"):
        lipschitz_bound(model, input_shape=shape)


def test_finding_06_per_channel_and_per_feature_biases_still_import(tmp_path):
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 2, "w")
    bias = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "b")
    path = onnx_file(
        tmp_path / "bias.onnx",
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["b", "h"], ["y"])],
        [weight, bias],
        [value("x", [1, 4])],
        [value("y", [1, 4])],
    )
    model, _ = load_onnx(path)
    x = torch.randn(3, 4)
    assert torch.allclose(model(x), 2 * x + torch.arange(4.0))


def test_finding_06_custom_domain_nodes_are_refused(tmp_path):
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"], domain="com.evil"),
    ]
    graph = helper.make_graph(nodes, "g", [value("x", [1, 4])], [value("y", [1, 4])], [weight])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.evil", 1)],
    )
    path = tmp_path / "domain.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedModuleError, match=r"com\.evil"):
        load_onnx(path)


def test_finding_06_matmul_with_the_constant_on_the_left_is_not_transposed_silently(tmp_path):
    weight = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    path = onnx_file(
        tmp_path / "left.onnx",
        [helper.make_node("MatMul", ["w", "x"], ["y"])],
        [weight],
        [value("x", [4, 1])],
        [value("y", [4, 1])],
    )
    model, shape = load_onnx(path)  # W @ x multiplies across the batch: not per sample
    with pytest.raises(UnsupportedModuleError, match="OnnxModule"):
        lipschitz_bound(model, input_shape=shape)


# 7. Block bounds with masks -----------------------------------------------------------------------


def test_finding_07_boolean_masks_are_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).double().eval()
    with torch.no_grad():
        model[0].weight[:, 4:6] *= 100
    mask = torch.zeros(8, dtype=torch.bool)
    mask[4:6] = True
    by_mask = block_lipschitz_bounds(model, {"m": mask, "l": mask.tolist()})
    by_slice = block_lipschitz_bounds(model, {"s": slice(4, 6)})
    # the same block (the multiplier search is time-budgeted: equal up to its convergence)
    assert by_mask["m"].value == pytest.approx(by_slice["s"].value, rel=1e-3)
    assert by_mask["l"].value == pytest.approx(by_slice["s"].value, rel=1e-3)
    with pytest.raises(InvalidArgumentError):
        block_lipschitz_bounds(model, {"bad": torch.zeros(7, dtype=torch.bool)})
    with pytest.raises(InvalidArgumentError):
        block_lipschitz_bounds(model, {"dup": [4, 4]})
    with pytest.raises(InvalidArgumentError):
        block_lipschitz_bounds(model, {"float": [4.0, 5.0]})


# 8. Certificates ----------------------------------------------------------------------------------


def certified_file(tmp_path, model=None):
    torch.manual_seed(0)
    model = (
        model
        if model is not None
        else nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    )
    certificate = certify(model, 2, "lipsdp")
    path = certificate.save(tmp_path / "cert.json")
    return model, path


def edited(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_finding_08_relabelled_norm_does_not_verify(tmp_path):
    model, path = certified_file(tmp_path)
    assert Certificate.load(path).verify(model).ok
    edited(path, lambda d: d["upper"].update(norm="inf"))
    with pytest.raises(CertificateError):
        Certificate.load(path)
    # even with the claims hash recomputed by the forger, verify re-proves in the stated norm
    data = json.loads(path.read_text())
    from lipguard.bounds.certificate import claims_sha256

    data["claims_sha256"] = claims_sha256(data)
    path.write_text(json.dumps(data))
    result = Certificate.load(path).verify(model)
    assert not result.ok
    assert "norm" in str(result.checks[-1]) or "ℓ" in str(result.checks[-1])


def forge(path, change):
    from lipguard.bounds.certificate import claims_sha256

    data = json.loads(path.read_text())
    change(data)
    data["claims_sha256"] = claims_sha256(data)
    path.write_text(json.dumps(data))
    return Certificate.load(path)


def test_finding_08_lower_above_upper_does_not_verify(tmp_path):
    model, path = certified_file(tmp_path)
    certificate = forge(path, lambda d: d["lower"].update(value=d["upper"]["value"] * 2))
    assert not certificate.verify(model).ok


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["upper"].update(method="product"),
        lambda d: d["upper"].update(scope="ball(inputs[0], radius=1, ℓ2)"),
        lambda d: d["upper"].update(sound=False),
        lambda d: d.update(dtype="float64"),
        lambda d: d["upper"].update(method="no-such-method"),
        lambda d: d["upper"].update(value=1e-3),
    ],
)
def test_finding_08_every_stated_field_is_rechecked(tmp_path, change):
    model, path = certified_file(tmp_path)
    assert not forge(path, change).verify(model).ok


def test_finding_08_architecture_hash_is_exact():
    from lipguard.bounds import architecture_sha256

    def model(slope, inplace=False):
        return nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(slope, inplace=inplace))

    assert architecture_sha256(model(0.1), (2,)) != architecture_sha256(model(0.1000001), (2,))
    assert architecture_sha256(model(0.1), (2,)) != architecture_sha256(model(0.1, True), (2,))


# 9. LipschitzMLP.certified_lipschitz --------------------------------------------------------------


def test_finding_09_certified_lipschitz_proves_the_whole_module():
    torch.manual_seed(0)
    mlp = LipschitzMLP(4, 1, hidden=(8,), lipschitz=1.0, activation="relu")
    mlp[1] = nn.LeakyReLU(50.0)
    tail = nn.Linear(1, 1)
    with torch.no_grad():
        tail.weight.fill_(100.0)
    mlp.append(tail)
    points = torch.randn(512, 4) * 3
    steepest = float(gradient_norms(mlp, points, 2.0).max())
    assert steepest > 100
    assert mlp.certified_lipschitz().value >= steepest


def test_finding_09_unknown_children_are_refused():
    mlp = LipschitzMLP(4, 1, hidden=(8,), lipschitz=1.0, activation="relu")
    mlp[1] = nn.Softplus()
    with pytest.raises(UnsupportedModuleError, match="Softplus"):
        mlp.certified_lipschitz()


# 10. float16 subnormals ---------------------------------------------------------------------------


def true_sigma(weight: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(weight.detach().double(), 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lipschitz", [6.1e-6, 1e-7, 3e-5])
def test_finding_10_tiny_targets_hold_in_narrow_dtypes(dtype, lipschitz):
    torch.manual_seed(0)
    for layer_type in (SpectralLinear, OrthogonalLinear, SVDLinear):
        layer = layer_type(64, 64, lipschitz=lipschitz, dtype=dtype)
        try:
            weight = layer.effective_weight()
        except InvalidArgumentError:
            continue  # refusing a target below the dtype's resolution is fine
        assert true_sigma(weight) <= lipschitz, layer_type
    for norm in (1, 2, "inf"):
        model = LipschitzLinearModel(64, 4, lipschitz=lipschitz, norm=norm, dtype=dtype)
        try:
            weight = model.effective_weight().double()
        except InvalidArgumentError:
            continue
        dual = {1: math.inf, 2: 2, "inf": 1}[norm]
        assert float(torch.linalg.vector_norm(weight.detach(), ord=dual, dim=1).max()) <= lipschitz


def test_finding_10_too_small_targets_are_refused_not_broken():
    layer = SpectralLinear(64, 64, lipschitz=1e-9, dtype=torch.float16)
    with pytest.raises(InvalidArgumentError, match="float16"):
        layer.effective_weight()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_finding_10_forward_applies_exactly_the_effective_weight(dtype):
    torch.manual_seed(0)
    layer = SpectralLinear(16, 8, lipschitz=2.0, dtype=dtype)
    x = torch.randn(5, 16, dtype=dtype)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            expected = F.linear(x, layer.effective_weight(), layer.bias)
            assert torch.equal(layer(x), expected)


# 11. Lower bound on a different function ----------------------------------------------------------


def test_finding_11_lower_bound_is_about_the_same_function():
    torch.manual_seed(0)
    layer = SpectralLinear(256, 1).eval()
    certificate = certify(layer, 2, "product")
    assert certificate.lower is not None
    assert certificate.lower.value <= certificate.upper.value


def test_finding_11_pessimistic_reward_is_exact_for_a_linear_reward():
    from fractions import Fraction

    torch.manual_seed(0)
    layer = SpectralLinear(16, 1, lipschitz=3.0).eval()
    x = torch.randn(4, 16)
    pessimistic = PessimisticReward(layer, eps=0.25, local=False)(x)
    weight = [Fraction(float(w)) for w in layer.effective_weight().detach().double().reshape(-1)]
    bias = Fraction(float(layer.bias.detach().double()))
    norm_squared = sum(w * w for w in weight)
    for row, claimed in zip(x.double(), pessimistic, strict=True):
        value = sum(w * Fraction(float(v)) for w, v in zip(weight, row, strict=True)) + bias
        # min over the ball = f(x) - eps·||w||; claimed <= it  ⇔  (f(x) - claimed)² >= eps²||w||²
        gap = value - Fraction(float(claimed))
        assert gap >= 0
        assert gap * gap >= Fraction(1, 16) * norm_squared


# 12. The monitor and floating-point execution -----------------------------------------------------


def test_finding_12_monitor_does_not_flag_the_models_own_rounding():
    from lipguard.monitor import LipschitzMonitor

    torch.manual_seed(0)
    model = LipschitzMLP(8, 1, hidden=(256, 256), lipschitz=1.7).eval()
    base = torch.randn(200, 8)
    nudged = base.clone()
    nudged[:, 0] = torch.nextafter(base[:, 0], torch.tensor(math.inf))  # one ulp apart
    states = torch.cat([base, nudged])
    with torch.no_grad():
        rewards = model(states)[:, 0]
    bound = model.certified_lipschitz().value
    explicit = LipschitzMonitor(bound, tolerance=0.0, drift=False).observe(states, rewards)
    assert explicit.violations  # rounding alone breaks |Δr| <= L·d at 1e-7 ...
    monitor = LipschitzMonitor(bound, model=model, drift=False)
    assert monitor.observe(states, rewards).violations == []  # ... and the default allows for it
    # a real violation is still found
    faulty = rewards.clone()
    faulty[0] += 0.5
    assert LipschitzMonitor(bound, model=model, drift=False).observe(states, faulty).violations


# 13. Stale rewards --------------------------------------------------------------------------------


def test_finding_13_frozen_reward_sees_data_edits_and_lipschitz_changes():
    torch.manual_seed(0)
    model = LipschitzMLP(4, 1, hidden=(8,), lipschitz=1.0)
    frozen = FrozenReward(model)
    features = np.random.default_rng(0).standard_normal((5, 4))
    with torch.no_grad():
        model[0].weight.data.mul_(-3.0)
        expected = model(torch.tensor(features, dtype=torch.float32))[:, 0].double().numpy()
    np.testing.assert_allclose(frozen.numpy(features), expected, rtol=1e-5, atol=1e-6)
    model[2].lipschitz = 0.25
    with torch.no_grad():
        expected = model(torch.tensor(features, dtype=torch.float32))[:, 0].double().numpy()
    np.testing.assert_allclose(frozen.numpy(features), expected, rtol=1e-5, atol=1e-6)


# Backstops: what no listed check names is still caught -----------------------------------------


def test_a_patched_tensor_method_is_caught_by_the_forward_check(monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1)).eval()
    original = torch.Tensor.flatten
    monkeypatch.setattr(torch.Tensor, "flatten", lambda self, *a: 50.0 * original(self, *a))
    with pytest.raises(UnsupportedModuleError, match="does not compute what its modules"):
        lipschitz_bound(model, input_shape=(2, 2))


def test_a_forward_that_fails_is_refused_with_the_reason():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1).double())
    with pytest.raises(UnsupportedModuleError, match="forward pass fails"):
        lipschitz_bound(model)


def test_an_onnx_import_that_disagrees_with_the_reference_evaluator_is_refused(
    tmp_path, monkeypatch
):
    import lipguard.io.onnx_import as onnx_import

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    path = onnx_file(
        tmp_path / "relu.onnx",
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [weight],
        [value("x", [1, 4])],
        [value("y", [1, 4])],
    )
    assert load_onnx(path)[0] is not None
    wrong = onnx_import.OPERATORS["Tanh"]
    monkeypatch.setitem(onnx_import.OPERATORS, "Relu", wrong)  # a wrong translation
    with pytest.raises(UnsupportedModuleError, match="reference evaluator"):
        load_onnx(path)


def test_finding_13_frozen_reward_sees_swapped_modules_and_storage():
    torch.manual_seed(0)
    model = LipschitzMLP(4, 1, hidden=(8,), lipschitz=1.0, activation="relu")
    frozen = FrozenReward(model)
    features = np.random.default_rng(1).standard_normal((5, 4)) * 3

    def expected():
        with torch.no_grad():
            return model(torch.tensor(features, dtype=torch.float32))[:, 0].double().numpy()

    model[1] = nn.Tanh()  # same parameters, another function
    np.testing.assert_allclose(frozen.numpy(features), expected(), rtol=1e-5, atol=1e-6)
    model[0].weight.data = torch.randn(8, 4)  # a new storage behind the same Parameter
    np.testing.assert_allclose(frozen.numpy(features), expected(), rtol=1e-5, atol=1e-6)


def test_function_modes_are_refused_but_a_default_device_is_not():
    from torch.overrides import TorchFunctionMode

    class Scale(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            return result * 3 if func is torch.nn.functional.linear else result

    model = small_model()
    with Scale(), pytest.raises(UnsupportedModuleError, match="TorchFunctionMode"):
        lipschitz_bound(model)
    with torch.device("cpu"):
        assert lipschitz_bound(model).value > 0


def test_lower_bound_search_survives_non_finite_jacobians():
    """Found by the thorough property run: softplus overflowing in float64 makes the Jacobian
    NaN at a candidate; the search must rank it last and still return an honest witness."""
    model = nn.Sequential(
        nn.Linear(2, 2, bias=False),
        nn.Softplus(beta=0.5, threshold=float("inf")),
        nn.Linear(2, 1, bias=False),
    )
    with torch.no_grad():
        model[0].weight.fill_(1e3)
        model[2].weight.fill_(1.0)
    starts = torch.full((3, 2), 1e3, dtype=torch.float64)
    found = lipschitz_lower_bound(model, starts, 2, restarts=1, steps=8)
    upper = lipschitz_bound(model, 2, "product", input_shape=(2,))
    assert found.rigorous
    assert 0.0 <= found.value <= upper.value
