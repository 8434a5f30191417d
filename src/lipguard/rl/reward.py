"""Reward models ``r(s)`` or ``r(s, a)`` with standardisation that keeps the certificate valid.

:class:`RewardModel` is ``DiagonalAffine (standardise inputs) → network → DiagonalAffine
(rescale the output)``. Standardising helps training, but it changes the Lipschitz constant:
for the ℓ2 norm on raw inputs

    L(r) <= reward_scale · L(network) / min_i std_i,

so :func:`build_reward_model` divides the requested target by ``reward_scale / min std`` before
it builds a :class:`~lipguard.nn.LipschitzMLP`, and :meth:`RewardModel.certified_lipschitz`
proves the whole model's bound again. The bound engine sees the whole model
(``lipguard.bounds.lipschitz_bound`` / ``local_lipschitz_bound`` work on it unchanged).

:func:`fit_reward` trains on observed rewards (regression); :func:`fit_preferences` on pairs of
trajectory segments labelled by which has the higher true return (Bradley–Terry on the segments'
summed rewards, as in preference-based RL).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

import torch
from torch import nn

from lipguard import _checks
from lipguard.bounds.graph import register_module, sequential_handler
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.linalg import down
from lipguard.nn import DiagonalAffine, LipschitzMLP
from lipguard.results import LipschitzBound
from lipguard.train import FitResult, Regularizer, fit

#: the reward network: a certified LipschitzMLP, or a plain ReLU MLP of the same widths
RewardKind = Literal["lipschitz", "unconstrained"]
KINDS: tuple[RewardKind, ...] = get_args(RewardKind)


class RewardModel(nn.Sequential):
    """``r(x) = reward_mean + reward_scale · network((x - input_mean)/input_std)`` on the
    features ``x`` (the state, or state and action concatenated)."""

    def __init__(
        self,
        network: nn.Module,
        input_mean: torch.Tensor,
        input_std: torch.Tensor,
        reward_mean: float = 0.0,
        reward_scale: float = 1.0,
    ) -> None:
        _checks.positive_float("reward_scale", reward_scale)
        input_mean = torch.as_tensor(input_mean, dtype=torch.float32)
        input_std = torch.as_tensor(input_std, dtype=torch.float32)
        super().__init__(
            DiagonalAffine.standardizing(input_mean, input_std),
            network,
            DiagonalAffine(torch.tensor([float(reward_scale)]), torch.tensor([float(reward_mean)])),
        )

    @property
    def network(self) -> nn.Module:
        return self[1]

    @property
    def in_features(self) -> int:
        standardize = cast(DiagonalAffine, self[0])  # __init__ puts it there
        return standardize.scale.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rewards of shape ``(N,)`` for features ``(N, in_features)``."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ShapeError(
                f"reward features must be (N, {self.in_features}), got {tuple(x.shape)}"
            )
        return super().forward(x)[:, 0]

    def certified_lipschitz(self) -> LipschitzBound:
        """A sound ℓ2 bound on raw features, proven by the bound engine over the whole model
        (standardisation, network and output scaling as they are now): the smaller of its
        product and compositional bounds."""
        from lipguard.bounds import lipschitz_bound

        return min(
            (lipschitz_bound(self, 2, method) for method in ("product", "compositional")),
            key=lambda bound: bound.value,
        )


register_module(RewardModel, sequential_handler)  # forward only drops the output axis


def build_reward_model(
    features: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    kind: RewardKind = "lipschitz",
    lipschitz: float = 10.0,
    hidden: Sequence[int] = (64, 64),
    seed: int = 0,
) -> RewardModel:
    """A fresh reward model standardised on ``features`` (and ``rewards``, if given).

    ``kind="lipschitz"``: a GroupSort :class:`LipschitzMLP` whose bound makes the *whole* model
    ``lipschitz``-Lipschitz (ℓ2) on raw features; ``"unconstrained"``: ``nn.Linear`` + ReLU of the
    same widths.
    """
    if kind not in KINDS:
        raise InvalidArgumentError(f"kind must be one of {KINDS}, got {kind!r}")
    _checks.finite_tensor("features", features)
    if features.dim() != 2 or len(features) < 2:
        raise ShapeError("features must be (N >= 2, d)")
    mean = features.mean(0)
    std = features.std(0).clamp_min(1e-3)  # constant features: no blow-up of the scale
    reward_mean, reward_scale = 0.0, 1.0
    if rewards is not None:
        reward_mean = float(rewards.mean())
        reward_scale = max(float(rewards.std()), 1e-3)
    torch.manual_seed(seed)
    d = features.shape[1]
    if kind == "lipschitz":
        # L(model) <= reward_scale · L(net) · max(1/std): give the network what is left, rounded
        # down so that the product of the rounded-up parts stays within the target
        inner = down(_checks.positive_float("lipschitz", lipschitz) * float(std.min()))
        inner = down(inner / reward_scale) * (1 - 1e-6)
        network: nn.Module = LipschitzMLP(d, 1, hidden, lipschitz=inner)
    else:
        widths = [d, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        network = nn.Sequential(*layers, nn.Linear(widths[-1], 1))
    return RewardModel(network, mean, std, reward_mean, reward_scale)


class SegmentReturn(nn.Module):
    """The summed reward of segments ``(N, T, d) -> (N,)``: what preferences compare."""

    def __init__(self, reward: RewardModel) -> None:
        super().__init__()
        self.reward = reward

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        n, t, d = segments.shape
        return self.reward(segments.reshape(n * t, d)).view(n, t).sum(1)


def fit_reward(
    model: nn.Module,
    features: torch.Tensor,
    rewards: torch.Tensor,
    *,
    epochs: int = 40,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    regularizer: str | Regularizer = "none",
    regularizer_options: dict[str, Any] | None = None,  # the regularizer's keyword arguments
    seed: int = 0,
    progress: bool = True,
) -> FitResult:
    """Regress ``model`` (a :class:`RewardModel` on feature rows, or a
    :class:`~lipguard.rl.PixelRewardModel` on images) on observed rewards (mean squared error;
    20% held out)."""
    if rewards.shape != (len(features),):
        raise ShapeError("need one reward per feature row")
    return fit(
        model,
        (features.float(), rewards.float()),
        "regression",
        regularizer,
        regularizer_options=regularizer_options,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        progress=progress,
    )


def fit_preferences(
    model: RewardModel,
    pairs: torch.Tensor,
    preferred_first: torch.Tensor,
    *,
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> FitResult:
    """Bradley–Terry on segment pairs ``(N, 2, T, d)``: ``P(first ≻ second) = σ(R₁ - R₂)`` with
    ``R`` the segment's summed reward; ``preferred_first`` holds the labels (1 or 0)."""
    if pairs.dim() != 4 or pairs.shape[1] != 2:
        raise ShapeError("pairs must be (N, 2, T, d)")
    return fit(
        SegmentReturn(model),
        (pairs.float(), preferred_first.float()),
        "preference",
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        progress=progress,
    )
