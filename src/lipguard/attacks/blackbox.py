"""Attacks that never look at gradients: Square, a random-noise baseline, transfer.

They matter for the masking audit: a model whose gradients are broken (quantised inputs,
saturated softmax) fools gradient attacks but not these.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipguard import _checks
from lipguard.attacks.base import Attack, AttackResult, Best, evaluate
from lipguard.attacks.objectives import BoundObjective
from lipguard.attacks.threat import ThreatModel
from lipguard.errors import InvalidArgumentError


class RandomNoise(Attack):
    """The baseline every attack must beat: ``samples`` random points at the full budget
    (random corners ``±eps`` for ℓ∞, random directions of length ``eps`` for ℓ2); each sample
    keeps its best."""

    def __init__(self, threat: ThreatModel, samples: int = 100, *, seed: int = 0) -> None:
        super().__init__(threat, seed=seed)
        self.samples = _checks.positive_int("samples", samples)

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> Best:
        best = Best(x)
        for _ in range(self.samples):
            direction = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            if self.threat.norm == math.inf:
                direction = direction.sign()
            else:
                size = direction.flatten(1).norm(dim=1).clamp_min(1e-30)
                direction = direction / size.view(-1, *([1] * (x.dim() - 1)))
            point = self.threat.project(x, x + self.threat.eps * direction)
            outputs, loss, success = evaluate(model, bound, point)
            best.update(point, outputs, loss, success)
        return best


def _square_fraction(p_init: float, query: int, budget: int) -> float:
    """Andriushchenko et al.'s schedule: ``p`` halves at fixed fractions of a 10 000-query run."""
    scaled = int(query / budget * 10_000)
    halvings = sum(scaled > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


class Square(Attack):
    """Square Attack (Andriushchenko et al., ECCV 2020), ℓ∞, score-based: no gradients.

    Starts from vertical stripes of ``±eps``; each query re-draws a random square window (side
    ``sqrt(p·h·w)`` for inputs with two spatial axes, a window of ``p·d`` features for flat
    inputs) to ``±eps`` per channel and keeps the change where the loss increases. Samples stop
    once the objective succeeds.
    """

    def __init__(
        self, threat: ThreatModel, queries: int = 1000, *, p_init: float = 0.8, seed: int = 0
    ) -> None:
        if threat.norm != math.inf:
            raise InvalidArgumentError("the Square attack is implemented for the ℓ∞ norm")
        super().__init__(threat, seed=seed)
        self.queries = _checks.positive_int("queries", queries)
        self.p_init = _checks.probability("p_init", p_init)

    def _window(self, x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
        """A boolean mask (one per sample) of the window to re-draw."""
        size = x.shape[0]
        mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        if x.dim() >= 3:  # (N, ..., H, W): square windows on the last two axes
            height, width = x.shape[-2:]
            side = max(1, min(height, width, round(math.sqrt(fraction * height * width))))
            rows = torch.randint(0, height - side + 1, (size,), generator=generator)
            cols = torch.randint(0, width - side + 1, (size,), generator=generator)
            for i in range(size):
                mask[i, ..., rows[i] : rows[i] + side, cols[i] : cols[i] + side] = True
        else:
            features = x.shape[1]
            length = max(1, min(features, round(fraction * features)))
            starts = torch.randint(0, features - length + 1, (size,), generator=generator)
            for i in range(size):
                mask[i, starts[i] : starts[i] + length] = True
        return mask

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> torch.Tensor:
        eps = self.threat.eps
        shape = (x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])  # stripes along the last axis
        stripes = torch.randint(0, 2, shape, generator=generator).to(x) * 2 - 1
        current = self.threat.project(x, x + eps * stripes.expand_as(x))
        _, loss, success = evaluate(model, bound, current)
        for query in range(self.queries):
            active = ~success
            if not bool(active.any()):
                break
            fraction = _square_fraction(self.p_init, query, self.queries)
            window = self._window(x, fraction, generator) & active.view(-1, *([1] * (x.dim() - 1)))
            signs = torch.randint(0, 2, x.shape, generator=generator).to(x) * 2 - 1
            proposal = torch.where(window, x + eps * signs, current)
            proposal = self.threat.project(x, proposal)
            _, new_loss, new_success = evaluate(model, bound, proposal)
            accept = active & (new_loss > loss)
            current = torch.where(accept.view(-1, *([1] * (x.dim() - 1))), proposal, current)
            loss = torch.where(accept, new_loss, loss)
            success = success | (accept & new_success)
        return current


class Transfer(Attack):
    """Craft with ``attack`` on a ``surrogate`` model, evaluate on the target: a black-box
    attack, and the masking audit's transfer check."""

    def __init__(self, attack: Attack, surrogate: nn.Module) -> None:
        super().__init__(attack.threat, seed=attack.seed)
        self.attack = attack
        self.surrogate = surrogate

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> torch.Tensor:
        crafted: AttackResult = self.attack(self.surrogate, x, bound.source)
        return crafted.x_adv
