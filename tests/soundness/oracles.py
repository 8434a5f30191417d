"""Independent lower bounds for the soundness tests: they evaluate the model itself (its own
``forward``, hooks and all, in float64), never lipguard's view of it."""

from __future__ import annotations

import math

import torch
from torch import nn


def gradient_norms(model: nn.Module, points: torch.Tensor, norm: float) -> torch.Tensor:
    """``||J(x)||_{p→p}`` at each point, by autograd through ``model`` itself."""
    points = points.detach().clone()

    def single(x: torch.Tensor) -> torch.Tensor:
        return model(x[None].to(points.dtype)).reshape(-1)

    rows = []
    for x in points:
        jacobian = torch.autograd.functional.jacobian(single, x.clone()).reshape(-1, x.numel())
        if norm == math.inf:
            rows.append(jacobian.abs().sum(-1).max())
        else:
            rows.append(torch.linalg.matrix_norm(jacobian.double(), 2))
    return torch.stack(rows).double().detach()


def largest_slope(model: nn.Module, points: torch.Tensor, norm: float = 2.0) -> float:
    """The largest of the gradient norms at ``points`` and of difference ratios between
    neighbouring pairs (the model's own forward; inputs cloned, so in-place layers cannot
    change them)."""
    slope = float(gradient_norms(model, points, norm).max())
    with torch.no_grad():
        shifted = points + 1e-4 * torch.randn_like(points)
        change = model(points.clone()) - model(shifted.clone())
        distance = torch.linalg.vector_norm((points - shifted).flatten(1), ord=norm, dim=1)
        ratio = torch.linalg.vector_norm(change.flatten(1), ord=norm, dim=1) / distance
    return max(slope, float(ratio.max()))
