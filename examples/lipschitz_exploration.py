"""Lipschitz-aware exploration: TD3 on Pendulum-v1 explores less where the learned reward is steep.

A small version of ``benchmarks/exploration.py`` (one seed, 2,000 steps): fit three Lipschitz
reward models on random-torque transitions labelled with the true reward minus a penalty on
torques above 1.25 (the reward is steep just before the unsafe region |torque| > 1.5), then
train TD3 on their mean with constant action noise and with
:class:`lipguard.rl.exploration.LipschitzAwareNoise`, and count the unsafe actions taken while
learning. The full measurement (three seeds, 7,000 steps, a matched-σ control, the return it
costs) is in ``docs/benchmarks/exploration.md``.

    python examples/lipschitz_exploration.py
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.noise import NormalActionNoise

from lipguard.rl import (
    ConstraintViolations,
    EnsembleReward,
    LearnedRewardVecEnv,
    LipschitzAwareExploration,
    LipschitzAwareNoise,
    build_reward_model,
    collect_transitions,
    fit_reward,
    reward_features,
    torque_limit,
)

ENV, STEPS, WARMUP, SIGMA = "Pendulum-v1", 2000, 500, 0.3


def learned_reward() -> EnsembleReward:
    transitions = collect_transitions(ENV, 1500, seed=0, progress=False)
    features = reward_features(transitions.observations, transitions.actions)
    penalty = 10.0 * np.maximum(0.0, np.abs(transitions.actions[:, 0]) - 1.25)
    rewards = torch.as_tensor(transitions.rewards - penalty, dtype=torch.float32)
    members = []
    for seed in range(3):
        model = build_reward_model(features, rewards, lipschitz=25.0, hidden=(64, 64), seed=seed)
        fit_reward(model, features, rewards, epochs=15, seed=seed, progress=False)
        members.append(model.eval())
    return EnsembleReward(members, k=0.0)


def violations_while_learning(reward: EnsembleReward, aware: bool) -> int:
    env = make_vec_env(
        ENV,
        n_envs=1,
        seed=0,
        wrapper_class=ConstraintViolations,
        wrapper_kwargs={"violates": torque_limit(1.5)},
    )
    venv = LearnedRewardVecEnv(env, reward)
    box = venv.action_space
    assert isinstance(box, gym.spaces.Box)
    low, high = box.low, box.high
    if aware:
        noise = LipschitzAwareNoise(reward, low, high, sigma=SIGMA, sigma_min=0.05, seed=0)
        callback = LipschitzAwareExploration(noise)
    else:
        noise, callback = NormalActionNoise(np.zeros(1), np.full(1, SIGMA)), None
    model = TD3(
        "MlpPolicy",
        venv,
        action_noise=noise,
        learning_starts=WARMUP,
        learning_rate=1e-3,
        policy_kwargs={"net_arch": [64, 64]},
        seed=0,
    )
    model.learn(STEPS, callback=callback)
    return int(sum(env.get_attr("violations")))


def main() -> None:
    torch.set_num_threads(1)
    reward = learned_reward()
    constant = violations_while_learning(reward, aware=False)
    aware = violations_while_learning(reward, aware=True)
    print(f"unsafe actions while learning ({STEPS} steps, {WARMUP} random warm-up):")
    print(f"  constant noise σ₀ = {SIGMA}:   {constant}")
    print(f"  Lipschitz-aware noise:       {aware}")
    assert aware < constant, "Lipschitz-aware exploration should take fewer unsafe actions"


if __name__ == "__main__":
    main()
