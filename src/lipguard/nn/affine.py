"""A per-feature affine map: input standardisation and output scaling inside certified models."""

from __future__ import annotations

import torch
from torch import nn

from lipguard.errors import InvalidArgumentError


class DiagonalAffine(nn.Module):
    """``y = x·scale + offset`` feature by feature (fixed buffers, not trained).

    Its ℓ2 and ℓ∞ Lipschitz constant is ``max |scale|``; the bound engine sees it as a dense layer
    with a diagonal matrix, so models that standardise their inputs or rescale their outputs with
    it stay certifiable.
    """

    scale: torch.Tensor
    offset: torch.Tensor

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        scale, offset = torch.as_tensor(scale).flatten(), torch.as_tensor(offset).flatten()
        if scale.shape != offset.shape:
            raise InvalidArgumentError("scale and offset need the same number of features")
        if not (torch.isfinite(scale).all() and torch.isfinite(offset).all()):
            raise InvalidArgumentError("scale and offset must be finite")
        self.register_buffer("scale", scale.clone())
        self.register_buffer("offset", offset.clone())

    @classmethod
    def standardizing(cls, mean: torch.Tensor, std: torch.Tensor) -> DiagonalAffine:
        """``(x - mean)/std`` as ``x·(1/std) + (-mean/std)``; ``std`` must be positive."""
        if not bool((torch.as_tensor(std) > 0).all()):
            raise InvalidArgumentError("standard deviations must be positive")
        return cls(1.0 / std, -mean / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def lipschitz(self) -> float:
        """``max |scale|`` (exact: the stored scale is the map)."""
        return float(self.scale.abs().max())
