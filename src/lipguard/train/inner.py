"""The inner maximisation of adversarial training, with the adversary's path recorded.

Training calls the adversary once per batch, so it runs without the attack template's checks
and bookkeeping: plain projected ascent on a loss, in the model's current mode. It returns every
iterate ``x + δ_k`` (``k = 0..K``), which AAJR needs; PGD-AT and TRADES use the last one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lipguard.attacks.threat import ThreatModel
from lipguard.train._parallel import per_sample


def adversary_path(
    loss: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    *,
    start: torch.Tensor | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    unrolled: bool = False,
) -> list[torch.Tensor]:
    """Projected ascent on ``loss`` (per-sample values at a batch of points) from ``start`` (or a
    random point of the threat set, or ``x``); returns ``[x + δ_0, …, x + δ_K]``.

    The random start is drawn per sample for the whole global batch under data-parallel
    :func:`~lipguard.train.fit` (``torchrun``), so each sample starts where it would in one process.

    ``unrolled=True`` keeps the graph through every step (``create_graph``), so a loss on the
    iterates can be differentiated through the adversary; otherwise the iterates are detached.
    """
    x = x.detach()
    if start is not None:
        current = threat.project(x, start.detach())
    elif random_start:
        current = per_sample(lambda points: threat.random_start(points, generator), x)
    else:
        current = x.clone()
    path = [current]
    for _ in range(steps):
        point = current if unrolled else current.detach()
        with torch.enable_grad():
            if not point.requires_grad:
                point = point.requires_grad_(True)
            value = loss(point).sum()
            (gradient,) = torch.autograd.grad(value, point, create_graph=unrolled)
        current = threat.project(x, point + step_size * threat.ascent_direction(gradient))
        if not unrolled:
            current = current.detach()
        path.append(current)
    return path
