"""lipguard attack on model and data files."""

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
    x = np.random.default_rng(0).uniform(size=(20, 4)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    return tmp_path / "model.json", tmp_path / "data.npz"


def test_attack_classifier_reports_robust_accuracy(tmp_path):
    model, data = _files(tmp_path, 3)
    out, adversarial = tmp_path / "results.json", tmp_path / "adv.npy"
    arguments = [
        "attack",
        str(model),
        "--data",
        str(data),
        "--eps",
        "2.0",
        "--bounds",
        "0,1",
        "--batch-size",
        "7",
        "--out",
        str(out),
        "--save-adversarial",
        str(adversarial),
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "clean accuracy" in result.output
    assert "100.0%" in result.output  # the clean labels are the model's own predictions
    payload = json.loads(out.read_text())
    assert len(payload["success"]) == 20
    x_adv = np.load(adversarial)
    assert x_adv.shape == (20, 4)
    assert x_adv.min() >= 0.0
    assert x_adv.max() <= 1.0


def test_attack_reward_shift(tmp_path):
    model, data = _files(tmp_path, 1)
    arguments = [
        "attack",
        str(model),
        "--data",
        str(data),
        "--eps",
        "0.1",
        "--norm",
        "2",
        "--objective",
        "reward-abs",
        "--attack",
        "apgd",
        "--steps",
        "10",
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "mean / max loss" in result.output


def test_attack_needs_labels_for_classification(tmp_path):
    model, _ = _files(tmp_path, 3)
    np.save(tmp_path / "x.npy", np.zeros((3, 4), dtype=np.float32))
    arguments = ["attack", str(model), "--data", str(tmp_path / "x.npy"), "--eps", "0.1"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert "needs labels" in result.output


def test_attack_takes_the_old_epsilon_spelling_with_a_note(tmp_path):
    model, data = _files(tmp_path, 1)
    arguments = ["attack", str(model), "--data", str(data), "--objective", "reward-abs"]
    result = runner.invoke(app, [*arguments, "--epsilon", "0.1", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "ε = 0.1" in result.output
    assert "--epsilon is deprecated" in result.stderr


def test_stopping_on_success_gives_the_same_success_rate(tmp_path):
    model, data = _files(tmp_path, 3)
    reports = []
    for flag in ([], ["--stop-on-success"]):
        out = tmp_path / f"results{len(flag)}.json"
        arguments = ["attack", str(model), "--data", str(data), "--eps", "0.3", "--out", str(out)]
        result = runner.invoke(app, [*arguments, "--bounds", "0,1", *flag])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text())["success"])
    assert reports[0] == reports[1]
    assert 0 < sum(reports[0]) < len(reports[0])  # some inputs broken, some not
    refused = runner.invoke(
        app,
        [
            "attack",
            str(model),
            "--data",
            str(data),
            "--eps",
            "0.3",
            "--attack",
            "apgd",
            "--stop-on-success",
        ],
    )
    assert refused.exit_code == 2
    assert "pgd only" in refused.output
