"""Stability and alignment metrics for policies on learned rewards (SPEC F5).

- :func:`max_reward_gradient` — the largest input-gradient norm of the reward over visited
  states (an observed lower bound on its Lipschitz constant; compare it with the certificate).
- :func:`discontinuity_rate` — the fraction of visited states where some perturbation within
  ``ε`` changes the action by more than ``τ`` (discrete actions: changes the greedy action),
  searched by PGD (random start, restarts) on the action change — for discrete actions on the
  Carlini–Wagner margin of the clean greedy action, since the KL has no gradient at the clean
  point; a lower bound on the true rate, since an attack only finds changes that exist.
- :func:`evaluate` — true and learned returns of the deterministic policy over whole episodes,
  optionally under an observation perturbation (none, random, MAD, reward attack): the learned
  minus true return is the reward-hacking gap.
- :func:`policy_report` — all of the above for one policy, as the benchmark and ``lipguard run``
  report it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from lipguard import _checks
from lipguard._placement import to_model, to_numpy
from lipguard.attacks import PGD, ActionChange, Margin, Objective, ThreatModel
from lipguard.attacks.objectives import ActionKind
from lipguard.norm import LINF, NormLike
from lipguard.rl.data import FeatureInputs, flat_observations, reward_features
from lipguard.rl.policy import action_network, max_reward_gradient
from lipguard.rl.wrappers import (
    Perturbation,
    _as_array,
    policy_attack,
    random_perturbation,
    reward_attack,
)

__all__ = [
    "EvaluationResult",
    "discontinuity_rate",
    "evaluate",
    "max_reward_gradient",
    "policy_report",
]


def discontinuity_rate(
    policy: torch.nn.Module,
    states: torch.Tensor,
    eps: float,
    *,
    tau: float = 0.1,
    kind: ActionKind = "continuous",
    norm: NormLike = LINF,
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
) -> float:
    """Fraction of ``states`` with an ``eps``-perturbation that moves ``policy``'s action by more
    than ``tau`` (``kind="categorical"``: flips its greedy action)."""
    _checks.positive_float("eps", eps)
    threat = ThreatModel(eps, norm)
    attack = PGD(threat, steps=steps, restarts=restarts, seed=seed)
    states = states.detach().float()
    if kind == "categorical":  # push the greedy action's logit below another (CW margin)
        with torch.no_grad():
            objective: Objective = Margin(policy(states).argmax(-1))
    else:
        objective = ActionChange(kind, threshold=tau)
    found = attack(policy, states, objective)
    if kind == "categorical":
        return found.success_rate
    if found.clean_outputs is None:  # ActionChange uses them, so the attack returns them
        raise RuntimeError("the attack returned no clean outputs")
    change = (found.outputs - found.clean_outputs).flatten(1).norm(dim=1)
    return float((change > tau).float().mean())


def discontinuity_curve(
    policy: torch.nn.Module,
    states: torch.Tensor,
    epsilons: Sequence[float],
    *,
    tau: float = 0.1,
    kind: ActionKind = "continuous",
    norm: NormLike = LINF,
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
) -> tuple[float, ...]:
    """:func:`discontinuity_rate` at each budget of ``epsilons``: where along ε a policy's
    actions start to jump is what tells policies apart, not the rate at one budget (which is
    near 0% or near 100% for most policies at most budgets)."""
    return tuple(
        discontinuity_rate(
            policy,
            states,
            eps,
            tau=tau,
            kind=kind,
            norm=norm,
            steps=steps,
            restarts=restarts,
            seed=seed,
        )
        for eps in epsilons
    )


def action_range(model: BaseAlgorithm) -> float:
    """The widest ``high - low`` of a policy's Box action space (1.0 for discrete actions,
    whose action change is a flip)."""
    space = model.action_space
    if not isinstance(space, gym.spaces.Box):
        return 1.0
    width = np.asarray(space.high, dtype=np.float64) - np.asarray(space.low, dtype=np.float64)
    finite = width[np.isfinite(width)]
    return float(finite.max()) if finite.size else 1.0


@dataclass(frozen=True)
class EvaluationResult:
    """Mean returns over ``episodes`` episodes and the states the policy visited."""

    true_return: float
    true_return_std: float
    learned_return: float | None
    episodes: int
    states: np.ndarray
    actions: np.ndarray

    @property
    def reward_gap(self) -> float | None:
        """Learned minus true return: how much the policy's own reward overstates the task."""
        return None if self.learned_return is None else self.learned_return - self.true_return

    def summary(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k not in ("states", "actions")}
        return {**row, "reward_gap": self.reward_gap}


def evaluate(
    model: BaseAlgorithm,
    env_id: str,
    *,
    episodes: int = 10,
    perturb: Perturbation | None = None,
    reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reward_inputs: FeatureInputs = "state_action",
    seed: int = 10_000,
    env_kwargs: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Run ``episodes`` seeded episodes in parallel (one environment each, made with
    ``gym.make``'s keyword arguments ``env_kwargs``; observations flattened as
    :func:`~lipguard.rl.train_policy` trains, unless ``model`` takes them unflattened) with
    the deterministic policy, which sees ``perturb(observation)`` when given; sums the true
    rewards and, with ``reward``, the learned reward of each true state (``reward_inputs="state"``)
    or state and action (``"state_action"``)."""
    _checks.positive_int("episodes", episodes)
    flat = len(model.observation_space.shape or ()) == 1
    env = make_vec_env(
        env_id,
        n_envs=episodes,
        seed=seed,
        env_kwargs=copy.deepcopy(dict(env_kwargs or {})),
        wrapper_class=flat_observations if flat else None,
    )
    observations = _as_array(env.reset())
    running = np.ones(episodes, dtype=bool)
    true_total, learned_total = np.zeros(episodes), np.zeros(episodes)
    states: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    while running.any():
        seen = observations if perturb is None else perturb(observations)
        action, _ = model.predict(seen, deterministic=True)
        states.append(observations[running])
        actions.append(np.asarray(action).reshape(episodes, -1)[running])
        if reward is not None:
            features = reward_features(observations, action, reward_inputs)
            with torch.no_grad():
                scored = to_numpy(torch.as_tensor(reward(to_model(reward, features))))
            learned_total += np.where(running, scored, 0.0)
        stepped, rewards, dones, _ = env.step(action)
        observations = _as_array(stepped)
        true_total += np.where(running, rewards, 0.0)
        running &= ~dones
    env.close()
    return EvaluationResult(
        float(true_total.mean()),
        float(true_total.std()),
        float(learned_total.mean()) if reward is not None else None,
        episodes,
        np.concatenate(states),
        np.concatenate(actions),
    )


def policy_report(
    model: BaseAlgorithm,
    env_id: str,
    *,
    critic: torch.nn.Module,
    own_reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eps: float = 0.1,
    tau: float | None = None,
    curve_eps: Sequence[float] = (),
    episodes: int = 10,
    attack_steps: int = 10,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, float | tuple[float, ...] | None]:
    """Task performance and stability of a trained policy in one dictionary (SPEC F5):
    ``true_return``, ``own_reward_return`` and ``reward_gap`` (under ``own_reward``, the reward
    it was trained on, if learned), ``max_reward_gradient`` of ``critic`` (a differentiable reward
    of state and action) over the visited pairs, ``discontinuity_rate`` (ℓ∞ ``eps``, action
    change above ``tau``, on up to 400 visited states; ``tau=None``: a tenth of the widest action
    range, reported as ``tau``) and ``discontinuity_curve`` (the same at each of ``curve_eps``),
    and the true return under random noise,
    MAD and a reward attack guided by ``critic`` (``return_random``, ``return_mad``,
    ``return_reward_attack``; continuous actions only), all ℓ∞ ``eps`` on observations.
    ``env_kwargs``: ``gym.make``'s keyword arguments (:func:`evaluate`)."""
    policy = action_network(model)
    kind: ActionKind = "categorical" if policy.kind == "categorical" else "continuous"
    clean = evaluate(
        model,
        env_id,
        episodes=episodes,
        reward=own_reward,
        seed=10_000 + seed,
        env_kwargs=env_kwargs,
    )
    features = reward_features(clean.states, clean.actions)
    visited = torch.as_tensor(clean.states[:: max(1, len(clean.states) // 400)])
    tau = 0.1 * action_range(model) if tau is None else tau
    row: dict[str, float | tuple[float, ...] | None] = {
        "true_return": clean.true_return,
        "own_reward_return": clean.learned_return,
        "reward_gap": clean.reward_gap,
        "max_reward_gradient": max_reward_gradient(critic, features),
        "tau": tau,
        "discontinuity_rate": discontinuity_rate(policy, visited, eps, tau=tau, kind=kind),
        "discontinuity_curve": discontinuity_curve(
            policy, visited, curve_eps, tau=tau, kind=kind, seed=seed
        ),
    }
    attacks = {
        "random": random_perturbation(eps, seed=seed),
        "mad": policy_attack(policy, kind, eps, steps=attack_steps, seed=seed),
    }
    if kind == "continuous":  # the critic scores (state, action) pairs
        attacks["reward_attack"] = reward_attack(policy, critic, eps, steps=attack_steps, seed=seed)
    else:
        row["return_reward_attack"] = None
    for name, perturb in attacks.items():
        attacked = evaluate(
            model,
            env_id,
            episodes=episodes,
            perturb=perturb,
            seed=10_000 + seed,
            env_kwargs=env_kwargs,
        )
        row[f"return_{name}"] = attacked.true_return
    return row
