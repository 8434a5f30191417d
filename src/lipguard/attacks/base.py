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
    """Per-sample best iterate: a successful one beats a failed one, then the higher loss (ties
    keep the earlier one). It keeps each best iterate's outputs too, so the template need not
    evaluate it again."""

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

    def update_rows(
        self,
        rows: torch.Tensor,
        x: torch.Tensor,
        outputs: torch.Tensor,
        loss: torch.Tensor,
        success: torch.Tensor,
    ) -> None:
        """:meth:`update` of the samples ``rows`` (increasing indices) with their iterates; the
        first update covers every sample."""
        if len(rows) == len(self.loss):  # all of them, in order
            self.update(x, outputs, loss, success)
            return
        if self.outputs is None:
            raise InvalidArgumentError("the first update of a Best covers every sample")
        # selects, no boolean indexing: nothing waits on the device
        better = torch.where(success != self.success[rows], success, loss > self.loss[rows])
        for kept, new in ((self.x, x), (self.outputs, outputs), (self.loss, loss)):
            current = kept.index_select(0, rows)
            kept.index_copy_(0, rows, torch.where(_rows(better, new), new.detach(), current))
        self.success.index_copy_(0, rows, self.success.index_select(0, rows) | success)


def _rows(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.view(-1, *([1] * (like.dim() - 1)))


#: the most memory a :class:`Trajectory`'s buffers take (points, and directions if kept)
TRAJECTORY_BYTES = 64 * 2**20


class Trajectory:
    """The iterates of one run, each scored by the forward pass that computed its gradient, and
    folded into a :class:`Best` in batches: the attack loop compares nothing per step.

    The caller writes each iterate straight into the buffer slot :attr:`point` (and its ascent
    direction into :attr:`direction`, if kept), then passes its outputs and loss to
    :meth:`record`. :meth:`fold` tests success on all recorded outputs at once (one call when
    the objective :attr:`~lipguard.attacks.objectives.BoundObjective.stacks`), picks each
    sample's best iterate in the order of :meth:`Best.update` — success, then the higher loss,
    ties to the earlier one, a NaN loss below every number — and merges it into the
    :class:`Best` with one update: the result equals updating it after every step (NaN losses
    aside). At most :attr:`capacity` iterates are held
    (:attr:`full`: the caller folds, and the slots are reused), so the buffers stay within
    :data:`TRAJECTORY_BYTES` whatever the number of steps; a slot is not overwritten before
    the two iterates after it are written.

    Args:
        x: the clean batch (sets the size of a point).
        bound: the bound objective (its success test runs at :meth:`fold`).
        steps: the iterates one run records (the capacity never exceeds it).
        directions: keep each iterate's ascent direction too (:attr:`direction`).
    """

    def __init__(
        self, x: torch.Tensor, bound: BoundObjective, steps: int, *, directions: bool = False
    ) -> None:
        point_bytes = max(1, x.numel() * x.element_size() * (2 if directions else 1))
        self.capacity = min(steps, max(3, TRAJECTORY_BYTES // point_bytes))
        self.bound = bound
        self.points = x.new_empty((self.capacity, *x.shape))
        self.directions = x.new_empty((self.capacity, *x.shape)) if directions else None
        self._point_slots = self.points.unbind(0)
        self._direction_slots = () if self.directions is None else self.directions.unbind(0)
        self.outputs: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []

    @property
    def point(self) -> torch.Tensor:
        """The slot of the next iterate."""
        return self._point_slots[len(self.losses)]

    @property
    def direction(self) -> torch.Tensor:
        """The slot of the next iterate's ascent direction (``directions=True``)."""
        if self.directions is None:
            raise InvalidArgumentError("this trajectory keeps no directions")
        return self._direction_slots[len(self.losses)]

    @property
    def full(self) -> bool:
        return len(self.losses) >= self.capacity

    def record(self, outputs: torch.Tensor, loss: torch.Tensor) -> None:
        """The iterate in :attr:`point` has these (detached) outputs and loss."""
        self.outputs.append(outputs)
        self.losses.append(loss)

    def fold(self, best: Best) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge the recorded iterates into ``best`` and free their slots; returns the points
        (a view of the buffer, valid until the next write) and their losses, ``(k, N, ...)``
        and ``(k, N)``."""
        count = len(self.losses)
        points, outputs = self.points[:count], torch.stack(self.outputs)
        losses = torch.stack(self.losses)
        self.outputs, self.losses = [], []
        success = self.bound.successes(outputs)
        # eligible: the iterates in each sample's best class (successful ones if any succeeded)
        eligible = success == success.any(0)
        ranked = losses.nan_to_num(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
        top, pick = torch.where(eligible, ranked, -torch.inf).max(0)  # the first of the maxima
        lowest = top == -torch.inf
        if bool(lowest.any()):  # all eligible losses -inf or NaN: max gave row 0, maybe ineligible
            pick = torch.where(lowest, eligible.to(torch.uint8).argmax(0), pick)
        rows = torch.arange(points.shape[1], device=pick.device)
        best.update(
            points[pick, rows], outputs[pick, rows], losses[pick, rows], success[pick, rows]
        )
        return points, losses


def forward_backward(
    model: nn.Module, bound: BoundObjective, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, loss, ∇_x loss)`` at ``x``: one forward and one backward pass, gradients
    taken with respect to the input only. Grad mode must be on (attack loops turn it on once
    around all their steps; :func:`loss_and_gradient` turns it on itself)."""
    point = x.detach().requires_grad_(True)
    outputs = model(point)
    loss = bound.loss(outputs)
    (gradient,) = torch.autograd.grad(loss.sum(), point)
    return outputs.detach(), loss.detach(), gradient


def loss_and_gradient(
    model: nn.Module, bound: BoundObjective, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, loss, success, ∇_x loss)`` at ``x`` (one forward and backward, in grad mode
    whatever the caller's)."""
    with torch.enable_grad():
        outputs, loss, gradient = forward_backward(model, bound, x)
    return outputs, loss, bound.success(outputs), gradient


def score(
    model: nn.Module, bound: BoundObjective, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs, loss)`` at ``x``: one forward pass without gradients."""
    with torch.no_grad():
        outputs = model(x)
        return outputs, bound.loss(outputs)


def evaluate(
    model: nn.Module, bound: BoundObjective, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, loss, success)`` at ``x`` without gradients."""
    outputs, loss = score(model, bound, x)
    return outputs, loss, bound.success(outputs)


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
