"""Every choice of ``lipguard run``, with documented defaults, from a TOML file or the defaults.

A config file holds any subset of :class:`RunConfig`'s fields at the top level (unknown keys are
errors); ``--quick`` starts from :meth:`RunConfig.quick` instead, and the file overrides it.
An environment with a preset (``highway-v0``, ``Hopper-v5``: :mod:`lipguard.pipeline.presets`)
starts from the preset's settings, which the file and the command line override in turn;
``env_kwargs`` are ``gym.make``'s keyword arguments (a TOML table).

.. code-block:: toml

    env = "Pendulum-v1"
    lipschitz = 6.0
    timesteps = 12000
    attack_eps = [0.0, 0.1, 0.2]
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from lipguard.bounds.api import METHODS, Method
from lipguard.errors import InvalidArgumentError
from lipguard.pipeline import presets


class Reward(StrEnum):
    """The one list of reward names of a run: the environment's own reward (``true``, which
    policies are also trained on) and the learned reward models, in the order they are trained
    and reported. A member is its name (a ``str``): it keys ``results.json``'s sections and
    names each model's certificate file."""

    TRUE = "true"
    UNCONSTRAINED = "unconstrained"  # ReLU MLP
    LIPSCHITZ = "lipschitz"  # certified <= RunConfig.lipschitz
    AAJR = "aajr"  # the unconstrained architecture trained with AAJR


#: the learned reward models, in training order
LEARNED_REWARDS: tuple[Reward, ...] = (Reward.UNCONSTRAINED, Reward.LIPSCHITZ, Reward.AAJR)


@dataclass(frozen=True)
class RunConfig:
    """The settings of one run (defaults: the full run, about 3 minutes on 2 cores)."""

    env: str = "Pendulum-v1"  # a Gymnasium id with a Box action space
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # gym.make's kwargs
    seed: int = 0
    # 1. reward learning (observed rewards of uniformly random actions)
    transitions: int = 4000
    reward_hidden: tuple[int, ...] = (64, 64)
    reward_epochs: int = 40
    lipschitz: float = 8.0  # target of the constrained reward model (ℓ2, raw features)
    aajr: bool = True  # also train an AAJR-regularised unconstrained model
    aajr_weight: float = 0.05
    aajr_eps: float = 0.1
    # 2. certification
    certify_method: Method = "auto"  # lipguard.bounds method: auto, compositional, lipsdp, …
    certify_inputs: int = 64  # typical inputs that seed the witnessed lower bound
    # 3. stress tests (ℓ2 on reward features, the certificate's norm)
    attack_eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)
    attack_points: int = 256
    attack_steps: int = 20
    smoothing_sigma: float = 0.1
    smoothing_points: int = 32
    smoothing_samples: int = 2000
    # 4. policies (SB3) on the true reward and on each learned reward
    algorithm: str = "SAC"
    timesteps: int = 8000
    episodes: int = 10
    policy_eps: float = 0.1  # ℓ∞ observation budget of the attacks
    tau: float | None = None  # action change that counts as a discontinuity (None: 10% of the
    # widest action range)
    discontinuity_eps: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)  # ℓ∞ budgets of the curve
    # 5. monitor: the constrained model deployed on the policy's rollouts
    monitor_steps: int = 2000
    monitor_batch: int = 100
    observation_noise: float = 0.01  # injected sensor noise (std)
    fault_step: int = 1000  # the serving path breaks here (the weights stay as certified)
    fault_scale: float = 8.0  # ... feeding the model its features times this

    @classmethod
    def quick(cls) -> RunConfig:
        """The ``--quick`` run (about 35 s on 2 cores)."""
        return cls(
            transitions=2000,
            reward_epochs=15,
            aajr=False,
            certify_method="compositional",
            certify_inputs=16,
            attack_points=64,
            attack_steps=10,
            smoothing_points=8,
            smoothing_samples=500,
            timesteps=1500,
            episodes=3,
            monitor_steps=800,
            fault_step=400,
        )

    @property
    def reward_models(self) -> tuple[Reward, ...]:
        """The learned reward models this run trains (``aajr`` only if enabled)."""
        return tuple(name for name in LEARNED_REWARDS if name is not Reward.AAJR or self.aajr)

    def replace(self, **changes: Any) -> RunConfig:
        """A checked copy with ``changes`` applied."""
        return _checked(dataclasses.replace(self, **changes))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``results.json``'s ``config``): every field, tuples as lists."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> RunConfig:
        """The config :meth:`to_dict` wrote (missing settings take their defaults)."""
        return cls().replace(**_settings(data, source))


#: settings that must be > 0, and those that must be >= 0 (every number must be finite)
_POSITIVE = {
    "transitions",
    "reward_epochs",
    "lipschitz",
    "certify_inputs",
    "attack_points",
    "attack_steps",
    "smoothing_sigma",
    "smoothing_points",
    "smoothing_samples",
    "timesteps",
    "episodes",
    "monitor_steps",
    "monitor_batch",
    "fault_scale",
    "reward_hidden",
    "tau",
    "discontinuity_eps",
}
_CHOICES = {
    "algorithm": ("SAC", "PPO"),
    "certify_method": METHODS,
}


def _checked(config: RunConfig) -> RunConfig:
    """Every setting has its field's type, is finite, and lies in its range; else one
    :class:`InvalidArgumentError` naming the setting (before any work starts)."""
    for field in fields(RunConfig):
        value = getattr(config, field.name)
        declared = str(field.type)
        if declared.endswith(" | None") and value is None:
            continue
        declared = declared.removesuffix(" | None")
        items = value if isinstance(value, tuple) else (value,)
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(
            declared.removeprefix("tuple[").split(",")[0].removesuffix("]")
        )
        if declared.startswith("tuple") != isinstance(value, tuple) or not all(
            _is(item, kind) for item in items
        ):
            raise InvalidArgumentError(f"{field.name} must be {field.type}, got {value!r}")
        if kind in (int, float):
            low = 0 if field.name not in _POSITIVE else None
            for item in items:
                if not math.isfinite(item) or (item <= 0 if low is None else item < low):
                    bound = "> 0" if low is None else ">= 0"
                    raise InvalidArgumentError(
                        f"{field.name} must be finite and {bound}, got {value!r}"
                    )
        if field.name in _CHOICES and value not in _CHOICES[field.name]:
            raise InvalidArgumentError(
                f"{field.name} must be one of {', '.join(_CHOICES[field.name])}, got {value!r}"
            )
    if not config.env:
        raise InvalidArgumentError("env must name a Gymnasium environment")
    if not isinstance(config.env_kwargs, dict) or not all(
        isinstance(key, str) for key in config.env_kwargs
    ):
        raise InvalidArgumentError(
            f"env_kwargs must be a table of gym.make's keyword arguments, got {config.env_kwargs!r}"
        )
    if not 0 < config.fault_step < config.monitor_steps:
        raise InvalidArgumentError("fault_step must lie inside the monitored rollout")
    return config


def _is(value: object, kind: type | None) -> bool:
    """``value`` has the type ``kind`` (an int counts as a float; a bool is not a number)."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return kind is None or isinstance(value, kind)


def _settings(data: Mapping[str, Any], source: object) -> dict[str, Any]:
    """``data``'s settings with lists as tuples; unknown keys are an error naming ``source``."""
    unknown = sorted(set(data) - {field.name for field in fields(RunConfig)})
    if unknown:
        raise InvalidArgumentError(f"unknown settings in {source}: {', '.join(unknown)}")
    return {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}


def load_config(path: Path | None = None, *, quick: bool = False, **overrides: Any) -> RunConfig:
    """Defaults (or the quick ones), then the preset of the run's environment (if it has one:
    :mod:`~lipguard.pipeline.presets`), then the TOML file at ``path``, then ``overrides``
    (``None`` values are ignored). A preset's environment package that is missing is an
    :class:`InvalidArgumentError` naming the extra to install."""
    config = RunConfig.quick() if quick else RunConfig()
    changes: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as error:
            raise InvalidArgumentError(f"cannot read {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise InvalidArgumentError(f"{path} is not valid TOML: {error}") from None
        changes = _settings(data, path)
    changes |= {key: value for key, value in overrides.items() if value is not None}
    preset = presets.preset(changes.get("env", config.env))
    if preset is not None:
        preset.require()
        config = config.replace(**preset.settings(quick))
    config = config.replace(**changes)
    check_environment(config.env, config.env_kwargs)
    return config


def check_environment(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> None:
    """The run needs a Gymnasium environment with continuous (Box) actions, made with
    ``env_kwargs`` (a preset's environment is imported first, which registers its id)."""
    import gymnasium as gym

    from lipguard.rl.data import make_env

    preset = presets.preset(env_id)
    if preset is not None:
        preset.require()
    try:
        env = make_env(env_id, env_kwargs)
    except (gym.error.Error, TypeError) as error:
        raise InvalidArgumentError(f"cannot make environment {env_id!r}: {error}") from error
    space = env.action_space
    observations = env.observation_space
    env.close()
    if not isinstance(observations, gym.spaces.Box):
        raise InvalidArgumentError(
            f"{env_id} has {type(observations).__name__} observations; lipguard run needs Box "
            "observations (the reward model reads them as a vector)"
        )
    if not isinstance(space, gym.spaces.Box):
        raise InvalidArgumentError(
            f"{env_id} has {type(space).__name__} actions; lipguard run needs Box actions "
            "(discrete environments work with lipguard.rl directly)"
        )
