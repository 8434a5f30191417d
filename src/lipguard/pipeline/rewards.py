"""Stages 1–3 of ``lipguard run``: learn reward models, certify them, stress-test them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipguard.attacks import PGD, RewardShift, ThreatModel, robustness_curve
from lipguard.bounds import certify
from lipguard.pipeline.config import Reward, RunConfig
from lipguard.pipeline.results import DataSummary, RewardCertification, StressResult
from lipguard.rl import (
    RewardModel,
    build_reward_model,
    collect_transitions,
    fit_reward,
    max_reward_gradient,
    reward_features,
)
from lipguard.rl.reward import RewardKind
from lipguard.smoothing import SmoothedRegressor


@dataclass(frozen=True)
class RewardData:
    """Features ``(s, a)`` and observed rewards, split into training and held-out rows."""

    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    @property
    def reward_range(self) -> tuple[float, float]:
        """The smallest and largest observed reward of the training rows."""
        rewards = self.train[1]
        return float(rewards.min()), float(rewards.max())

    def summary(self) -> DataSummary:
        """Its sizes and reward range (``results.json``'s ``data``)."""
        rows, test_rows = len(self.train[0]), len(self.test[0])
        return DataSummary(
            transitions=rows + test_rows,
            train_rows=rows,
            test_rows=test_rows,
            features=self.train[0].shape[1],
            reward_range=self.reward_range,
        )


def collect(config: RunConfig) -> RewardData:
    """Stage 1's data: ``config.transitions`` steps of uniformly random actions, as reward
    features and observed rewards, 80% for training and 20% held out (a seeded shuffle)."""
    transitions = collect_transitions(
        config.env,
        config.transitions,
        seed=config.seed,
        progress=False,
        env_kwargs=config.env_kwargs,
    )
    features = reward_features(transitions.observations, transitions.actions)
    rewards = torch.as_tensor(transitions.rewards, dtype=torch.float32)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(config.seed))
    cut = int(0.8 * len(order))
    train, test = order[:cut], order[cut:]
    return RewardData((features[train], rewards[train]), (features[test], rewards[test]))


def _plan(config: RunConfig, name: Reward) -> tuple[RewardKind, str, dict[str, Any]]:
    """How ``name`` is trained: the architecture (:func:`~lipguard.rl.build_reward_model`'s
    ``kind``), the regularizer and its options."""
    if name is Reward.LIPSCHITZ:
        return "lipschitz", "none", {}
    if name is Reward.AAJR:
        options = {"weight": config.aajr_weight, "eps": config.aajr_eps, "norm": 2}
        return "unconstrained", "aajr", {**options, "sample_step": True}
    return "unconstrained", "none", {}


def train_rewards(config: RunConfig, data: RewardData) -> dict[Reward, RewardModel]:
    """Stage 1's models, by name (``config.reward_models``): ``unconstrained`` (ReLU MLP),
    ``lipschitz`` (certified ``<= config.lipschitz``) and, if enabled, ``aajr`` (the
    unconstrained architecture trained with AAJR); each in eval mode."""
    features, rewards = data.train
    models: dict[Reward, RewardModel] = {}
    for name in config.reward_models:
        kind, regularizer, options = _plan(config, name)
        model = build_reward_model(
            features,
            rewards,
            kind=kind,
            lipschitz=config.lipschitz,
            hidden=config.reward_hidden,
            seed=config.seed,
        )
        fit_reward(
            model,
            features,
            rewards,
            epochs=config.reward_epochs,
            regularizer=regularizer,
            regularizer_options=options,
            seed=config.seed,
            progress=False,
        )
        models[name] = model.eval()
    return models


def certify_rewards(
    config: RunConfig, models: dict[Reward, RewardModel], data: RewardData, folder: Path
) -> dict[Reward, RewardCertification]:
    """Stage 2: per model, its proven upper bound, witnessed lower bound and held-out error;
    writes one certificate file per model into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    features, rewards = data.test
    inputs = features[: config.certify_inputs].double()
    results: dict[Reward, RewardCertification] = {}
    for name, model in models.items():
        certificate = certify(model, 2, config.certify_method, inputs=inputs, seed=config.seed)
        path = folder / f"{name}.json"
        certificate.save(path)
        with torch.no_grad():
            mse = float(((model(features) - rewards) ** 2).mean())
        # both are sound: lipguard's best bound, and the model's own (the constrained layers')
        upper = min(certificate.upper.value, model.certified_lipschitz().value)
        results[name] = RewardCertification(
            test_mse=mse,
            certified_lipschitz=upper,
            certificate_method=certificate.upper.method,
            lower_bound=certificate.lower.value if certificate.lower else None,
            max_gradient_on_data=max_reward_gradient(model, features),
            certificate=str(path),
            weights_sha256=certificate.weights_sha256,
        )
    return results


def stress_rewards(
    config: RunConfig, models: dict[Reward, RewardModel], data: RewardData
) -> dict[Reward, StressResult]:
    """Stage 3, per model: the largest and mean ``|Δr|`` PGD finds within ℓ2 ``ε`` of held-out
    inputs (``RewardShift("abs")``), and randomized-smoothing bounds: the certified interval of
    the smoothed reward at radius ``smoothing_sigma / 2`` (clipped to the observed reward
    range)."""
    features, rewards = data.test
    points = features[: config.attack_points]
    results: dict[Reward, StressResult] = {}

    def pgd(threat: ThreatModel) -> PGD:
        return PGD(threat, steps=config.attack_steps, restarts=1, seed=config.seed)

    for name, model in models.items():
        curve = robustness_curve(
            model,
            points,
            RewardShift("abs"),
            config.attack_eps,
            {"pgd": pgd},
            threat=ThreatModel(0.0, 2),
        )
        smoothed = SmoothedRegressor(
            model, config.smoothing_sigma, data.reward_range, seed=config.seed
        )
        certified = smoothed.certify(
            features[: config.smoothing_points], n=config.smoothing_samples, alpha=0.001
        )
        radius = config.smoothing_sigma / 2
        lower, upper = certified.bounds(radius)
        results[name] = StressResult(
            epsilons=tuple(curve.epsilons.tolist()),
            max_shift=tuple(curve.max_loss["pgd"].tolist()),
            mean_shift=tuple(curve.mean_loss["pgd"].tolist()),
            smoothing_radius=radius,
            smoothed_interval_width=float((upper - lower).mean()),
            smoothed_estimate_error=float(
                np.abs(certified.mean.numpy() - rewards[: config.smoothing_points].numpy()).mean()
            ),
        )
    return results
