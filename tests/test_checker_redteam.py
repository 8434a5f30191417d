"""Red-team attacks on the independent certificate checker (:mod:`lipguard.check`).

The adversary controls both files: the weights (an ONNX or safetensors file) and the certificate
(its hashes are recomputed, they are integrity only). An attack succeeds when ``check`` accepts a
false claim — an upper bound below the true Lipschitz constant of the function onnx's
``ReferenceEvaluator`` computes (or of the graph in exact arithmetic), a lower-bound witness that
does not hold — or when it crashes with anything but :class:`CheckInputError` or a rejection.

Every attack is a test asserting the rejection. The attacks in :data:`FALSE_CLAIMS` and
:data:`CRASHES` once succeeded (a red-team pass found them; each was fixed and its reason is kept
next to it); for the false claims a separate test shows with the reference evaluator (or exact
integers) that the claim really is false, so the rejection test cannot pass by accident.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from lipguard.check import CheckInputError, check, claims_sha256
from lipguard.check.checker import read_safetensors
from lipguard.check.graph import evaluate, read_onnx

# --------------------------------------------------------------------------------------------
# building the adversary's files


def _model(
    nodes: list[onnx.NodeProto],
    weights: list[onnx.TensorProto],
    shape: list[int],
    opset: int = 13,
    **extra: object,
) -> onnx.ModelProto:
    """One float64 input ``x`` of per-sample ``shape`` (batch 1), output ``y``."""
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, *shape])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
    graph = helper.make_graph(nodes, "attack", [x], [y], weights)
    opsets = [helper.make_opsetid("", opset), *extra.pop("opsets", [])]  # type: ignore[list-item]
    return helper.make_model(graph, opset_imports=opsets, **extra)


def _array(values: object, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float64), name)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())  # no checker, no external-data handling
    return path


def _certificate(
    weights: Path,
    value: object,
    method: str = "product",
    norm: str = "2",
    lower: dict | None = None,
    shape: list[int] | None = None,
    **section: object,
) -> Path:
    """A certificate about the ONNX file ``weights``, its hashes recomputed."""
    if shape is None:  # the declared input's per-sample shape (the checker's own reading aside)
        declared = onnx.load_from_string(weights.read_bytes()).graph.input[0]
        shape = [d.dim_value for d in declared.type.tensor_type.shape.dim][1:]
    data: dict = {
        "upper": {"value": value, "norm": norm, "method": method, "scope": "global", "sound": True},
        "input_shape": shape,
        "checkable": {
            "format": "lipguard-checkable/1",
            "onnx_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            **section,
        },
    }
    if lower is not None:
        data["lower"] = lower
    data["claims_sha256"] = claims_sha256(data)
    path = weights.with_suffix(".json")
    path.write_text(json.dumps(data))
    return path


def _safetensors(path: Path, tensors: dict[str, tuple[list, list[float]]]) -> Path:
    """A safetensors file of F64 tensors ``name -> (shape as written in the header, values)``."""
    header, body = {}, b""
    for name, (shape, values) in tensors.items():
        raw = np.asarray(values, "<f8").tobytes()
        header[name] = {
            "dtype": "F64",
            "shape": shape,
            "data_offsets": [len(body), len(body) + len(raw)],
        }
        body += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return path


def _safetensors_certificate(
    weights: Path, layers: list, value: float, shape: list[int], **section: object
) -> Path:
    data: dict = {
        "upper": {
            "value": value,
            "norm": "2",
            "method": "product",
            "scope": "global",
            "sound": True,
        },
        "input_shape": shape,
        "weights_sha256": read_safetensors(weights)[1],
        "checkable": {"format": "lipguard-checkable/1", "layers": layers, **section},
    }
    data["claims_sha256"] = claims_sha256(data)
    path = weights.with_suffix(".json")
    path.write_text(json.dumps(data))
    return path


def _rewrite(certificate: Path, edit: Callable[[dict], None]) -> Path:
    data = json.loads(certificate.read_text())
    edit(data)
    data["claims_sha256"] = claims_sha256(data)
    certificate.write_text(json.dumps(data))
    return certificate


def _refused(weights: Path, certificate: Path) -> bool:
    """The checker's answer is a rejection or a one-line input error (never a crash)."""
    try:
        return not check(weights, certificate).accepted
    except CheckInputError:
        return True


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    (out,) = ReferenceEvaluator(model).run(None, {"x": x[None]})
    return np.asarray(out, np.float64).reshape(-1)


def _ratio(model: onnx.ModelProto | str, x: np.ndarray, y: np.ndarray, norm: str) -> float:
    """``||f(x) - f(y)|| / ||x - y||`` with onnx's reference evaluator, float64."""
    order = 2 if norm == "2" else np.inf
    gap = _run(model, x) - _run(model, y)
    return float(np.linalg.norm(gap, order) / np.linalg.norm((x - y).reshape(-1), order))


# --------------------------------------------------------------------------------------------
# successful attacks: a false claim accepted (each with a test that the claim is false)


@dataclass
class Attack:
    weights: Path
    certificate: Path
    false: Callable[[], bool]  # shows, without the checker, that the certified claim is false


def _one_matrix(folder: Path, weight: float = 2.0) -> Path:
    return _save(
        _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_array([[weight]], "w")], [1]),
        folder / "one.onnx",
    )


def negative_lipsdp(folder: Path, _: pytest.MonkeyPatch) -> Attack:
    """``value² >= ρ`` is the only test of the stated value: a negative value passes."""
    path = _one_matrix(folder)
    certificate = _certificate(path, -2.1, "lipsdp-neuron", rho=4.01, multipliers=[])
    x, y = np.array([0.0]), np.array([1.0])
    return Attack(path, certificate, lambda: _ratio(str(path), x, y, "2") > -2.1)


def negative_fast_compositional(folder: Path, _: pytest.MonkeyPatch) -> Attack:
    """The same through ``compositional`` carrying lipguard's fast LipSDP proof."""
    path = _one_matrix(folder)
    certificate = _certificate(path, -3.0, "compositional", rho=4.01, multipliers=[])
    x, y = np.array([0.0]), np.array([1.0])
    return Attack(path, certificate, lambda: _ratio(str(path), x, y, "2") > -3.0)


def function_in_ai_onnx_domain(folder: Path, _: pytest.MonkeyPatch) -> Attack:
    """A node ``Relu`` in domain ``ai.onnx`` is read as ONNX's Relu, but the model defines a local
    function ``ai.onnx.Relu`` (here ``100·X``) that the reference evaluator runs instead."""
    body = [
        helper.make_node(
            "Constant", [], ["k"], value=numpy_helper.from_array(np.array(100.0), "k")
        ),
        helper.make_node("Mul", ["X", "k"], ["Y"]),
    ]
    function = helper.make_function(
        "ai.onnx", "Relu", ["X"], ["Y"], body, opset_imports=[helper.make_opsetid("", 13)]
    )
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"], domain="ai.onnx")],
        [],
        [2],
        opsets=[helper.make_opsetid("ai.onnx", 13)],
        functions=[function],
    )
    path = _save(model, folder / "function.onnx")
    certificate = _certificate(path, 1.0, sigmas=[])
    x, y = np.array([1.0, 2.0]), np.array([0.0, 0.0])
    return Attack(path, certificate, lambda: _ratio(str(path), x, y, "2") > 1.0)


def external_constant(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Attack:
    """A ``Constant`` node's tensor stored externally is loaded by ``numpy_helper.to_array`` from
    the *working directory* (initializers stored outside are refused, Constant values are not);
    ONNX resolves it next to the model, and ``onnx_sha256`` covers neither file."""
    (folder / "model").mkdir()
    tensor = _array([[3.0]], "c")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "c.bin"
    model = _model(
        [
            helper.make_node("Constant", [], ["c"], value=tensor),
            helper.make_node("MatMul", ["x", "c"], ["y"]),
        ],
        [],
        [1],
    )
    path = _save(model, folder / "model" / "net.onnx")
    np.array([[300.0]]).tofile(folder / "model" / "c.bin")  # what the model denotes
    np.array([[3.0]]).tofile(folder / "c.bin")  # what the checker reads
    monkeypatch.chdir(folder)
    certificate = _certificate(path, 3.001, sigmas=[3.001])
    x, y = np.array([0.0]), np.array([1.0])
    return Attack(path, certificate, lambda: _ratio(str(path), x, y, "2") > 3.001)


def integer_convolution_kernel(folder: Path, _: pytest.MonkeyPatch) -> Attack:
    """An int64 ``Conv`` kernel is not refused (``MatMul``/``Gemm`` refuse integer weights): it
    is placed into the float64 matrix and rounded, 2^53 + 3 to 2^53 + 4, so a lower-bound
    witness of ratio 2^53 + 4 is confirmed for a graph whose exact ratio is 2^53 + 3."""
    kernel = np.array([[[[2**53 + 3]]]], np.int64)
    model = _model(
        [helper.make_node("Conv", ["x", "k"], ["y"])],
        [numpy_helper.from_array(kernel, "k")],
        [1, 1, 1],
    )
    path = _save(model, folder / "int.onnx")
    lower = {"value": float(2**53 + 4), "x": [0.0], "y": [1.0]}
    certificate = _certificate(path, 2.0**53 * 1.001, lower=lower, sigmas=[2.0**53 * 1.001])
    # exact arithmetic, the kernel's integer: (f(1) - f(0)) / (1 - 0) = 2^53 + 3 < 2^53 + 4
    # (the reference evaluator's float64 rounds the kernel as the checker does)
    exact_ratio = int(kernel.item()) * 1 - int(kernel.item()) * 0
    return Attack(path, certificate, lambda: exact_ratio < 2**53 + 4)


FALSE_CLAIMS = {
    "negative_lipsdp": (
        negative_lipsdp,
        "a negative upper bound passes `value*value >= rho`: "
        "prove_lipsdp must also require value >= 0",
    ),
    "negative_fast_compositional": (
        negative_fast_compositional,
        "as negative_lipsdp, via compositional's fast LipSDP proof",
    ),
    "function_in_ai_onnx_domain": (
        function_in_ai_onnx_domain,
        "domain 'ai.onnx' is accepted as "
        "standard but the model's local function of that name runs; "
        "refuse models with functions, or domain 'ai.onnx'",
    ),
    "external_constant": (
        external_constant,
        "Constant-node tensors stored externally are read "
        "from the working directory and not hashed; refuse them as initializers are",
    ),
    "integer_convolution_kernel": (
        integer_convolution_kernel,
        "int64 Conv kernels are rounded into the float matrix; refuse non-float kernels",
    ),
}


@pytest.mark.parametrize("name", sorted(FALSE_CLAIMS))
def test_the_claims_of_the_successful_attacks_are_false(name, tmp_path, monkeypatch):
    attack = FALSE_CLAIMS[name][0](tmp_path, monkeypatch)
    assert attack.false()


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, id=name) for name, (_, why) in sorted(FALSE_CLAIMS.items())],
)
def test_false_claims_are_refused(name, tmp_path, monkeypatch):
    attack = FALSE_CLAIMS[name][0](tmp_path, monkeypatch)
    assert _refused(attack.weights, attack.certificate)


# --------------------------------------------------------------------------------------------
# successful attacks: crashes (a traceback instead of a rejection or CheckInputError)


def crash_conv_zero_stride(folder: Path) -> tuple[Path, Path]:
    model = _model(
        [helper.make_node("Conv", ["x", "k"], ["y"], strides=[0, 1])],
        [_array(np.ones((1, 1, 1, 1)), "k")],
        [1, 2, 2],
    )
    path = _save(model, folder / "stride.onnx")
    return path, _certificate(path, 1.0, sigmas=[1.0])


def crash_conv_huge_pads(folder: Path) -> tuple[Path, Path]:
    """The 2^20 size limit is checked after the dense matrix is built: pads of 2^46."""
    model = _model(
        [helper.make_node("Conv", ["x", "k"], ["y"], pads=[0, 0, 2**46, 2**46])],
        [_array(np.ones((1, 1, 1, 1)), "k")],
        [1, 2, 2],
    )
    path = _save(model, folder / "pads.onnx")
    return path, _certificate(path, 1.0, sigmas=[1.0])


def crash_transpose_of_a_huge_input(folder: Path) -> tuple[Path, Path]:
    """The input's declared size is never limited; ``Transpose`` enumerates it."""
    model = _model(
        [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])], [], [2**23, 2**23]
    )
    path = _save(model, folder / "huge.onnx")
    return path, _certificate(path, 1.0, sigmas=[])


def crash_lipsdp_on_a_wide_input(folder: Path) -> tuple[Path, Path]:
    """A 2^20-wide input (within the documented limit; float16 zeros, 2 MB): the LipSDP matrix
    is allocated densely, 2^20 × 2^20."""
    width = 2**20
    raw = np.zeros(width, np.float16).tobytes()
    weight = helper.make_tensor("w", TensorProto.FLOAT16, [width, 1], raw, raw=True)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight], [width])
    path = _save(model, folder / "wide.onnx")
    return path, _certificate(path, 1.0, "lipsdp-neuron", rho=1.0, multipliers=[])


def crash_huge_json_integer(folder: Path) -> tuple[Path, Path]:
    """``_number`` calls ``math.isfinite`` on a JSON integer too large for a float."""
    path = _one_matrix(folder)
    return path, _rewrite(
        _certificate(path, 2.001, sigmas=[2.001]), lambda d: d["upper"].update(value=10**400)
    )


def crash_deeply_nested_json(folder: Path) -> tuple[Path, Path]:
    path = _one_matrix(folder)
    certificate = folder / "deep.json"
    certificate.write_text("[" * 100_000 + "]" * 100_000)
    return path, certificate


def crash_float16_infinity(folder: Path) -> tuple[Path, Path]:
    """``abs(array) <= 2^64`` in float16 compares with +inf (2^64 overflows float16), so an
    infinite float16 weight passes; the ℓ∞ row sum then meets ``Fraction(inf)``."""
    weight = helper.make_tensor("w", TensorProto.FLOAT16, [1, 2], [np.inf, 1.0])
    path = _save(
        _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight], [1]), folder / "inf.onnx"
    )
    return path, _certificate(path, 2.0, norm="inf", sigmas=[2.0])


def crash_scalar_safetensors_weight(folder: Path) -> tuple[Path, Path]:
    """``weight.shape[-1]`` of a 0-d tensor: IndexError, outside ``read_layers``' ValueError net."""
    path = _safetensors(folder / "scalar.safetensors", {"w": ([], [2.0])})
    layers = [{"weight": "w", "bias": None, "activation": None}]
    return path, _safetensors_certificate(path, layers, 2.0, [1], sigmas=[2.0])


def crash_unhashable_layer_name(folder: Path) -> tuple[Path, Path]:
    path = _safetensors(folder / "list.safetensors", {"w": ([1, 1], [2.0])})
    layers = [{"weight": ["w"], "bias": None, "activation": None}]
    return path, _safetensors_certificate(path, layers, 2.0, [1], sigmas=[2.0])


def crash_unhashable_activation_kind(folder: Path) -> tuple[Path, Path]:
    path = _safetensors(folder / "kind.safetensors", {"w": ([1, 1], [2.0]), "v": ([1, 1], [2.0])})
    layers = [
        {"weight": "w", "bias": None, "activation": {"kind": ["relu"], "slopes": [0, 1]}},
        {"weight": "v", "bias": None, "activation": None},
    ]
    return path, _safetensors_certificate(path, layers, 4.0, [1], sigmas=[2.0, 2.0])


def crash_negative_safetensors_shape(folder: Path) -> tuple[Path, Path]:
    """A shape ``[-1, -1]`` has product 1, matches one value's bytes, then fails ``reshape``
    (a bare ValueError) outside the header's try block."""
    path = _safetensors(folder / "negative.safetensors", {"w": ([-1, -1], [2.0])})
    layers = [{"weight": "w", "bias": None, "activation": None}]
    return path, _safetensors_certificate(path, layers, 2.0, [1], sigmas=[2.0])


def crash_fractional_safetensors_shape(folder: Path) -> tuple[Path, Path]:
    path = _safetensors(folder / "fraction.safetensors", {"w": ([0.5, 2], [2.0])})
    layers = [{"weight": "w", "bias": None, "activation": None}]
    return path, _safetensors_certificate(path, layers, 2.0, [1], sigmas=[2.0])


@pytest.fixture
def bounded_address_space():
    """Terabyte allocations fail at once (MemoryError) instead of reaching the OOM killer,
    whatever the kernel's overcommit policy: the address space is capped 16 GiB above now."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    cap = pages * os.sysconf("SC_PAGE_SIZE") + 2**34
    resource.setrlimit(
        resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard)
    )
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


CRASHES = {
    crash_conv_zero_stride: (ZeroDivisionError, "Conv strides of 0: `// sh` before the check"),
    crash_conv_huge_pads: (
        MemoryError,
        "Conv output size is limited only after the matrix is built",
    ),
    crash_transpose_of_a_huge_input: (MemoryError, "the input's size is never limited to 2^20"),
    crash_lipsdp_on_a_wide_input: (MemoryError, "LipSDP's dense matrix is not size-limited"),
    crash_huge_json_integer: (OverflowError, "math.isfinite(10**400) in _number"),
    crash_deeply_nested_json: (RecursionError, "json.loads RecursionError is not caught"),
    crash_float16_infinity: (OverflowError, "float16 +inf passes `abs(a) <= LIMIT` (LIMIT -> inf)"),
    crash_scalar_safetensors_weight: (IndexError, "0-d weight: weight.shape[-1]"),
    crash_unhashable_layer_name: (TypeError, "a list as a tensor name: `n not in tensors`"),
    crash_unhashable_activation_kind: (
        TypeError,
        "a list as an activation kind: `kind not in SLOPES`",
    ),
    crash_negative_safetensors_shape: (
        ValueError,
        "header shape [-1, -1]: reshape outside the try",
    ),
    crash_fractional_safetensors_shape: (
        TypeError,
        "header shape [0.5, 2]: reshape outside the try",
    ),
}


@pytest.mark.parametrize(
    "attack",
    [pytest.param(attack, id=attack.__name__) for attack, (error, why) in CRASHES.items()],
)
def test_crafted_input_is_a_rejection_not_a_crash(attack, tmp_path, bounded_address_space):
    try:
        files = attack(tmp_path)  # building the certificate reads the weights with the checker
    except CheckInputError:
        return
    assert _refused(*files)


def test_an_infinite_float16_bias_is_refused(tmp_path):
    bias = helper.make_tensor("b", TensorProto.FLOAT16, [1], [np.inf])
    model = _model(
        [helper.make_node("Add", ["x", "b"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])],
        [bias, _array([[2.0]], "w")],
        [1],
    )
    path = _save(model, tmp_path / "bias.onnx")
    assert _refused(path, _certificate(path, 2.001, sigmas=[2.001]))


# --------------------------------------------------------------------------------------------
# defeated attacks: ONNX semantics the checker reads as onnx runs them


def _reads_like_onnx(model: onnx.ModelProto, seed: int = 0) -> None:
    steps, shape = read_onnx(model.SerializeToString())
    rng = np.random.default_rng(seed)
    for _ in range(2):
        x = rng.normal(0, 1, shape)
        expected = _run(model, x)
        got = np.array([float(v) for v in evaluate(steps, x.reshape(-1))])
        # the checker keeps a permuted output in its own order: compare as multisets
        assert np.allclose(np.sort(got), np.sort(expected), rtol=1e-12, atol=1e-12)


def _shape(values: list[int], name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


RNG = np.random.default_rng(7)
GRAPHS: dict[str, tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[int], int]] = {
    "reshape_with_0_and_-1": (
        [
            helper.make_node("Reshape", ["x", "s"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Reshape", ["b", "t"], ["y"]),
        ],
        [_shape([0, 0, -1], "s"), _shape([-1, 12], "t")],
        [3, 4],
        13,
    ),
    "transpose_reshape_transpose": (
        [
            helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["a", "s"], ["b"]),
            helper.make_node("Transpose", ["b"], ["c"], perm=[0, 2, 1]),
            helper.make_node("Flatten", ["c"], ["d"], axis=1),
            helper.make_node("MatMul", ["d", "w"], ["y"]),
        ],
        [_shape([1, 6, 4], "s"), _array(RNG.normal(size=(24, 3)), "w")],
        [2, 3, 4],
        13,
    ),
    "flatten_of_flat_values": (
        [
            helper.make_node("Flatten", ["x"], ["a"], axis=1),
            helper.make_node("Flatten", ["a"], ["b"], axis=1),
            helper.make_node("Gemm", ["b", "w", "c"], ["y"], transB=1),
        ],
        [_array(RNG.normal(size=(2, 5)), "w"), _array([0.5], "c")],
        [5],
        13,
    ),
    "gemm_scalar_c": (
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"])],
        [_array(RNG.normal(size=(3, 2)), "w"), _array(1.5, "c")],
        [3],
        13,
    ),
    "conv_asymmetric_pads_dilations_groups": (
        [
            helper.make_node(
                "Conv",
                ["x", "k", "b"],
                ["y"],
                pads=[2, 0, 1, 3],
                strides=[2, 1],
                dilations=[1, 2],
                group=2,
            )
        ],
        [_array(RNG.normal(size=(4, 1, 2, 3)), "k"), _array(RNG.normal(size=4), "b")],
        [2, 5, 6],
        13,
    ),
    "add_of_a_(1,)_constant_after_transpose": (
        [
            helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1]),
            helper.make_node("Add", ["c", "a"], ["b"]),
            helper.make_node("Add", ["b", "d"], ["e"]),
            helper.make_node("Relu", ["e"], ["y"]),
        ],
        [_array([0.25], "c"), _array(RNG.normal(size=(1, 3)), "d")],
        [3, 2],
        13,
    ),
    "sub_then_identity_chain": (
        [
            helper.make_node("Sub", ["x", "c"], ["a"]),
            helper.make_node("Identity", ["a"], ["b"]),
            helper.make_node("Identity", ["b"], ["e"]),
            helper.make_node("MatMul", ["e", "w"], ["y"]),
        ],
        [_array(RNG.normal(size=3), "c"), _array(RNG.normal(size=(3, 2)), "w")],
        [3],
        13,
    ),
    "leaky_relu_alpha_0_and_1": (
        [
            helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.0),
            helper.make_node("LeakyRelu", ["a"], ["b"], alpha=1.0),
            helper.make_node("LeakyRelu", ["b"], ["y"]),
        ],
        [],
        [4],
        13,
    ),
    "initializer_named_empty_as_gemm_c": (
        [
            helper.make_node("Gemm", ["x", "w", ""], ["a"], transB=1),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        [_array(RNG.normal(size=(2, 3)), "w"), _array([-0.5, 0.5], "")],
        [3],
        13,
    ),
    "opset_6_add_with_axis": (
        [
            helper.make_node("Add", ["x", "c"], ["a"], broadcast=1, axis=1),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        [_array([1.0, -1.0], "c")],
        [2, 2],
        6,
    ),
    "duplicate_initializers": (
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_array([[1.0], [1.0]], "w"), _array([[5.0], [-7.0]], "w")],
        [2],
        13,
    ),
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_the_checker_reads_tricky_graphs_as_onnx_runs_them(name):
    nodes, weights, shape, opset = GRAPHS[name]
    _reads_like_onnx(_model(nodes, weights, shape, opset))


def test_duplicate_initializers_certify_the_one_onnx_uses(tmp_path):
    """Two initializers ``w`` (1, then 100): onnx uses the last; the first's bound is refused."""
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_array([[1.0]], "w"), _array([[100.0]], "w")],
        [1],
    )
    path = _save(model, tmp_path / "dup.onnx")
    assert _ratio(model, np.array([0.0]), np.array([1.0]), "2") == 100.0
    assert _refused(path, _certificate(path, 1.0001, sigmas=[1.0001]))
    assert check(path, _certificate(path, 100.001, sigmas=[100.001])).accepted


def test_an_empty_named_bias_changes_the_witnesses_as_in_onnx(tmp_path):
    """An initializer named ``""`` in Gemm's optional C slot is used by onnx too: relu(x - 10) is
    flat at 1 and 2, so a lower bound 1 witnessed there is refused."""
    model = _model(
        [
            helper.make_node("Gemm", ["x", "w", ""], ["a"], transB=1),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        [_array([[1.0]], "w"), _array([-10.0], "")],
        [1],
    )
    path = _save(model, tmp_path / "empty.onnx")
    assert _ratio(model, np.array([1.0]), np.array([2.0]), "2") == 0.0
    lower = {"value": 1.0, "x": [1.0], "y": [2.0]}
    assert _refused(path, _certificate(path, 1.001, lower=lower, sigmas=[1.001]))


def test_duplicate_attributes_are_read_as_onnx_reads_them(tmp_path):
    """Gemm with ``alpha`` twice: onnx takes the last; (100, 1) is x, (1, 100) is refused."""
    for first, last, accepted in ((100.0, 1.0, True), (1.0, 100.0, False)):
        node = helper.make_node("Gemm", ["x", "w"], ["y"], alpha=first)
        node.attribute.append(helper.make_attribute("alpha", last))
        model = _model([node], [_array([[1.0]], "w")], [1])
        path = _save(model, tmp_path / f"alpha{first}.onnx")
        assert _ratio(model, np.array([0.0]), np.array([1.0]), "2") == last
        assert check(path, _certificate(path, 1.0001, sigmas=[1.0001])).accepted is accepted


# --------------------------------------------------------------------------------------------
# defeated attacks: graphs refused, or bounds that stay true


def _graph_refused(
    tmp_path: Path, nodes: list, weights: list, shape: list[int], value: float = 100.0
) -> None:
    path = _save(_model(nodes, weights, shape), tmp_path / "g.onnx")
    result = check(path, _certificate(path, value, sigmas=[]))
    assert not result.accepted
    assert any("architecture" in reason for reason in result.reasons), result.reasons


@pytest.mark.parametrize(
    ("nodes", "weights", "shape"),
    [
        ([helper.make_node("Sub", ["c", "x"], ["y"])], [_array([1.0], "c")], [1]),  # reversed Sub
        (
            [
                helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
                helper.make_node("Add", ["x", "t"], ["y"]),
            ],
            [],
            [2, 2],
        ),  # a value plus its transpose
        ([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=1.5)], [], [1]),
        ([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=-0.1)], [], [1]),
        ([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=float("nan"))], [], [1]),
        ([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)], [_array([[2.0]], "w")], [1]),
        ([helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)], [_shape([1, 2], "s")], [2]),
        ([helper.make_node("Flatten", ["x"], ["y"], axis=0)], [], [2]),
        ([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])], [], [2]),  # moves the batch
        (
            [helper.make_node("Conv", ["x", "k"], ["y"], auto_pad="SAME_UPPER")],
            [_array(np.ones((1, 1, 2, 2)), "k")],
            [1, 3, 3],
        ),
        (
            [helper.make_node("MatMul", ["x", "x"], ["y"])],
            [],
            [1],
        ),  # weight computed from the input
        ([helper.make_node("Mul", ["x", "c"], ["y"])], [_array([0.01], "c")], [1]),
        ([helper.make_node("Relu", ["x"], ["y"], domain="com.example")], [], [1]),
        (
            [helper.make_node("Constant", [], ["y"], value_float=1.0)],
            [],
            [1],
        ),  # output not computed
        (
            [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
            [],
            [1],
        ),  # y not last
        ([], [], [1]),  # no nodes, output never written
    ],
    ids=[
        "sub_reversed",
        "add_permuted_copy",
        "leaky_1.5",
        "leaky_negative",
        "leaky_nan",
        "gemm_transA",
        "reshape_allowzero",
        "flatten_axis0",
        "transpose_batch",
        "conv_auto_pad",
        "matmul_of_input",
        "mul",
        "custom_domain",
        "constant_output",
        "output_not_last",
        "empty_graph",
    ],
)
def test_graphs_outside_the_family_are_refused(nodes, weights, shape, tmp_path):
    _graph_refused(tmp_path, nodes, weights, shape)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (
            lambda m: m.graph.initializer.append(_external(m.graph.initializer.pop())),
            "outside the file",
        ),
        (lambda m: m.graph.initializer[0].__setattr__("data_type", 999), "999"),
        (
            lambda m: m.graph.initializer[0].__setattr__("data_type", TensorProto.UNDEFINED),
            "UNDEFINED",
        ),
        (
            lambda m: m.graph.initializer[0].CopyFrom(
                helper.make_tensor("w", TensorProto.BFLOAT16, [1, 1], [2.0])
            ),
            "finite float",
        ),
        (
            lambda m: m.graph.initializer[0].CopyFrom(
                helper.make_tensor("w", TensorProto.DOUBLE, [1, 1], [float("nan")])
            ),
            "finite float",
        ),
        (lambda m: m.graph.initializer[0].CopyFrom(_array([[2.0**65]], "w")), "finite float"),
        (lambda m: m.graph.initializer[0].CopyFrom(_array(np.ones((2, 1)), "w")), "times"),
        (
            lambda m: m.graph.input[0].type.tensor_type.shape.dim[1].__setattr__("dim_value", 0),
            "fixed per-sample",
        ),
        (
            lambda m: m.graph.input.append(
                helper.make_tensor_value_info("z", TensorProto.DOUBLE, [1, 1])
            ),
            "one input",
        ),
        (
            lambda m: m.graph.initializer.append(_array([[1.0]], "x")),
            "one input",
        ),  # shadows the input
    ],
    ids=[
        "external_initializer",
        "dtype_999",
        "dtype_undefined",
        "bfloat16",
        "nan",
        "beyond_2^64",
        "zero_rows_shape_mismatch",
        "symbolic_shape",
        "two_inputs",
        "initializer_shadows_input",
    ],
)
def test_malformed_weights_are_refused(build, reason, tmp_path):
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_array([[2.0]], "w")], [1])
    build(model)
    path = _save(model, tmp_path / "m.onnx")
    result = check(path, _certificate(path, 2.001, sigmas=[2.001]))
    assert not result.accepted
    assert any(reason in r for r in result.reasons), result.reasons


def _external(tensor: onnx.TensorProto) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    return tensor


def test_a_linked_attribute_in_the_main_graph_is_refused(tmp_path):
    """``strides`` stored as 2 but marked as a function's attribute reference: onnx refuses to
    run it, and the checker must not read the stored value."""
    node = helper.make_node("Conv", ["x", "k"], ["y"], strides=[2, 2])
    node.attribute[0].ref_attr_name = "s"
    model = _model([node], [_array(np.ones((1, 1, 1, 1)), "k")], [1, 3, 3])
    path = _save(model, tmp_path / "linked.onnx")
    with pytest.raises(ValueError, match="linked attributes"):
        _run(model, np.ones((1, 3, 3)))
    assert _refused(path, _certificate(path, 1.001, sigmas=[1.001]))


def test_a_malformed_protobuf_is_a_rejection(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    result = check(path, _certificate(path, 1.0, shape=[1], sigmas=[]))
    assert not result.accepted
    assert "architecture" in result.reasons[0]


def test_float16_weights_are_read_exactly(tmp_path):
    weight = helper.make_tensor("w", TensorProto.FLOAT16, [1, 1], [np.float16(0.1)])
    path = _save(
        _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight], [1]), tmp_path / "h.onnx"
    )
    exact = float(np.float16(0.1))  # 0.0999755859375, not 0.1
    sigma = exact * (1 + 2**-50)
    assert check(path, _certificate(path, sigma, norm="inf", sigmas=[sigma])).accepted
    below = np.nextafter(exact, 0)
    assert _refused(path, _certificate(path, below, norm="inf", sigmas=[below]))


def test_zero_output_channels_are_a_constant_function_not_a_crash(tmp_path):
    model = _model(
        [
            helper.make_node("Conv", ["x", "k"], ["a"]),
            helper.make_node("Flatten", ["a"], ["b"], axis=1),
            helper.make_node("MatMul", ["b", "w"], ["y"]),
        ],
        [_array(np.ones((0, 1, 1, 1)), "k"), _array(np.ones((0, 2)), "w")],
        [1, 2, 2],
    )
    path = _save(model, tmp_path / "zero.onnx")
    assert check(path, _certificate(path, 0.0, sigmas=[0.0, 0.0])).accepted  # f is constant: true


def test_a_graph_whose_output_is_its_input_is_1_lipschitz_not_less(tmp_path):
    path = _save(
        _model([helper.make_node("Identity", ["x"], ["y"])], [], [3]), tmp_path / "id.onnx"
    )
    assert check(path, _certificate(path, 1.0, sigmas=[])).accepted
    assert _refused(path, _certificate(path, 0.999, sigmas=[]))


def test_an_unused_branch_neither_counts_nor_hides_a_weight(tmp_path):
    """A huge matrix computed but unused needs no claim; the used one still does."""
    model = _model(
        [
            helper.make_node("MatMul", ["x", "big"], ["unused"]),
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["y"]),
        ],
        [_array([[1e6]], "big"), _array([[3.0]], "w")],
        [1],
    )
    path = _save(model, tmp_path / "unused.onnx")
    assert check(path, _certificate(path, 3.001, sigmas=[3.001])).accepted
    assert _refused(path, _certificate(path, 1e6, sigmas=[2.999]))
    assert _refused(path, _certificate(path, 1e6, sigmas=[3.001, 1e6]))


# --------------------------------------------------------------------------------------------
# defeated attacks: claims, labels and proof data


@pytest.fixture
def lipsdp_chain(tmp_path: Path) -> Path:
    """``W1 relu(W0 x)`` with W0 = I, W1 = diag(1, 3): Lipschitz 3; LipSDP is valid with
    ρ = 9.01 and multipliers (1, 9) (the blocks ``[[ρ, -t], [-t, 2t - w²]]`` decouple)."""
    model = _model(
        [
            helper.make_node("MatMul", ["x", "a"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "b"], ["y"]),
        ],
        [_array(np.eye(2), "a"), _array(np.diag([1.0, 3.0]), "b")],
        [2],
    )
    return _save(model, tmp_path / "chain.onnx")


def test_the_lipsdp_chain_is_accepted_as_built(lipsdp_chain):
    certificate = _certificate(
        lipsdp_chain, 3.002, "lipsdp-neuron", rho=9.01, multipliers=[[1.0, 9.0]]
    )
    assert check(lipsdp_chain, certificate).accepted


@pytest.mark.parametrize(
    ("method", "norm", "section", "value"),
    [
        (
            "lipsdp-neuron",
            "2",
            {"rho": 9.01, "multipliers": [[9.0, 1.0]]},
            3.002,
        ),  # hidden order swapped
        (
            "lipsdp-layer",
            "2",
            {"rho": 9.01, "multipliers": [[1.0, 9.0]]},
            3.002,
        ),  # untied, relabelled
        (
            "lipsdp-neuron",
            "inf",
            {"rho": 9.01, "multipliers": [[1.0, 9.0]]},
            3.002,
        ),  # norm relabelled
        ("lipsdp-neuron", "2", {"rho": 8.99, "multipliers": [[1.0, 9.0]]}, 3.0),  # ρ below 9
        ("lipsdp-neuron", "2", {"rho": 9.01, "multipliers": [[1.0, -9.0]]}, 3.002),
        ("lipsdp-neuron", "2", {"rho": 9.01, "multipliers": [[1.0]]}, 3.002),  # wrong length
        ("product", "2", {"rho": 9.01, "multipliers": [[1.0, 9.0]]}, 3.002),  # no sigmas
        (
            "product",
            "2",
            {"sigmas": [3.001, 1.001], "rho": 9.01, "multipliers": [[1.0, 9.0]]},
            3.002,
        ),
        ("compositional", "2", {"block_norms": [[1.001], [3.001, 2.9]]}, 3.1),  # ||W1 W0|| = 3
        ("compositional", "inf", {"block_norms": [[1.001], [3.001, 3.001]]}, 2.9),
        ("lipsdp-sdp", "2", {"rho": 9.01, "multipliers": [[1.0, 9.0]]}, 3.002),  # unknown method
        ("product", "2.0", {"sigmas": [1.001, 3.001]}, 3.01),  # norm spelled "2.0"
        ("product", "1", {"sigmas": [1.001, 3.001]}, 3.01),
        ("product", "2", {"sigmas": [-1.001, -3.001]}, 3.01),  # negative sigmas, positive product
        ("product", "2", {"sigmas": [1.001, 3.001]}, -3.01),
    ],
)
def test_relabelled_or_lowered_claims_are_refused(lipsdp_chain, method, norm, section, value):
    assert _refused(lipsdp_chain, _certificate(lipsdp_chain, value, method, norm, **section))


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["upper"].update(value=float("nan")),
        lambda d: d["upper"].update(value=float("inf")),
        lambda d: d["upper"].update(value=True),
        lambda d: d["checkable"].update(sigmas=[float("nan"), 3.001]),
        lambda d: d.update(lower={"value": 1.0, "x": [float("nan"), 0.0], "y": [0.0, 0.0]}),
        lambda d: d.update(lower={"value": float("nan"), "x": [1.0, 0.0], "y": [0.0, 0.0]}),
        lambda d: d.update(lower=[1.0]),
        lambda d: d["upper"].update(value=2.0**65),
    ],
)
def test_non_numbers_in_claims_are_input_errors_or_rejections(lipsdp_chain, edit):
    certificate = _certificate(lipsdp_chain, 3.01, sigmas=[1.001, 3.001])
    assert check(lipsdp_chain, certificate).accepted
    assert _refused(lipsdp_chain, _rewrite(certificate, edit))


def test_lower_bound_witnesses_are_exact(lipsdp_chain):
    """Witnesses on the slope-3 coordinate show ratio 3 exactly; 3 + 2^-40 is refused, as are
    equal witnesses and ones where relu is flat."""
    good = {"value": 3.0, "x": [0.0, 1.0], "y": [0.0, 0.0]}
    assert check(
        lipsdp_chain, _certificate(lipsdp_chain, 3.01, lower=good, sigmas=[1.001, 3.001])
    ).accepted
    for lower in (
        {"value": 3.0 + 2**-40, "x": [0.0, 1.0], "y": [0.0, 0.0]},
        {"value": 0.0, "x": [1.0, 1.0], "y": [1.0, 1.0]},
        {"value": 1.0, "x": [0.0, -1.0], "y": [0.0, -2.0]},
        {"value": 3.5, "x": [0.0, 1.0, 0.0], "y": [0.0, 0.0, 0.0]},
    ):
        certificate = _certificate(lipsdp_chain, 3.01, lower=lower, sigmas=[1.001, 3.001])
        assert _refused(lipsdp_chain, certificate)


def test_tanh_witness_enclosures_do_not_round_up(tmp_path):
    """Witnesses 0.5 and 0.5 + 2^-30 of tanh show a ratio of about tanh'(0.5) = 0.786 (through
    interval enclosures): 0.78 is confirmed, 1 (the upper bound) is refused."""
    model = _model([helper.make_node("Tanh", ["x"], ["y"])], [], [1])
    path = _save(model, tmp_path / "tanh.onnx")
    lower = {"value": 1.0, "x": [0.5], "y": [0.5 + 2**-30]}
    assert _refused(path, _certificate(path, 1.0, lower=lower, sigmas=[]))
    lower = {"value": 0.78, "x": [0.5], "y": [0.5 + 2**-30]}  # tanh'(0.5) = 0.7864
    assert check(path, _certificate(path, 1.0, lower=lower, sigmas=[])).accepted


def test_residual_sigmas_in_the_wrong_order_are_refused(tmp_path):
    """``relu(A x) + B x``: each σ is proven for its own matrix, so swapping them fails."""
    model = _model(
        [
            helper.make_node("MatMul", ["x", "a"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["x", "b"], ["s"]),
            helper.make_node("Add", ["r", "s"], ["y"]),
        ],
        [_array([[1.0]], "a"), _array([[5.0]], "b")],
        [1],
    )
    path = _save(model, tmp_path / "res.onnx")
    assert check(path, _certificate(path, 6.01, sigmas=[1.001, 5.001])).accepted
    assert _refused(path, _certificate(path, 6.01, sigmas=[5.001, 1.001]))
    assert _refused(path, _certificate(path, 5.01, sigmas=[1.001, 5.001]))  # the sum is not a max
    assert _refused(
        path, _certificate(path, 6.01, "compositional", block_norms=[[1.001], [5.001, 5.001]])
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_norm_claims_a_hair_below_the_truth_are_refused(seed, norm, tmp_path):
    """Ill-conditioned matrices spanning 2^-60..2^60, huge (2^62) and subnormal entries: a σ one
    part in 10^12 below the true norm is refused, one just above accepted."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    v, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    scale = [2.0**62, 2.0**10, 2.0**-60][seed % 3] if seed < 3 else 1.0
    weight = (u[:, :3] * np.array([scale, scale * 2**-30, 5e-324])) @ v
    path = _save(
        _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_array(weight.T, "w")], [3]),
        tmp_path / "n.onnx",
    )
    exact = np.linalg.norm(weight, 2 if norm == "2" else np.inf)
    for factor, accepted in ((1 - 1e-12, False), (1 + 1e-9, True)):
        sigma = float(exact * factor)
        result = check(path, _certificate(path, sigma, norm=norm, sigmas=[sigma]))
        assert result.accepted is accepted, (factor, result.reasons)


RELU = {"kind": "relu", "slopes": [0, 1]}


def _layers(first: str, act: dict, second: str) -> list[dict]:
    return [
        {"weight": first, "bias": None, "activation": act},
        {"weight": second, "bias": None, "activation": None},
    ]


@pytest.mark.parametrize(
    ("layers", "value"),
    [
        (_layers("w", RELU, "w"), 6.01),  # a tensor used twice, one unused
        (_layers("v", RELU, "w"), 6.01),  # the order swapped: σ claims no longer fit
        (_layers("w", {"kind": "sigmoid", "slopes": [0, 1]}, "v"), 6.01),  # slopes misstated
        (_layers("w", {"kind": "sigmoid", "slopes": [0, 0.25]}, "v"), 1.4),  # 2·3/4 = 1.5 > 1.4
        (_layers("w", {"kind": "leaky_relu", "slope": 2.0, "slopes": [2, 1]}, "v"), 6.01),
        (_layers("w", {"kind": "identity", "slopes": [1, 1]}, "v")[:1], 2.01),  # v unused
    ],
)
def test_safetensors_layers_relabelled_or_reused_are_refused(layers, value, tmp_path):
    path = _safetensors(tmp_path / "w.safetensors", {"w": ([1, 1], [2.0]), "v": ([1, 1], [3.0])})
    good = _safetensors_certificate(path, _layers("w", RELU, "v"), 6.01, [1], sigmas=[2.001, 3.001])
    assert check(path, good).accepted
    sigmas = [2.001, 3.001][: len(layers)]
    assert _refused(path, _safetensors_certificate(path, layers, value, [1], sigmas=sigmas))
