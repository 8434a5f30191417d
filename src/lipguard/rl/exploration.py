"""Lipschitz-aware exploration: explore less where a learned reward is steep or uncertain.

Off-policy agents (TD3, DDPG) explore by adding Gaussian noise to the policy's action. Where the
learned reward ``r(s, a)`` changes fast with the action (near a penalised, unsafe region) or where
an ensemble of reward models disagrees (away from the data), a large random step is a gamble.
:class:`LipschitzAwareNoise` scales the noise at each step by the reward's local steepness and
uncertainty at the current state:

    σ(s) = clip(σ₀ / (1 + α·L(s) + β·u(s)), σ_min, σ₀)

with ``a = π(s)`` the policy's deterministic action, ``L(s)`` the largest ℓ2 norm of the
action-gradient ``∇_a r̄(s, a')`` of the ensemble's mean ``r̄`` over probe actions ``a'`` in the
ball ``B(a, radius)`` (``a`` itself and ``probes`` random points; ``estimate="gradient"``), or a
sound bound on the Lipschitz constant of ``r̄`` over the feature ball ``B((s, a), radius)``
(``estimate="bound"``, lipguard's local bound of each member, averaged), and ``u(s)`` the largest
standard deviation of the members' rewards over the same probes (0 for a single model).
Optionally (``budget``) the perturbation ``δ`` is also shrunk so that ``L(s)·‖δ‖ <= budget``.

What is guaranteed and what is heuristic:

- ``σ(s)`` always lies in ``[σ_min, σ₀]`` and is non-increasing in ``L(s)`` and in ``u(s)``
  (strictly decreasing while inside the interval, for ``α, β > 0``).
- ``estimate="gradient"``: ``L(s)`` is a *sampled lower bound* of the reward's local Lipschitz
  constant in the action (a heuristic: a cliff between probes goes unseen); with ``budget`` the
  predicted reward change ``|r̄(s, a+δ) - r̄(s, a)|`` is kept near ``budget`` to first order only.
- ``estimate="bound"`` with ``budget``: ``‖δ‖ <= min(radius, budget / L(s))`` in action units, and
  ``L(s)`` is a sound bound over the ball, so ``|r̄(s, a+δ) - r̄(s, a)| <= budget`` for the
  real-valued function of the members' weights (SB3's clipping to the action box only shortens
  ``δ`` coordinate by coordinate). ``a`` is the deterministic action the noise computed, which is
  the action TD3/DDPG perturb; SAC samples its own action first, so there the statement is about
  the deterministic action only. Float32 rounding of the deployed forward pass and of SB3's
  action arithmetic (scaling, adding, unscaling) is not covered.
- ``u(s)`` measures disagreement, not error: members that agree can all be wrong.
- Whether fewer unsafe actions follow is an empirical question; ``docs/exploration.md`` reports a
  measurement (Pendulum-v1 with a torque limit), not a guarantee.

SB3's action noise is called without the observation, so :class:`LipschitzAwareExploration` (a
callback) hands the noise each new observation (``locals["new_obs"]``, and the first one at the
start of training); the noise evaluates the reward lazily, when SB3 calls it inside
``_sample_action`` — after any gradient step in between, so ``π(s)`` is the action that is about
to be perturbed. :class:`ConstraintViolations` counts the steps whose action breaks a safety
constraint (e.g. :func:`torque_limit`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, SupportsFloat, get_args

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from torch import nn

from lipguard import _checks
from lipguard._placement import to_model
from lipguard.errors import InvalidArgumentError
from lipguard.rl.oracle import EnsembleReward

#: how ``L(s)`` is obtained: sampled gradient norms (heuristic) or lipguard's sound local bound
Estimate = Literal["gradient", "bound"]
ESTIMATES: tuple[Estimate, ...] = get_args(Estimate)
#: ``violates(observation acted in, action) -> bool``
Constraint = Callable[[np.ndarray, np.ndarray], bool]


@dataclass(frozen=True)
class ExplorationScale:
    """One step's exploration: the noise scale ``sigma`` (in SB3's scaled action units, [-1, 1])
    chosen from the steepness ``lipschitz`` (``L(s)``, reward per action unit) and the
    ``uncertainty`` (``u(s)``); ``step_norm`` is ``‖δ‖`` in action units after any budget cut."""

    sigma: float
    lipschitz: float
    uncertainty: float
    step_norm: float


def _non_negative(name: str, value: float) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (math.isfinite(result) and result >= 0.0):
        raise InvalidArgumentError(f"{name} must be finite and >= 0, got {value!r}")
    return result


def exploration_scale(
    lipschitz: float, uncertainty: float, sigma: float, sigma_min: float, alpha: float, beta: float
) -> float:
    """``clip(sigma / (1 + alpha·lipschitz + beta·uncertainty), sigma_min, sigma)``."""
    steep, spread = _non_negative("lipschitz", lipschitz), _non_negative("uncertainty", uncertainty)
    return min(sigma, max(sigma_min, sigma / (1.0 + alpha * steep + beta * spread)))


def reward_members(reward: nn.Module) -> list[nn.Module]:
    """The models whose mean is ``r̄`` and whose spread is ``u``: an ensemble's members, or the
    reward itself (``u = 0``)."""
    if isinstance(reward, EnsembleReward):
        return list(reward.members)
    return [reward]


class LipschitzAwareNoise(ActionNoise):
    """Gaussian action noise ``σ(s)·N(0, I)`` (SB3 scaled units) with ``σ(s)`` from the learned
    reward's steepness and uncertainty at the current state (see the module doc).

    Use it as an off-policy algorithm's ``action_noise`` together with
    :class:`LipschitzAwareExploration` (one environment).

    Args:
        reward: ``r(s, a)`` on features ``[observation, action]`` ``(N, d)`` -> ``(N,)`` (a
            :class:`~lipguard.rl.RewardModel`, an :class:`~lipguard.rl.EnsembleReward`, ...).
        action_low: the action box's lower corner (environment units).
        action_high: the action box's upper corner (environment units).
        sigma: ``σ₀``, the largest scale (SB3 scaled units: actions live in [-1, 1]).
        sigma_min: ``σ_min``, the smallest scale (``0 < sigma_min <= sigma``).
        alpha: weight of the steepness ``L(s)`` (per reward unit per action unit).
        beta: weight of the uncertainty ``u(s)`` (per reward unit).
        radius: radius of the action ball probed (environment units; ``"bound"``: of the feature
            ball the bound holds on).
        probes: random probe actions in the ball besides ``π(s)`` (``"gradient"``).
        estimate: ``"gradient"`` (heuristic, fast) or ``"bound"`` (sound, one interval
            propagation per member and step).
        budget: if given, ``δ`` is shortened so that ``L(s)·‖δ‖ <= budget`` (and ``‖δ‖ <= radius``
            for ``"bound"``).
        seed: seeds the noise and the probes.
    """

    def __init__(
        self,
        reward: nn.Module,
        action_low: Sequence[float] | np.ndarray,
        action_high: Sequence[float] | np.ndarray,
        *,
        sigma: float = 0.3,
        sigma_min: float = 0.05,
        alpha: float = 1.0,
        beta: float = 1.0,
        radius: float = 0.25,
        probes: int = 8,
        estimate: Estimate = "gradient",
        budget: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.sigma = _checks.positive_float("sigma", sigma)
        self.sigma_min = _checks.positive_float("sigma_min", sigma_min)
        if self.sigma_min > self.sigma:
            raise InvalidArgumentError(f"sigma_min ({sigma_min}) must not exceed sigma ({sigma})")
        self.alpha, self.beta = _non_negative("alpha", alpha), _non_negative("beta", beta)
        self.radius = _checks.positive_float("radius", radius)
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
            raise InvalidArgumentError(f"probes must be an integer >= 0, got {probes!r}")
        self.probes = probes
        if estimate not in ESTIMATES:
            raise InvalidArgumentError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
        self.estimate: Estimate = estimate
        self.budget = None if budget is None else _checks.positive_float("budget", budget)
        self.low = np.asarray(action_low, dtype=np.float64).reshape(-1)
        self.high = np.asarray(action_high, dtype=np.float64).reshape(-1)
        if self.low.shape != self.high.shape or not np.all(np.isfinite(self.low)):
            raise InvalidArgumentError("action_low and action_high must be finite, equal shapes")
        if not np.all(np.isfinite(self.high)) or not np.all(self.high > self.low):
            raise InvalidArgumentError("action_high must be finite and above action_low")
        self.reward = reward
        self.members = reward_members(reward)
        self._rng = np.random.default_rng(seed)
        self._probe_generator = torch.Generator().manual_seed(seed)
        self._observation: np.ndarray | None = None
        self._act: Callable[[np.ndarray], np.ndarray] | None = None
        self.last: ExplorationScale | None = None  # set by each call, read by the callback

    def observe(self, observation: np.ndarray, act: Callable[[np.ndarray], np.ndarray]) -> None:
        """The raw observation the next action is taken in, and ``act``: that observation ->
        the policy's deterministic action (environment units), evaluated at the next call."""
        self._observation = np.asarray(observation, dtype=np.float64).reshape(-1)
        self._act = act

    def steepness(self, observation: np.ndarray, action: np.ndarray) -> tuple[float, float]:
        """``(L(s), u(s))`` at one observation and action (environment units)."""
        state = torch.as_tensor(np.asarray(observation, dtype=np.float64).reshape(1, -1))
        centre = torch.as_tensor(np.asarray(action, dtype=np.float64).reshape(1, -1))
        if centre.shape[1] != self.low.size:
            raise InvalidArgumentError(
                f"the action has {centre.shape[1]} entries, the action box {self.low.size}"
            )
        offsets = torch.randn(self.probes, centre.shape[1], generator=self._probe_generator)
        lengths = torch.rand(self.probes, 1, generator=self._probe_generator) ** (
            1.0 / centre.shape[1]
        )
        offsets = offsets / offsets.norm(dim=1, keepdim=True).clamp_min(1e-12)
        probes = torch.cat([centre, centre + self.radius * lengths * offsets.double()])
        low, high = torch.as_tensor(self.low), torch.as_tensor(self.high)
        probes = torch.maximum(torch.minimum(probes, high), low)
        actions = to_model(self.members[0], probes).detach().requires_grad_(True)
        states = to_model(self.members[0], state).expand(len(probes), -1)
        with torch.enable_grad(), contextlib.ExitStack() as stack:
            for member in self.members:
                stack.enter_context(_checks.evaluating(member))
            features = torch.cat([states, actions], dim=1)
            rewards = torch.stack(
                [member(features).reshape(len(probes)) for member in self.members]
            )
            (gradient,) = torch.autograd.grad(rewards.mean(0).sum(), actions)
        spread = float(rewards.detach().std(0).max()) if len(self.members) > 1 else 0.0
        if self.estimate == "gradient":
            return float(gradient.norm(dim=1).max()), spread
        from lipguard.bounds import local_lipschitz_bound

        point = torch.cat([state, centre], dim=1)
        bounds = [
            local_lipschitz_bound(member, point, self.radius, 2)[0].value for member in self.members
        ]
        return float(np.mean(bounds)), spread

    def scale(self, observation: np.ndarray, action: np.ndarray) -> ExplorationScale:
        """``σ(s)`` (without drawing noise) at one observation and its action."""
        lipschitz, uncertainty = self.steepness(observation, action)
        sigma = exploration_scale(
            lipschitz, uncertainty, self.sigma, self.sigma_min, self.alpha, self.beta
        )
        return ExplorationScale(sigma, lipschitz, uncertainty, math.nan)

    def __call__(self) -> np.ndarray:
        if self._observation is None or self._act is None:
            raise RuntimeError("LipschitzAwareNoise: called before observe(); use the callback")
        action = np.asarray(self._act(self._observation), dtype=np.float64).reshape(-1)
        chosen = self.scale(self._observation, action)
        noise = chosen.sigma * self._rng.standard_normal(self.low.size)
        half_range = (self.high - self.low) / 2.0
        length = float(np.linalg.norm(noise * half_range))
        limit = math.inf
        if self.budget is not None and chosen.lipschitz > 0:
            limit = self.budget / chosen.lipschitz
        if self.budget is not None and self.estimate == "bound":
            limit = min(limit, self.radius) * (1 - 1e-6)  # room for the float32 cast below
        if length > limit:
            noise, length = noise * (limit / length), limit
        self.last = ExplorationScale(chosen.sigma, chosen.lipschitz, chosen.uncertainty, length)
        return noise.astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"LipschitzAwareNoise(sigma={self.sigma}, sigma_min={self.sigma_min}, "
            f"alpha={self.alpha}, beta={self.beta}, estimate={self.estimate!r})"
        )


class LipschitzAwareExploration(BaseCallback):
    """Feeds :class:`LipschitzAwareNoise` the observations of an off-policy SB3 algorithm
    (one environment) and records each step's :class:`ExplorationScale` in :attr:`history`
    (rows ``{"timesteps", "sigma", "lipschitz", "uncertainty", "step_norm"}``). During
    ``learning_starts`` SB3 adds the noise to uniformly random actions, while the scale is still
    computed at ``π(s)``: the budget statement holds from ``learning_starts`` on. Logs
    ``lipguard/exploration_sigma`` (the mean over the rollout) to SB3's logger.

    The reward model sees raw observations: with ``VecNormalize`` they are unnormalised first.
    """

    def __init__(self, noise: LipschitzAwareNoise) -> None:
        super().__init__()
        if not isinstance(noise, LipschitzAwareNoise):
            raise InvalidArgumentError("noise must be a LipschitzAwareNoise")
        self.noise = noise
        self.history: list[dict[str, float]] = []
        self._rollout: list[float] = []

    def _init_callback(self) -> None:
        if getattr(self.model, "action_noise", None) is not self.noise:
            raise InvalidArgumentError(
                "the model's action_noise must be this noise (SB3 copies it per environment "
                "when n_envs > 1: use one environment)"
            )

    def _act(self, observation: np.ndarray) -> np.ndarray:
        model: BaseAlgorithm = self.model
        policy_observation = observation.reshape(1, -1).astype(np.float32)
        normalizer = model.get_vec_normalize_env()
        if normalizer is not None:
            policy_observation = np.asarray(normalizer.normalize_obs(policy_observation))
        action, _ = model.predict(policy_observation, deterministic=True)
        return np.asarray(action).reshape(-1)

    def _hand(self, observations: Any) -> None:
        raw = np.asarray(observations, dtype=np.float64)
        normalizer = self.model.get_vec_normalize_env()
        if normalizer is not None:
            raw = np.asarray(normalizer.unnormalize_obs(observations), dtype=np.float64)
        self.noise.observe(raw.reshape(len(raw), -1)[0], self._act)

    def _on_training_start(self) -> None:
        self._hand(self.model._last_obs)  # the observation the first action is taken in

    def _on_step(self) -> bool:
        chosen = self.noise.last
        if chosen is not None:
            self.history.append(
                {
                    "timesteps": float(self.num_timesteps),
                    "sigma": chosen.sigma,
                    "lipschitz": chosen.lipschitz,
                    "uncertainty": chosen.uncertainty,
                    "step_norm": chosen.step_norm,
                }
            )
            self._rollout.append(chosen.sigma)
            self.noise.last = None
        self._hand(self.locals["new_obs"])  # reset observations replace terminal ones already
        return True

    def _on_rollout_end(self) -> None:
        if self._rollout:
            self.logger.record("lipguard/exploration_sigma", float(np.mean(self._rollout)))
            self._rollout = []


class ConstraintViolations(gym.Wrapper):
    """Counts the steps whose action breaks a safety constraint: ``violates(observation acted
    in, action)``. Adds ``info["violation"]``; :attr:`violations` and :attr:`steps` count over
    the wrapper's life (resets do not clear them). The action is checked as given to the
    wrapper (SB3 passes actions already clipped to the action box)."""

    def __init__(self, env: gym.Env, violates: Constraint) -> None:
        super().__init__(env)
        self.violates = violates
        self.violations = 0
        self.steps = 0
        self._observation: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        self._observation = np.asarray(observation)
        return observation, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._observation is None:
            raise RuntimeError("ConstraintViolations: step before reset()")
        violation = bool(self.violates(self._observation, np.asarray(action)))
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.violations += int(violation)
        self._observation = np.asarray(observation)
        return observation, reward, terminated, truncated, {**info, "violation": violation}


def torque_limit(limit: float) -> Constraint:
    """The constraint ``max_i |action_i| > limit`` (e.g. Pendulum-v1's torque, at most 2)."""
    bound = _checks.positive_float("limit", limit)

    def violates(observation: np.ndarray, action: np.ndarray) -> bool:
        return bool(np.max(np.abs(action)) > bound)

    return violates
