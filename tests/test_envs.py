"""``lipguard run --env highway-v0`` and ``--env Hopper-v5``: the presets, the keyword arguments
that reach ``gym.make``, a missing package, and each quick run end to end with its report.

The environments come with the ``envs`` extra (``pip install 'lipguard[envs]'``, also in
``test``); without a package, the tests that need it are skipped and say why.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import gymnasium as gym
import numpy as np
import pytest
from typer.testing import CliRunner

from lipguard.cli import app
from lipguard.errors import InvalidArgumentError
from lipguard.pipeline import RunConfig, RunResults, load_config
from lipguard.pipeline.config import check_environment
from lipguard.pipeline.policies import HYPERPARAMETERS
from lipguard.pipeline.presets import EXTRA, PRESETS, hyperparameters
from lipguard.results import Report
from lipguard.rl import evaluate, train_policy
from lipguard.rl.data import collect_transitions, make_env
from tests.conftest import check_rendered_report

runner = CliRunner()

HIGHWAY, HOPPER = "highway-v0", "Hopper-v5"


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


#: each environment's modules, and the mark that skips its tests without them
NEEDS = {
    HIGHWAY: pytest.mark.skipif(
        not _installed("highway_env"),
        reason=f"highway-env is not installed (pip install 'lipguard[{EXTRA}]')",
    ),
    HOPPER: pytest.mark.skipif(
        not _installed("mujoco", "imageio"),
        reason=f"mujoco (and imageio) are not installed (pip install 'lipguard[{EXTRA}]')",
    ),
}
ENVS = [pytest.param(env, marks=mark, id=env) for env, mark in NEEDS.items()]
#: the end-to-end quick runs; highway-v0's takes 2–2.5 minutes on 2 cores: opt-in
QUICK_RUNS = [
    pytest.param(env, marks=[mark, pytest.mark.slow] if env == HIGHWAY else mark, id=env)
    for env, mark in NEEDS.items()
]

#: the sections of results.json
SECTIONS = ("meta", "config", "data", "rewards", "stress", "policies", "monitor", "checks")


def test_every_preset_has_a_skip_mark_here():
    assert set(PRESETS) == set(NEEDS)


# The presets themselves (no environment package needed)


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("env", sorted(PRESETS))
def test_each_preset_is_a_valid_config(env, quick):
    preset = PRESETS[env]
    base = RunConfig.quick() if quick else RunConfig()
    config = base.replace(**preset.settings(quick))  # replace() checks every setting
    assert config.env == env
    assert config.env_kwargs == preset.settings(quick)["env_kwargs"]
    assert 0 < config.fault_step < config.monitor_steps
    assert config.lipschitz > 0
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for algorithm in ("SAC", "PPO"):
        assert hyperparameters(env, algorithm, HYPERPARAMETERS[algorithm])


def test_a_quick_preset_is_smaller_than_the_full_one():
    for preset in PRESETS.values():
        full, quick = preset.settings(False), preset.settings(True)
        assert quick["timesteps"] < full["timesteps"]
        assert quick["transitions"] < full["transitions"]
        assert quick["monitor_steps"] < full["monitor_steps"]


def test_a_preset_hands_out_copies():
    preset = PRESETS[HIGHWAY]
    first = preset.settings()
    first["env_kwargs"]["config"]["action"]["type"] = "DiscreteMetaAction"
    first["attack_eps"] = ()
    second = preset.settings()
    assert second["env_kwargs"]["config"]["action"]["type"] == "ContinuousAction"
    assert second["attack_eps"]
    kwargs = hyperparameters(HIGHWAY, "SAC", {})
    kwargs["policy_kwargs"]["net_arch"].append(1)
    assert hyperparameters(HIGHWAY, "SAC", {})["policy_kwargs"]["net_arch"] == [64, 64]


def test_an_env_without_preset_keeps_pendulums_settings():
    assert hyperparameters("Pendulum-v1", "SAC", HYPERPARAMETERS["SAC"]) == HYPERPARAMETERS["SAC"]
    config = load_config(quick=True, env="MountainCarContinuous-v0")
    assert config.env_kwargs == {}
    assert config.replace(env="Pendulum-v1") == RunConfig.quick()


@pytest.mark.parametrize(("env", "module"), [(HIGHWAY, "highway_env"), (HOPPER, "mujoco")])
def test_a_missing_package_fails_in_one_line_naming_the_extra(env, module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ModuleNotFoundError
    with pytest.raises(InvalidArgumentError, match=rf"pip install 'lipguard\[{EXTRA}\]'"):
        load_config(quick=True, env=env)
    result = runner.invoke(app, ["run", "--quick", "--env", env, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert env in lines[0]
    assert f"lipguard's '{EXTRA}' extra installs: pip install 'lipguard" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


# The keyword arguments reach every place that makes the environment


@NEEDS[HIGHWAY]
def test_highway_without_the_preset_has_discrete_actions_and_is_refused():
    import highway_env  # noqa: F401  (registers highway-v0)

    env = gym.make(HIGHWAY)
    assert isinstance(env.action_space, gym.spaces.Discrete)
    env.close()
    with pytest.raises(InvalidArgumentError, match="Box actions"):
        check_environment(HIGHWAY)


@NEEDS[HIGHWAY]
def test_highway_preset_makes_continuous_throttle_and_flat_observations(tmp_path):
    config = load_config(quick=True, env=HIGHWAY)
    env = make_env(config.env, config.env_kwargs)
    assert isinstance(env.action_space, gym.spaces.Box)
    assert env.action_space.shape == (1,)  # throttle; steering stays 0
    assert env.observation_space.shape == (15,)  # 5 vehicles × (x, y, vx), flattened
    env.close()
    transitions = collect_transitions(
        config.env, 30, seed=0, progress=False, env_kwargs=config.env_kwargs
    )
    assert transitions.observations.shape == (30, 15)
    assert transitions.actions.shape == (30, 1)
    model = train_policy(
        config.env,
        timesteps=20,
        hyperparameters={"learning_starts": 10, "batch_size": 8},
        progress=False,
        env_kwargs=config.env_kwargs,
    )
    assert isinstance(model.action_space, gym.spaces.Box)
    assert model.observation_space.shape == (15,)
    result = evaluate(model, config.env, episodes=1, env_kwargs=config.env_kwargs)
    assert result.states.shape[1] == 15
    assert result.actions.shape[1] == 1
    # without them the environment is another one: discrete actions, a 5 × 5 table
    assert not isinstance(make_env(config.env).action_space, gym.spaces.Box)


@NEEDS[HIGHWAY]
def test_a_config_file_overrides_the_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'env = "highway-v0"\nlipschitz = 3.0\n'
        '[env_kwargs.config]\naction = { type = "ContinuousAction" }\nduration = 5\n'
    )
    config = load_config(path, quick=True)
    assert config.lipschitz == 3.0
    assert config.timesteps == PRESETS[HIGHWAY].quick["timesteps"]
    assert config.env_kwargs == {"config": {"action": {"type": "ContinuousAction"}, "duration": 5}}
    env = make_env(config.env, config.env_kwargs)  # steering and throttle, the default table
    assert env.action_space.shape == (2,)
    assert env.observation_space.shape == (25,)
    env.close()


@NEEDS[HOPPER]
def test_hopper_preset_makes_the_standard_hopper():
    config = load_config(quick=True, env=HOPPER)
    env = make_env(config.env, config.env_kwargs)
    assert env.observation_space.shape == (11,)
    assert env.action_space.shape == (3,)
    env.close()


# End to end: the quick run of each preset, and its report. Measured on 2 cores (one of them
# busy with another process), 2026-12-02: highway-v0 about 60 s, Hopper-v5 about 35 s; on an idle
# machine 48 s and 24 s.


@pytest.fixture(scope="module", params=QUICK_RUNS)
def env_run(request, tmp_path_factory):
    env = request.param
    out = tmp_path_factory.mktemp(env)
    result = runner.invoke(app, ["run", "--quick", "--env", env, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return env, out, json.loads((out / "results.json").read_text())


def test_quick_run_on_the_environment_is_complete(env_run):
    env, out, results = env_run
    preset = PRESETS[env]
    assert set(results) == set(SECTIONS)
    assert results["config"]["env"] == env
    assert results["config"]["env_kwargs"] == preset.settings(True)["env_kwargs"]
    assert results["config"]["timesteps"] == preset.quick["timesteps"]
    made = make_env(env, results["config"]["env_kwargs"])
    features = made.observation_space.shape[0] + made.action_space.shape[0]
    made.close()
    assert results["data"]["features"] == features
    assert set(results["policies"]) == {"true", "unconstrained", "lipschitz"}
    for policy in results["policies"].values():
        for key in ("true_return", "return_random", "return_mad", "return_reward_attack"):
            assert math.isfinite(policy[key]), key
        assert len(policy["discontinuity_curve"]) == len(results["config"]["discontinuity_eps"])
    constrained = results["rewards"]["lipschitz"]
    assert constrained["certified_lipschitz"] <= results["config"]["lipschitz"]
    stress = results["stress"]["lipschitz"]
    bound = constrained["certified_lipschitz"] * np.asarray(stress["epsilons"])
    assert (np.asarray(stress["max_shift"]) <= bound + 1e-5).all()
    assert results["monitor"]["audit_verified"]
    report = Report.from_dict(results["checks"])
    assert report.ok, str(report)
    assert RunResults.from_dict(results).to_dict() == results
    for name in ("unconstrained", "lipschitz"):
        assert (out / "certificates" / f"{name}.json").is_file()


def test_quick_run_report_renders_for_the_environment(env_run, tmp_path):
    env, out, _ = env_run
    page = (out / "report.html").read_text()
    assert f"lipguard run — {env}" in page
    check_rendered_report(out, tmp_path)
