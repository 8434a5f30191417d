"""What an attack optimises: an objective on *any* model output.

An :class:`Objective` is bound to a model and its clean inputs before the attack starts
(:meth:`Objective.bind`), which fixes the references it needs — the clean reward, the clean
action, the other item of a preference pair. The bound objective gives, per sample:

- ``loss(outputs)`` — what gradient attacks *maximise*;
- ``margin(outputs)`` — the attack has succeeded when it is ``< 0`` (e.g. the correct logit minus
  the best other one); ``None`` for objectives without a notion of success.

Attacks keep, for each sample, the best iterate: a successful one over a failed one, then the
higher loss.

Classifiers: :class:`CrossEntropy`, :class:`Margin` (Carlini–Wagner), :class:`DLR` (Croce & Hein's
difference of logits ratio), each untargeted or targeted. Rewards and values:
:class:`RewardShift` (push up, push down, or maximise ``|Δr|``), :class:`PreferenceFlip`.
Policies: :class:`ActionChange` (continuous actions, or the KL of categorical logits, as in MAD).
Any callable ``(outputs, clean_outputs) -> loss`` becomes one with :class:`CustomObjective`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import nn
from torch.nn import functional

from lipguard.errors import InvalidArgumentError, ShapeError


@dataclass(frozen=True)
class BoundObjective:
    """An objective fixed to one batch of clean inputs. ``stacks``: ``margin`` also accepts
    outputs of several iterates stacked on a leading axis, ``(k, N, ...) -> (k, N)``, with the
    same values as ``k`` separate calls (attacks then test success once per batch of steps)."""

    source: Objective
    loss: Callable[[torch.Tensor], torch.Tensor]
    margin: Callable[[torch.Tensor], torch.Tensor] | None
    stacks: bool = False

    def success(self, outputs: torch.Tensor) -> torch.Tensor:
        """Whether the attack succeeded on each sample."""
        if self.margin is None:
            return torch.zeros(outputs.shape[0], dtype=torch.bool, device=outputs.device)
        return self.margin(outputs) < 0

    def successes(self, outputs: torch.Tensor) -> torch.Tensor:
        """:meth:`success` of each of ``k`` batches of outputs stacked on a leading axis:
        ``(k, N, ...) -> (k, N)`` (one call of ``margin`` when it :attr:`stacks`)."""
        if self.margin is None:
            return torch.zeros(outputs.shape[:2], dtype=torch.bool, device=outputs.device)
        if self.stacks:
            return self.margin(outputs) < 0
        return torch.stack([self.margin(batch) < 0 for batch in outputs])


class Objective(ABC):
    """Base class: subclasses implement :meth:`bind`. ``uses_clean_outputs = False`` tells the
    attack template it may skip the clean forward pass (``clean`` is then ``None``)."""

    uses_clean_outputs: ClassVar[bool] = True

    @abstractmethod
    def bind(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor | None) -> BoundObjective:
        """Fix the references for clean inputs ``x`` with clean outputs ``clean``."""


def _required(clean: torch.Tensor | None) -> torch.Tensor:
    """The clean outputs, which the template passes to every objective that uses them."""
    if clean is None:
        raise InvalidArgumentError("this objective needs the clean outputs, got None")
    return clean


def _logits(outputs: torch.Tensor) -> torch.Tensor:
    if outputs.dim() != 2 or outputs.shape[1] < 2:
        raise ShapeError(
            f"a classification objective needs (batch, classes) logits, got {tuple(outputs.shape)}"
        )
    return outputs


def _stacked_logits(outputs: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, classes)``, or several batches of them stacked: ``(k, N, classes)``."""
    if outputs.dim() not in (2, 3) or outputs.shape[-1] < 2:
        raise ShapeError(
            f"a classification objective needs (batch, classes) logits, got {tuple(outputs.shape)}"
        )
    return outputs


def _pick_minus_rest(
    logits: torch.Tensor, marked: torch.Tensor, onehot: torch.Tensor
) -> torch.Tensor:
    """``logits_c - max_{j != c} logits_j`` per row, ``c = marked`` (``onehot`` marks it); it
    broadcasts over leading axes (stacked batches)."""
    index = marked.view(-1, 1).expand(*logits.shape[:-1], 1)
    picked = logits.gather(-1, index)[..., 0]
    return picked - torch.where(onehot, -torch.inf, logits).amax(-1)


class _Classification(Objective):
    uses_clean_outputs: ClassVar[bool] = False  # labels are all they need

    def __init__(self, labels: torch.Tensor, target: torch.Tensor | None = None) -> None:
        self.labels = torch.as_tensor(labels).long()
        self.target = None if target is None else torch.as_tensor(target).long()

    def _labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.labels.shape != (x.shape[0],):
            raise ShapeError(
                f"need one label per input ({x.shape[0]}), got {tuple(self.labels.shape)}"
            )
        target = None if self.target is None else self.target.to(x.device)
        return self.labels.to(x.device), target

    def _margin(
        self, labels: torch.Tensor, target: torch.Tensor | None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Untargeted: the correct logit minus the best other one; targeted: the best logit
        other than the target's minus the target's. Accepts stacked logits (``stacks``)."""
        marked = labels if target is None else target
        onehots: dict[int, torch.Tensor] = {}  # by number of classes, made on first use

        def margin(out: torch.Tensor) -> torch.Tensor:
            logits = _stacked_logits(out)
            classes = logits.shape[-1]
            if classes not in onehots:
                onehots[classes] = functional.one_hot(marked, classes).bool()
            value = _pick_minus_rest(logits, marked, onehots[classes])
            return value if target is None else -value

        return margin


class CrossEntropy(_Classification):
    """Cross-entropy of the true class (maximised), or minus that of ``target`` (targeted)."""

    def bind(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor | None) -> BoundObjective:
        labels, target = self._labels(x)
        if target is None:
            loss = lambda out: functional.cross_entropy(_logits(out), labels, reduction="none")  # noqa: E731
        else:
            loss = lambda out: -functional.cross_entropy(_logits(out), target, reduction="none")  # noqa: E731
        return BoundObjective(self, loss, self._margin(labels, target), stacks=True)


class Margin(_Classification):
    """Carlini–Wagner margin: best other logit minus the true one (targeted: the target's logit
    minus the best other one)."""

    def bind(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor | None) -> BoundObjective:
        margin = self._margin(*self._labels(x))
        return BoundObjective(self, lambda out: -margin(out), margin, stacks=True)


class DLR(_Classification):
    """Croce & Hein's difference of logits ratio: ``-(z_y - max_{j≠y} z_j)/(z_π1 - z_π3)``, scale
    invariant (needs >= 3 classes)."""

    def bind(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor | None) -> BoundObjective:
        labels, target = self._labels(x)
        margin = self._margin(labels, target)

        def loss(out: torch.Tensor) -> torch.Tensor:
            logits = _logits(out)
            if logits.shape[1] < 3:
                raise InvalidArgumentError("DLR needs at least 3 classes")
            top = logits.sort(1, descending=True).values
            return -margin(logits) / (top[:, 0] - top[:, 2] + 1e-12)

        return BoundObjective(self, loss, margin, stacks=True)


def _scalar(outputs: torch.Tensor) -> torch.Tensor:
    if outputs.dim() == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.dim() != 1:
        raise ShapeError(
            f"a reward objective needs one value per input, got {tuple(outputs.shape)}"
        )
    return outputs


#: how :class:`RewardShift` moves the output: up, down, or either way (``|Δr|``)
Direction = Literal["up", "down", "abs"]
#: what :class:`ActionChange` measures: an action distance, or a categorical or Gaussian KL
ActionKind = Literal["continuous", "categorical", "gaussian"]


class RewardShift(Objective):
    """Move a scalar output (a reward or value) away from its clean value.

    ``direction``: ``"up"`` maximises ``r(x') - r(x)``, ``"down"`` maximises ``r(x) - r(x')``,
    ``"abs"`` maximises ``|r(x') - r(x)|``. Success: the shift reaches ``threshold``.
    """

    DIRECTIONS: ClassVar[tuple[Direction, ...]] = get_args(Direction)

    def __init__(self, direction: Direction = "abs", threshold: float = 0.0) -> None:
        if direction not in self.DIRECTIONS:
            raise InvalidArgumentError(
                f"direction must be one of {self.DIRECTIONS}, got {direction!r}"
            )
        self.direction = direction
        self.threshold = float(threshold)

    def bind(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor | None) -> BoundObjective:
        reference = _scalar(_required(clean)).detach()

        def shift(out: torch.Tensor) -> torch.Tensor:
            change = _scalar(out) - reference
            if self.direction == "up":
                return change
            return -change if self.direction == "down" else change.abs()

        return BoundObjective(self, shift, lambda out: self.threshold - shift(out))


class PreferenceFlip(Objective):
    """Make the model reverse its preference between each attacked input ``a`` and a fixed
    ``other`` input ``b``: the loss is ``-s·(r(a') - r(b))`` with ``s`` the clean sign; success
    when the sign changes."""

    def __init__(self, other: torch.Tensor) -> None:
        self.other = other

    def bind(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor | None) -> BoundObjective:
        if self.other.shape != x.shape:
            raise ShapeError(f"other has shape {tuple(self.other.shape)}, inputs {tuple(x.shape)}")
        with torch.no_grad():
            other = _scalar(model(self.other.to(x.device))).detach()
        sign = torch.where(_scalar(_required(clean)).detach() >= other, 1.0, -1.0)
        margin = lambda out: sign * (_scalar(out) - other)  # noqa: E731
        return BoundObjective(self, lambda out: -margin(out), margin)


def _gaussian_kl(reference: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ₀, σ₀²) || N(μ₁, σ₁²))`` summed over action dimensions; the outputs stack
    ``(mean, log_std)`` on axis 1: shape ``(batch, 2, action_dim)``."""
    if out.dim() != 3 or out.shape[1] != 2:
        raise ShapeError(
            f"a Gaussian policy must return (batch, 2, action_dim) = (mean, log_std), "
            f"got {tuple(out.shape)}"
        )
    mean0, log_std0 = reference[:, 0], reference[:, 1]
    mean1, log_std1 = out[:, 0], out[:, 1]
    ratio = torch.exp(2 * (log_std0 - log_std1))
    squared = (mean1 - mean0) ** 2 * torch.exp(-2 * log_std1)
    return 0.5 * (ratio + squared - 1).sum(-1) + (log_std1 - log_std0).sum(-1)


class ActionChange(Objective):
    """Change a policy's action (SA-PPO/MAD). ``kind="continuous"``: ``||a(x') - a(x)||₂`` for a
    deterministic policy; ``"categorical"``: ``KL(π(·|x) || π(·|x'))`` from logits;
    ``"gaussian"``: the same KL for a Gaussian policy returning ``(mean, log_std)`` stacked on
    axis 1. Success: the change reaches ``threshold`` (categorical: also whenever the greedy
    action changes)."""

    KINDS: ClassVar[tuple[ActionKind, ...]] = get_args(ActionKind)

    def __init__(self, kind: ActionKind = "continuous", threshold: float = 0.0) -> None:
        if kind not in self.KINDS:
            raise InvalidArgumentError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.threshold = float(threshold)

    def bind(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor | None) -> BoundObjective:
        reference = _required(clean).detach()
        if self.kind != "categorical":
            if self.kind == "continuous":
                change = lambda out: (out - reference).flatten(1).norm(dim=1)  # noqa: E731
            else:
                change = lambda out: _gaussian_kl(reference, out)  # noqa: E731
            return BoundObjective(self, change, lambda out: self.threshold - change(out))
        log_p = functional.log_softmax(reference, dim=-1)
        greedy = reference.argmax(-1)

        def kl(out: torch.Tensor) -> torch.Tensor:
            log_q = functional.log_softmax(out, dim=-1)
            return (log_p.exp() * (log_p - log_q)).sum(-1)

        def margin(out: torch.Tensor) -> torch.Tensor:
            flipped = out.argmax(-1) != greedy
            return torch.where(flipped, -1.0, self.threshold - kl(out))

        return BoundObjective(self, kl, margin)


class CustomObjective(Objective):
    """Any ``loss(outputs, clean_outputs) -> (batch,)`` to maximise; success when
    ``success(outputs, clean_outputs)`` (default: never)."""

    def __init__(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        success: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.loss = loss
        self.success = success

    def bind(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor | None) -> BoundObjective:
        reference = _required(clean).detach()
        success = self.success
        margin = None
        if success is not None:
            margin = lambda out: torch.where(success(out, reference), -1.0, 1.0)  # noqa: E731
        return BoundObjective(self, lambda out: self.loss(out, reference), margin)
