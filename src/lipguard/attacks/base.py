"""The attack template: validate, bind the objective, run, project, evaluate.

:meth:`Attack.__call__` is the only entry point (Foolbox 3's design): it checks the clean inputs
against the threat model, puts the model in eval mode (restoring every submodule's mode after),
binds the objective to the clean outputs, lets the subclass search (:meth:`Attack._run`), then
projects the result into the threat set and evaluates it. Whatever a subclass does, the returned
points respect the budget, the box and the mask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from lipguard import _checks
from lipguard.attacks.objectives import BoundObjective, Objective
from lipguard.attacks.threat import ThreatModel
from lipguard.errors import InvalidArgumentError


@dataclass(frozen=True)
class AttackResult:
    """Adversarial inputs and how they fared; one entry per input. ``clean_outputs`` is
    ``None`` when the objective did not need them (classification objectives)."""

    x_adv: torch.Tensor
    clean_outputs: torch.Tensor | None
    outputs: torch.Tensor
    loss: torch.Tensor
    success: torch.Tensor
    norm: torch.Tensor

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())


class Best:
    """Per-sample best iterate: a successful one beats a failed one, then the higher loss. It
    keeps each best iterate's outputs too, so the template need not evaluate it again."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.clone()
        self.outputs: torch.Tensor | None = None
        self.loss = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
        self.success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def update(
        self, x: torch.Tensor, outputs: torch.Tensor, loss: torch.Tensor, success: torch.Tensor
    ) -> None:
        better = torch.where(success != self.success, success, loss > self.loss)
        torch.where(_rows(better, x), x.detach(), self.x, out=self.x)
        if self.outputs is None:
            self.outputs = outputs.detach().clone()
        else:
            torch.where(_rows(better, outputs), outputs.detach(), self.outputs, out=self.outputs)
        torch.where(better, loss.detach(), self.loss, out=self.loss)
        self.success |= success


def _rows(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.view(-1, *([1] * (like.dim() - 1)))


def loss_and_gradient(
    model: nn.Module, bound: BoundObjective, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, loss, success, ∇_x loss)`` at ``x`` (one forward and backward)."""
    with torch.enable_grad():
        point = x.detach().requires_grad_(True)
        outputs = model(point)
        loss = bound.loss(outputs)
        (gradient,) = torch.autograd.grad(loss.sum(), point)
    outputs = outputs.detach()
    return outputs, loss.detach(), bound.success(outputs), gradient


def evaluate(
    model: nn.Module, bound: BoundObjective, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, loss, success)`` at ``x`` without gradients."""
    with torch.no_grad():
        outputs = model(x)
        return outputs, bound.loss(outputs), bound.success(outputs)


class Attack(ABC):
    """Base class of every attack. Subclasses implement :meth:`_run`.

    Args:
        threat: the threat model (budget, norm, box, mask).
        seed: seed of the attack's randomness (random starts, proposals).
    """

    def __init__(self, threat: ThreatModel, *, seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel):
            raise InvalidArgumentError("threat must be a lipguard.attacks.ThreatModel")
        self.threat = threat
        self.seed = seed

    def __call__(self, model: nn.Module, x: torch.Tensor, objective: Objective) -> AttackResult:
        self.threat.check_inputs(x)
        if not isinstance(objective, Objective):
            raise InvalidArgumentError("objective must be a lipguard.attacks Objective")
        x = x.detach()
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        with _checks.evaluating(model):
            clean: torch.Tensor | None = None
            if objective.uses_clean_outputs:
                with torch.no_grad():
                    clean = model(x)
            bound = objective.bind(model, x, clean)
            found = self._run(model, x, bound, generator)
            candidate = found.x if isinstance(found, Best) else found.detach()
            x_adv = self.threat.project(x, candidate)
            if (
                isinstance(found, Best)
                and found.outputs is not None
                and bool(torch.isfinite(found.loss).all())
                and torch.equal(x_adv, candidate)
            ):
                outputs, loss, success = found.outputs, found.loss, found.success
            else:
                outputs, loss, success = evaluate(model, bound, x_adv)
        return AttackResult(x_adv, clean, outputs, loss, success, self.threat.norm_of(x_adv - x))

    @abstractmethod
    def _run(
        self, model: nn.Module, x: torch.Tensor, bound: BoundObjective, generator: torch.Generator
    ) -> torch.Tensor | Best:
        """Search for adversarial inputs (or return the :class:`Best` tracker, whose stored
        outputs are reused if projection leaves its points unchanged); the template projects
        whatever is returned."""
