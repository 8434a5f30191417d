"""The minimal-norm attack: the smallest ℓ2 perturbation that succeeds.

For each sample, minimise ``||δ||₂² + c·max(0, margin(x + δ))`` with Adam, for a constant ``c``
found by binary search (Carlini & Wagner, 2017): a success lowers ``c`` (smaller
perturbations), a failure raises it (tenfold until the first success). The smallest successful
``δ`` is then shortened by bisection along its own direction to the boundary of success, so on
a linear classifier the result is the exact distance to the decision boundary. Samples never
attacked successfully come back unperturbed (``success`` False). The threat model's ``eps`` caps
the search (use a generous value); its box and mask apply.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipguard import _checks
from lipguard.attacks.base import Attack, evaluate
from lipguard.attacks.objectives import BoundObjective
from lipguard.attacks.threat import ThreatModel
from lipguard.errors import InvalidArgumentError


class MinimalNorm(Attack):
    """Smallest successful ℓ2 perturbation (needs an objective with a notion of success).

    Args:
        steps: Adam steps per value of ``c``.
        search_steps: binary-search rounds over ``c``.
        learning_rate: Adam's step, relative to the input scale.
        initial_c: the first ``c``.
        refine_steps: bisection steps towards the boundary along the best perturbation.
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        search_steps: int = 9,
        *,
        learning_rate: float = 0.01,
        initial_c: float = 1.0,
        refine_steps: int = 30,
        seed: int = 0,
    ) -> None:
        if threat.norm != 2.0:
            raise InvalidArgumentError("the minimal-norm attack works in the ℓ2 norm")
        super().__init__(threat, seed=seed)
        self.steps = _checks.positive_int("steps", steps)
        self.search_steps = _checks.positive_int("search_steps", search_steps)
        self.learning_rate = _checks.positive_float("learning_rate", learning_rate)
        self.initial_c = _checks.positive_float("initial_c", initial_c)
        self.refine_steps = _checks.positive_int("refine_steps", refine_steps)

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> torch.Tensor:
        if bound.margin is None:
            raise InvalidArgumentError("the minimal-norm attack needs an objective with a margin")
        size = x.shape[0]
        c = torch.full((size,), self.initial_c, dtype=x.dtype, device=x.device)
        low = torch.zeros_like(c)
        high = torch.full_like(c, math.inf)
        best_delta = torch.zeros_like(x)
        best_norm = torch.full_like(c, math.inf)
        for _ in range(self.search_steps):
            delta = torch.zeros_like(x, requires_grad=True)
            optimizer = torch.optim.Adam([delta], lr=self.learning_rate)
            succeeded = torch.zeros(size, dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                with torch.enable_grad():
                    point = self.threat.project(x, x + delta)
                    margin = bound.margin(model(point))
                    norm = (point - x).flatten(1).norm(dim=1)
                    objective = norm**2 + c * margin.clamp_min(0)
                    optimizer.zero_grad()
                    objective.sum().backward()
                optimizer.step()
                found = (margin.detach() < 0) & (norm.detach() < best_norm)
                best_delta[found] = (point - x).detach()[found]
                best_norm = torch.where(found, norm.detach(), best_norm)
                succeeded |= margin.detach() < 0
            high = torch.where(succeeded, torch.minimum(high, c), high)
            low = torch.where(succeeded, low, torch.maximum(low, c))
            c = torch.where(torch.isinf(high), c * 10, (low + high) / 2)
        return x + self._refine(model, bound, x, best_delta, torch.isfinite(best_norm))

    def _shortest_along(
        self,
        model: nn.Module,
        bound: BoundObjective,
        x: torch.Tensor,
        delta: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Per sample the smallest ``t ∈ (0, scale]`` with ``x + t·δ`` successful (bisection),
        or ``inf`` where even ``t = scale`` fails."""
        shape = (-1, *([1] * (x.dim() - 1)))
        low = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        high = torch.full_like(low, scale)
        _, _, reachable = evaluate(model, bound, self.threat.project(x, x + scale * delta))
        for _ in range(self.refine_steps):
            middle = (low + high) / 2
            point = self.threat.project(x, x + middle.view(shape) * delta)
            _, _, success = evaluate(model, bound, point)
            high = torch.where(success, middle, high)
            low = torch.where(success, low, middle)
        return torch.where(reachable, high, torch.inf)

    def _refine(
        self,
        model: nn.Module,
        bound: BoundObjective,
        x: torch.Tensor,
        delta: torch.Tensor,
        found: torch.Tensor,
    ) -> torch.Tensor:
        """Shorten each successful ``δ``: bisection to the boundary along ``δ``, then (DeepFool
        style) along the boundary's normal ``u = -∇margin/||∇margin||`` at that point, keeping
        ``(δ·u)·u`` when it succeeds with a smaller norm — exact for a linear boundary. Every
        returned perturbation has been checked to succeed."""
        margin = bound.margin
        if margin is None:
            raise InvalidArgumentError("the minimal-norm attack needs an objective with a margin")
        shape = (-1, *([1] * (x.dim() - 1)))
        t = self._shortest_along(model, bound, x, delta, 1.0)
        delta = torch.where(
            found.view(shape), torch.nan_to_num(t, posinf=0.0).view(shape) * delta, 0
        )
        for _ in range(3):
            with torch.enable_grad():
                point = (x + delta).detach().requires_grad_(True)
                (gradient,) = torch.autograd.grad(margin(model(point)).sum(), point)
            normal = -gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)
            length = (delta * normal).flatten(1).sum(1).clamp_min(0)
            candidate = length.view(shape) * normal
            scale = self._shortest_along(model, bound, x, candidate, 2.0)
            shorter = found & torch.isfinite(scale)
            shorter &= (scale * length) < delta.flatten(1).norm(dim=1)
            delta = torch.where(shorter.view(shape), scale.view(shape) * candidate, delta)
        return delta
