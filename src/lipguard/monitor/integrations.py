"""The monitor inside Gymnasium environments and Stable-Baselines3 training.

- :class:`MonitorWrapper` — a ``gymnasium.Wrapper`` that feeds every (observation, reward) the
  environment produces to a :class:`LipschitzMonitor`, in batches of ``batch_size`` steps (and
  at the end of each episode), and reports the events found in the ``info`` of the step that
  flushed them (``info["lipguard_events"]``).
- :class:`MonitorCallback` — an SB3 callback that monitors the rewards of a vectorised
  environment during training (``new_obs``, ``rewards`` of every step) and logs the event counts
  (``lipguard/violations``, ``lipguard/events``) to SB3's logger.

The monitored state is the observation the reward was produced for: the one *before* the step
for rewards of the form ``r(s, a)``, as Gymnasium returns it.
"""

from __future__ import annotations

from typing import Any, SupportsFloat, TypeVar

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from lipguard import _checks
from lipguard.monitor.monitor import Event, LipschitzMonitor

ObsType = TypeVar("ObsType")
ActType = TypeVar("ActType")


class MonitorWrapper(gym.Wrapper[ObsType, ActType, ObsType, ActType]):
    """Monitor an environment's rewards against a Lipschitz bound on its observations."""

    def __init__(
        self, env: gym.Env[ObsType, ActType], monitor: LipschitzMonitor, batch_size: int = 64
    ) -> None:
        super().__init__(env)
        self.monitor = monitor
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self._states: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._last_observation: np.ndarray | None = None
        self.events: list[Event] = []

    def reset(self, **kwargs: Any) -> tuple[ObsType, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        self._last_observation = np.asarray(observation, dtype=np.float64).reshape(-1)
        return observation, info

    def step(self, action: ActType) -> tuple[ObsType, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        if self._last_observation is None:
            raise RuntimeError("MonitorWrapper: call reset() before step()")
        self._states.append(self._last_observation)
        self._rewards.append(float(reward))
        self._last_observation = np.asarray(observation, dtype=np.float64).reshape(-1)
        if len(self._states) >= self.batch_size or terminated or truncated:
            found = self.flush()
            if found:
                info = {**info, "lipguard_events": found}
        return observation, reward, terminated, truncated, info

    def flush(self) -> list[Event]:
        """Check the buffered steps now; returns the events found."""
        if not self._states:
            return []
        found = self.monitor.observe(np.stack(self._states), np.asarray(self._rewards)).events
        self._states, self._rewards = [], []
        self.events += found
        return found


class MonitorCallback(BaseCallback):
    """Monitor the rewards an SB3 algorithm receives, step by step, during ``learn``."""

    def __init__(self, monitor: LipschitzMonitor, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.monitor = monitor
        self.events: list[Event] = []
        self._previous: np.ndarray | None = None

    def _on_rollout_start(self) -> None:
        self._previous = np.asarray(self.model._last_obs, dtype=np.float64)

    def _on_step(self) -> bool:
        rewards = np.asarray(self.locals["rewards"], dtype=np.float64).reshape(-1)
        if self._previous is None:  # set by _on_rollout_start, which SB3 calls first
            raise RuntimeError("MonitorCallback: a step before the rollout started")
        states = self._previous.reshape(len(rewards), -1)
        found = self.monitor.observe(states, rewards).events
        self.events += found
        self._previous = np.asarray(self.locals["new_obs"], dtype=np.float64)
        self.logger.record_mean("lipguard/violations", sum(e.kind == "violation" for e in found))
        self.logger.record_mean("lipguard/events", len(found))
        return True
