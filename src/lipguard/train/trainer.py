"""One trainer for every task and regularizer: :func:`fit`."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

import torch
from torch import Tensor, nn

from lipguard import _checks, distributed
from lipguard._gradients import input_gradient_norms
from lipguard._placement import placement
from lipguard._progress import progress_bar
from lipguard.attacks.gradient import PGD
from lipguard.attacks.threat import ThreatModel
from lipguard.errors import DivergenceError, InvalidArgumentError, ShapeError
from lipguard.norm import LINF, NormLike
from lipguard.train import _parallel
from lipguard.train.regularizers import RegularizedLoss, Regularizer, make_regularizer
from lipguard.train.stability import Oscillation, diverged, oscillation
from lipguard.train.tasks import Task, TaskModel, TaskName, make_task


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch of :func:`fit`: mean training, task and penalty losses; the validation loss and
    metric, clean and under the PGD adversary of ``robust_eps`` (None without one); the model's
    certified constant when ``certify=True`` (else None); the mean and largest input-gradient
    norm on the validation data; and the epoch's wall time in seconds."""

    epoch: int
    train_loss: float
    task_loss: float
    penalty: float
    validation_loss: float
    clean_metric: float
    robust_metric: float | None
    certified_lipschitz: float | None
    gradient_norm_mean: float
    gradient_norm_max: float
    seconds: float


@dataclass
class FitResult:
    """The training history; the model itself is trained in place."""

    history: list[EpochMetrics] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int = 0

    @property
    def stability(self) -> Oscillation:
        return oscillation(self.step_losses)

    def to_dict(self) -> dict:
        return {
            "history": [asdict(m) for m in self.history],
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch,
            "stability": asdict(self.stability),
        }


Batch = tuple[Tensor, Tensor]


def _split(
    data: Batch, validation: Batch | None, fraction: float, generator: torch.Generator
) -> tuple[Batch, Batch]:
    x, y = data
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"{x.shape[0]} inputs but {y.shape[0]} targets")
    if validation is not None:
        return (x, y), validation
    order = torch.randperm(x.shape[0], generator=generator)
    cut = max(1, round(fraction * x.shape[0]))
    return (x[order[cut:]], y[order[cut:]]), (x[order[:cut]], y[order[:cut]])


def _gradient_norms(model: nn.Module, task: Task, x: Tensor, y: Tensor) -> Tensor:
    """ℓ2 norms of the input gradients of the task's per-sample scalar."""
    points = x.detach().requires_grad_(True)
    with torch.enable_grad():
        outputs = task.forward(model, points)
        return input_gradient_norms(task.scalar(outputs, y), points, 2)


def _certified(model: nn.Module) -> float | None:
    certify = getattr(model, "certified_lipschitz", None)
    if callable(certify):
        return float(certify().value)
    from lipguard.bounds import lipschitz_bound
    from lipguard.errors import LipguardError

    try:
        return float(lipschitz_bound(model, 2, "compositional").value)
    except LipguardError:
        return None


def fit(
    model: nn.Module,
    data: Batch,
    task: TaskName | Task = "classification",
    regularizer: str | Regularizer = "none",
    *,
    regularizer_options: dict | None = None,
    validation: Batch | None = None,
    validation_fraction: float = 0.2,
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    patience: int | None = None,
    robust_eps: float | None = None,
    robust_norm: NormLike = LINF,
    robust_steps: int = 10,
    bounds: tuple[float, float] | None = None,
    certify: bool = False,
    divergence_factor: float = 1e4,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    data_parallel: bool | None = None,
) -> FitResult:
    """Train ``model`` in place with Adam on ``task`` and ``regularizer``.

    Every epoch reports the training loss and its parts, the validation loss and metric
    (accuracy, or MSE for regression), the metric under PGD at ``robust_eps`` if given, the
    certified ℓ2 Lipschitz bound if ``certify`` (the model's own certificate, else the
    compositional bound), and input-gradient norm statistics. With ``patience`` training stops
    after that many epochs without a better validation loss and the best weights are restored.
    A non-finite or exploding loss (above ``divergence_factor`` × the first) raises
    :class:`DivergenceError` after restoring the weights of the last completed epoch.
    ``checkpoint``: write the trained weights (``state_dict``) there as safetensors at the end.
    The data are moved to the model's device (put the model on the GPU to train there; under
    ``torchrun`` with GPUs, on ``cuda:LOCAL_RANK``).

    **Under torchrun** (``torchrun --nproc_per_node=N script.py``; ``data_parallel=None``, the
    default, joins the process group automatically, ``False`` trains this process's model alone
    even under ``torchrun``, ``True`` requires ``torchrun``) the model is wrapped in
    ``DistributedDataParallel`` (rank 0's initial weights win). Every rank draws the same
    shuffling order from ``seed`` and takes its contiguous slice of each global batch of
    ``batch_size``; each rank's loss is weighted by its share so that DDP's averaged gradient is
    the global batch mean's; random draws with a row per sample are made for the global batch.
    Losses, validation loss and metric (each rank evaluates its slice of the validation set) and
    gradient-norm statistics are reduced over ranks, so every rank returns the same history as one
    process on the same global batches (to floating-point rounding) and stops early or diverges
    at the same step. The robust metric is computed on the whole validation set by every rank
    (the attack draws its random start for the whole set). Only rank 0 shows progress and writes
    ``checkpoint``. Not reproduced exactly: dropout masks and BatchNorm batch statistics (drawn
    and computed per rank), and a custom task whose metric is not a per-sample mean.
    """
    task = make_task(task)
    regularizer = make_regularizer(regularizer, **(regularizer_options or {}))
    _checks.positive_int("epochs", epochs)
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_float("learning_rate", learning_rate)
    if patience is not None:
        _checks.positive_int("patience", patience)
    parallel = distributed.initialise() if data_parallel is not False else False
    if data_parallel and not parallel:
        raise InvalidArgumentError(
            "data_parallel=True needs several processes: launch with torchrun --nproc_per_node=N"
        )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    (x, y), (x_val, y_val) = _split(data, validation, validation_fraction, generator)
    _checks.finite_tensor("x", x)
    device = placement(model).device
    x, y, x_val, y_val = (tensor.to(device) for tensor in (x, y, x_val, y_val))
    trained: nn.Module = _parallel.wrap(model) if parallel else model
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    result = FitResult()
    best_loss, best_state, reference = math.inf, None, None
    stale = 0
    shown = progress and distributed.is_main()
    with progress_bar(epochs, f"training ({regularizer.name})", shown) as advance:
        for epoch in range(epochs):
            started = time.perf_counter()
            good_state = copy.deepcopy(model.state_dict())
            model.train()
            totals = {"train": 0.0, "task": 0.0, "penalty": 0.0}
            order = torch.randperm(x.shape[0], generator=generator)
            batches = order.split(batch_size)
            for step, batch in enumerate(batches):
                if parallel:
                    loss, value, task_value, penalty = _parallel_step(
                        regularizer, trained, task, x, y, batch, generator
                    )
                else:
                    outcome = regularizer(model, task, x[batch], y[batch], generator)
                    loss, value = outcome.total, float(outcome.total.detach())
                    task_value, penalty = outcome.task_loss, outcome.penalty
                reference = value if reference is None else reference
                if diverged(value, reference, divergence_factor):
                    model.load_state_dict(good_state)
                    raise DivergenceError(
                        f"training diverged at epoch {epoch}, step {step}: loss {value:.4g} "
                        f"(first batch {reference:.4g}); the weights of epoch {epoch - 1} are "
                        "restored. Lower the learning rate or the regularizer's strength."
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                result.step_losses.append(value)
                totals["train"] += value / len(batches)
                totals["task"] += task_value / len(batches)
                totals["penalty"] += penalty / len(batches)
            metrics = _evaluate(
                model,
                task,
                x_val,
                y_val,
                robust_eps,
                robust_norm,
                robust_steps,
                bounds,
                certify,
                seed,
                parallel,
            )
            result.history.append(
                EpochMetrics(
                    epoch,
                    totals["train"],
                    totals["task"],
                    totals["penalty"],
                    **metrics,
                    seconds=time.perf_counter() - started,
                )
            )
            advance(1)
            if metrics["validation_loss"] < best_loss:
                best_loss, stale, result.best_epoch = metrics["validation_loss"], 0, epoch
                best_state = copy.deepcopy(model.state_dict()) if patience else None
            else:
                stale += 1
                if patience is not None and stale >= patience:
                    result.stopped_early = True
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if checkpoint is not None:
        if distributed.is_main():
            _save(model, Path(checkpoint))
        distributed.barrier()
    return result


def _parallel_step(
    regularizer: Regularizer,
    model: nn.Module,
    task: Task,
    x: Tensor,
    y: Tensor,
    batch: Tensor,
    generator: torch.Generator,
) -> tuple[Tensor, float, float, float]:
    """This rank's part of one global batch: the loss to back-propagate (weighted so that DDP's
    average is the global mean's gradient) and the global batch's total, task loss and penalty.

    A rank whose slice is empty (a last batch smaller than the world) runs the batch's first
    sample with weight 0, so that every rank takes part in DDP's gradient all-reduce."""
    rows = distributed.shard(len(batch))
    weight = len(rows) / len(batch)
    if len(rows):
        share = _parallel.Share(rows.start, rows.stop, len(batch))
    else:
        share = _parallel.Share(0, 1, len(batch))
    local = batch[share.start : share.stop]
    with _parallel.batch_share(share):
        outcome: RegularizedLoss = regularizer(model, task, x[local], y[local], generator)
    value, task_value, penalty = _parallel.reduce_weighted(
        [float(outcome.total.detach()), outcome.task_loss, outcome.penalty], weight
    )
    loss = outcome.total * (weight * distributed.world_size())
    return loss, value, task_value, penalty


def _save(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(path))


class _Evaluation(TypedDict):
    """The validation half of :class:`EpochMetrics`."""

    validation_loss: float
    clean_metric: float
    robust_metric: float | None
    certified_lipschitz: float | None
    gradient_norm_mean: float
    gradient_norm_max: float


def _evaluate(
    model: nn.Module,
    task: Task,
    x: Tensor,
    y: Tensor,
    robust_eps: float | None,
    robust_norm: NormLike,
    robust_steps: int,
    bounds: tuple[float, float] | None,
    certify: bool,
    seed: int,
    parallel: bool = False,
) -> _Evaluation:
    """The validation metrics; under data-parallel training each rank evaluates its slice of
    ``x`` and the results are reduced (the robust metric: the whole of ``x`` on every rank)."""
    model.eval()
    if parallel:
        validation_loss, clean, norm_mean, norm_max = _evaluate_shard(model, task, x, y)
    else:
        with torch.no_grad():
            outputs = task.forward(model, x)
            validation_loss = float(task.loss(outputs, y).mean())
            clean = task.metric(outputs, y)
    robust = None
    if robust_eps is not None:
        if robust_eps < 0:
            raise InvalidArgumentError("robust_eps must be >= 0")
        attack = PGD(ThreatModel(robust_eps, robust_norm, bounds=bounds), robust_steps, seed=seed)
        robust = task.metric(attack(TaskModel(model, task), x, task.objective(y)).outputs, y)
    certified = _certified(model) if certify and distributed.is_main() else None
    if parallel and certify:  # rank 0's: a bound that probes with the global RNG may differ
        certified = _parallel.from_main(certified)
    if not parallel:
        norms = _gradient_norms(model, task, x, y)
        norm_mean, norm_max = float(norms.mean()), float(norms.max())
    return {
        "validation_loss": validation_loss,
        "clean_metric": clean,
        "robust_metric": robust,
        "certified_lipschitz": certified,
        "gradient_norm_mean": norm_mean,
        "gradient_norm_max": norm_max,
    }


def _evaluate_shard(
    model: nn.Module, task: Task, x: Tensor, y: Tensor
) -> tuple[float, float, float, float]:
    """Validation loss, metric and input-gradient norm mean and max over ``x``, each rank
    computing its slice; the same numbers on every rank."""
    rows = distributed.shard(x.shape[0])
    weight = len(rows) / x.shape[0]
    parts, largest = [0.0, 0.0, 0.0], -math.inf
    if len(rows):
        xs, ys = x[rows.start : rows.stop], y[rows.start : rows.stop]
        with torch.no_grad():
            outputs = task.forward(model, xs)
            parts[0] = float(task.loss(outputs, ys).mean())
            parts[1] = task.metric(outputs, ys)
        norms = _gradient_norms(model, task, xs, ys)
        parts[2], largest = float(norms.mean()), float(norms.max())
    loss, metric, norm_mean = _parallel.reduce_weighted(parts, weight)
    return loss, metric, norm_mean, _parallel.reduce_max(largest)
