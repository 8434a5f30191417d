"""Stage 4 of ``lipguard run``: a policy on the true reward and on each learned reward."""

from __future__ import annotations

from collections.abc import Callable

from stable_baselines3.common.base_class import BaseAlgorithm

from lipguard.pipeline.config import RunConfig
from lipguard.rl import RewardModel, policy_report, train_policy

#: SB3 settings that learn Pendulum-v1 in a few thousand steps on 2 cores
HYPERPARAMETERS = {
    "SAC": {"learning_rate": 1e-3, "policy_kwargs": {"net_arch": [64, 64]}},
    "PPO": {"n_steps": 512, "batch_size": 128, "gamma": 0.9, "learning_rate": 1e-3},
}


def train_and_report(
    config: RunConfig,
    models: dict[str, RewardModel],
    advance: Callable[[], None] = lambda: None,
) -> tuple[dict[str, dict], dict[str, BaseAlgorithm]]:
    """Train one policy per reward (``true``, then each learned model) and report its task
    performance and stability. Attacks on the true-reward policy are guided by the constrained
    learned reward (its smooth stand-in for the task reward); the others by their own reward."""
    reports, policies = {}, {}
    rewards: dict[str, RewardModel | None] = {"true": None, **models}
    for name, reward in rewards.items():
        policy = train_policy(
            config.env,
            algorithm=config.algorithm,
            timesteps=config.timesteps,
            reward=reward,
            seed=config.seed,
            hyperparameters=HYPERPARAMETERS[config.algorithm],
            progress=False,
        )
        reports[name] = policy_report(
            policy,
            config.env,
            critic=reward if reward is not None else models["lipschitz"],
            own_reward=reward,
            eps=config.policy_eps,
            tau=config.tau,
            episodes=config.episodes,
            seed=config.seed,
        )
        policies[name] = policy
        advance()
    return reports, policies
