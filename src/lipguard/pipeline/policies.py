"""Stage 4 of ``lipguard run``: a policy on the true reward and on each learned reward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from lipguard.pipeline import presets
from lipguard.pipeline.config import Reward, RunConfig
from lipguard.pipeline.results import PolicyResult
from lipguard.rl import RewardModel, policy_report, train_policy

#: SB3 settings that learn Pendulum-v1 in a few thousand steps on 2 cores (an environment with a
#: preset uses the preset's: :func:`lipguard.pipeline.presets.hyperparameters`)
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "SAC": {"learning_rate": 1e-3, "policy_kwargs": {"net_arch": [64, 64]}},
    "PPO": {"n_steps": 512, "batch_size": 128, "gamma": 0.9, "learning_rate": 1e-3},
}


def train_and_report(
    config: RunConfig,
    models: dict[Reward, RewardModel],
    advance: Callable[[], None] = lambda: None,
) -> tuple[dict[Reward, PolicyResult], dict[Reward, BaseAlgorithm]]:
    """Train one policy per reward (``true``, then each learned model) and report its task
    performance and stability. Attacks on the true-reward policy are guided by the constrained
    learned reward (its smooth stand-in for the task reward); the others by their own reward.

    Returns each policy's :class:`PolicyResult` and the trained policies, both by reward name;
    calls ``advance()`` after each policy."""
    reports: dict[Reward, PolicyResult] = {}
    policies: dict[Reward, BaseAlgorithm] = {}
    rewards: dict[Reward, RewardModel | None] = {Reward.TRUE: None, **models}
    for name, reward in rewards.items():
        policy = train_policy(
            config.env,
            algorithm=config.algorithm,
            timesteps=config.timesteps,
            reward=reward,
            seed=config.seed,
            hyperparameters=presets.hyperparameters(
                config.env, config.algorithm, HYPERPARAMETERS[config.algorithm]
            ),
            progress=False,
            env_kwargs=config.env_kwargs,
        )
        report = policy_report(
            policy,
            config.env,
            critic=reward if reward is not None else models[Reward.LIPSCHITZ],
            own_reward=reward,
            eps=config.policy_eps,
            tau=config.tau,
            curve_eps=config.discontinuity_eps,
            episodes=config.episodes,
            seed=config.seed,
            env_kwargs=config.env_kwargs,
        )
        reports[name] = PolicyResult.from_dict(report)
        policies[name] = policy
        advance()
    return reports, policies
