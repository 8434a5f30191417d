"""Experience for reward learning: transitions from a Gymnasium environment and preference pairs.

:func:`collect_transitions` runs a policy (uniformly random actions by default) in a seeded
environment and keeps, per step, the observation the reward was produced for, the action, the
true reward and the episode it belongs to. :func:`reward_features` builds the reward model's input
(``state`` or ``state_action``). :func:`preference_pairs` cuts episodes into segments of ``T``
consecutive steps and labels random pairs by which segment has the higher true return (the
synthetic-labeller protocol of preference-based RL; ties are dropped).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import ArrayLike

from lipguard import _checks
from lipguard._progress import progress_bar
from lipguard.errors import InvalidArgumentError, ShapeError

#: the reward model's input: the state, or the state and the action side by side
FeatureInputs = Literal["state", "state_action"]
INPUTS: tuple[FeatureInputs, ...] = get_args(FeatureInputs)


@dataclass(frozen=True)
class Transitions:
    """``observations[t]`` is the state ``s_t`` the reward ``rewards[t]`` of action
    ``actions[t]`` was produced in; ``episodes[t]`` numbers the episode."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episodes: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


def flat_observations(env: gym.Env) -> gym.Env:
    """``env`` with a Box observation of more than one dimension (highway-env's vehicles ×
    features table, say) flattened into a vector, the form reward features and observation
    attacks take; any other environment as it is. SB3's ``MlpPolicy`` flattens observations
    anyway, so a policy trained either way acts the same."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Box) and len(space.shape) > 1:
        return gym.wrappers.FlattenObservation(env)
    return env


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> gym.Env:
    """``gym.make(env_id, **env_kwargs)`` (a copy of them: environments may keep and change
    their configuration), behind :func:`flat_observations`."""
    return flat_observations(gym.make(env_id, **copy.deepcopy(dict(env_kwargs or {}))))


def _flat_action(action: ArrayLike) -> np.ndarray:
    return np.asarray(action, dtype=np.float64).reshape(-1)


def collect_transitions(
    env: str | gym.Env,
    steps: int,
    *,
    policy: Callable[[np.ndarray], np.ndarray] | None = None,
    seed: int = 0,
    progress: bool = True,
    env_kwargs: Mapping[str, Any] | None = None,
) -> Transitions:
    """``steps`` transitions of ``env`` under ``policy`` (observation → action; default
    uniformly random actions from the action space, seeded). ``env`` is an instance, or an id
    that :func:`make_env` makes with ``env_kwargs`` (``gym.make``'s keyword arguments)."""
    _checks.positive_int("steps", steps)
    env = make_env(env, env_kwargs) if isinstance(env, str) else env
    env.action_space.seed(seed)
    observation, _ = env.reset(seed=seed)
    observations: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    rewards: list[float] = []
    episodes: list[int] = []
    episode = 0
    with progress_bar(steps, "collecting transitions", progress) as advance:
        for _ in range(steps):
            action = env.action_space.sample() if policy is None else policy(observation)
            next_observation, reward, terminated, truncated, _ = env.step(action)
            observations.append(np.asarray(observation, dtype=np.float64).reshape(-1))
            actions.append(_flat_action(action))
            rewards.append(float(reward))
            episodes.append(episode)
            observation = next_observation
            if terminated or truncated:
                observation, _ = env.reset()
                episode += 1
            advance(1)
    return Transitions(
        np.stack(observations), np.stack(actions), np.asarray(rewards), np.asarray(episodes)
    )


def reward_features(
    observations: ArrayLike,
    actions: ArrayLike | None = None,
    inputs: FeatureInputs = "state_action",
) -> torch.Tensor:
    """The reward model's input: observations, or observations and actions side by side."""
    if inputs not in INPUTS:
        raise InvalidArgumentError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    states = torch.as_tensor(np.asarray(observations), dtype=torch.float32)
    states = states.reshape(len(states), -1)
    if inputs == "state":
        return states
    if actions is None:
        raise InvalidArgumentError("state_action features need the actions")
    acts = torch.as_tensor(np.asarray(actions), dtype=torch.float32).reshape(len(states), -1)
    return torch.cat([states, acts], dim=1)


def preference_pairs(
    transitions: Transitions,
    features: torch.Tensor,
    *,
    segment_length: int = 25,
    pairs: int = 1000,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pairs of ``segment_length``-step segments from within episodes, shaped
    ``(P, 2, T, d)``, and labels ``1.0`` where the first has the higher true return (pairs with
    equal returns are dropped, so ``P <= pairs``)."""
    _checks.positive_int("segment_length", segment_length)
    _checks.positive_int("pairs", pairs)
    if len(features) != len(transitions):
        raise ShapeError("one feature row per transition is needed")
    starts = [
        start
        for start in range(len(transitions) - segment_length + 1)
        if transitions.episodes[start] == transitions.episodes[start + segment_length - 1]
    ]
    if len(starts) < 2:
        raise InvalidArgumentError(f"fewer than two segments of {segment_length} steps")
    rng = np.random.default_rng(seed)
    chosen = np.asarray(starts)[rng.integers(0, len(starts), size=(pairs, 2))]
    offsets = np.arange(segment_length)
    index = chosen[:, :, None] + offsets  # (P, 2, T)
    returns = transitions.rewards[index].sum(-1)
    keep = returns[:, 0] != returns[:, 1]
    segments = features[torch.as_tensor(index[keep])]
    labels = torch.as_tensor((returns[keep, 0] > returns[keep, 1]).astype(np.float32))
    return segments, labels
