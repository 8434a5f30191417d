"""Independent lower bounds for the soundness tests: they evaluate the model itself (its own
``forward``, in-place flags and all, in float64), never lipguard's view of it."""

from __future__ import annotations

import math

import torch
from torch import nn


def _operator_norms(jacobian: torch.Tensor, norm: float) -> torch.Tensor:
    if norm == math.inf:
        return jacobian.abs().sum(-1).amax(-1)
    return torch.linalg.matrix_norm(jacobian, 2)


def gradient_norms(
    model: nn.Module, points: torch.Tensor, norm: float, columns: torch.Tensor | None = None
) -> torch.Tensor:
    """``||J(x)||_{p→p}`` at each point, by autograd through ``model`` itself (inputs cloned so
    in-place layers cannot change them); ``columns`` restricts ``J`` to an input block. NaN
    where the float64 evaluation overflows (callers keep the finite values)."""
    points = points.detach().clone()

    def single(x: torch.Tensor) -> torch.Tensor:
        return model(x.clone()[None].to(points.dtype)).reshape(-1)

    rows = []
    for x in points:
        slack = 0.0
        try:
            jacobian = torch.autograd.functional.jacobian(single, x.clone())
        except RuntimeError:  # autograd cannot go through some in-place chains: differences
            jacobian, error = _central_differences(single, x)
            error = error.reshape(-1, x.numel())
            if columns is not None:
                error = error[:, columns]
            slack = float(error.norm())  # ||J_fd - J_exact||₂ <= ||E||_F (rounding only)
        jacobian = jacobian.reshape(-1, x.numel())
        if columns is not None:
            jacobian = jacobian[:, columns]
        if not bool(torch.isfinite(jacobian).all()):  # the float64 replica overflowed here
            rows.append(torch.tensor(math.nan, dtype=torch.float64))
            continue
        value = _operator_norms(jacobian.double()[None], norm)[0]
        rows.append((value - slack * (1 if norm == 2.0 else jacobian.shape[1])).clamp(min=0))
    return torch.stack(rows).detach()


def _central_differences(function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x + h·e_j) - f(x - h·e_j)) / 2h`` for every coordinate ``j``, and a bound on each
    entry's float64 rounding (which dominates when ``|f|`` is far above the slope times ``h``)."""
    flat = x.reshape(-1)
    step = 1e-6 * (flat.abs() + 1.0)
    columns, errors = [], []
    with torch.no_grad():
        for j in range(flat.numel()):
            offset = torch.zeros_like(flat)
            offset[j] = step[j]
            forward = function((flat + offset).reshape(x.shape))
            backward = function((flat - offset).reshape(x.shape))
            columns.append((forward - backward) / (2 * step[j]))
            errors.append(1e-14 * (forward.abs() + backward.abs()) / (2 * step[j]))
    return torch.stack(columns, dim=-1), torch.stack(errors, dim=-1)


def pair_ratios(model: nn.Module, a: torch.Tensor, b: torch.Tensor, norm: float) -> torch.Tensor:
    """``||f(a_i) - f(b_i)|| / ||a_i - b_i||`` for each row pair (float64)."""
    with torch.no_grad():
        change = model(a.clone()) - model(b.clone())
    distance = torch.linalg.vector_norm((a - b).flatten(1), ord=norm, dim=1)
    return torch.linalg.vector_norm(change.flatten(1), ord=norm, dim=1) / distance


def largest_slope(model: nn.Module, points: torch.Tensor, norm: float = 2.0) -> float:
    """The largest of the gradient norms at ``points`` and of difference ratios between
    neighbouring pairs."""
    slope = float(gradient_norms(model, points, norm).max())
    shifted = points + 1e-4 * torch.randn_like(points)
    return max(slope, float(pair_ratios(model, points, shifted, norm).max()))


def ascent(
    model: nn.Module,
    starts: torch.Tensor,
    norm: float,
    *,
    steps: int = 15,
    project=None,
) -> torch.Tensor:
    """Multi-start gradient ascent on ``||J(x)||`` (smooth activations give it something to
    climb); ``project`` keeps the iterates in a region. Returns the final points."""
    try:
        return _ascend(model, starts, norm, steps, project)
    except RuntimeError:  # e.g. vmap over an in-place layer: sampling alone is the oracle then
        return starts


def _ascend(model, starts, norm, steps, project) -> torch.Tensor:
    points = starts.detach().clone().requires_grad_(True)
    scale = float(starts.abs().mean()) + 1e-3
    optimizer = torch.optim.Adam([points], lr=0.05 * scale)
    for _ in range(steps):
        jacobian = torch.func.vmap(torch.func.jacrev(lambda x: model(x[None]).reshape(-1)))(points)
        objective = _operator_norms(jacobian.flatten(2), norm).sum()
        if not objective.requires_grad:
            break
        optimizer.zero_grad()
        (-objective).backward()
        optimizer.step()
        if project is not None:
            with torch.no_grad():
                points.copy_(project(points))
    return points.detach()
