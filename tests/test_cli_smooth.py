"""lipguard smooth certify on model and data files."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn
from typer.testing import CliRunner

from lipguard.cli import app
from lipguard.io import save_checkpoint

runner = CliRunner()


def _files(tmp_path, outputs: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, outputs))
    save_checkpoint(model, tmp_path / "model", input_shape=(4,))
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    return tmp_path / "model.json", tmp_path / "data.npz"


def test_smooth_certify_classifier_writes_certificates(tmp_path):
    model, data = _files(tmp_path, 3)
    out = tmp_path / "certs.json"
    arguments = [
        "smooth",
        "certify",
        str(model),
        "--data",
        str(data),
        "--sigma",
        "0.25",
        "--n",
        "2000",
        "--n0",
        "50",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "certified accuracy at r = 0" in result.output
    payload = json.loads(out.read_text())
    assert len(payload["prediction"]) == 6
    assert all(r >= 0 for r in payload["radius"])
    curve = payload["certified_accuracy"]
    assert curve["accuracy"][0] >= curve["accuracy"][-1]


def test_smooth_certify_regressor_bounds(tmp_path):
    model, data = _files(tmp_path, 1)
    out = tmp_path / "bounds.json"
    arguments = [
        "smooth",
        "certify",
        str(model),
        "--data",
        str(data),
        "--sigma",
        "0.5",
        "--n",
        "2000",
        "--output-range",
        "-3,3",
        "--eps",
        "0.2",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert all(
        lo <= m <= hi
        for lo, m, hi in zip(payload["lower"], payload["mean"], payload["upper"], strict=True)
    )


def test_smooth_certify_rejects_unknown_data(tmp_path):
    model, _ = _files(tmp_path, 2)
    (tmp_path / "data.txt").write_text("1 2 3")
    arguments = [
        "smooth",
        "certify",
        str(model),
        "--data",
        str(tmp_path / "data.txt"),
        "--sigma",
        "0.5",
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert "must be .npz, .npy or .csv" in result.output


def test_smooth_certify_still_takes_the_old_epsilon_spelling(tmp_path):
    model, data = _files(tmp_path, 1)
    common = ["smooth", "certify", str(model), "--data", str(data), "--sigma", "0.5"]
    common += ["--n", "500", "--output-range", "-3,3"]
    outputs = {}
    for spelling in ("--eps", "--epsilon"):
        out = tmp_path / f"{spelling}.json"
        result = runner.invoke(app, [*common, spelling, "0.2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        outputs[spelling] = json.loads(out.read_text())
        notes = [line for line in result.stderr.splitlines() if "deprecated" in line]
        assert notes == (
            []
            if spelling == "--eps"
            else ["note: --epsilon is deprecated and will be removed; use --eps"]
        )
    assert outputs["--eps"] == outputs["--epsilon"]
    assert outputs["--eps"]["eps"] == 0.2
