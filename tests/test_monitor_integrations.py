"""The monitor inside a Gymnasium environment and an SB3 training run."""

from __future__ import annotations

import gymnasium as gym

from lipguard.monitor import LipschitzMonitor
from lipguard.monitor.integrations import MonitorCallback, MonitorWrapper


class PlantedFault(gym.Wrapper):
    """Adds a reward spike at one step: the fault the monitor must find."""

    def __init__(self, env, at: int):
        super().__init__(env)
        self.at, self.count = at, 0

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.count += 1
        return (
            observation,
            reward + (25.0 if self.count == self.at else 0.0),
            terminated,
            truncated,
            info,
        )


def _run(env, steps, seed=0):
    env.reset(seed=seed)
    env.action_space.seed(seed)
    flushed = []
    for _ in range(steps):
        *_, terminated, truncated, info = env.step(env.action_space.sample())
        flushed += info.get("lipguard_events", [])
        if terminated or truncated:
            env.reset()
    return flushed


def test_wrapper_finds_a_planted_fault_and_nothing_on_a_clean_run():
    # Pendulum's reward moves at most ~20 per unit of observation change (with the action term
    # inside the tolerance)
    clean = MonitorWrapper(
        gym.make("Pendulum-v1"), LipschitzMonitor(40.0, tolerance=0.05, drift=False)
    )
    assert [e for e in _run(clean, 400) if e.kind == "violation"] == []
    faulty = MonitorWrapper(
        PlantedFault(gym.make("Pendulum-v1"), at=150),
        LipschitzMonitor(40.0, tolerance=0.05, drift=False),
        batch_size=32,
    )
    found = [e for e in _run(faulty, 400) if e.kind == "violation"]
    assert found
    assert all(149 in (e.step, e.details["other"]) for e in found)
    assert faulty.events == [e for e in faulty.events if e.step < 400]


def test_sb3_callback_monitors_training_rewards():
    from stable_baselines3 import PPO

    env = PlantedFault(gym.make("Pendulum-v1"), at=100)
    callback = MonitorCallback(LipschitzMonitor(40.0, tolerance=0.05, drift=False))
    PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0).learn(
        256, callback=callback
    )
    violations = [e for e in callback.events if e.kind == "violation"]
    assert violations
    assert all(99 in (e.step, e.details["other"]) for e in violations)
    assert callback.monitor.step == 256
