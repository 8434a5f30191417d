"""The independent checker on ONNX networks: convolutions, residual sums, permutations, ℓ∞.

The checker reads the ONNX file itself (:mod:`lipguard.check.graph`); its reading is compared with
onnx's own reference evaluator, its certificates accepted on random networks of each family and
on the VNN-COMP fixtures, and every mutation rejected.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from lipguard.bounds import certify
from lipguard.check import check
from lipguard.check.graph import evaluate, read_onnx
from lipguard.io import load_onnx

FIXTURES = Path(__file__).parent / "fixtures" / "onnx"


class Net:
    """An ONNX graph under construction: random float64 weights, one node at a time."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.shape, self.nodes, self.weights, self.last = shape, [], [], "x"

    def constant(self, array: np.ndarray) -> str:
        name = f"w{len(self.weights)}"
        self.weights.append(numpy_helper.from_array(np.asarray(array, np.float64), name))
        return name

    def constant_int(self, values: list[int]) -> str:
        name = f"shape{len(self.weights)}"
        self.weights.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def node(self, op: str, *inputs: str, source: str | None = None, **attributes) -> str:
        out = f"v{len(self.nodes)}"
        given = [source or self.last, *inputs]
        self.nodes.append(helper.make_node(op, given, [out], **attributes))
        self.last = out
        return out

    def conv(self, channels: int, inputs: int, kernel: int, source: str | None = None, **kw):
        weight = self.rng.normal(0, 0.4, (channels, inputs // kw.get("group", 1), kernel, kernel))
        bias = self.constant(self.rng.normal(0, 0.1, channels))
        return self.node("Conv", self.constant(weight), bias, source=source, **kw)

    def save(self, folder: Path, name: str = "net.onnx") -> Path:
        x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, *self.shape])
        y = helper.make_tensor_value_info(self.last, TensorProto.DOUBLE, None)
        graph = helper.make_graph(self.nodes, "net", [x], [y], self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        path = folder / name
        onnx.save(model, str(path))
        return path


def conv_chain(seed: int = 0, activation: str = "Relu") -> Net:
    """Normalisation, two convolutions (padding, stride, groups), flatten, dense layers."""
    net = Net((2, 6, 6), seed)
    net.node("Sub", net.constant(net.rng.normal(0, 0.1, (1, 2, 1, 1))))
    net.conv(4, 2, 3, pads=[1, 1, 1, 1])
    net.node(activation)
    net.conv(4, 4, 2, strides=[2, 2], group=2)
    net.node(activation)
    net.node("Flatten", axis=1)
    net.node("Gemm", net.constant(net.rng.normal(0, 0.3, (5, 36))), transB=1)
    net.node("Add", net.constant(net.rng.normal(0, 0.1, 5)))
    net.node(activation)
    net.node("MatMul", net.constant(net.rng.normal(0, 0.5, (5, 3))))
    return net


def channels_last(seed: int = 1) -> Net:
    """TensorFlow's export: an NHWC input transposed, a convolution, transposed back, reshaped."""
    net = Net((5, 5, 2), seed)
    net.node("Transpose", perm=[0, 3, 1, 2])
    net.conv(3, 2, 2, dilations=[2, 2])
    net.node("LeakyRelu", alpha=0.2)
    net.node("Transpose", perm=[0, 2, 3, 1])
    net.node("Reshape", net.constant_int([-1, 27]))
    net.node("MatMul", net.constant(net.rng.normal(0, 0.4, (27, 4))))
    net.node("Add", net.constant(net.rng.normal(0, 0.1, 4)))
    return net


def residual(seed: int = 2) -> Net:
    """Two residual blocks, one with a 1×1 convolution shortcut (resnet_2b's family)."""
    net = Net((2, 6, 6), seed)
    stem = net.node("Relu", source=net.conv(3, 2, 3, pads=[1, 1, 1, 1]))
    net.conv(4, 3, 3, pads=[1, 1, 1, 1], strides=[2, 2])
    branch = net.conv(4, 4, 3, source=net.node("Relu"), pads=[1, 1, 1, 1])
    shortcut = net.conv(4, 3, 1, source=stem, strides=[2, 2])
    block = net.node("Relu", source=net.node("Add", shortcut, source=branch))
    inner = net.node("Tanh", source=net.conv(4, 4, 3, source=block, pads=[1, 1, 1, 1]))
    net.node(
        "Relu",
        source=net.node("Add", block, source=net.conv(4, 4, 3, source=inner, pads=[1, 1, 1, 1])),
    )
    net.node("Flatten", axis=1)
    net.node("Gemm", net.constant(net.rng.normal(0, 0.2, (36, 3))))
    return net


FAMILIES = {"conv_chain": conv_chain, "channels_last": channels_last, "residual": residual}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_checker_reads_the_graph_as_onnx_runs_it(family, tmp_path):
    path = FAMILIES[family]().save(tmp_path)
    steps, shape = read_onnx(path.read_bytes())
    reference = ReferenceEvaluator(str(path))
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.normal(0, 1, (1, *shape))
        (expected,) = reference.run(None, {"x": x})
        values = evaluate(steps, x.reshape(-1))
        got = [float(v) if isinstance(v, Fraction) else float(v.mid) for v in values]
        assert np.allclose(got, expected.reshape(-1), rtol=1e-12, atol=1e-12)


def _certify(path: Path, method: str, norm: str, folder: Path, lower: bool = True) -> Path:
    model, shape = load_onnx(path)
    certificate = certify(  # type: ignore[arg-type]
        model, norm, method, input_shape=shape, checkable=True, lower_bound=lower
    )
    saved = folder / f"{path.stem}-{method}-{norm}.json"
    saved.write_text(json.dumps(certificate.to_dict()))
    return saved


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(("method", "norm"), [("auto", "2"), ("product", "inf"), ("auto", "inf")])
def test_accepts_certificates_of_every_family(family, method, norm, tmp_path):
    path = FAMILIES[family]().save(tmp_path)
    saved = _certify(path, method, norm, tmp_path)
    result = check(path, saved)
    assert result.accepted, result.reasons
    assert result.lower is True
    data = json.loads(saved.read_text())
    expected = "product" if family == "residual" or method == "product" else None
    assert expected is None or data["upper"]["method"] == expected
    assert data["checkable"]["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("name", "norm", "method"),
    [
        ("ACASXU_run2a_1_1_batch_2000", "inf", "auto"),
        ("ACASXU_run2a_1_1_batch_2000", "2", "auto"),
        ("mnist-net_256x2", "2", "auto"),
        # the conv fixtures: ℓ∞ upper bounds only (lipguard's witness search takes half a minute
        # there; witnesses on conv and residual graphs are checked on the random families); ℓ2
        # of these: benchmarks/checker.py
        ("cifar10_small", "inf", "product"),
        ("resnet_2b", "inf", "auto"),
    ],
)
def test_accepts_the_vnncomp_fixtures(name, norm, method, tmp_path):
    path = FIXTURES / f"{name}.onnx"
    small = name.startswith(("ACAS", "mnist"))
    result = check(path, _certify(path, method, norm, tmp_path, lower=small))
    assert result.accepted, result.reasons
    assert result.lower is (True if small else None)


def _rewrite(path: Path, edit) -> Path:
    model = onnx.load(str(path))
    edit(model.graph)
    edited = path.with_name("edited.onnx")
    onnx.save(model, str(edited))
    return edited


def _with_hash(saved: Path, edited: Path) -> Path:
    data = json.loads(saved.read_text())
    data["checkable"]["onnx_sha256"] = hashlib.sha256(edited.read_bytes()).hexdigest()
    from lipguard.check import claims_sha256

    data["claims_sha256"] = claims_sha256(data)
    out = saved.with_name("rehashed.json")
    out.write_text(json.dumps(data))
    return out


def _scale_weight(factor: float):
    def edit(graph: onnx.GraphProto) -> None:
        tensor = next(t for t in graph.initializer if len(t.dims) == 4)
        array = numpy_helper.to_array(tensor).copy()
        array.flat[0] *= factor
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))

    return edit


@pytest.fixture(scope="module")
def residual_case(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("residual")
    path = residual().save(folder)
    return path, _certify(path, "product", "2", folder)


def test_rejects_a_changed_weight(residual_case):
    path, saved = residual_case
    edited = _rewrite(path, _scale_weight(10.0))
    result = check(edited, saved)
    assert not result.accepted
    assert "onnx_sha256 mismatch" in result.reasons[0]
    result = check(edited, _with_hash(saved, edited))  # hash fixed up: the proof itself fails
    assert not result.accepted
    assert any("||W_0||_2" in reason for reason in result.reasons), result.reasons


def test_rejects_relabelled_and_lowered_claims(residual_case, tmp_path):
    path, saved = residual_case
    original = json.loads(saved.read_text())

    def run(edit) -> list[str]:
        data = copy.deepcopy(original)
        edit(data)
        out = tmp_path / "mutated.json"
        out.write_text(json.dumps(data))
        result = check(path, out)
        assert not result.accepted
        return result.reasons

    assert "claims_sha256" in run(lambda d: d["upper"].update(value=d["upper"]["value"] / 2))[0]
    from lipguard.check import claims_sha256

    def rehashed(edit):
        def both(data):
            edit(data)
            data["claims_sha256"] = claims_sha256(data)

        return both

    lowered = run(rehashed(lambda d: d["upper"].update(value=d["upper"]["value"] * (1 - 1e-9))))
    assert "< the product" in lowered[-1]
    sigma = run(
        rehashed(
            lambda d: d["checkable"]["sigmas"].__setitem__(2, d["checkable"]["sigmas"][2] * 0.99)
        )
    )
    assert any("||W_2||_2" in reason for reason in sigma)
    method = run(rehashed(lambda d: d["upper"].update(method="compositional")))
    assert "not a chain" in " ".join(method)
    shape = run(rehashed(lambda d: d.update(input_shape=[72])))
    assert "input_shape" in " ".join(shape)
    witness = run(rehashed(lambda d: d["lower"].update(value=d["lower"]["value"] * 1.001)))
    assert "witnesses" in " ".join(witness)


def test_a_tight_product_claim_is_accepted_and_one_ulp_less_is_not(residual_case, tmp_path):
    from lipguard.check import checker, claims_sha256

    path, saved = residual_case
    data = json.loads(saved.read_text())
    steps, _ = read_onnx(path.read_bytes())
    exact = checker.product_value(steps, [Fraction(s) for s in data["checkable"]["sigmas"]])
    tight = float(exact)
    tight = tight if Fraction(tight) >= exact else math.nextafter(tight, math.inf)
    for value, accepted in ((tight, True), (math.nextafter(tight, 0.0), False)):
        data["upper"]["value"] = value
        data["lower"]["value"] = min(data["lower"]["value"], value)
        data["claims_sha256"] = claims_sha256(data)
        (tmp_path / "tight.json").write_text(json.dumps(data))
        assert check(path, tmp_path / "tight.json").accepted is accepted


def test_the_residual_product_is_the_sum_over_paths(residual_case):
    """The product bound of ``relu(C3 relu(C2 relu(C1 x)) + S relu(C1 x))``-style joins: each sum
    adds the factors of its two branches (a hand computation over the steps)."""
    from lipguard.check import checker

    path, _ = residual_case
    steps, _ = read_onnx(path.read_bytes())
    sigmas = [Fraction(n + 2) for n in range(len(checker.weights(steps)))]  # 2, 3, 4, ...
    # stem 2; block 1: conv 3 then conv 4 on the branch, shortcut 5: 2·(3·4 + 5) = 34;
    # block 2 (tanh, β = 1): 34·(1 + 6·7) = 1462; the dense layer 8: 11696
    assert checker.product_value(steps, sigmas) == 11696


@pytest.mark.parametrize(
    ("op", "attributes", "reason"),
    [
        ("Softplus", {}, "Softplus"),
        ("LeakyRelu", {"alpha": 1.5}, "slope 1.5 is outside"),
        ("MaxPool", {"kernel_shape": [2, 2]}, "MaxPool"),
    ],
)
def test_operators_outside_the_family_are_refused_by_name(op, attributes, reason, tmp_path):
    net = Net((1, 4, 4), 0)
    net.conv(2, 1, 3)
    net.node(op, **attributes)
    net.node("Flatten", axis=1)
    net.node("Gemm", net.constant(np.ones((1, 8))), transB=1)
    with pytest.raises(ValueError, match=reason):
        read_onnx(net.save(tmp_path).read_bytes())


def _dense_net(folder: Path, edit) -> Path:
    net = Net((4,), 0)
    net.node("Gemm", net.constant(np.ones((3, 4))), net.constant(np.ones(3)), transB=1)
    net.node("Relu")
    net.node("MatMul", net.constant(np.ones((3, 2))))
    path = net.save(folder)
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))
    return path


def _replace(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(array, name))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda m: _replace(m, "w1", np.ones(2)), "broadcast"),
        (lambda m: _replace(m, "w0", np.ones((3, 4), np.int64)), "floats"),
        (
            lambda m: m.graph.node[1].output.__setitem__(0, "v0"),
            "out of order",
        ),  # two writers of v0
        (lambda m: m.graph.node.reverse(), "out of order"),  # not in topological order
    ],
)
def test_malformed_graphs_are_refused(edit, reason, tmp_path):
    path = _dense_net(tmp_path, edit)
    with pytest.raises(ValueError, match=reason):
        read_onnx(path.read_bytes())


def test_a_reshape_that_moves_the_batch_is_refused(tmp_path):
    net = Net((2, 3), 0)
    net.node("Reshape", net.constant_int([2, -1]))
    net.node("MatMul", net.constant(np.ones((3, 1))))
    with pytest.raises(ValueError, match="keep the batch"):
        read_onnx(net.save(tmp_path).read_bytes())


def test_a_malformed_graph_is_a_rejection_not_a_crash(residual_case, tmp_path):
    path, saved = residual_case
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:-40])  # truncated: the hash no longer matches either
    result = check(broken, _with_hash(saved, broken))
    assert not result.accepted
    assert "architecture" in result.reasons[0]


def test_a_convolution_bias_of_the_wrong_length_is_refused(tmp_path):
    net = Net((1, 4, 4), 0)
    net.conv(2, 1, 3)
    path = net.save(tmp_path)
    model = onnx.load(str(path))
    _replace(model, "w0", np.ones(3))  # the conv's bias: 3 numbers for 2 channels
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="does not fit"):
        read_onnx(path.read_bytes())
