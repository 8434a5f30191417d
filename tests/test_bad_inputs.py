"""Bad input at every boundary of the command line: each case exits with code 2, prints one
line (no traceback) and changes no file."""

from __future__ import annotations

import json
import math
import pickle
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lipguard.attacks import ThreatModel
from lipguard.bounds import lipschitz_bound
from lipguard.cli import app
from lipguard.errors import LipguardError
from lipguard.io import load_checkpoint, save_checkpoint
from lipguard.monitor import AuditStore, Checkpoint, LipschitzMonitor
from lipguard.nn import LipschitzMLP
from lipguard.pipeline import load_config
from lipguard.smoothing import SmoothedClassifier

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A folder of good and bad files the cases point at."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save_checkpoint(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), root / "net")
    save_checkpoint(nn.Sequential(nn.Linear(3, 1)), root / "reward")
    save_checkpoint(LipschitzMLP(3, 1, (4,), lipschitz=1.0), root / "mlp")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    np.savez(root / "data.npz", x=x, y=np.array([0, 1] * 4))
    np.savez(root / "wide.npz", x=rng.normal(size=(8, 5)).astype(np.float32))
    np.savetxt(root / "data.csv", np.c_[x, np.arange(8) % 2], delimiter=",")
    np.savetxt(root / "log.csv", np.c_[x, x.sum(1)], delimiter=",")
    np.savez(root / "nan.npz", x=np.full((4, 3), np.nan, dtype=np.float32))
    (root / "empty.csv").write_text("")
    (root / "text.csv").write_text("a,b,c\nd,e,f\n")
    (root / "ragged.csv").write_text("1,2,3\n4,5\n")
    (root / "pickled.npy").write_bytes(pickle.dumps([1, 2, 3]))
    np.save(root / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)

    def variant(name: str, architecture, weights: bytes | None = None):
        (root / f"{name}.json").write_text(
            architecture if isinstance(architecture, str) else json.dumps(architecture)
        )
        (root / f"{name}.safetensors").write_bytes(
            (root / "net.safetensors").read_bytes() if weights is None else weights
        )

    good = json.loads((root / "net.json").read_text())
    linear = {"type": "Linear", "in_features": 3, "out_features": 2, "bias": True}
    variant("empty_weights", good, b"")
    variant("pickled_weights", good, pickle.dumps({"0.weight": torch.zeros(4, 3)}))
    variant("wrong_types", {**good, "model": {**linear, "in_features": "three"}})
    variant("negative", {**good, "model": {**linear, "in_features": -3}})
    variant("huge", {**good, "model": {**linear, "in_features": 10**6, "out_features": 10**5}})
    deep = '{"type": "Sequential", "children": [' * 5000 + json.dumps(linear) + "]}" * 5000
    variant("deep", f'{{"format": "{good["format"]}", "model": {deep}, "input_shape": null}}')
    nested = '{"type": "Sequential", "children": [' * 100 + json.dumps(linear) + "]}" * 100
    variant("nested", f'{{"format": "{good["format"]}", "model": {nested}, "input_shape": null}}')
    variant("mismatched", {**good, "model": {"type": "Sequential", "children": [linear]}})
    variant("not_json", "{ this is not json")
    variant("not_object", "[1, 2, 3]")
    variant("nan_mlp", json.loads((root / "mlp.json").read_text()) | {})
    mlp = json.loads((root / "mlp.json").read_text())
    mlp["model"]["lipschitz"] = "NaN"
    (root / "nan_mlp.json").write_text(json.dumps(mlp).replace('"NaN"', "NaN"))
    (root / "nan_mlp.safetensors").write_bytes((root / "mlp.safetensors").read_bytes())
    (root / "garbage.onnx").write_bytes(b"\x00\x01 not an onnx graph")
    _inconsistent_onnx(root / "inconsistent.onnx")
    (root / "cert.json").write_text("{ not a certificate")
    (root / "bad.toml").write_text("timesteps = 'many'\n")
    (root / "nan.toml").write_text("lipschitz = nan\n")
    (root / "method.toml").write_text('certify_method = "guess"\n')
    (root / "broken.toml").write_text("lipschitz = = 3\n")
    connection = sqlite3.connect(root / "foreign.db")
    connection.execute("CREATE TABLE users (name TEXT)")
    connection.commit()
    connection.close()
    (root / "previous_run").mkdir()
    (root / "previous_run" / "results.json").write_text('{"kept": true}')
    return root


def _inconsistent_onnx(path: Path) -> None:
    """A Gemm whose weight takes 3 features under a declared input of 5."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "inconsistent",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


CERTIFY = ["certify", "{net}.json"]
ATTACK = ["attack", "{net}.json", "--data", "{data}.npz", "--eps", "0.1"]
SMOOTH = ["smooth", "certify", "{net}.json", "--data", "{data}.npz", "--sigma", "0.25"]
MONITOR = ["monitor", "{log}.csv", "--lipschitz", "1"]

CASES = {
    # certify / verify: model files
    "missing model": ["certify", "{root}/absent.json"],
    "empty safetensors": ["certify", "{root}/empty_weights.json"],
    "pickled safetensors": ["certify", "{root}/pickled_weights.json"],
    "architecture with wrong types": ["certify", "{root}/wrong_types.json"],
    "negative layer size": ["certify", "{root}/negative.json"],
    "a 160 GB layer": ["certify", "{root}/huge.json"],
    "nesting 5000 deep": ["certify", "{root}/deep.json"],
    "nesting 100 deep": ["certify", "{root}/nested.json"],
    "mismatched weights": ["certify", "{root}/mismatched.json"],
    "architecture not JSON": ["certify", "{root}/not_json.json"],
    "architecture not an object": ["certify", "{root}/not_object.json"],
    "lipschitz NaN in an MLP": ["certify", "{root}/nan_mlp.json"],
    "garbage ONNX": ["certify", "{root}/garbage.onnx"],
    "ONNX with inconsistent dimensions": ["certify", "{root}/inconsistent.onnx"],
    "norm 3": [*CERTIFY, "--norm", "3"],
    "unknown method": [*CERTIFY, "--method", "guess"],
    "unreadable input shape": [*CERTIFY, "--input-shape", "a,b"],
    "save into a missing folder": [*CERTIFY, "--save", "{root}/nowhere/cert.json"],
    "save over an existing file": [*CERTIFY, "--save", "{root}/data.csv"],
    "missing certificate": ["verify", "{root}/absent-cert.json", "{net}.json"],
    "certificate not JSON": ["verify", "{root}/cert.json", "{net}.json"],
    # attack
    "NaN bounds": [*ATTACK, "--bounds", "nan,nan"],
    "reversed bounds": [*ATTACK, "--bounds", "1,0"],
    "NaN epsilon": ["attack", "{net}.json", "--data", "{data}.npz", "--eps", "nan"],
    "negative epsilon": ["attack", "{net}.json", "--data", "{data}.npz", "--eps", "-1"],
    "zero steps": [*ATTACK, "--steps", "0"],
    "zero batch size": [*ATTACK, "--batch-size", "0"],
    "empty CSV": ["attack", "{net}.json", "--data", "{root}/empty.csv", "--eps", "0.1"],
    "text CSV": ["attack", "{net}.json", "--data", "{root}/text.csv", "--eps", "0.1"],
    "ragged CSV": ["attack", "{net}.json", "--data", "{root}/ragged.csv", "--eps", "0.1"],
    "label column out of range": [
        "attack",
        "{net}.json",
        "--data",
        "{root}/data.csv",
        "--eps",
        "0.1",
        "--label-column",
        "7",
    ],
    "pickled npy": ["attack", "{net}.json", "--data", "{root}/pickled.npy", "--eps", "0.1"],
    "object npy": ["attack", "{net}.json", "--data", "{root}/objects.npy", "--eps", "0.1"],
    "NaN inputs": ["attack", "{net}.json", "--data", "{root}/nan.npz", "--eps", "0.1"],
    "inputs the model cannot take": [
        "attack",
        "{net}.json",
        "--data",
        "{root}/wide.npz",
        "--eps",
        "0.1",
    ],
    "unknown objective": [*ATTACK, "--objective", "guess"],
    "output into a missing folder": [*ATTACK, "--out", "{root}/nowhere/out.json"],
    # smooth certify
    "one-output model without --output-range": [
        "smooth",
        "certify",
        "{root}/reward.json",
        "--data",
        "{data}.npz",
        "--sigma",
        "0.25",
    ],
    "NaN sigma": ["smooth", "certify", "{net}.json", "--data", "{data}.npz", "--sigma", "nan"],
    "zero sigma": ["smooth", "certify", "{net}.json", "--data", "{data}.npz", "--sigma", "0"],
    "zero samples": [*SMOOTH, "--n", "0"],
    "alpha 2": [*SMOOTH, "--alpha", "2"],
    "reversed output range": [*SMOOTH, "--output-range", "1,-1"],
    "NaN output range": [*SMOOTH, "--output-range", "nan,1"],
    "NaN epsilon (smoothing)": [*SMOOTH, "--output-range", "-1,1", "--eps", "nan"],
    "smoothing data missing": [
        "smooth",
        "certify",
        "{net}.json",
        "--data",
        "{root}/absent.npz",
        "--sigma",
        "0.25",
    ],
    # monitor and audit
    "NaN tolerance": [*MONITOR, "--tolerance", "nan"],
    "NaN noise floor": [*MONITOR, "--noise-floor", "nan"],
    "negative batch size": [*MONITOR, "--batch-size", "-1"],
    "NaN Lipschitz bound": ["monitor", "{log}.csv", "--lipschitz", "nan"],
    "zero window": [*MONITOR, "--window", "0"],
    "unknown pairs mode": [*MONITOR, "--pairs", "some"],
    "reward column out of range": [*MONITOR, "--reward-column", "9"],
    "empty log": ["monitor", "{root}/empty.csv", "--lipschitz", "1"],
    "norm 1 for the monitor": [*MONITOR, "--norm", "1"],
    "empty key": [*MONITOR, "--db", "{root}/new.db", "--key", ""],
    "audit store into a missing folder": [*MONITOR, "--db", "{root}/nowhere/a.db"],
    "audit store in someone else's database": [*MONITOR, "--db", "{root}/foreign.db"],
    "audit store in a text file": [*MONITOR, "--db", "{root}/data.csv"],
    "checkpoint without a store": [*MONITOR, "--checkpoint", "{root}/cp.json"],
    "verify a missing log": ["audit", "verify", "{root}/absent.db"],
    "report a missing log": ["audit", "report", "{root}/absent.db"],
    "checkpoint a missing log": ["audit", "checkpoint", "{root}/absent.db", "--out", "{root}/c"],
    "unreadable expected head": ["audit", "verify", "{root}/absent.db", "--expect-head", "x"],
    "missing checkpoint file": [
        "audit",
        "verify",
        "{root}/absent.db",
        "--checkpoint",
        "{root}/absent-cp.json",
    ],
    # run
    "config value of the wrong type": ["run", "--config", "{root}/bad.toml", "--out", "{root}/r"],
    "lipschitz = nan in a config": ["run", "--config", "{root}/nan.toml", "--out", "{root}/r"],
    "unknown certify method": ["run", "--config", "{root}/method.toml", "--out", "{root}/r"],
    "invalid TOML": ["run", "--config", "{root}/broken.toml", "--out", "{root}/r"],
    "missing config": ["run", "--config", "{root}/absent.toml", "--out", "{root}/r"],
    "a previous run's folder": ["run", "--quick", "--out", "{root}/previous_run"],
}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_with_exit_code_two(files, case):
    names = {"root": files, "net": files / "net", "data": files / "data", "log": files / "log"}
    arguments = [part.format(**names) for part in CASES[case]]
    before = _snapshot(files)
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, (case, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, (case, result.output)
    assert lines[0].startswith("error:"), (case, result.output)
    assert "Traceback" not in result.output
    assert _snapshot(files) == before, case


def _monitor_with_nan_bound():
    monitor = LipschitzMonitor(lambda states: np.full(len(states), math.nan), drift=False)
    monitor.observe(np.zeros((2, 3)), np.zeros(2))


API_CASES = {
    "monitor: NaN bound": lambda: LipschitzMonitor(math.nan),
    "monitor: NaN tolerance": lambda: LipschitzMonitor(1.0, tolerance=math.nan),
    "monitor: NaN noise floor": lambda: LipschitzMonitor(1.0, noise_floor=math.nan),
    "monitor: zero window": lambda: LipschitzMonitor(1.0, window=0),
    "monitor: unknown pairs": lambda: LipschitzMonitor(1.0, pairs="some"),
    "monitor: NaN envelope": lambda: LipschitzMonitor(
        1.0, reference=(np.zeros((4, 2)), np.zeros(4)), envelope_radius=math.nan
    ),
    "monitor: NaN reference": lambda: LipschitzMonitor(
        1.0, reference=(np.full((4, 2), math.nan), np.zeros(4))
    ),
    "monitor: L(s) returns NaN": _monitor_with_nan_bound,
    "monitor: NaN observation": lambda: LipschitzMonitor(1.0).observe(
        np.full((2, 3), math.nan), np.zeros(2)
    ),
    "monitor: ragged observation": lambda: LipschitzMonitor(1.0).observe(
        np.zeros((2, 3)), np.zeros(3)
    ),
    "store: empty key": lambda: AuditStore("unused.db", key=""),
    "store: memory": lambda: AuditStore(":memory:"),
    "store: reading a missing log": lambda: AuditStore("absent.db", create=False),
    "checkpoint: not one": lambda: Checkpoint.from_dict({"count": 3}),
    "checkpoint: unreadable head": lambda: Checkpoint.parse_head("12:xyz"),
    "threat: NaN budget": lambda: ThreatModel(math.nan),
    "threat: NaN bounds": lambda: ThreatModel(0.1, bounds=(math.nan, math.nan)),
    "threat: unknown norm": lambda: ThreatModel(0.1, norm=3),
    "smoothing: NaN sigma": lambda: SmoothedClassifier(nn.Linear(3, 2), 2, math.nan),
    "bounds: unknown method": lambda: lipschitz_bound(nn.Linear(3, 2), method="guess"),
    "bounds: norm 3": lambda: lipschitz_bound(nn.Linear(3, 2), norm=3),
    "checkpoint file: missing": lambda: load_checkpoint("absent.json"),
    "run config: NaN Lipschitz target": lambda: load_config(lipschitz=math.nan),
    "run config: unknown certify method": lambda: load_config(certify_method="guess"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_bad_input_to_the_api_raises_a_lipguard_error(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LipguardError):
        API_CASES[case]()
    assert list(tmp_path.iterdir()) == []  # nothing created
