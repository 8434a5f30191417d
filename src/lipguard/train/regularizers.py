"""Regularizers for robust training, all with one signature.

``regularizer(model, task, x, y, generator) -> RegularizedLoss``: the full training loss of a
batch (what to minimise) and its parts. By name (:func:`make_regularizer`):

- ``none`` — the task loss;
- ``constraint`` — the task loss for a model whose Lipschitz bound holds by construction
  (lipguard's layers); refuses a model that cannot certify itself;
- ``gradient_penalty`` — ``λ·E[max(0, ||∇_x g|| - L)²]`` on a per-sample scalar ``g`` (the
  output; for classifiers the true class's log-probability); ``L`` may be a function of the
  inputs (a state-dependent target, e.g. :class:`lipguard.rl.AdaptiveLipschitz`);
- ``jacobian`` — ``λ·½·E||J_f(x)||_F²``, by Hoffman et al.'s random projections
  (``C·||vᵀJ||²`` with ``v`` uniform on the unit sphere of the ``C`` outputs is unbiased) or
  exactly;
- ``pgd_at`` — Madry et al.: the task loss at the PGD adversary's point;
- ``trades`` — Zhang et al.: ``loss(x) + β·KL(f(x) || f(x'))`` (squared distance for real
  outputs), ``x'`` maximising that divergence from ``x + 0.001·N(0, I)``;
- ``aajr`` — Adversarially-Aligned Jacobian Regularization (below).

Under data-parallel :func:`~lipguard.train.fit` (``torchrun``) ``model`` is the DDP-wrapped
model and ``x``, ``y`` this rank's share of the global batch; every random draw with a row per
sample is made for the whole global batch and sliced, so each rank computes exactly its rows of
what one process computes. All seven regularizers work there (double backward and
``torch.func.jvp`` run through DDP's forward; DDP averages the parameter gradients).

**AAJR** (arXiv 2603.04378; the definition lipguard adopts). Run the adversary's PGD on any
attack objective, ``δ_{k+1} = Π(δ_k + α·s(∇_δ ℓ_adv))``, record its steps
``u_k = (δ_{k+1} - δ_k)/max(||δ_{k+1} - δ_k||₂, η)`` and penalise how much the model moves along
them: ``(1/K)·Σ_k ||J_f(x + δ_k)·u_k||²``, each term one forward-mode ``torch.func.jvp`` (no
Jacobian is formed). Options: all ``K`` steps or one step sampled uniformly per batch (an
unbiased estimate of the same mean), δ and u detached (default) or unrolled through the
adversary, ℓ∞ or ℓ2 adversary.

*Where it reduces to a gradient penalty*: a scalar output, an ℓ2 adversary and one step from
``δ₀ = 0`` give ``u₀ = ∇f/||∇f||`` (for a loss increasing in ``f``), so the penalty is
``(∇fᵀu₀)² = ||∇f||²``. *Where it differs*: with several outputs it only penalises the
directions an adversary actually uses (for ``f = (a·x, b·x)`` with ``b ⟂ a`` and an adversary on
the first output the penalty is ``||a||²`` while the Jacobian penalty is ``||a||² + ||b||²`` — the
price of robustness in miniature), and along a multi-step ℓ∞ path it measures the Jacobian at the
adversarial points, not at ``x``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Generator, Tensor, nn
from torch.nn import functional

from lipguard import _checks
from lipguard._deprecation import warn_renamed
from lipguard.attacks.objectives import Objective
from lipguard.attacks.threat import Bounds, ThreatModel
from lipguard.errors import InvalidArgumentError
from lipguard.nn.penalties import gradient_penalty_from_outputs
from lipguard.norm import L2, LINF, Norm, NormLike
from lipguard.train._parallel import per_sample
from lipguard.train.inner import adversary_path
from lipguard.train.tasks import Task, TaskModel


@dataclass(frozen=True)
class RegularizedLoss:
    """The batch's training loss (with its graph) and its parts as floats."""

    total: Tensor
    task_loss: float
    penalty: float


class Regularizer(ABC):
    """Base class: :meth:`__call__` returns the batch's full training loss."""

    name: str

    @abstractmethod
    def __call__(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> RegularizedLoss: ...

    def to_dict(self) -> dict[str, object]:
        """The regularizer's name and plain settings (JSON-friendly)."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if _plain(v)}}

    def describe(self) -> dict[str, object]:
        """Deprecated spelling of :meth:`to_dict`."""
        warn_renamed("describe()", "to_dict()")
        return self.to_dict()


def _plain(value: object) -> bool:
    return isinstance(value, bool | int | float | str) or value is None


def _value(tensor: Tensor) -> float:
    return float(tensor.detach())


def _task_loss(model: nn.Module, task: Task, x: Tensor, y: Tensor) -> Tensor:
    return task.loss(task.forward(model, x), y).mean()


class NoRegularizer(Regularizer):
    """No penalty: the task loss alone (``regularizer="none"``)."""

    name = "none"

    def __call__(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> RegularizedLoss:
        loss = _task_loss(model, task, x, y)
        return RegularizedLoss(loss, _value(loss), 0.0)


class HardConstraint(NoRegularizer):
    """No penalty: the model's layers guarantee its bound (``certified_lipschitz()``)."""

    name = "constraint"

    def __call__(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> RegularizedLoss:
        if not callable(getattr(model, "certified_lipschitz", None)):
            raise InvalidArgumentError(
                "the 'constraint' regularizer needs a model built from lipguard's constrained "
                "layers (e.g. LipschitzMLP), which certify their own bound"
            )
        return super().__call__(model, task, x, y, generator)


class GradientPenalty(Regularizer):
    """``weight · E[max(0, ‖∇ₓ s(x)‖_q - L)²]`` on the task's scalar ``s`` (a soft constraint:
    nothing is guaranteed; ``lipschitz`` may be a function of the inputs, ``q`` is dual to
    ``norm``)."""

    name = "gradient_penalty"

    def __init__(
        self,
        weight: float = 1.0,
        lipschitz: float | Callable[[Tensor], Tensor] = 1.0,
        norm: NormLike = L2,
    ) -> None:
        self.weight = _checks.positive_float("weight", weight)
        self.lipschitz = (
            lipschitz if callable(lipschitz) else _checks.positive_float("lipschitz", lipschitz)
        )
        self.norm = Norm.parse(norm)

    def __call__(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> RegularizedLoss:
        points = x.detach().requires_grad_(True)
        outputs = task.forward(model, points)
        loss = task.loss(outputs, y).mean()
        target = self.lipschitz(x.detach()) if callable(self.lipschitz) else self.lipschitz
        penalty = gradient_penalty_from_outputs(
            task.scalar(outputs, y), points, target, norm=self.norm
        )
        return RegularizedLoss(loss + self.weight * penalty, _value(loss), _value(penalty))


def _flat_outputs(outputs: Tensor) -> Tensor:
    return outputs.reshape(outputs.shape[0], -1)


class JacobianPenalty(Regularizer):
    """``λ·½·E||J||_F²`` (Hoffman, Roberts & Yaida, 2019)."""

    name = "jacobian"

    def __init__(self, weight: float = 0.01, projections: int = 1, exact: bool = False) -> None:
        self.weight = _checks.positive_float("weight", weight)
        self.projections = _checks.positive_int("projections", projections)
        self.exact = exact

    def frobenius(
        self,
        model: nn.Module,
        task: Task,
        x: Tensor,
        generator: Generator | None = None,
        create_graph: bool = True,
    ) -> Tensor:
        """Per-sample estimate (or exact value) of ``||J_f(x)||_F²``, with its graph."""
        points = x.detach().requires_grad_(True)
        outputs = _flat_outputs(task.forward(model, points))
        classes = outputs.shape[1]
        total = torch.zeros(x.shape[0], dtype=outputs.dtype, device=x.device)
        if self.exact:
            for j in range(classes):
                (row,) = torch.autograd.grad(
                    outputs[:, j].sum(), points, create_graph=create_graph, retain_graph=True
                )
                total = total + row.flatten(1).pow(2).sum(1)
            return total
        for _ in range(self.projections):
            v = per_sample(
                lambda rows: torch.randn(rows.shape, generator=generator, dtype=rows.dtype),
                outputs,
            )
            v = (v / v.norm(dim=1, keepdim=True)).to(outputs.device)
            (row,) = torch.autograd.grad(
                (outputs * v).sum(), points, create_graph=create_graph, retain_graph=True
            )
            total = total + classes * row.flatten(1).pow(2).sum(1)
        return total / self.projections

    def __call__(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> RegularizedLoss:
        loss = _task_loss(model, task, x, y)
        penalty = 0.5 * self.frobenius(model, task, x, generator).mean()
        return RegularizedLoss(loss + self.weight * penalty, _value(loss), _value(penalty))


class _Adversarial(Regularizer):
    """Shared by the regularizers that run an adversary inside training."""

    def __init__(
        self,
        eps: float,
        norm: NormLike = LINF,
        steps: int = 7,
        step_size: float | None = None,
        bounds: Bounds | None = None,
        random_start: bool = True,
    ) -> None:
        self.threat = ThreatModel(eps, norm, bounds=bounds)
        self.random_start = random_start
        self.eps = self.threat.eps
        self.steps = _checks.positive_int("steps", steps)
        self.step_size = 2.5 * self.eps / steps if step_size is None else float(step_size)

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "norm": Norm(self.threat.norm).name}


class PGDAdversarialTraining(_Adversarial):
    """Madry et al.: minimise the loss at the PGD adversary's point (random start)."""

    name = "pgd_at"

    def __call__(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> RegularizedLoss:
        path = adversary_path(
            lambda p: task.loss(task.forward(model, p), y),
            x,
            self.threat,
            self.steps,
            self.step_size,
            random_start=self.random_start,
            generator=generator,
        )
        loss = _task_loss(model, task, path[-1], y)
        clean = _task_loss(model, task, x, y)
        return RegularizedLoss(loss, _value(clean), _value(loss - clean))


def _divergence(task: Task, clean: Tensor, perturbed: Tensor) -> Tensor:
    """KL between the predicted distributions (classification) or the squared distance."""
    if task.name == "classification":
        log_p = functional.log_softmax(clean, dim=1)
        log_q = functional.log_softmax(perturbed, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(1)
    return _flat_outputs(perturbed - clean).pow(2).sum(1)


class TRADES(_Adversarial):
    """TRADES (Zhang et al.): the clean task loss plus ``beta`` times the divergence between the
    outputs at ``x`` and at the adversary's point (KL for classification, squared difference
    otherwise), found by PGD within ``eps`` in ``norm``."""

    name = "trades"

    def __init__(
        self,
        beta: float = 6.0,
        eps: float = 0.031,
        norm: NormLike = LINF,
        steps: int = 10,
        step_size: float | None = 0.007,
        bounds: Bounds | None = None,
    ) -> None:
        super().__init__(eps, norm, steps, step_size, bounds)
        self.beta = _checks.positive_float("beta", beta)

    def __call__(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> RegularizedLoss:
        clean_outputs = task.forward(model, x)
        reference = clean_outputs.detach()
        noise = per_sample(
            lambda rows: 0.001 * torch.randn(rows.shape, generator=generator, dtype=rows.dtype), x
        ).to(x.device)
        path = adversary_path(
            lambda p: _divergence(task, reference, task.forward(model, p)),
            x,
            self.threat,
            self.steps,
            self.step_size,
            start=x + noise,
        )
        loss = task.loss(clean_outputs, y).mean()
        divergence = _divergence(task, clean_outputs, task.forward(model, path[-1])).mean()
        total = loss + self.beta * divergence
        return RegularizedLoss(total, _value(loss), _value(divergence))


class AAJR(_Adversarial):
    """Adversarially-Aligned Jacobian Regularization (see the module docstring).

    Args:
        weight: λ, the penalty's weight.
        eps: the adversary's budget, the radius of its ball.
        norm: the ball's norm.
        steps: the adversary's PGD steps.
        step_size: the length of each PGD step.
        bounds: the box the adversary's points are clipped into.
        objective: a factory ``y -> Objective`` from :mod:`lipguard.attacks` for the adversary;
            default: the task's own (maximise the task loss).
        sample_step: penalise one uniformly sampled step per batch instead of all ``K``.
        unrolled: differentiate through the adversary's steps.
        eta: floor of the step length in ``u_k``'s normalisation (guards zero steps).
        random_start: start the adversary at a random point of the ball (else at ``x``).
    """

    name = "aajr"

    def __init__(
        self,
        weight: float = 1.0,
        eps: float = 0.1,
        norm: NormLike = LINF,
        steps: int = 7,
        step_size: float | None = None,
        bounds: Bounds | None = None,
        *,
        objective: Callable[[Tensor], Objective] | None = None,
        sample_step: bool = False,
        unrolled: bool = False,
        eta: float = 1e-12,
        random_start: bool = True,
    ) -> None:
        super().__init__(eps, norm, steps, step_size, bounds, random_start)
        self.weight = _checks.positive_float("weight", weight)
        self.objective = objective
        self.sample_step = sample_step
        self.unrolled = unrolled
        self.eta = _checks.positive_float("eta", eta)

    def _adversary_loss(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor
    ) -> Callable[[Tensor], Tensor]:
        if self.objective is None:
            return lambda p: task.loss(task.forward(model, p), y)
        target: Objective = self.objective(y)
        wrapped = TaskModel(model, task)
        clean = wrapped(x).detach() if target.uses_clean_outputs else None
        bound = target.bind(wrapped, x, clean)
        return lambda p: bound.loss(wrapped(p))

    def penalty(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> Tensor:
        """``(1/K)·Σ_k mean_i ||J_f(x_i + δ_k)·u_k||²`` (or one sampled term)."""
        path = adversary_path(
            self._adversary_loss(model, task, x, y),
            x,
            self.threat,
            self.steps,
            self.step_size,
            random_start=self.random_start,
            generator=generator,
            unrolled=self.unrolled,
        )
        steps: Sequence[int] = range(len(path) - 1)
        if self.sample_step:
            steps = [int(torch.randint(len(path) - 1, (1,), generator=generator))]
        terms = []
        for k in steps:
            move = path[k + 1] - path[k]
            length = move.flatten(1).norm(dim=1).clamp_min(self.eta)
            direction = move / length.view(-1, *([1] * (x.dim() - 1)))
            point = path[k]
            if not self.unrolled:
                point, direction = point.detach(), direction.detach()
            tangent = torch.func.jvp(lambda p: task.forward(model, p), (point,), (direction,))[1]
            terms.append(_flat_outputs(tangent).pow(2).sum(1).mean())
        return torch.stack(terms).mean()

    def __call__(
        self, model: nn.Module, task: Task, x: Tensor, y: Tensor, generator: Generator | None = None
    ) -> RegularizedLoss:
        loss = _task_loss(model, task, x, y)
        penalty = self.penalty(model, task, x, y, generator)
        return RegularizedLoss(loss + self.weight * penalty, _value(loss), _value(penalty))


#: every regularizer by the name ``fit(regularizer=...)`` and the sweeps accept
REGULARIZERS: dict[str, type[Regularizer]] = {
    "none": NoRegularizer,
    "constraint": HardConstraint,
    "gradient_penalty": GradientPenalty,
    "jacobian": JacobianPenalty,
    "pgd_at": PGDAdversarialTraining,
    "trades": TRADES,
    "aajr": AAJR,
}


def make_regularizer(regularizer: str | Regularizer, **options: Any) -> Regularizer:
    """A regularizer by name (options are its constructor's keywords), or one passed through."""
    if isinstance(regularizer, Regularizer):
        if options:
            raise InvalidArgumentError("options are only for a regularizer given by name")
        return regularizer
    if regularizer not in REGULARIZERS:
        raise InvalidArgumentError(
            f"regularizer must be one of {tuple(REGULARIZERS)}, got {regularizer!r}"
        )
    return REGULARIZERS[regularizer](**options)
