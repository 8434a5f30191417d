"""The independent checker: accepts lipguard's checkable certificates, rejects every mutation."""

from __future__ import annotations

import copy
import functools
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import lipguard.bounds.compositional as compositional
from lipguard.bounds import certify
from lipguard.check import check, claims_sha256
from lipguard.check.__main__ import main
from lipguard.cli import app
from lipguard.io import save_checkpoint
from tests.conftest import lipsdp_fixture

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def dense(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    act = ACTIVATIONS[kind]
    return nn.Sequential(
        nn.Linear(4, 8, dtype=dtype),
        act(),
        nn.Linear(8, 6, dtype=dtype),
        act(),
        nn.Linear(6, 3, dtype=dtype),
    ).eval()


class Case:
    """A model, its weights file and checkable certificate, and a place to write mutations."""

    def __init__(self, model: nn.Module, method: str, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model, self.folder = model, folder
        self.weights = folder / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(self.weights))
        self.data = certify(model, method=method, checkable=True).to_dict()  # type: ignore[arg-type]

    def run(self, data: dict | None = None, rehash: bool = True, weights: Path | None = None):
        data = copy.deepcopy(self.data if data is None else data)
        if rehash:  # an adversary recomputes the hash: the proof itself must refuse the edit
            data["claims_sha256"] = claims_sha256(data)
        path = self.folder / "mutated.json"
        path.write_text(json.dumps(data))
        return check(weights or self.weights, path)


def dp_case(model: nn.Module, folder: Path) -> Case:
    """A compositional certificate whose bound is the DP's: lipguard's fast LipSDP-style
    certificate switched off (as for networks above its size limit)."""
    saved, compositional.FAST_LMI_ROWS = compositional.FAST_LMI_ROWS, 0
    try:
        return Case(model, "compositional", folder)
    finally:
        compositional.FAST_LMI_ROWS = saved


#: the fixture certificates: lipguard's method names, and compositional's two proofs
METHODS = ("product", "lipsdp", "lipsdp-layer", "compositional", "compositional-dp")


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("checker")
    found = {m: Case(dense("relu"), m, root / m) for m in METHODS if m != "compositional-dp"}
    found["compositional-dp"] = dp_case(dense("relu"), root / "dp")
    assert "multipliers" in found["compositional"].data["checkable"]  # the fast LipSDP won
    assert "block_norms" in found["compositional-dp"].data["checkable"]
    return found


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        (k, m)
        for k in ACTIVATIONS
        for m in ("product", "lipsdp")
        if k != "identity" or m == "product"
    ],
)
def test_accepts_checkable_certificates_of_dense_nets(kind, method, tmp_path):
    case = Case(dense(kind, seed=1), method, tmp_path)
    assert case.data["upper"]["method"] == ("product" if method == "product" else "lipsdp-neuron")
    result = case.run(rehash=False)
    assert result.accepted, result.reasons
    assert result.upper == case.data["upper"]["value"]
    assert result.lower is True


def test_accepts_float64_weights_and_auto(tmp_path):
    case = Case(dense("tanh", seed=2, dtype=torch.float64), "auto", tmp_path)
    assert case.data["upper"]["method"] == "lipsdp-neuron"
    assert case.run().accepted


@pytest.mark.parametrize("kind", list(ACTIVATIONS))
def test_accepts_compositional_and_lipsdp_layer_certificates(kind, tmp_path):
    model = dense(kind, seed=4)
    case = Case(model, "compositional", tmp_path / "c")
    proof = "block_norms" if kind == "identity" else "multipliers"  # identity: no fast LipSDP
    assert proof in case.data["checkable"], sorted(case.data["checkable"])
    dp = dp_case(model, tmp_path / "dp")
    assert "block_norms" in dp.data["checkable"]
    tied = kind in ("leaky_relu", "sigmoid")  # α·β > 0 and β < 1 (relu: the fixture cases)
    layer = Case(model, "lipsdp-layer", tmp_path / "l") if tied else None
    for item in (case, dp, layer):
        if item is not None:
            result = item.run(rehash=False)
            assert result.accepted, result.reasons
            assert result.upper == item.data["upper"]["value"]
            assert result.lower is True
    assert case.data["upper"]["value"] <= dp.data["upper"]["value"] * (1 + 2.0**-13)
    if layer is not None:
        assert layer.data["upper"]["method"] == "lipsdp-layer"
        assert all(len(set(t)) == 1 for t in layer.data["checkable"]["multipliers"])


@pytest.mark.parametrize(
    ("name", "method", "published"),
    [
        ("random_weights", "lipsdp", 36.482),
        ("mnist_weights", "lipsdp", 24.37),
        ("random_weights", "product", 43.31),
        ("random_weights", "lipsdp-layer", 39.839),
        ("mnist_weights", "compositional", 24.5),
    ],
)
def test_accepts_the_lipsdp_fixture_networks(name, method, published, tmp_path):
    case = Case(lipsdp_fixture(name), method, tmp_path)
    result = case.run(rehash=False)
    assert result.accepted, result.reasons
    tolerance = 0.1 if method == "compositional" else 0.01  # a time-budgeted descent
    assert result.upper == pytest.approx(published, abs=tolerance)


def test_accepts_the_dp_of_the_mnist_fixture(tmp_path):
    case = dp_case(lipsdp_fixture("mnist_weights"), tmp_path)
    result = case.run(rehash=False)
    assert result.accepted, result.reasons
    assert result.upper == pytest.approx(27.765, abs=0.01)  # lipguard's DP: 27.7650


def test_rejects_an_edit_without_rehash(cases):
    data = copy.deepcopy(cases["product"].data)
    data["upper"]["value"] *= 2
    result = cases["product"].run(data, rehash=False)
    assert not result.accepted
    assert "claims_sha256" in result.reasons[0]


def test_a_tight_product_claim_is_accepted_and_one_ulp_less_is_not(cases):
    case = cases["product"]
    data = copy.deepcopy(case.data)
    exact = math.prod(Fraction(s) for s in data["checkable"]["sigmas"])  # ReLU: β = 1
    tight = float(exact)
    tight = tight if Fraction(tight) >= exact else math.nextafter(tight, math.inf)
    data["upper"]["value"] = tight
    assert case.run(data).accepted
    data["upper"]["value"] = math.nextafter(tight, 0.0)
    result = case.run(data)
    assert not result.accepted
    assert "< the product" in " ".join(result.reasons)


@pytest.mark.parametrize("factor", [0.5, 1 - 1e-6])
def test_rejects_a_lowered_sigma(cases, factor):
    data = copy.deepcopy(cases["product"].data)
    data["checkable"]["sigmas"][1] *= factor
    result = cases["product"].run(data)
    assert not result.accepted
    assert "||W_1||_2" in " ".join(result.reasons)


@pytest.mark.parametrize("method", ["lipsdp", "lipsdp-layer", "compositional"])
def test_rejects_changed_multipliers(cases, method):
    case = cases[method]
    for change in (lambda t: [0.0, *t[1:]], lambda t: [v / 2 for v in t]):
        data = copy.deepcopy(case.data)
        data["checkable"]["multipliers"][-1] = change(data["checkable"]["multipliers"][-1])
        result = case.run(data)
        assert not result.accepted
        untied = method == "lipsdp-layer" and len(set(data["checkable"]["multipliers"][-1])) > 1
        reason = "must be equal" if untied else "matrix inequality"
        assert reason in " ".join(result.reasons), result.reasons
    data = copy.deepcopy(case.data)
    data["checkable"]["rho"] *= 0.9
    assert not case.run(data).accepted


@pytest.mark.parametrize("factor", [0.0, 0.5, 1 - 1e-6])
def test_rejects_a_lowered_block_norm(cases, factor):
    case = cases["compositional-dp"]
    for j, row in enumerate(case.data["checkable"]["block_norms"]):
        for i in range(len(row)):
            data = copy.deepcopy(case.data)
            data["checkable"]["block_norms"][j][i] *= factor
            result = case.run(data)
            assert not result.accepted
            assert f"||W_{j}⋯W_{i}|| <=" in " ".join(result.reasons), result.reasons


def _cut_set_sum(norms: list[list[Fraction]], centre: Fraction, radius: Fraction) -> Fraction:
    """The DP's value by brute force: the sum over every set of cut hidden layers of the product
    of its blocks' ``c^(inner layers)·σ(i, j)`` and of ``g`` at each cut (one activation kind)."""
    depth, total = len(norms) - 1, Fraction(0)
    for mask in range(2**depth):
        cuts = [k for k in range(depth) if mask >> k & 1]
        starts, ends = [0, *(k + 1 for k in cuts)], [*cuts, depth]
        term = radius ** len(cuts)
        for i, j in zip(starts, ends, strict=True):
            term *= centre ** (j - i) * norms[j][i]
        total += term
    return total


def test_a_tight_dp_claim_is_accepted_and_one_ulp_less_is_not(cases, tmp_path):
    for case in (cases["compositional-dp"], dp_case(lipsdp_fixture("random_weights"), tmp_path)):
        data = copy.deepcopy(case.data)
        norms = [[Fraction(s) for s in row] for row in data["checkable"]["block_norms"]]
        exact = _cut_set_sum(norms, Fraction(1, 2), Fraction(1, 2))  # ReLU: [0, 1]
        tight = float(exact)
        tight = tight if Fraction(tight) >= exact else math.nextafter(tight, math.inf)
        assert tight <= case.data["upper"]["value"]
        data["upper"]["value"] = tight
        data["lower"] = None
        assert case.run(data).accepted
        data["upper"]["value"] = math.nextafter(tight, 0.0)
        result = case.run(data)
        assert not result.accepted
        assert "the DP's" in " ".join(result.reasons)


def _edit_weight(case: Case, scale: float) -> tuple[Path, dict]:
    state = {k: v.clone() for k, v in case.model.state_dict().items()}
    state["2.weight"][0, 0] *= scale
    path = case.folder / "edited.safetensors"
    save_file(state, str(path))
    model = copy.deepcopy(case.model)
    model.load_state_dict(state)
    from lipguard.bounds.certificate import weights_sha256

    data = copy.deepcopy(case.data)
    data["weights_sha256"] = weights_sha256(model)
    return path, data


@pytest.mark.parametrize("method", ["product", "lipsdp", "compositional-dp"])
def test_a_changed_weight_is_refused_or_the_bound_still_holds(cases, method):
    case = cases[method]
    path, data = _edit_weight(case, 10.0)
    result = case.run(weights=path)
    assert not result.accepted
    assert "weights_sha256" in result.reasons[0]
    result = case.run(data, weights=path)  # hash edited to match: the proof itself fails
    assert not result.accepted
    assert "weights_sha256" not in " ".join(result.reasons)
    path, data = _edit_weight(case, 1 + 2.0**-20)  # tiny: if accepted, it is proven
    result = case.run(data, weights=path)
    if result.accepted:
        weights = [
            w.detach().double().numpy() for n, w in case.model.state_dict().items() if "weight" in n
        ]
        weights[1][0, 0] *= 1 + 2.0**-20
        assert math.prod(np.linalg.norm(w, 2) for w in weights) >= case.data["lower"]["value"]


@pytest.mark.parametrize(
    ("where", "edit", "reason"),
    [
        ("upper", lambda u: u.update(norm="inf"), ""),  # ℓ2 claims, ℓ∞ proofs: they fail
        ("upper", lambda u: u.update(norm="3"), "ℓ2 and ℓ∞"),
        ("upper", lambda u: u.update(scope="ball"), "global"),
        ("upper", lambda u: u.update(sound=False), "sound"),
        ("upper", lambda u: u.update(method="lipsdp-fast"), "not checkable"),
        ("checkable", lambda c: c.update(format="lipguard-checkable/0"), "nothing to check"),
        ("checkable", lambda c: c["layers"].pop(1), "architecture"),
        (
            "checkable",
            lambda c: c["layers"][0].update(
                activation={"kind": "leaky_relu", "slope": 2.0, "slopes": [2.0, 1.0]}
            ),
            "outside [0, 1]",
        ),
        (
            "checkable",
            lambda c: c["layers"][0].update(activation={"kind": "gelu", "slopes": [0, 1]}),
            "family",
        ),
        ("checkable", lambda c: c["layers"][0]["activation"].update(slopes=[0.0, 0.5]), "slopes"),
        ("lower", lambda w: w.update(value=w["value"] * 1.001), "witnesses"),
        ("lower", lambda w: w.update(x=w["y"]), "witnesses"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_rejects_relabelled_fields(cases, method, where, edit, reason):
    data = copy.deepcopy(cases[method].data)
    edit(data[where])
    result = cases[method].run(data)
    assert not result.accepted
    assert reason in " ".join(result.reasons), result.reasons


def test_rejects_relabelled_methods_and_sigmoid_slopes(cases, tmp_path):
    relabelled = [
        ("product", "lipsdp-neuron"),
        ("lipsdp", "product"),
        ("lipsdp", "lipsdp-layer"),  # per-neuron multipliers are not LipSDP-Layer's
        ("lipsdp-layer", "product"),
        ("compositional", "product"),
        ("compositional-dp", "product"),
        ("compositional-dp", "lipsdp-neuron"),
        ("compositional-dp", "lipsdp-layer"),
        ("product", "compositional"),
    ]
    for method, other in relabelled:
        data = copy.deepcopy(cases[method].data)
        data["upper"]["method"] = other
        assert not cases[method].run(data).accepted, (method, other)
    case = Case(dense("sigmoid"), "product", tmp_path)
    data = copy.deepcopy(case.data)
    data["checkable"]["layers"][0]["activation"]["slopes"] = [0.0, 0.2]
    assert not case.run(data).accepted
    data = copy.deepcopy(case.data)
    del data["checkable"]
    result = case.run(data)
    assert not result.accepted
    assert "nothing to check" in result.reasons[0]


def _leaves(data: object, path: tuple = ()) -> list[tuple]:
    if isinstance(data, dict):
        return [leaf for key in sorted(data) for leaf in _leaves(data[key], (*path, key))]
    if isinstance(data, list):
        return [leaf for i, item in enumerate(data) for leaf in _leaves(item, (*path, i))]
    return [path] if isinstance(data, float) else []


def _true_claims(case: Case, data: dict) -> bool:
    """Oracle (numpy, float64): could the mutated claims be true? False when one is surely false."""
    weights = [
        w.detach().double().numpy() for n, w in case.model.state_dict().items() if "weight" in n
    ]
    section, upper, lower = data["checkable"], data["upper"]["value"], data["lower"]
    if "sigmas" in section and any(
        s < np.linalg.norm(w, 2) * (1 - 1e-9)
        for s, w in zip(section["sigmas"], weights, strict=True)
    ):
        return False
    for j, row in enumerate(section.get("block_norms", [])):
        for i, s in enumerate(row):
            block = functools.reduce(np.matmul, weights[i : j + 1][::-1])  # W_j ⋯ W_i
            if s < np.linalg.norm(block, 2) * (1 - 1e-9):
                return False

    def f(x: np.ndarray) -> np.ndarray:
        for i, (name, value) in enumerate(case.model.state_dict().items()):
            x = value.double().numpy() @ x if "weight" in name else x + value.double().numpy()
            if "bias" in name and i < len(case.model.state_dict()) - 1:
                x = np.maximum(x, 0)
        return x

    x, y = np.array(lower["x"]), np.array(lower["y"])
    ratio = np.linalg.norm(f(x) - f(y)) / max(np.linalg.norm(x - y), 1e-300)
    return bool(ratio >= lower["value"] * (1 - 1e-9) and upper >= ratio * (1 - 1e-9))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_mutations_are_accepted_only_when_still_true(cases, data):
    method = data.draw(st.sampled_from(METHODS))
    case = cases[method]
    mutated = copy.deepcopy(case.data)
    paths = [
        p
        for p in _leaves(mutated)
        if p[0] in ("upper", "lower", "checkable") and "details" not in p
    ]
    path = data.draw(st.sampled_from(paths))
    factor = data.draw(
        st.sampled_from([0.0, -1.0, 0.5, 0.999, 1 - 2.0**-40, 1 + 2.0**-40, 1.5, 2.0])
    )
    holder = mutated
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] *= factor
    result = case.run(mutated)
    if result.accepted:
        assert _true_claims(case, mutated), path


def test_importing_the_checker_loads_no_torch_and_no_other_lipguard_module():
    code = (
        "import lipguard.check, sys; assert 'torch' not in sys.modules; "
        "print([m for m in sys.modules if m.startswith('lipguard')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # a printed list of module names
    assert loaded
    assert all(m == "lipguard" or m.startswith("lipguard.check") for m in loaded)


def test_command_line_exit_codes(cases, capsys):
    case = cases["product"]
    good = case.folder / "good.json"
    good.write_text(json.dumps(case.data))
    assert main([str(case.weights), str(good)]) == 0
    bad = copy.deepcopy(case.data)
    bad["upper"]["value"] /= 10
    bad["claims_sha256"] = claims_sha256(bad)
    wrong = case.folder / "wrong.json"
    wrong.write_text(json.dumps(bad))
    assert main([str(case.weights), str(wrong)]) == 1
    del bad["upper"]["value"]
    wrong.write_text(json.dumps(bad))
    assert main([str(case.weights), str(wrong)]) == 2
    assert main([str(case.folder / "missing.safetensors"), str(good)]) == 2
    assert main([str(case.weights), str(case.folder / "missing.json")]) == 2
    lines = capsys.readouterr()
    assert "Traceback" not in lines.out + lines.err
    process = subprocess.run(
        [sys.executable, "-m", "lipguard.check", str(case.weights), str(good)],
        capture_output=True,
        text=True,
    )
    assert process.returncode == 0
    assert "accepted" in process.stdout


def test_cli_certify_checkable_then_check(tmp_path):
    model = dense("relu", seed=3)
    model_path = save_checkpoint(model, tmp_path / "model", input_shape=(4,))
    certificate = tmp_path / "cert.json"
    result = CliRunner().invoke(
        app,
        [
            "certify",
            str(model_path),
            "--checkable",
            "--method",
            "product",
            "--save",
            str(certificate),
        ],
    )
    assert result.exit_code == 0, result.output
    assert check(tmp_path / "model.safetensors", certificate).accepted
    infinity = tmp_path / "inf.json"
    arguments = [
        "certify",
        str(model_path),
        "--checkable",
        "--norm",
        "inf",
        "--save",
        str(infinity),
    ]
    assert CliRunner().invoke(app, arguments).exit_code == 0
    assert check(tmp_path / "model.safetensors", infinity).accepted
    refused = CliRunner().invoke(app, [*arguments[:-2], "--method", "lipsdp"])
    assert refused.exit_code == 2
    assert "ℓ2" in refused.output or "lipsdp" in refused.output
