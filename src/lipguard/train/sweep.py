"""The price of robustness: train each regularizer over a grid of strengths on the same data and
compare clean against robust performance (SPEC D2, seed 002).

:func:`price_of_robustness` returns one :class:`SweepPoint` per (regularizer, options, seed);
:func:`pareto_front` keeps the points no other point beats on both metrics; :func:`at_matched`
picks, per regularizer, the setting whose robust metric is closest to a common target — the fair
way to compare clean-accuracy costs; :func:`plot_price_of_robustness` draws it all.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lipguard._progress import progress_bar
from lipguard.norm import LINF, NormLike
from lipguard.train.tasks import Task, TaskName
from lipguard.train.trainer import fit

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass(frozen=True)
class SweepPoint:
    """One trained model of a price-of-robustness sweep: the regularizer, its options and the
    seed, the clean and robust validation metrics reached, and the time per epoch."""

    regularizer: str
    options: dict[str, Any]  # the regularizer's keyword arguments, of whatever types it takes
    seed: int
    clean_metric: float
    robust_metric: float
    seconds_per_epoch: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def price_of_robustness(
    make_model: Callable[[int], nn.Module],
    data: tuple[torch.Tensor, torch.Tensor],
    grid: Mapping[str, Sequence[dict[str, Any]]],
    *,
    validation: tuple[torch.Tensor, torch.Tensor],
    task: TaskName | Task = "classification",
    robust_eps: float,
    robust_norm: NormLike = LINF,
    robust_steps: int = 10,
    bounds: tuple[float, float] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 20,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    progress: bool = True,
) -> list[SweepPoint]:
    """Train a fresh ``make_model(seed)`` for every regularizer, option set and seed; evaluate
    clean and robust (PGD at ``robust_eps``) metrics on ``validation`` after the last epoch."""
    runs = [
        (name, options, seed)
        for name, settings in grid.items()
        for options in settings
        for seed in seeds
    ]
    points: list[SweepPoint] = []
    with progress_bar(len(runs), "price of robustness", progress) as advance:
        for name, options, seed in runs:
            result = fit(
                make_model(seed),
                data,
                task,
                name,
                regularizer_options=dict(options),
                validation=validation,
                epochs=epochs,
                learning_rate=learning_rate,
                batch_size=batch_size,
                seed=seed,
                robust_eps=robust_eps,
                robust_norm=robust_norm,
                robust_steps=robust_steps,
                bounds=bounds,
                progress=False,
            )
            last = result.history[-1]
            if last.robust_metric is None:  # fit measures it whenever robust_eps is given
                raise RuntimeError("fit returned no robust metric")
            seconds = statistics.median(m.seconds for m in result.history)
            points.append(
                SweepPoint(
                    name, dict(options), seed, last.clean_metric, last.robust_metric, seconds
                )
            )
            advance(1)
    return points


def median_over_seeds(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """One point per (regularizer, options): the medians over seeds (seed = -1)."""
    groups: dict[tuple[str, str], list[SweepPoint]] = {}
    for point in points:
        groups.setdefault((point.regularizer, repr(sorted(point.options.items()))), []).append(
            point
        )
    return [
        SweepPoint(
            group[0].regularizer,
            group[0].options,
            -1,
            statistics.median(p.clean_metric for p in group),
            statistics.median(p.robust_metric for p in group),
            statistics.median(p.seconds_per_epoch for p in group),
        )
        for group in groups.values()
    ]


def pareto_front(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """Points not dominated on (clean, robust) — higher is better for both."""
    front = [
        p
        for p in points
        if not any(
            q.clean_metric >= p.clean_metric
            and q.robust_metric >= p.robust_metric
            and (q.clean_metric > p.clean_metric or q.robust_metric > p.robust_metric)
            for q in points
        )
    ]
    return sorted(front, key=lambda p: p.robust_metric)


def at_matched(points: Sequence[SweepPoint], target: float) -> dict[str, SweepPoint]:
    """Per regularizer, the (seed-median) setting whose robust metric is closest to ``target``."""
    chosen: dict[str, SweepPoint] = {}
    for point in median_over_seeds(points):
        best = chosen.get(point.regularizer)
        if best is None or abs(point.robust_metric - target) < abs(best.robust_metric - target):
            chosen[point.regularizer] = point
    return chosen


def plot_price_of_robustness(
    points: Sequence[SweepPoint],
    path: str | Path | None = None,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """Clean against robust metric for every setting (seed medians), each regularizer's points
    joined in grid order (the order of its strengths), the Pareto front dashed."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4.5))
    medians = median_over_seeds(points)
    for name in dict.fromkeys(p.regularizer for p in medians):
        mine = [p for p in medians if p.regularizer == name]  # grid order: rising strength
        ax.plot(
            [p.robust_metric for p in mine], [p.clean_metric for p in mine], marker="o", label=name
        )
    front = pareto_front(medians)
    ax.plot(
        [p.robust_metric for p in front],
        [p.clean_metric for p in front],
        "k--",
        lw=1,
        label="Pareto front",
    )
    ax.set_xlabel("robust accuracy")
    ax.set_ylabel("clean accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if path is not None:
        # the root figure (a SubFigure, which ``ax.figure`` may be, cannot be saved on its own)
        ax.figure.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax
