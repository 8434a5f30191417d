"""Vectorised-environment wrappers (Stable-Baselines3 ``VecEnv``): learned rewards and observation
attacks.

- :class:`LearnedRewardVecEnv` replaces the environment's reward by a learned one, computed in one
  batched call per step. ``inputs``: ``"state"`` or ``"state_action"`` score the observation the
  action was taken in (and the action); ``"next_state"`` scores the observation reached, which for
  an episode's last step is ``info["terminal_observation"]`` (SB3 has already reset that
  environment, so the returned observation belongs to the next episode). The true reward stays in
  ``info["true_reward"]``; at the end of an episode ``info["learned_return"]`` and
  ``info["true_return"]`` hold both returns. Never put ``VecNormalize`` on a learned reward: it
  divides rewards by the return's standard deviation without removing the mean, which changes
  what a bounded, certified reward means.
- :class:`ObservationPerturbation` hands the policy perturbed observations
  ``perturb(observations)``; the environment (and any reward wrapper inside it) keeps the true
  state. Perturbations: :func:`random_perturbation` (uniform in the ε-box, or on the ε-sphere for
  ℓ2), :func:`policy_attack` (MAD / SA-PPO: PGD maximising the change of the policy's action) and
  :func:`reward_attack` (PGD minimising the learned reward of the action the policy takes in the
  true state: the policy is fooled into the action the reward model likes least).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn
from torch import nn

from lipguard import _checks
from lipguard._placement import to_model, to_numpy
from lipguard.attacks import PGD, ActionChange, CustomObjective, ThreatModel
from lipguard.attacks.objectives import ActionKind
from lipguard.errors import InvalidArgumentError, ShapeError, UnsupportedModuleError
from lipguard.norm import LINF, NormLike, parse_norm
from lipguard.rl.frozen import FrozenReward

#: what a learned reward scores: the state acted in (and the action), or the state reached
RewardInputs = Literal["state", "state_action", "next_state"]
REWARD_INPUTS: tuple[RewardInputs, ...] = get_args(RewardInputs)
Perturbation = Callable[[np.ndarray], np.ndarray]


def _as_array(observations: VecEnvObs) -> np.ndarray:
    """The batch of observations of an environment with an array (``Box``) observation space;
    dict and tuple observation spaces are refused."""
    if not isinstance(observations, np.ndarray):
        raise InvalidArgumentError(
            f"observations must be arrays, got {type(observations).__name__} (dict and tuple "
            "observation spaces are not supported)"
        )
    return observations


class LearnedRewardVecEnv(VecEnvWrapper):
    """The environment with ``reward(features)`` in place of its reward.

    The feature rows are float32 (observations and actions cast as ``astype`` casts them), written
    in place into one preallocated buffer per step: the observation when it arrives, the action in
    :meth:`step_async`. The reward is the same function of those rows as calling ``reward`` on
    them: a :class:`~lipguard.rl.frozen.FrozenReward` snapshot's NumPy evaluation when ``fast``
    applies, else ``reward`` itself (without gradients, on a copy of the rows moved to the
    module's device and dtype).

    Args:
        venv: the vectorised environment.
        reward: features ``(N, d)`` tensor -> rewards ``(N,)`` (a reward model, a
            :class:`~lipguard.rl.PessimisticReward`, an ensemble, ...).
        inputs: ``"state"``, ``"state_action"`` or ``"next_state"`` (see the module doc).
        keep: how many recent feature rows :attr:`recent_features` returns (for metrics).
        fast: evaluate an ``nn.Module`` reward through a :class:`~lipguard.rl.frozen.FrozenReward`
            NumPy program (rebuilt whenever the model changes), when its layers allow; while the
            model is one NumPy cannot evaluate (a hook added, say), the module itself is called.
    """

    def __init__(
        self,
        venv: VecEnv,
        reward: Callable[[torch.Tensor], torch.Tensor],
        inputs: RewardInputs = "state_action",
        keep: int = 4096,
        fast: bool = True,
    ) -> None:
        super().__init__(venv)
        if inputs not in REWARD_INPUTS:
            raise InvalidArgumentError(f"inputs must be one of {REWARD_INPUTS}, got {inputs!r}")
        self.reward, self.inputs = reward, inputs
        self._frozen: FrozenReward | None = None
        if fast and isinstance(reward, nn.Module):
            # operators NumPy cannot evaluate: call the module
            with contextlib.suppress(UnsupportedModuleError, InvalidArgumentError, ShapeError):
                self._frozen = FrozenReward(reward)
        self.keep = _checks.positive_int("keep", keep)
        self._action_width = 0
        if inputs == "state_action":
            if self.action_space.shape is None:
                raise InvalidArgumentError(
                    f"inputs='state_action' needs array actions, not {self.action_space}"
                )
            self._action_width = math.prod(self.action_space.shape)  # Discrete: () -> 1 column
        # this step's feature rows (allocated by reset): the state acted in, then the action
        # (state inputs), or the state reached (next_state)
        self._features: np.ndarray | None = None
        self._state_rows: np.ndarray | None = None  # views of its columns
        self._action_rows: np.ndarray | None = None
        # the last `keep` rows scored, a ring (allocated by reset): row `written % keep` is the
        # oldest once full; it grows to `keep` rows as rows arrive
        self._recent = np.empty((0, 0), dtype=np.float32)
        self._written = 0
        self._learned_return = [0.0] * self.num_envs
        self._true_return = [0.0] * self.num_envs

    def reset(self) -> VecEnvObs:
        observations = self.venv.reset()
        states = _as_array(observations).reshape(self.num_envs, -1)
        width = states.shape[1] + self._action_width
        self._features = np.zeros((self.num_envs, width), dtype=np.float32)
        self._state_rows = self._features[:, : states.shape[1]]
        self._action_rows = self._features[:, states.shape[1] :] if self._action_width else None
        if self._recent.shape[1] != width:
            self._recent, self._written = np.empty((0, width), dtype=np.float32), 0
        if self.inputs != "next_state":
            self._state_rows[...] = states  # assignment casts as astype does
        self._learned_return = [0.0] * self.num_envs
        self._true_return = [0.0] * self.num_envs
        return observations

    def step_async(self, actions: np.ndarray) -> None:
        if self._action_rows is not None:
            self._action_rows[...] = np.asarray(actions).reshape(self.num_envs, -1)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        features, state_rows = self._features, self._state_rows
        if features is None or state_rows is None:
            raise RuntimeError("LearnedRewardVecEnv: step before reset()")
        observations, true_rewards, dones, infos = self.venv.step_wait()
        states = _as_array(observations).reshape(self.num_envs, -1)
        ended = [index for index, done in enumerate(np.asarray(dones).tolist()) if done]
        if self.inputs == "next_state":
            state_rows[...] = states
            for index in ended:  # SB3 has reset these environments: score the state reached
                final = np.asarray(infos[index]["terminal_observation"], dtype=states.dtype)
                features[index] = final.reshape(-1)
        learned = self._rewards(features)
        self._remember(features)
        # Python floats and one loop: a handful of environments step faster without NumPy
        learned_return, true_return = self._learned_return, self._true_return
        infos = list(infos)
        steps = zip(infos, np.asarray(true_rewards).tolist(), learned.tolist(), strict=True)
        for index, (info, true_reward, learned_reward) in enumerate(steps):
            info["true_reward"] = true_reward
            learned_return[index] += learned_reward
            true_return[index] += true_reward
        for index in ended:
            infos[index]["learned_return"] = learned_return[index]
            infos[index]["true_return"] = true_return[index]
            learned_return[index] = true_return[index] = 0.0
        if self.inputs != "next_state":  # the state the next action is taken in
            state_rows[...] = states
        return observations, learned.astype(np.float32), dones, infos

    def _rewards(self, features: np.ndarray) -> np.ndarray:
        """The rewards (float64) of the rows ``features``, which this call does not keep."""
        if self._frozen is not None:
            # a model NumPy cannot evaluate now (a hook added, say) is called itself
            with contextlib.suppress(UnsupportedModuleError, InvalidArgumentError, ShapeError):
                return self._frozen.numpy(features)
        # no_grad, not inference_mode: lipguard's layers cache their weights with a version
        # counter, which inference tensors lack; a copy: the next step rewrites the buffer
        with torch.no_grad():
            scored = self.reward(to_model(self.reward, features.copy()))
        return to_numpy(torch.as_tensor(scored).reshape(-1))

    def _remember(self, features: np.ndarray) -> None:
        start, count = self._written % self.keep, len(features)
        if start + count <= len(self._recent):  # room at the write position
            self._recent[start : start + count] = features
            self._written += count
            return
        rows = features[-self.keep :]
        count = len(rows)
        if len(self._recent) < self.keep:  # still filling (start == written): grow
            capacity = min(max(self._written + count, 2 * len(self._recent)), self.keep)
            grown = np.empty((capacity, rows.shape[1]), dtype=np.float32)
            grown[: self._written] = self._recent[: self._written]
            self._recent = grown
        head = min(count, self.keep - start)
        self._recent[start : start + head] = rows[:head]
        self._recent[: count - head] = rows[head:]  # the rest wraps around
        self._written += count

    @property
    def recent_features(self) -> torch.Tensor:
        """The last ``keep`` feature rows scored (fewer at the start), oldest first (a copy)."""
        if self._written == 0:
            return torch.zeros(0, 0)
        if self._written <= self.keep:
            return torch.from_numpy(self._recent[: self._written].copy())
        return torch.from_numpy(np.roll(self._recent, -(self._written % self.keep), axis=0))


class ObservationPerturbation(VecEnvWrapper):
    """The policy sees ``perturb(observations)``; the environment keeps the true state."""

    def __init__(self, venv: VecEnv, perturb: Perturbation) -> None:
        super().__init__(venv)
        self.perturb = perturb
        self.true_observations: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        self.true_observations = _as_array(self.venv.reset())
        return self.perturb(self.true_observations)

    def step_wait(self) -> VecEnvStepReturn:
        observations, rewards, dones, infos = self.venv.step_wait()
        self.true_observations = _as_array(observations)
        return self.perturb(self.true_observations), rewards, dones, infos


def random_perturbation(eps: float, norm: NormLike = LINF, seed: int = 0) -> Perturbation:
    """Uniform noise in the ℓ∞ box of radius ``eps``, or uniform on the ℓ2 sphere of radius
    ``eps`` (a random direction at full budget)."""
    eps, p = _checks.positive_float("eps", eps), parse_norm(norm)
    rng = np.random.default_rng(seed)

    def perturb(observations: np.ndarray) -> np.ndarray:
        if p == np.inf:
            noise = rng.uniform(-eps, eps, size=observations.shape)
        else:
            noise = rng.normal(size=observations.shape)
            flat = noise.reshape(len(noise), -1)
            noise = (flat * eps / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(noise.shape)
        return (observations + noise).astype(observations.dtype)

    return perturb


def _pgd(eps: float, norm: NormLike, steps: int, seed: int) -> PGD:
    threat = ThreatModel(_checks.positive_float("eps", eps), norm)
    return PGD(threat, steps=steps, restarts=1, seed=seed)


def policy_attack(
    policy: torch.nn.Module,
    kind: ActionKind,
    eps: float,
    norm: NormLike = LINF,
    steps: int = 10,
    seed: int = 0,
) -> Perturbation:
    """MAD / SA-PPO's attack: PGD (random start) maximising the change of ``policy``'s action
    (``kind`` ``"continuous"``: ``||a(ŝ) - a(s)||``; ``"categorical"``: the KL of its logits)."""
    attack = _pgd(eps, norm, steps, seed)
    objective = ActionChange(kind)

    def perturb(observations: np.ndarray) -> np.ndarray:
        states = to_model(policy, observations)
        return to_numpy(attack(policy, states, objective).x_adv).astype(observations.dtype)

    return perturb


def reward_attack(
    policy: torch.nn.Module,
    reward: torch.nn.Module,
    eps: float,
    norm: NormLike = LINF,
    steps: int = 10,
    seed: int = 0,
) -> Perturbation:
    """PGD on the observation the policy sees, minimising ``reward(s, policy(ŝ))`` with the true
    state ``s`` (``policy`` returns environment actions; the reward takes state and action)."""
    attack = _pgd(eps, norm, steps, seed)

    def perturb(observations: np.ndarray) -> np.ndarray:
        states = to_model(policy, observations)

        def loss(actions: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
            return -reward(torch.cat([states, actions.reshape(len(states), -1)], dim=1))

        found = attack(policy, states, CustomObjective(loss))
        return to_numpy(found.x_adv).astype(observations.dtype)

    return perturb
