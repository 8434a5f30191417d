"""``lipguard run``: configuration, the end-to-end quick run, and the rendered report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lipguard.cli import app
from lipguard.errors import InvalidArgumentError
from lipguard.pipeline import RunConfig, load_config
from lipguard.pipeline.screenshot import find_browser, screenshot

runner = CliRunner()


def test_config_file_overrides_the_defaults_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lipschitz = 5.0\nattack_eps = [0.0, 0.2]\nalgorithm = "PPO"\n')
    config = load_config(path, quick=True, seed=3)
    assert config.lipschitz == 5.0
    assert config.attack_eps == (0.0, 0.2)
    assert config.algorithm == "PPO"
    assert config.seed == 3
    assert config.timesteps == RunConfig.quick().timesteps
    assert load_config().timesteps == RunConfig().timesteps
    path.write_text("lipshitz = 5.0\n")
    with pytest.raises(InvalidArgumentError, match="lipshitz"):
        load_config(path)
    with pytest.raises(InvalidArgumentError):
        load_config(fault_step=10_000)
    with pytest.raises(InvalidArgumentError):
        load_config(algorithm="DQN")
    with pytest.raises(InvalidArgumentError, match="Box actions"):
        load_config(env="CartPole-v1")
    with pytest.raises(InvalidArgumentError, match="cannot make"):
        load_config(env="NoSuchEnv-v0")


def test_run_refuses_a_bad_config_clearly(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("timesteps = 0\n")
    result = runner.invoke(app, ["run", "--config", str(path), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "timesteps" in result.output


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, ["run", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text()), result.output


def test_quick_run_keeps_every_promise(quick_run):
    out, results, output = quick_run
    target = results["config"]["lipschitz"]
    constrained = results["rewards"]["lipschitz"]
    assert constrained["certified_lipschitz"] <= target
    assert constrained["lower_bound"] <= constrained["certified_lipschitz"]
    policy = results["policies"]["lipschitz"]
    assert policy["max_reward_gradient"] <= constrained["certified_lipschitz"]
    stress = results["stress"]["lipschitz"]
    bound = constrained["certified_lipschitz"] * np.asarray(stress["epsilons"])
    assert (np.asarray(stress["max_shift"]) <= bound + 1e-5).all()
    monitor = results["monitor"]
    assert monitor["fault_detected"]
    assert monitor["false_alarms_before_fault"] == 0
    assert monitor["first_alarm_after_fault"] >= monitor["fault_step"]
    assert monitor["audit_verified"]
    assert all(results["checks"].values())
    for name in ("unconstrained", "lipschitz"):
        assert (out / "certificates" / f"{name}.json").is_file()
    assert set(results["policies"]) == {"true", "unconstrained", "lipschitz"}
    assert "the monitor found the planted fault" in output


def test_report_holds_the_story_and_renders_in_chromium(quick_run, tmp_path):
    out, _, _ = quick_run
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    for heading in ("Verdict", "Reward models", "Policies", "Runtime monitor"):
        assert heading in page
    if find_browser() is None:
        pytest.skip("no Chromium here (apt-get install chromium): the screenshot is not checked")
    png = screenshot(out / "report.html", tmp_path / "report.png")
    from matplotlib import image

    pixels = image.imread(png)
    assert pixels.shape[0] >= 2000
    assert pixels.shape[1] > 1000
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, tables and plots
    assert (pixels[..., :3].mean(-1) < 0.5).mean() > 0.01  # dark pixels: text and axes


def test_a_run_replaces_its_folder_only_when_it_finishes(tmp_path):
    from lipguard.pipeline.run import staged_folder

    out = tmp_path / "run"
    with staged_folder(out, overwrite=False) as staging:
        (staging / "results.json").write_text("first")
    assert (out / "results.json").read_text() == "first"
    with pytest.raises(InvalidArgumentError, match="--overwrite"), staged_folder(out, False):
        pass
    with pytest.raises(RuntimeError, match="killed half-way"):
        _interrupted_run(out)
    assert (out / "results.json").read_text() == "first"  # the old run is untouched
    with staged_folder(out, overwrite=True) as staging:
        (staging / "results.json").write_text("second")
    assert (out / "results.json").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no partial folders left


def _interrupted_run(out):
    from lipguard.pipeline.run import staged_folder

    with staged_folder(out, overwrite=True) as staging:
        (staging / "results.json").write_text("partial")
        raise RuntimeError("killed half-way")


def test_a_run_may_go_into_an_empty_folder(tmp_path):
    from lipguard.pipeline.run import staged_folder

    out = tmp_path / "made-for-it"
    out.mkdir()
    with staged_folder(out, overwrite=False) as staging:
        (staging / "results.json").write_text("{}")
    assert (out / "results.json").is_file()
