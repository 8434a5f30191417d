"""Learning tasks: how a model's outputs become a loss, a metric and an attack objective.

- :class:`Classification` — logits, cross-entropy, accuracy; the adversary maximises the CE.
- :class:`Regression` — one output per input, mean squared error; the adversary maximises the
  squared error.
- :class:`Preference` — pairs ``(a, b)`` stacked as ``(N, 2, *shape)`` with labels 1 when ``a``
  is preferred: the Bradley–Terry loss on ``r(a) - r(b)``; the adversary perturbs both items to
  maximise it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional

from lipguard.attacks.objectives import CrossEntropy, CustomObjective, Objective
from lipguard.errors import InvalidArgumentError, ShapeError


class Task(ABC):
    """What training optimises, for one kind of data."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The task's outputs for inputs ``x`` (logits, values, or preference logits)."""
        return model(x)

    @abstractmethod
    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss, shape ``(N,)``."""

    @abstractmethod
    def metric(self, outputs: torch.Tensor, y: torch.Tensor) -> float:
        """The reported metric (accuracy, or MSE for regression)."""

    def objective(self, y: torch.Tensor) -> Objective:
        """The adversary's objective: maximise the task loss."""
        return CustomObjective(lambda out, _: self.loss(out, y))

    def scalar(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A scalar per sample whose input gradient the gradient penalty bounds."""
        return outputs if outputs.dim() == 1 else outputs[:, 0]


class Classification(Task):
    """Logits ``(N, C)`` and integer labels: cross-entropy loss, accuracy as the metric."""

    name = "classification"

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(outputs, y, reduction="none")

    def metric(self, outputs: torch.Tensor, y: torch.Tensor) -> float:
        return float((outputs.argmax(1) == y).float().mean())

    def objective(self, y: torch.Tensor) -> Objective:
        return CrossEntropy(y)

    def scalar(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The log-probability of the true class."""
        return functional.log_softmax(outputs, dim=1).gather(1, y[:, None])[:, 0]


def _values(outputs: torch.Tensor) -> torch.Tensor:
    if outputs.dim() == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.dim() != 1:
        raise ShapeError(f"need one output per input, got shape {tuple(outputs.shape)}")
    return outputs


class Regression(Task):
    """One value per input and real targets: squared error loss, MSE as the metric (lower is
    better)."""

    name = "regression"
    higher_is_better = False

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _values(model(x))

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (outputs - y) ** 2

    def metric(self, outputs: torch.Tensor, y: torch.Tensor) -> float:
        return float(((outputs - y) ** 2).mean())


class Preference(Task):
    """Bradley–Terry: ``P(a ≻ b) = σ(r(a) - r(b))``; the metric is the agreement rate."""

    name = "preference"

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != 2:
            raise ShapeError("preference inputs must be pairs stacked as (N, 2, *shape)")
        rewards = _values(model(x.flatten(0, 1))).view(x.shape[0], 2)
        return rewards[:, 0] - rewards[:, 1]

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional.binary_cross_entropy_with_logits(
            outputs, y.to(outputs.dtype), reduction="none"
        )

    def metric(self, outputs: torch.Tensor, y: torch.Tensor) -> float:
        return float(((outputs > 0) == (y > 0.5)).float().mean())


class TaskModel(nn.Module):
    """``x ↦ task.forward(model, x)`` as a module: what attacks and objectives see."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task.forward(self.model, x)


#: the built-in tasks by name
TaskName = Literal["classification", "regression", "preference"]

TASKS: dict[str, Callable[[], Task]] = {
    "classification": Classification,
    "regression": Regression,
    "preference": Preference,
}


def make_task(task: TaskName | Task) -> Task:
    """``task`` itself, or a new instance of the built-in task it names."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise InvalidArgumentError(f"task must be one of {tuple(TASKS)}, got {task!r}")
    return TASKS[task]()
