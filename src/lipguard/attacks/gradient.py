"""White-box gradient attacks: FGSM, PGD with restarts, APGD (Croce & Hein, 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lipguard import _checks
from lipguard.attacks.base import Attack, Best, evaluate, loss_and_gradient
from lipguard.attacks.objectives import BoundObjective
from lipguard.attacks.threat import ThreatModel


class FGSM(Attack):
    """One step of size ``eps`` along the steepest-ascent direction (sign of the gradient for
    ℓ∞, the normalised gradient for ℓ2; Goodfellow et al., 2015)."""

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> torch.Tensor:
        _, _, _, gradient = loss_and_gradient(model, bound, x)
        return x + self.threat.eps * self.threat.ascent_direction(gradient)


class PGD(Attack):
    """Projected gradient ascent (Madry et al., 2018) with random starts and restarts; each
    sample keeps its best iterate over all restarts.

    Args:
        steps: ascent steps per restart.
        step_size: default ``2.5·eps/steps`` (Madry's choice).
        random_start: start uniformly in the threat set instead of at ``x``.
        restarts: independent runs (later ones always start at random).
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        step_size: float | None = None,
        *,
        random_start: bool = True,
        restarts: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self.steps = _checks.positive_int("steps", steps)
        self.restarts = _checks.positive_int("restarts", restarts)
        self.step_size = (
            2.5 * threat.eps / steps
            if step_size is None
            else _checks.positive_float("step_size", step_size)
        )
        self.random_start = random_start

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> Best:
        best = Best(x)
        for restart in range(self.restarts):
            start_random = self.random_start or restart > 0
            x_adv = self.threat.random_start(x, generator) if start_random else x.clone()
            for _ in range(self.steps):
                outputs, loss, success, gradient = loss_and_gradient(model, bound, x_adv)
                best.update(x_adv, outputs, loss, success)
                step = self.step_size * self.threat.ascent_direction(gradient)
                x_adv = self.threat.project(x, x_adv + step)
            outputs, loss, success = evaluate(model, bound, x_adv)
            best.update(x_adv, outputs, loss, success)
        return best


def apgd_checkpoints(steps: int) -> list[int]:
    """fra31's checkpoints: at 0 and 22% of the budget, then intervals shrinking by 3% of the
    budget down to a 6% floor."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    return sorted({math.ceil(f * steps) for f in fractions if f <= 1})


class APGD(Attack):
    """Auto-PGD (Croce & Hein, ICML 2020; the fra31/auto-attack reference behaviour).

    Step size ``2·eps`` per sample, momentum ``0.75``; at each checkpoint the step is halved and
    the iterate restarted from the best point if fewer than ``rho`` of the steps since the last
    checkpoint increased the loss, or if neither the step nor the best loss changed since then.
    Objective ``CrossEntropy`` gives APGD-CE, ``DLR`` gives APGD-DLR.
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        *,
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self.steps = _checks.positive_int("steps", steps)
        self.restarts = _checks.positive_int("restarts", restarts)
        self.rho = _checks.probability("rho", rho)
        self.momentum = _checks.probability("momentum", momentum)

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> Best:
        best = Best(x)
        for _ in range(self.restarts):
            self._single(model, x, bound, generator, best)
        return best

    def _single(
        self,
        model: nn.Module,
        x: torch.Tensor,
        bound: BoundObjective,
        generator: torch.Generator,
        best: Best,
    ) -> None:
        threat = self.threat
        shape = (-1, *([1] * (x.dim() - 1)))
        checkpoints = apgd_checkpoints(self.steps)
        eta = torch.full((x.shape[0],), 2.0 * threat.eps, dtype=x.dtype, device=x.device)
        current = threat.random_start(x, generator)
        outputs, loss, success, gradient = loss_and_gradient(model, bound, current)
        best.update(current, outputs, loss, success)
        run_best_x, run_best_loss = current.clone(), loss.clone()
        previous = current.clone()
        increases = torch.zeros_like(eta)
        eta_at_checkpoint = eta.clone()
        best_at_checkpoint = run_best_loss.clone()
        last_checkpoint = 0
        for k in range(self.steps):
            step = eta.view(shape) * threat.ascent_direction(gradient)
            z = threat.project(x, current + step)
            if k == 0:
                proposal = z
            else:
                proposal = current + self.momentum * (z - current)
                proposal = proposal + (1 - self.momentum) * (current - previous)
                proposal = threat.project(x, proposal)
            previous, current = current, proposal
            outputs, new_loss, success, gradient = loss_and_gradient(model, bound, current)
            best.update(current, outputs, new_loss, success)
            increases += (new_loss > loss).to(x.dtype)
            loss = new_loss
            improved = new_loss > run_best_loss
            run_best_x[improved] = current[improved]
            run_best_loss = torch.where(improved, new_loss, run_best_loss)
            if k + 1 in checkpoints and k + 1 > last_checkpoint:
                interval = k + 1 - last_checkpoint
                too_few = increases < self.rho * interval
                stalled = (eta == eta_at_checkpoint) & (run_best_loss == best_at_checkpoint)
                reduce = too_few | stalled
                eta = torch.where(reduce, eta / 2, eta)
                if bool(reduce.any()):
                    current = torch.where(reduce.view(shape), run_best_x, current)
                    previous = current.clone()
                    _, loss, success, gradient = loss_and_gradient(model, bound, current)
                increases.zero_()
                eta_at_checkpoint, best_at_checkpoint = eta.clone(), run_best_loss.clone()
                last_checkpoint = k + 1
