"""White-box gradient attacks: FGSM, PGD with restarts, APGD (Croce & Hein, 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lipguard import _checks
from lipguard.attacks.base import Attack, Best, Trajectory, forward_backward, score
from lipguard.attacks.objectives import BoundObjective
from lipguard.attacks.threat import ThreatModel
from lipguard.errors import InvalidArgumentError


class FGSM(Attack):
    """One step of size ``eps`` along the steepest-ascent direction (sign of the gradient for
    ℓ∞, the normalised gradient for ℓ2; Goodfellow et al., 2015)."""

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> torch.Tensor:
        with torch.enable_grad():
            _, _, gradient = forward_backward(model, bound, x)
        return x + self.threat.eps * self.threat.ascent_direction(gradient)


class PGD(Attack):
    """Projected gradient ascent (Madry et al., 2018) with random starts and restarts; each
    sample keeps its best iterate over all restarts.

    Every iterate is a candidate: iterate ``k`` is scored by the forward pass that computes its
    gradient, so a run of ``steps`` steps costs ``steps`` forward and backward passes plus one
    forward pass for the last iterate — ``restarts·(steps + 1)`` model calls in all. The
    bookkeeping is batched (:class:`~lipguard.attacks.base.Trajectory`); a step is the gradient,
    its sign (ℓ∞) or normalisation (ℓ2), one add and one projection.

    With ``stop_on_success``, a sample is no longer attacked once an iterate succeeds (and later
    restarts attack only the samples no run has broken yet), as robustness evaluations do
    (AutoAttack): the success of every sample is what the full run would give (each sample's
    iterates are the same, up to the rounding of smaller batches), for a fraction of the model
    calls. Its returned point is its first successful iterate rather than the highest-loss
    one. It assumes what :class:`~lipguard.attacks.base.Trajectory` does too, that each sample's
    outputs and loss depend on that sample only (a model in eval mode, a per-sample objective),
    and changes nothing for objectives without a notion of success (regression shifts).

    Args:
        steps: ascent steps per restart.
        step_size: default ``2.5·eps/steps`` (Madry's choice).
        random_start: start uniformly in the threat set instead of at ``x``.
        restarts: independent runs (later ones always start at random).
        stop_on_success: stop attacking each sample at its first successful iterate.
    """

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        step_size: float | None = None,
        *,
        random_start: bool = True,
        restarts: int = 1,
        stop_on_success: bool = False,
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
        self.stop_on_success = bool(stop_on_success)

    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> Best:
        if self.stop_on_success and bound.margin is not None:
            return self._run_until_success(model, x, bound, generator)
        threat = self.threat
        project = threat.projector(x)
        best = Best(x)
        with torch.enable_grad():  # once, not per step
            for restart in range(self.restarts):
                start_random = self.random_start or restart > 0
                trajectory = Trajectory(x, bound, self.steps + 1)
                point = trajectory.point
                point.copy_(threat.random_start(x, generator) if start_random else x)
                for _ in range(self.steps):
                    outputs, loss, gradient = forward_backward(model, bound, point)
                    trajectory.record(outputs, loss)
                    if trajectory.full:
                        trajectory.fold(best)
                    direction = threat.ascent_direction(gradient, out=gradient)
                    point = project(
                        torch.add(point, direction, alpha=self.step_size, out=trajectory.point)
                    )
                trajectory.record(*score(model, bound, point))
                trajectory.fold(best)
        return best

    def _run_until_success(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> Best:
        """The runs of :meth:`_run` on the samples not broken yet, which shrink as iterates
        succeed; each step's outputs and success are checked at once (one sync per step)."""
        threat, best = self.threat, Best(x)
        with torch.enable_grad():  # once, not per step
            for restart in range(self.restarts):
                start_random = self.random_start or restart > 0
                start = threat.random_start(x, generator) if start_random else x  # every sample's
                active = torch.nonzero(~best.success).view(-1)
                if len(active) == 0:
                    break
                point = start.index_select(0, active)
                project = threat.projector(x.index_select(0, active))
                rows = _rows_objective(bound, active, best)
                for _ in range(self.steps):
                    outputs, loss, gradient = forward_backward(model, rows, point)
                    success = rows.success(outputs)
                    best.update_rows(active, point, outputs, loss, success)
                    if bool(success.any()):
                        keep = torch.nonzero(~success).view(-1)
                        if len(keep) == 0:
                            break
                        active, point = active[keep], point[keep]
                        gradient = gradient[keep]
                        project = threat.projector(x.index_select(0, active))
                        rows = _rows_objective(bound, active, best)
                    direction = threat.ascent_direction(gradient, out=gradient)
                    point = project(point.add_(direction, alpha=self.step_size))
                else:  # the last iterate
                    outputs, loss = score(model, rows, point)
                    best.update_rows(active, point, outputs, loss, rows.success(outputs))
        return best


def _rows_objective(bound: BoundObjective, active: torch.Tensor, best: Best) -> BoundObjective:
    """``bound`` on the rows ``active`` of the batch: their outputs are placed among the best
    outputs so far of the other rows (the objective sees a whole batch, so its references —
    labels, clean outputs — stay aligned), and their losses and margins read back."""
    if len(active) == len(best.loss):  # every row, in order
        return bound
    others = best.outputs  # updated in place from here on
    if others is None:
        raise InvalidArgumentError("the first update of a Best covers every sample")

    def on_rows(function: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
        return lambda outputs: function(others.index_put((active,), outputs)).index_select(
            0, active
        )

    margin = None if bound.margin is None else on_rows(bound.margin)
    return BoundObjective(bound.source, on_rows(bound.loss), margin)


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
    checkpoint increased the loss, or if neither the step nor the best loss changed since then
    (a restart drops the momentum term of the next step). Objective ``CrossEntropy`` gives
    APGD-CE, ``DLR`` gives APGD-DLR.

    A run costs ``steps + 1`` forward and backward passes (the start and every step): the loss
    and ascent direction at each run's best point are kept, as in the reference code, so a
    restart from it needs no new pass. Each sample's returned point is its best iterate
    (success, then loss) over all restarts.
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
        project = self.threat.projector(x)
        with torch.enable_grad():  # once, not per step
            for _ in range(self.restarts):
                _Run(self, model, x, bound, project, generator, best).search()
        return best


class _Run:
    """One APGD run: the iterate, its momentum, the per-sample step size, and the run's best
    point by loss alone (where a checkpoint restarts a sample) with that point's loss and
    ascent direction. Starts at a random point of the threat set, scored into ``best``."""

    def __init__(
        self,
        attack: APGD,
        model: nn.Module,
        x: torch.Tensor,
        bound: BoundObjective,
        project: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator,
        best: Best,
    ) -> None:
        self.attack, self.model, self.bound = attack, model, bound
        self.project, self.best = project, best
        self.shape = (-1, *([1] * (x.dim() - 1)))
        self.trajectory = Trajectory(x, bound, attack.steps, directions=True)
        self.increases = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        self.start = attack.threat.random_start(x, generator)
        outputs, loss, gradient = forward_backward(model, bound, self.start)
        best.update(self.start, outputs, loss, bound.success(outputs))
        self.start_direction = attack.threat.ascent_direction(gradient, out=gradient)
        self.best_x, self.best_loss = self.start, loss
        self.best_direction = self.start_direction
        self.reference = loss  # the loss of the iterate before the first step not folded yet

    def search(self) -> None:
        attack, threat, trajectory = self.attack, self.attack.threat, self.trajectory
        momentum = attack.momentum
        checkpoints = set(apgd_checkpoints(attack.steps))
        eta = torch.full_like(self.best_loss, 2.0 * threat.eps).view(self.shape)
        current = previous = self.start
        direction = self.start_direction
        z = torch.empty_like(current)
        eta_at_checkpoint, best_at_checkpoint = eta, self.best_loss
        last_checkpoint = 0
        for k in range(attack.steps):
            proposal = trajectory.point
            if k == 0:
                self.project(torch.addcmul(current, eta, direction, out=proposal))
            else:
                self.project(torch.addcmul(current, eta, direction, out=z))
                torch.lerp(current, z, momentum, out=proposal)
                proposal.add_(current - previous, alpha=1 - momentum)
                self.project(proposal)
            previous, current = current, proposal
            outputs, loss, gradient = forward_backward(self.model, self.bound, current)
            direction = threat.ascent_direction(gradient, out=trajectory.direction)
            trajectory.record(outputs, loss)
            if k + 1 not in checkpoints:
                if trajectory.full:
                    self.fold()
                continue
            self.fold()
            too_few = self.increases < attack.rho * (k + 1 - last_checkpoint)
            stalled = (eta == eta_at_checkpoint).view(-1) & (self.best_loss == best_at_checkpoint)
            reduce = too_few | stalled
            eta = torch.where(reduce.view(self.shape), eta / 2, eta)
            if bool(reduce.any()):
                rows = reduce.view(self.shape)
                current = torch.where(rows, self.best_x, current)
                direction = torch.where(rows, self.best_direction, direction)
                self.reference = torch.where(reduce, self.best_loss, self.reference)
                previous = current
            self.increases.zero_()
            eta_at_checkpoint, best_at_checkpoint = eta, self.best_loss
            last_checkpoint = k + 1
        if trajectory.losses:
            self.fold()

    def fold(self) -> None:
        """Merge the recorded steps into the overall best and the run's best point; count the
        steps that increased the loss."""
        count = len(self.trajectory.losses)
        directions = self.trajectory.directions
        assert directions is not None  # made with directions=True
        points, losses = self.trajectory.fold(self.best)
        before = torch.cat([self.reference[None], losses[:-1]])
        self.increases += (losses > before).sum(0)
        self.reference = losses[-1]
        key = torch.where(losses.isnan(), -torch.inf, losses)
        value, top = key.max(0)  # the first of the maxima
        rows = torch.arange(losses.shape[1], device=top.device)
        improved = value > self.best_loss
        self.best_loss = torch.where(improved, value, self.best_loss)
        mask = improved.view(self.shape)
        self.best_x = torch.where(mask, points[top, rows], self.best_x)
        self.best_direction = torch.where(mask, directions[:count][top, rows], self.best_direction)
