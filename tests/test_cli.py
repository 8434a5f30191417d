"""The lipguard command: --version, --help and the main job on its quick setting."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import lipguard
from lipguard.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert lipguard.__version__ in result.output


def test_help_lists_run():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "run" in result.output


def test_run_quick_measures_real_models(tmp_path):
    result = runner.invoke(app, ["run", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "results.json").read_text())
    models = {model["name"]: model for model in payload["models"]}
    target = payload["config"]["lipschitz"]

    ours = models["lipguard"]
    assert ours["claim_is_sound"]
    assert ours["claimed_bound"] <= target
    assert ours["weight_norm_product"] <= ours["claimed_bound"] * (1 + 1e-9)
    assert ours["max_observed_gradient"] <= ours["claimed_bound"]
    assert 6.0 < payload["true_reward_max_gradient"] < 6.5  # sqrt((2π)² + 1.6²) on the samples
    # It learned the reward: far below the reward's variance on these states (about 10).
    assert ours["test_mse"] < 1.0
    assert models["unconstrained"]["claimed_bound"] is None
    assert not models["torch spectral_norm"]["claim_is_sound"]
    assert "certified L <=" in result.output
