"""Per-environment settings of ``lipguard run``: ``--env highway-v0`` and ``--env Hopper-v5``.

A :class:`Preset` holds what an environment needs beyond Pendulum's defaults: the keyword
arguments of ``gym.make`` (highway-env: continuous throttle, a vector observation), the
:class:`~lipguard.pipeline.config.RunConfig` settings of the full and of the ``--quick`` run
(the reward target, the data and training budgets, attack budgets on the environment's own
observation scale) and the SB3 hyperparameters. :func:`~lipguard.pipeline.config.load_config`
applies the preset of the run's ``env`` before the config file and the command line, which
override any of it; an ``env`` without a preset keeps Pendulum's defaults.

The environments' packages are optional (``pip install 'lipguard[envs]'``): a preset imports
them only when its environment is asked for (:meth:`Preset.require`), and importing
``highway_env`` is what registers highway-env's ids with Gymnasium.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lipguard.errors import InvalidArgumentError

#: the optional-dependency group of pyproject.toml that installs the presets' environments
EXTRA = "envs"


@dataclass(frozen=True)
class Preset:
    """What ``lipguard run --env ID`` uses for one environment (see ``docs/pipeline.md``)."""

    env: str  # the Gymnasium id
    package: str  # the PyPI package that provides the environment
    modules: tuple[str, ...]  # the imports it needs (the first registers the ids, if any)
    env_kwargs: Mapping[str, Any]  # gym.make's keyword arguments
    full: Mapping[str, Any]  # RunConfig settings of the full run (over RunConfig())
    quick: Mapping[str, Any]  # ... and of the --quick run (over RunConfig.quick())
    hyperparameters: Mapping[str, Mapping[str, Any]]  # SB3 keyword arguments by algorithm

    def settings(self, quick: bool = False) -> dict[str, Any]:
        """The :class:`RunConfig` changes of the full or the quick run, ``env_kwargs``
        included (copies: a config never shares them with the preset)."""
        chosen = self.quick if quick else self.full
        settings = {key: _plain(value) for key, value in chosen.items()}
        return {"env": self.env, "env_kwargs": _plain(self.env_kwargs), **settings}

    def require(self) -> None:
        """Import the environment's modules (registering its ids); a missing one is an
        :class:`InvalidArgumentError` that names the package and the extra to install."""
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                raise InvalidArgumentError(
                    f"{self.env} needs the {self.package} package ({error.name} is missing), "
                    f"which lipguard's {EXTRA!r} extra installs: pip install 'lipguard[{EXTRA}]'"
                ) from None


def _frozen(value: Any) -> Any:
    """A read-only deep copy of nested dicts (lists become tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    return value


def _plain(value: Any, *, lists: bool = False) -> Any:
    """The mutable copy of :func:`_frozen`'s form: dicts, and tuples as they are at the top
    level (RunConfig's settings are tuples) but lists inside ``env_kwargs`` (what the
    environments' own configuration expects)."""
    if isinstance(value, Mapping):
        return {key: _plain(item, lists=True) for key, item in value.items()}
    if isinstance(value, tuple) and lists:
        return [_plain(item, lists=True) for item in value]
    return copy.deepcopy(value)


def _preset(
    *,
    env: str,
    package: str,
    modules: tuple[str, ...],
    env_kwargs: dict[str, Any],
    full: dict[str, Any],
    quick: dict[str, Any],
    hyperparameters: dict[str, dict[str, Any]],
) -> Preset:
    return Preset(
        env,
        package,
        modules,
        _frozen(env_kwargs),
        _frozen(full),
        _frozen(quick),
        _frozen(hyperparameters),
    )


#: highway-env's highway-v0 as a continuous-control task: throttle only (steering stays 0, so the
#: car keeps its lane on the straight road) among 10 IDM vehicles on 3 lanes, 20 one-second
#: decisions an episode; the reward (normalised to [0, 1]) pays speed and the right lane, and a
#: crash costs two thirds of its range and ends the episode. The observation is the ego car
#: (absolute x, y, speed) and its 4 nearest neighbours (relative x, y, speed), normalised but not
#: clipped, and flattened to 15 numbers: the constant columns of the default table (presence; the
#: ego car's clipped x and its vy, 0 without steering) are left out, since a constant feature
#: leaves the constrained reward model no room to fit (its bound divides by the smallest feature
#: spread).
HIGHWAY = _preset(
    env="highway-v0",
    package="highway-env",
    modules=("highway_env",),
    env_kwargs={
        "config": {
            "action": {"type": "ContinuousAction", "lateral": False},
            "observation": {
                "type": "Kinematics",
                "features": ["x", "y", "vx"],
                "vehicles_count": 5,
                "clip": False,
            },
            "lanes_count": 3,
            "vehicles_count": 10,
            "duration": 20,
            "simulation_frequency": 5,
            "policy_frequency": 1,
        }
    },
    full={
        "lipschitz": 1.0,
        "transitions": 3000,
        "timesteps": 5000,
        "episodes": 10,
        "aajr_eps": 0.05,
        "attack_eps": (0.0, 0.02, 0.05, 0.1, 0.2),
        "smoothing_sigma": 0.05,
        "policy_eps": 0.05,
        "discontinuity_eps": (0.005, 0.01, 0.03, 0.1),
        "monitor_steps": 1000,
        "monitor_batch": 50,
        "fault_step": 500,
    },
    quick={
        "lipschitz": 1.0,
        "transitions": 1000,
        "timesteps": 1000,
        "aajr_eps": 0.05,
        "attack_eps": (0.0, 0.02, 0.05, 0.1, 0.2),
        "smoothing_sigma": 0.05,
        "policy_eps": 0.05,
        "discontinuity_eps": (0.005, 0.01, 0.03, 0.1),
        "monitor_steps": 300,
        "monitor_batch": 50,
        "fault_step": 150,
    },
    hyperparameters={
        # short episodes: a short horizon; learning starts after a few episodes of experience
        "SAC": {
            "learning_rate": 1e-3,
            "gamma": 0.9,
            "learning_starts": 200,
            "batch_size": 128,
            "policy_kwargs": {"net_arch": [64, 64]},
        },
        "PPO": {"n_steps": 256, "batch_size": 64, "gamma": 0.9, "learning_rate": 5e-4},
    },
)

#: Gymnasium's MuJoCo Hopper-v5 as it is (11 observations: joint angles and velocities, which
#: reach ±10; 3 torques in [-1, 1]; episodes end when the hopper falls). Its reward (alive bonus
#: + forward speed - control cost) has spread-out features but a torso height that varies
#: little under random torques, so the constrained model gets a larger target than Pendulum's.
HOPPER = _preset(
    env="Hopper-v5",
    package="mujoco",
    modules=("mujoco", "gymnasium.envs.mujoco"),  # the latter needs imageio too
    env_kwargs={},
    full={
        "lipschitz": 15.0,
        "transitions": 5000,
        "timesteps": 10000,
        "episodes": 5,
        "policy_eps": 0.05,
        "monitor_steps": 2000,
        "fault_step": 1000,
    },
    quick={
        "lipschitz": 15.0,
        "transitions": 2000,
        "timesteps": 2000,
        "policy_eps": 0.05,
        "monitor_steps": 600,
        "fault_step": 300,
    },
    hyperparameters={
        "SAC": {
            "learning_rate": 1e-3,
            "learning_starts": 500,
            "policy_kwargs": {"net_arch": [64, 64]},
        },
        "PPO": {"n_steps": 1024, "batch_size": 64, "learning_rate": 3e-4},
    },
)

#: the presets by Gymnasium id
PRESETS: Mapping[str, Preset] = MappingProxyType({HIGHWAY.env: HIGHWAY, HOPPER.env: HOPPER})


def preset(env: str) -> Preset | None:
    """The preset of ``env``, or ``None`` (Pendulum's defaults apply)."""
    return PRESETS.get(env)


def hyperparameters(env: str, algorithm: str, default: Mapping[str, Any]) -> dict[str, Any]:
    """The SB3 keyword arguments of ``algorithm`` on ``env``: its preset's, else ``default``."""
    chosen = preset(env)
    found = chosen.hyperparameters.get(algorithm) if chosen is not None else None
    return _plain(found if found is not None else default, lists=True)
