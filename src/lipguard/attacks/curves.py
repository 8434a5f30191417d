"""Robustness curves: how attack success (or the output shift) grows with the budget ε."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from lipguard import distributed
from lipguard._progress import progress_bar
from lipguard.attacks.base import Attack
from lipguard.attacks.objectives import Objective
from lipguard.attacks.threat import ThreatModel

if TYPE_CHECKING:
    from matplotlib.axes import Axes

AttackFactory = Callable[[ThreatModel], Attack]
#: a statistic of :class:`RobustnessCurve` to plot
CurveMetric = Literal["success_rate", "mean_loss", "max_loss"]


@dataclass(frozen=True)
class RobustnessCurve:
    """Per attack and ε: success rate and the statistics of the objective's loss (for rewards,
    the output shift ``|Δr|``)."""

    epsilons: np.ndarray
    success_rate: dict[str, np.ndarray] = field(default_factory=dict)
    mean_loss: dict[str, np.ndarray] = field(default_factory=dict)
    max_loss: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilons": self.epsilons.tolist(),
            "success_rate": {k: v.tolist() for k, v in self.success_rate.items()},
            "mean_loss": {k: v.tolist() for k, v in self.mean_loss.items()},
            "max_loss": {k: v.tolist() for k, v in self.max_loss.items()},
        }


def robustness_curve(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    epsilons: Sequence[float],
    attacks: Mapping[str, AttackFactory],
    threat: ThreatModel | None = None,
    *,
    progress: bool = False,
) -> RobustnessCurve:
    """Run every attack (built by its factory from the threat model at each ε) and record the
    success rate and loss statistics. ``threat`` supplies the norm, box and mask (its ε is
    replaced). Under ``torchrun`` the ``(attack, ε)`` runs are shared out over the ranks and every
    rank gets the whole curve, identical to a single process's."""
    base = threat if threat is not None else ThreatModel(0.0)
    grid = np.asarray(sorted(float(e) for e in epsilons))
    curve = RobustnessCurve(grid)
    # one cell per (attack, ε), each a fresh attack seeded by its own seed: under torchrun the
    # cells are shared out over the ranks and gathered in order, bit-identical to one process
    cells = [(name, float(eps)) for name in attacks for eps in grid]
    mine = distributed.shard(len(cells))
    rows: list[tuple[float, float, float]] = []
    enabled = progress and distributed.is_main()
    with progress_bar(len(mine), "robustness curve", enabled) as advance:
        for name, eps in cells[mine.start : mine.stop]:
            result = attacks[name](base.with_eps(eps))(model, x, objective)
            rows.append((result.success_rate, float(result.loss.mean()), float(result.loss.max())))
            advance(1)
    everything = distributed.gather(rows)
    for position, name in enumerate(attacks):
        values = np.asarray(everything[position * len(grid) : (position + 1) * len(grid)])
        values = values.reshape(len(grid), 3)
        curve.success_rate[name] = values[:, 0].copy()
        curve.mean_loss[name] = values[:, 1].copy()
        curve.max_loss[name] = values[:, 2].copy()
    return curve


def plot_robustness_curve(
    curve: RobustnessCurve,
    metric: CurveMetric = "success_rate",
    path: str | Path | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Plot ``metric`` (``success_rate``, ``mean_loss`` or ``max_loss``) against ε for every
    attack; save to ``path`` if given. Returns the matplotlib axes."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    for name, values in getattr(curve, metric).items():
        ax.plot(curve.epsilons, values, marker="o", label=name)
    ax.set_xlabel("ε")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        # the root figure (a SubFigure, which ``ax.figure`` may be, cannot be saved on its own)
        ax.figure.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax
