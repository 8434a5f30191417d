"""LearnedRewardVecEnv's in-place feature rows: the rewards, returns and recent features are
exactly those of the per-step formula (fresh float32 rows scored by the reward), for every input
kind, with episodes ending at different steps, a ring of recent rows shorter than a batch, and
weight edits between steps."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from lipguard.errors import InvalidArgumentError
from lipguard.rl import LearnedRewardVecEnv, build_reward_model
from lipguard.rl.frozen import FrozenReward

N_ENVS = 3


class Walker(gym.Env):
    """float64 observations ``[t, sin(7t + start)]``; episode ``k`` of environment ``i`` lasts
    ``2 + (i + k) % 3`` steps, so the environments end episodes at different steps."""

    observation_space = gym.spaces.Box(-10, 10, shape=(2,), dtype=np.float64)

    def __init__(self, index: int, action_space: gym.Space) -> None:
        self.index, self.episodes, self.action_space = index, 0, action_space

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, 2 + (self.index + self.episodes) % 3
        self.episodes += 1
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.array([self.t, np.sin(7.0 * self.t + self.index + self.episodes)])

    def step(self, action):
        self.t += 1
        return self._obs(), float(np.sum(action)), self.t == self.length, False, {}


SPACES = {
    "box": gym.spaces.Box(-1, 1, shape=(2,), dtype=np.float64),
    "discrete": gym.spaces.Discrete(3),
}


def _vec_env(space: str) -> DummyVecEnv:
    return DummyVecEnv([lambda i=i: Walker(i, SPACES[space]) for i in range(N_ENVS)])


def _actions(space: str, steps: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    if space == "discrete":
        return rng.integers(0, 3, size=(steps, N_ENVS))
    return rng.uniform(-1, 1, size=(steps, N_ENVS, 2))


def _reference_features(inputs: str, space: str, steps: int) -> list[np.ndarray]:
    """The rows each step scores, built as fresh arrays from an unwrapped twin environment."""
    env, rows = _vec_env(space), []
    previous = env.reset()
    for action in _actions(space, steps):
        observations, _, dones, infos = env.step(action)
        if inputs == "next_state":
            states = observations.copy()
            for index in np.flatnonzero(dones):
                states[index] = infos[index]["terminal_observation"]
            features = states.reshape(N_ENVS, -1)
        else:
            features = previous.reshape(N_ENVS, -1)
            if inputs == "state_action":
                features = np.concatenate([features, action.reshape(N_ENVS, -1)], axis=1)
        rows.append(features.astype(np.float32))
        previous = observations
    return rows


class Recording(nn.Module):
    """The model, keeping every batch it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.seen.append(features)
        return self.model(features)


def _model(width: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    features = torch.randn(64, width, generator=torch.Generator().manual_seed(0))
    model = build_reward_model(features, features.sum(1), hidden=(8, 8))
    return model.to(dtype).eval()


@pytest.mark.parametrize("inputs", ["state", "state_action", "next_state"])
@pytest.mark.parametrize("space", ["box", "discrete"])
@pytest.mark.parametrize("keep", [2, 7, 4096])
@pytest.mark.parametrize("fast", [True, False])
def test_rewards_returns_and_recent_rows_equal_the_per_step_formula(inputs, space, keep, fast):
    steps = 11
    reference = _reference_features(inputs, space, steps)
    model = _model(reference[0].shape[1])
    reward = model if fast else Recording(model)
    env = LearnedRewardVecEnv(_vec_env(space), reward, inputs, keep=keep, fast=fast)
    assert (env._frozen is not None) == fast
    env.reset()
    running, staggered = np.zeros(N_ENVS), False
    for action, features in zip(_actions(space, steps), reference, strict=True):
        _, rewards, dones, infos = env.step(action)
        if fast:
            expected = FrozenReward(model).numpy(features)
        else:
            with torch.no_grad():
                expected = model(torch.from_numpy(features)).double().numpy()
        assert rewards.dtype == np.float32
        assert np.array_equal(rewards, expected.astype(np.float32))
        running += expected
        staggered |= bool(dones.any()) and not dones.all()
        for index in np.flatnonzero(dones):
            assert infos[index]["learned_return"] == running[index]
            running[index] = 0.0
    assert staggered  # some step ends some episodes only
    rows = np.concatenate(reference)[-keep:]
    assert np.array_equal(env.recent_features.numpy(), rows)
    if not fast:  # the rows handed to the module are not rewritten by later steps
        assert all(
            np.array_equal(seen.numpy(), rows)
            for seen, rows in zip(reward.seen, reference, strict=True)
        )


def test_a_float64_module_gets_float64_rows():
    reference = _reference_features("state", "box", 4)
    model = _model(2, torch.float64)
    env = LearnedRewardVecEnv(_vec_env("box"), Recording(model), "state", fast=False)
    env.reset()
    for action, features in zip(_actions("box", 4), reference, strict=True):
        _, rewards, _, _ = env.step(action)
        with torch.no_grad():
            expected = model(torch.from_numpy(features).double()).numpy()
        assert np.array_equal(rewards, expected.astype(np.float32))
    assert all(seen.dtype == torch.float64 for seen in env.reward.seen)


def _after_one_step(steps: int):
    """A state-action wrapper stepped once, with the features and actions of ``steps`` steps."""
    reference = _reference_features("state_action", "box", steps)
    model = _model(4)
    env = LearnedRewardVecEnv(_vec_env("box"), model, "state_action")
    env.reset()
    actions = _actions("box", steps)
    env.step(actions[0])
    return reference, model, env, actions


def test_weight_edits_between_steps_change_the_next_reward():
    reference, model, env, actions = _after_one_step(2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data.mul_(1.5)  # `.data`: no version bump
    _, rewards, _, _ = env.step(actions[1])
    assert np.array_equal(rewards, FrozenReward(model).numpy(reference[1]).astype(np.float32))
    with torch.no_grad():
        direct = model(torch.from_numpy(reference[1])).numpy()
    assert rewards == pytest.approx(direct, abs=1e-5)


def test_state_action_features_need_array_actions():
    space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3)))
    with pytest.raises(InvalidArgumentError, match="array actions"):
        LearnedRewardVecEnv(DummyVecEnv([lambda: Walker(0, space)]), _model(4), "state_action")
    LearnedRewardVecEnv(DummyVecEnv([lambda: Walker(0, space)]), _model(2), "state")


def test_step_before_reset_is_refused():
    env = LearnedRewardVecEnv(_vec_env("box"), _model(4), "state_action")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step_wait()


def test_a_hook_added_mid_run_is_honoured_then_the_fast_path_returns(monkeypatch):
    """While the reward model is one NumPy cannot evaluate (a forward hook doubling its output),
    the wrapper calls the module; the refusal is not re-read every step; once the hook is gone
    the compiled program serves again."""
    import lipguard.rl.frozen as frozen_module

    reference, model, env, actions = _after_one_step(3)
    reads = []
    graph = frozen_module.module_graph
    monkeypatch.setattr(
        frozen_module, "module_graph", lambda *args: reads.append(1) or graph(*args)
    )
    handle = model.network[0].register_forward_hook(lambda module, inputs, output: 2 * output)
    _, hooked, _, _ = env.step(actions[1])
    with torch.no_grad():
        direct = model(torch.from_numpy(reference[1])).numpy()
    assert hooked == pytest.approx(direct, abs=1e-6)  # the hooked module's rewards
    assert len(reads) == 1  # one refused read, not one per step
    handle.remove()
    _, rewards, _, _ = env.step(actions[2])
    assert len(reads) == 2
    assert np.array_equal(rewards, FrozenReward(model).numpy(reference[2]).astype(np.float32))
