"""Residual blocks: ``y = x + body(x)``."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """A residual block ``y = x + body(x)``; its Lipschitz constant is at most
    ``1 + Lip(body)`` (``lipguard.bounds`` uses exactly that). ``body`` must map its input to
    a tensor of the same shape."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
