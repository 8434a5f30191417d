"""lipguard.rl.exploration: Lipschitz-aware action noise, its callback and the violation counter."""

from __future__ import annotations

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import TD3
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from lipguard.errors import InvalidArgumentError
from lipguard.rl import EnsembleReward
from lipguard.rl.exploration import (
    ConstraintViolations,
    LipschitzAwareExploration,
    LipschitzAwareNoise,
    exploration_scale,
    torque_limit,
)

STATE = np.array([1.0, 0.0, 0.5])  # a Pendulum-v1 observation (cos θ, sin θ, θ̇)


class LinearInAction(nn.Module):
    """``r(s, a) = k·a + c`` on features ``[s, a]``: ``‖∇_a r‖ = |k|`` everywhere."""

    def __init__(self, k: float, c: float = 0.0) -> None:
        super().__init__()
        self.k, self.c = k, c

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.k * features[:, -1] + self.c


def _noise(reward: nn.Module, **kwargs) -> LipschitzAwareNoise:
    options = {"sigma": 0.4, "sigma_min": 0.02, "alpha": 1.0, "beta": 1.0, "probes": 4} | kwargs
    return LipschitzAwareNoise(reward, [-2.0], [2.0], **options)


@pytest.mark.parametrize("k", [0.0, 0.5, -2.0, 7.0])
def test_steepness_is_the_closed_form_gradient(k):
    noise = _noise(LinearInAction(k), beta=0.0)
    chosen = noise.scale(STATE, np.array([0.3]))
    assert chosen.lipschitz == pytest.approx(abs(k), rel=1e-5)
    assert chosen.uncertainty == 0.0
    assert chosen.sigma == pytest.approx(max(0.02, 0.4 / (1 + abs(k))), rel=1e-5)


def test_scale_decreases_with_steepness_and_uncertainty():
    slopes = [0.0, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0]
    sigmas = [_noise(LinearInAction(k)).scale(STATE, np.array([0.0])).sigma for k in slopes]
    assert all(a > b for a, b in itertools.pairwise(sigmas[:-1]))
    assert sigmas[0] == pytest.approx(0.4)  # the clips
    assert sigmas[-1] == pytest.approx(0.02)
    gaps = [0.0, 0.2, 1.0, 5.0]
    spreads, scales = [], []
    for gap in gaps:
        ensemble = EnsembleReward([LinearInAction(1.0, 0.0), LinearInAction(1.0, gap)], k=0.0)
        chosen = _noise(ensemble).scale(STATE, np.array([0.0]))
        spreads.append(chosen.uncertainty)
        scales.append(chosen.sigma)
    assert spreads == pytest.approx([gap / math.sqrt(2) for gap in gaps], abs=1e-6)
    assert all(a > b for a, b in itertools.pairwise(scales))


def test_scale_stays_within_bounds_and_noise_follows_it():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lipschitz, uncertainty = rng.exponential(3.0), rng.exponential(1.0)
        sigma = exploration_scale(lipschitz, uncertainty, 0.3, 0.05, rng.uniform(0, 5), 2.0)
        assert 0.05 <= sigma <= 0.3
    noise = _noise(LinearInAction(3.0), seed=3)
    noise.observe(STATE, lambda observation: np.array([0.5]))
    draws = np.array([noise()[0] for _ in range(1000)])
    assert noise.last is not None
    assert noise.last.sigma == pytest.approx(0.1)
    assert draws.std() == pytest.approx(0.1, rel=0.1)


def test_budget_caps_the_predicted_reward_change():
    k, budget = 4.0, 0.2
    noise = _noise(LinearInAction(k), budget=budget, sigma=1.0, sigma_min=0.9, alpha=0.0)
    noise.observe(STATE, lambda observation: np.array([0.0]))
    steps = np.array([noise()[0] * 2.0 for _ in range(500)])  # scaled -> torque units
    assert np.all(np.abs(k * steps) <= budget * (1 + 1e-5))
    assert np.abs(k * steps).max() > 0.9 * budget  # the cap binds, it is not just small noise


def test_sound_bound_keeps_the_true_reward_change_within_budget():
    torch.manual_seed(0)
    reward = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    heuristic = _noise(reward, probes=16).scale(STATE, np.array([0.3]))
    noise = _noise(reward, estimate="bound", radius=0.5, budget=0.05, sigma=1.0, alpha=0.0)
    sound = noise.scale(STATE, np.array([0.3]))
    assert sound.lipschitz >= heuristic.lipschitz  # a bound is never below a sampled gradient
    noise.observe(STATE, lambda observation: np.array([0.3]))
    limit = min(0.5, 0.05 / sound.lipschitz) * (1 - 1e-6)
    lengths = []
    for _ in range(15):
        step = float(np.clip(0.15 + noise()[0], -1, 1) - 0.15) * 2.0  # SB3 clips, in torque
        rows = torch.tensor([[*STATE, 0.3], [*STATE, 0.3 + step]], dtype=torch.float32)
        with torch.no_grad():
            change = float((reward(rows)[1, 0] - reward(rows)[0, 0]).abs())
        assert change <= 0.05 + 1e-6
        assert noise.last is not None
        lengths.append(noise.last.step_norm)
    assert max(lengths) == pytest.approx(limit, rel=1e-5)  # the cap binds


@pytest.mark.parametrize(
    "options",
    [
        {"sigma": 0.0},
        {"sigma": -1.0},
        {"sigma": float("nan")},
        {"sigma_min": 0.0},
        {"sigma_min": 0.5, "sigma": 0.3},
        {"alpha": -1.0},
        {"beta": float("inf")},
        {"radius": 0.0},
        {"probes": -1},
        {"probes": 1.5},
        {"estimate": "exact"},
        {"budget": 0.0},
    ],
)
def test_refuses_bad_parameters(options):
    with pytest.raises(InvalidArgumentError):
        _noise(LinearInAction(1.0), **options)


def test_refuses_bad_boxes_and_misuse():
    with pytest.raises(InvalidArgumentError):
        LipschitzAwareNoise(LinearInAction(1.0), [1.0], [1.0])
    with pytest.raises(InvalidArgumentError):
        LipschitzAwareNoise(LinearInAction(1.0), [-1.0, -1.0], [1.0])
    with pytest.raises(InvalidArgumentError):
        torque_limit(0.0)
    with pytest.raises(InvalidArgumentError):
        exploration_scale(-1.0, 0.0, 0.3, 0.05, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="observe"):
        _noise(LinearInAction(1.0))()
    with pytest.raises(InvalidArgumentError):
        LipschitzAwareExploration(NormalActionNoise(np.zeros(1), np.ones(1)))  # type: ignore[arg-type]


def test_violation_counter_counts_a_scripted_sequence():
    env = ConstraintViolations(gym.make("Pendulum-v1"), torque_limit(1.5))
    with pytest.raises(RuntimeError):
        env.step(np.array([0.0], dtype=np.float32))
    env.reset(seed=0)
    script = [0.0, 1.6, -1.6, 1.5, -1.5, 2.0, -0.1, 1.50001]
    flags = [env.step(np.array([u], dtype=np.float32))[4]["violation"] for u in script]
    assert flags == [False, True, True, False, False, True, False, True]
    assert (env.violations, env.steps) == (4, 8)
    env.reset(seed=1)  # counts span episodes
    env.step(np.array([-2.0], dtype=np.float32))
    assert (env.violations, env.steps) == (5, 9)


def _td3(noise, env, learning_starts: int = 50) -> TD3:
    return TD3(
        "MlpPolicy",
        DummyVecEnv([lambda: env]),
        action_noise=noise,
        learning_starts=learning_starts,
        batch_size=32,
        policy_kwargs={"net_arch": [16, 16]},
        seed=0,
    )


def test_tiny_td3_run_records_its_scales():
    torch.manual_seed(0)
    reward = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    members = [reward, nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))]
    noise = LipschitzAwareNoise(EnsembleReward(members), [-2.0], [2.0], sigma=0.3, sigma_min=0.05)
    env = ConstraintViolations(gym.make("Pendulum-v1"), torque_limit(1.5))
    callback = LipschitzAwareExploration(noise)
    _td3(noise, env).learn(200, callback=callback)
    assert len(callback.history) == 200  # SB3 draws the noise at every step, warm-up included
    assert [row["timesteps"] for row in callback.history] == list(range(1, 201))
    sigmas = np.array([row["sigma"] for row in callback.history])
    assert np.all((sigmas >= 0.05) & (sigmas <= 0.3))
    assert all(row["uncertainty"] > 0 for row in callback.history)  # two different members
    for row in callback.history[-5:]:  # each scale is the formula on its own L and u
        expected = exploration_scale(row["lipschitz"], row["uncertainty"], 0.3, 0.05, 1.0, 1.0)
        assert row["sigma"] == pytest.approx(expected)
    assert env.steps == 200
    assert 0 <= env.violations <= 200


def test_callback_refuses_a_noise_the_model_does_not_use():
    noise = _noise(LinearInAction(1.0))
    model = _td3(NormalActionNoise(np.zeros(1), np.ones(1)), gym.make("Pendulum-v1"))
    with pytest.raises(InvalidArgumentError, match="action_noise"):
        model.learn(10, callback=LipschitzAwareExploration(noise))
