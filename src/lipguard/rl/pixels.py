"""Reward models on image observations with a guaranteed Lipschitz bound on raw pixels.

:class:`PixelRewardModel` is ``standardise pixels → LipschitzCNN → rescale the output``:

    r(x) = reward_mean + reward_scale · cnn((x - μ)/σ),

with **one scalar** ``μ`` and ``σ`` for all pixels. Its ℓ2 Lipschitz constant on raw pixels is
``reward_scale · L(cnn) / σ``. A per-pixel ``σ_i`` would give ``reward_scale · L(cnn) / min_i σ_i``
instead: image observations almost always hold pixels that never change in the data (borders,
static background, a score display), whose ``σ_i`` is 0 or clamped to a tiny floor, so the bound
on raw pixels — or, for a fixed target, the network's own budget — would be wrecked by the
least informative pixel. A scalar standardisation keeps the scale that matters (the pixel range)
and treats a change of any pixel alike.

:func:`build_pixel_reward_model` gives the CNN the budget ``lipschitz · σ / reward_scale``, so
the whole model is ``lipschitz``-Lipschitz (ℓ2 over all pixels of one observation → reward);
:meth:`PixelRewardModel.certified_lipschitz` proves the bound again for the model as it is now.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from lipguard import _checks
from lipguard.bounds.graph import register_module, sequential_handler
from lipguard.errors import ShapeError
from lipguard.linalg import down, mul_up
from lipguard.nn import DiagonalAffine, LipschitzCNN
from lipguard.nn.cnn import ConvKind
from lipguard.results import LipschitzBound


class PixelRewardModel(nn.Sequential):
    """``r(x) = reward_mean + reward_scale · cnn((x - pixel_mean)/pixel_std)`` on observations
    ``(N, C, H, W)``; rewards ``(N,)``.

    The scalar standardisation is a :class:`~lipguard.nn.DiagonalAffine` along the image
    width (the same scale and offset for every pixel), so the bound engine reads the whole model.
    """

    def __init__(
        self,
        cnn: LipschitzCNN,
        pixel_mean: float,
        pixel_std: float,
        reward_mean: float = 0.0,
        reward_scale: float = 1.0,
    ) -> None:
        if not isinstance(cnn, LipschitzCNN) or cnn.out_features != 1:
            raise ShapeError("the network must be a LipschitzCNN with out_features=1")
        std = _checks.positive_float("pixel_std", pixel_std)
        _checks.positive_float("reward_scale", reward_scale)
        width = cnn.input_shape[2]
        super().__init__(
            DiagonalAffine(
                torch.full((width,), 1.0 / std), torch.full((width,), -pixel_mean / std)
            ),
            cnn,
            DiagonalAffine(torch.tensor([float(reward_scale)]), torch.tensor([float(reward_mean)])),
        )
        self.input_shape = cnn.input_shape

    @property
    def cnn(self) -> LipschitzCNN:
        return cast(LipschitzCNN, self[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rewards ``(N,)`` for observations ``(N, C, H, W)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(
                f"observations must be (N, {', '.join(map(str, self.input_shape))}), got "
                f"{tuple(x.shape)}"
            )
        return super().forward(x)[:, 0]

    def certified_lipschitz(self) -> LipschitzBound:
        """A sound ℓ2 bound on raw pixels for the model as it is now: the smaller of the bound
        engine's product bound over the whole model and ``|stored 1/σ| · L(cnn) ·
        |stored reward_scale|`` (the CNN's own :meth:`~lipguard.nn.LipschitzCNN.
        certified_lipschitz`), multiplied rounding upwards."""
        from lipguard.bounds import lipschitz_bound

        inner = self.cnn.certified_lipschitz()
        scales = [float(cast(DiagonalAffine, self[i]).scale.abs().max()) for i in (0, 2)]
        layered = LipschitzBound(
            mul_up(mul_up(scales[0], inner.value), scales[1]), 2.0, f"scaled-{inner.method}"
        )
        with torch.no_grad():
            engine = lipschitz_bound(self, 2, "product", input_shape=self.input_shape)
        return min(layered, engine, key=lambda bound: bound.value)


register_module(PixelRewardModel, sequential_handler)  # forward only drops the output axis


def build_pixel_reward_model(
    observations: torch.Tensor,
    rewards: torch.Tensor | None = None,
    *,
    lipschitz: float = 10.0,
    channels: Sequence[int] = (16, 32),
    layer: ConvKind = "aol",
    sll_blocks: int = 0,
    head_hidden: Sequence[int] = (),
    seed: int = 0,
) -> PixelRewardModel:
    """A fresh :class:`PixelRewardModel`, standardised on ``observations`` ``(N, C, H, W)`` (one
    scalar mean and std over all their pixels) and on ``rewards`` if given, whose ℓ2 Lipschitz
    constant on raw pixels is guaranteed ``<= lipschitz``. The architecture is a
    :class:`~lipguard.nn.LipschitzCNN` (``channels``, ``layer``, ``sll_blocks``,
    ``head_hidden`` as there; ``PixelUnshuffle`` downsampling, so ``H`` and ``W`` must be
    divisible by ``2**len(channels)``)."""
    lipschitz = _checks.positive_float("lipschitz", lipschitz)
    _checks.finite_tensor("observations", observations)
    if observations.dim() != 4 or len(observations) < 2:
        raise ShapeError(f"observations must be (N >= 2, C, H, W), got {tuple(observations.shape)}")
    observations = observations.double()
    mean = float(observations.mean())
    std = max(float(observations.std()), 1e-3)  # constant images: no blow-up of the scale
    reward_mean, reward_scale = 0.0, 1.0
    if rewards is not None:
        _checks.finite_tensor("rewards", rewards)
        if rewards.shape != (len(observations),):
            raise ShapeError(f"need one reward per observation, got {tuple(rewards.shape)}")
        reward_mean = float(rewards.mean())
        reward_scale = max(float(rewards.std()), 1e-3)
    torch.manual_seed(seed)
    # L(model) <= reward_scale · L(cnn) / σ: the CNN gets what is left, rounded down, with room
    # for rounding the stored 1/σ and reward_scale to float32
    inner = down(down(lipschitz * std) / reward_scale) * (1 - 1e-6)
    cnn = LipschitzCNN(
        tuple(observations.shape[1:]),
        1,
        channels,
        lipschitz=inner,
        layer=layer,
        sll_blocks=sll_blocks,
        head_hidden=head_hidden,
    )
    return PixelRewardModel(cnn, mean, std, reward_mean, reward_scale)
