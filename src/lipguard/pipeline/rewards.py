"""Stages 1–3 of ``lipguard run``: learn reward models, certify them, stress-test them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipguard.attacks import PGD, RewardShift, ThreatModel, robustness_curve
from lipguard.bounds import certify
from lipguard.pipeline.config import RunConfig
from lipguard.rl import (
    RewardModel,
    build_reward_model,
    collect_transitions,
    fit_reward,
    max_reward_gradient,
    reward_features,
)
from lipguard.smoothing import SmoothedRegressor


@dataclass
class RewardData:
    """Features ``(s, a)`` and observed rewards, split into training and held-out rows."""

    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def collect(config: RunConfig) -> RewardData:
    transitions = collect_transitions(
        config.env, config.transitions, seed=config.seed, progress=False
    )
    features = reward_features(transitions.observations, transitions.actions)
    rewards = torch.as_tensor(transitions.rewards, dtype=torch.float32)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(config.seed))
    cut = int(0.8 * len(order))
    train, test = order[:cut], order[cut:]
    return RewardData((features[train], rewards[train]), (features[test], rewards[test]))


def train_rewards(config: RunConfig, data: RewardData) -> dict[str, RewardModel]:
    """``unconstrained`` (ReLU MLP), ``lipschitz`` (certified ``<= config.lipschitz``) and,
    if enabled, ``aajr`` (the unconstrained architecture trained with AAJR)."""
    features, rewards = data.train
    plans = {"unconstrained": ("unconstrained", "none", {}), "lipschitz": ("lipschitz", "none", {})}
    if config.aajr:
        options = {"weight": config.aajr_weight, "eps": config.aajr_eps, "norm": 2}
        plans["aajr"] = ("unconstrained", "aajr", {**options, "sample_step": True})
    models = {}
    for name, (kind, regularizer, options) in plans.items():
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
    config: RunConfig, models: dict[str, RewardModel], data: RewardData, folder: Path
) -> dict[str, dict]:
    """Upper bound (proven), witnessed lower bound and test error per model; certificate files
    in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    features, rewards = data.test
    inputs = features[: config.certify_inputs].double()
    results = {}
    for name, model in models.items():
        certificate = certify(model, 2, config.certify_method, inputs=inputs, seed=config.seed)
        path = folder / f"{name}.json"
        certificate.save(path)
        with torch.no_grad():
            mse = float(((model(features) - rewards) ** 2).mean())
        # both are sound: lipguard's best bound, and the model's own (the constrained layers')
        upper = min(certificate.upper.value, model.certified_lipschitz().value)
        results[name] = {
            "test_mse": mse,
            "certified_lipschitz": upper,
            "certificate_method": certificate.upper.method,
            "lower_bound": certificate.lower.value if certificate.lower else None,
            "max_gradient_on_data": max_reward_gradient(model, features),
            "certificate": str(path),
            "weights_sha256": certificate.weights_sha256,
        }
    return results


def stress_rewards(
    config: RunConfig, models: dict[str, RewardModel], data: RewardData
) -> dict[str, dict]:
    """Per model: the largest and mean ``|Δr|`` PGD finds within ℓ2 ``ε`` of held-out inputs
    (``RewardShift("abs")``), and randomized-smoothing bounds: the certified interval of the
    smoothed reward at radius ``smoothing_sigma / 2`` (clipped to the observed reward range)."""
    features, rewards = data.test
    points = features[: config.attack_points]
    low, high = float(data.train[1].min()), float(data.train[1].max())
    results = {}
    for name, model in models.items():
        steps = config.attack_steps
        curve = robustness_curve(
            model,
            points,
            RewardShift("abs"),
            config.attack_eps,
            {"pgd": lambda threat, s=steps: PGD(threat, steps=s, restarts=1, seed=config.seed)},
            threat=ThreatModel(0.0, 2),
        )
        smoothed = SmoothedRegressor(model, config.smoothing_sigma, (low, high), seed=config.seed)
        certified = smoothed.certify(
            features[: config.smoothing_points], n=config.smoothing_samples, alpha=0.001
        )
        radius = config.smoothing_sigma / 2
        lower, upper = certified.bounds(radius)
        results[name] = {
            "epsilons": curve.epsilons.tolist(),
            "max_shift": curve.max_loss["pgd"].tolist(),
            "mean_shift": curve.mean_loss["pgd"].tolist(),
            "smoothing_radius": radius,
            "smoothed_interval_width": float((upper - lower).mean()),
            "smoothed_estimate_error": float(
                np.abs(certified.mean.numpy() - rewards[: config.smoothing_points].numpy()).mean()
            ),
        }
    return results
