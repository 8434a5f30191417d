"""lipguard certify / verify on model files."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

from lipguard.cli import app
from lipguard.io import save_checkpoint

runner = CliRunner()


def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    save_checkpoint(model, tmp_path / "reward", input_shape=(4,))
    return tmp_path / "reward.json"


def test_certify_prints_json_with_sound_bounds(tmp_path):
    result = runner.invoke(app, ["certify", str(checkpoint(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["upper"]["sound"] is True
    assert data["upper"]["value"] >= data["lower"]["value"] > 0


def test_certify_save_then_verify(tmp_path):
    model_path = checkpoint(tmp_path)
    certificate = tmp_path / "cert.json"
    result = runner.invoke(
        app,
        [
            "certify",
            str(model_path),
            "--save",
            str(certificate),
            "--method",
            "compositional",
            "--norm",
            "inf",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "proven" in result.output
    verified = runner.invoke(app, ["verify", str(certificate), str(model_path)])
    assert verified.exit_code == 0, verified.output
    assert "certificate verified" in verified.output


def test_a_tampered_weights_file_fails_verify(tmp_path):
    model_path = checkpoint(tmp_path)
    certificate = tmp_path / "cert.json"
    runner.invoke(app, ["certify", str(model_path), "--save", str(certificate), "--no-lower"])
    weights_path = tmp_path / "reward.safetensors"
    weights = load_file(str(weights_path))
    weights["2.weight"][0, 0] += 1e-3
    save_file(weights, str(weights_path))
    result = runner.invoke(app, ["verify", str(certificate), str(model_path)])
    assert result.exit_code == 1
    assert "weights changed" in result.output


def test_errors_exit_with_code_2(tmp_path):
    result = runner.invoke(app, ["certify", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "error" in result.output


def test_input_shapes_of_several_inputs_parse():
    from lipguard.cli._io import parse_shape

    assert parse_shape("3,32,32") == (3, 32, 32)
    assert parse_shape("3x32x32;16") == ((3, 32, 32), (16,))
    assert parse_shape(None) is None
