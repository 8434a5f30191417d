"""Policies trained with Stable-Baselines3 on a true or learned reward, and their action networks.

:func:`train_policy` builds a seeded SB3 ``PPO`` or ``SAC`` on ``n_envs`` copies of a Gymnasium
environment, optionally behind :class:`~lipguard.rl.LearnedRewardVecEnv`, and trains it with a
progress bar (and any extra callbacks, e.g. :class:`RewardMetricsCallback`).
:func:`action_network` exposes a trained policy's deterministic action (or its logits, for
discrete actions) as a differentiable ``nn.Module`` for attacks and metrics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from lipguard import _checks
from lipguard._gradients import input_gradient_norms
from lipguard._progress import progress_bar
from lipguard.errors import InvalidArgumentError
from lipguard.norm import L2, NormLike
from lipguard.rl.data import flat_observations
from lipguard.rl.wrappers import LearnedRewardVecEnv, RewardInputs

ALGORITHMS = {"PPO": PPO, "SAC": SAC}


class ActionNetwork(nn.Module):
    """``observations -> actions`` of a trained SB3 policy, differentiable.

    Continuous actions: the deterministic action in the environment's units, clipped to the
    action box (PPO: the Gaussian's mean; SAC: the squashed mean, rescaled). Discrete actions:
    the logits (``kind == "categorical"``).
    """

    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, model: BaseAlgorithm) -> None:
        super().__init__()
        self.policy = model.policy
        space = model.action_space
        if isinstance(space, gym.spaces.Discrete):
            self.kind = "categorical"
        elif isinstance(space, gym.spaces.Box):
            self.kind = "continuous"
            self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))
        else:
            raise InvalidArgumentError(
                f"action networks need a Discrete or Box action space, got {space}"
            )

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        if isinstance(self.policy, ActorCriticPolicy):
            distribution = self.policy.get_distribution(observations)
            if self.kind == "categorical":
                categorical = distribution.distribution
                if not isinstance(categorical, torch.distributions.Categorical):
                    raise InvalidArgumentError("a discrete policy has a categorical distribution")
                return categorical.logits
            action = distribution.mode()
        elif isinstance(self.policy, SACPolicy):  # actions squashed into [-1, 1]
            scaled = self.policy.actor(observations, deterministic=True)
            action = self.low + 0.5 * (scaled + 1.0) * (self.high - self.low)
        else:
            raise InvalidArgumentError(f"unsupported policy {type(self.policy).__name__}")
        return torch.maximum(torch.minimum(action, self.high), self.low)


def action_network(model: BaseAlgorithm) -> ActionNetwork:
    """The policy of ``model`` as an :class:`ActionNetwork` (evaluation mode)."""
    return ActionNetwork(model).eval()


class _Progress(BaseCallback):
    def __init__(self, advance: Callable[[int], None]) -> None:
        super().__init__()
        self.advance = advance

    def _on_step(self) -> bool:
        self.advance(self.training_env.num_envs)
        return True


def _learned_reward_env(env: object) -> LearnedRewardVecEnv | None:
    while env is not None:
        if isinstance(env, LearnedRewardVecEnv):
            return env
        env = getattr(env, "venv", None)
    return None


class RewardMetricsCallback(BaseCallback):
    """Logs lipguard's metrics to SB3's logger during training on a learned reward:
    ``lipguard/max_reward_gradient`` (over the features scored since the last rollout),
    ``lipguard/true_return``, ``lipguard/learned_return`` and ``lipguard/reward_gap`` (their
    difference, the reward-hacking signal) over the episodes finished meanwhile."""

    def __init__(self, reward: nn.Module, norm: NormLike = L2) -> None:
        super().__init__()
        self.reward, self.norm = reward, norm
        self.history: list[dict] = []
        self._episodes: list[tuple[float, float]] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "learned_return" in info:
                self._episodes.append((info["learned_return"], info["true_return"]))
        return True

    def _on_rollout_end(self) -> None:
        env = _learned_reward_env(self.training_env)
        row: dict = {"timesteps": self.num_timesteps}
        features = env.recent_features if env is not None else torch.zeros(0, 0)
        if len(features):
            row["max_reward_gradient"] = max_reward_gradient(self.reward, features, self.norm)
        if self._episodes:
            learned, true = (float(np.mean(values)) for values in zip(*self._episodes, strict=True))
            row.update(learned_return=learned, true_return=true, reward_gap=learned - true)
            self._episodes = []
        for key, value in row.items():
            if key != "timesteps":
                self.logger.record(f"lipguard/{key}", value)
        self.history.append(row)


def max_reward_gradient(reward: nn.Module, features: torch.Tensor, norm: NormLike = L2) -> float:
    """``max_i ||∇r(x_i)||_q`` over the rows of ``features`` (``q`` dual to ``norm``): a lower
    bound on the reward's Lipschitz constant, observed where the agent went."""
    points = features.detach().float().requires_grad_(True)
    with torch.enable_grad(), _checks.evaluating(reward):
        return float(input_gradient_norms(reward(points), points, norm).max())


def train_policy(
    env_id: str,
    *,
    algorithm: str = "SAC",
    timesteps: int = 20_000,
    reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reward_inputs: RewardInputs = "state_action",
    n_envs: int = 1,
    seed: int = 0,
    hyperparameters: dict | None = None,
    callbacks: Sequence[BaseCallback] = (),
    progress: bool = True,
    env_kwargs: Mapping[str, Any] | None = None,
) -> BaseAlgorithm:
    """Train an SB3 ``algorithm`` for ``timesteps`` on the true reward (``reward=None``) or on
    ``reward`` (a :class:`LearnedRewardVecEnv` around the environments), made with ``gym.make``'s
    keyword arguments ``env_kwargs`` (observations flattened: :func:`flat_observations`).
    Seeded; single-threaded PyTorch inside SB3 is left to the caller (``torch.set_num_threads``)."""
    if algorithm not in ALGORITHMS:
        raise InvalidArgumentError(f"algorithm must be one of {tuple(ALGORITHMS)}")
    _checks.positive_int("timesteps", timesteps)
    env = make_vec_env(
        env_id,
        n_envs=_checks.positive_int("n_envs", n_envs),
        seed=seed,
        env_kwargs=copy.deepcopy(dict(env_kwargs or {})),
        wrapper_class=flat_observations,
    )
    if reward is not None:
        env = LearnedRewardVecEnv(env, reward, reward_inputs)
    model = ALGORITHMS[algorithm]("MlpPolicy", env, seed=seed, **(hyperparameters or {}))
    with progress_bar(timesteps, f"training {algorithm}", progress) as advance:
        model.learn(timesteps, callback=CallbackList([_Progress(advance), *callbacks]))
    return model
