"""Data parallelism for :func:`lipguard.train.fit` under ``torchrun``.

Each rank trains on its contiguous share of every global batch. So that a run on ``N`` ranks
computes what one process computes on the same global batch:

- random draws with one row per sample (PGD's random start, TRADES' noise, the Jacobian
  penalty's projections) are made for the *whole* global batch and sliced (:func:`per_sample`),
  so every rank's generator advances exactly as one process's does and a sample gets the same
  noise whatever its rank;
- each rank's loss is weighted by ``world_size·n_rank/n_batch`` before DDP averages the
  gradients, so the result is the gradient of the global batch's mean even for an uneven split;
- metrics are combined with :func:`reduce_weighted` / :func:`reduce_max`, which gather every
  rank's values and sum them in rank order, so every rank holds bit-identical numbers (and
  therefore takes identical early-stopping and divergence decisions).

Outside data-parallel training :func:`per_sample` calls its draw unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lipguard import distributed


@dataclass(frozen=True)
class Share:
    """This rank's rows ``start:stop`` of a global batch of ``total`` samples."""

    start: int
    stop: int
    total: int


_SHARE: ContextVar[Share | None] = ContextVar("lipguard_batch_share", default=None)


@contextmanager
def batch_share(share: Share | None) -> Iterator[None]:
    """Within the block, :func:`per_sample` draws for the global batch ``share`` is part of."""
    token = _SHARE.set(share)
    try:
        yield
    finally:
        _SHARE.reset(token)


def per_sample(draw: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``draw(x)`` for a draw whose row ``i`` belongs to sample ``x[i]`` (and whose generator use
    depends only on ``x``'s shape). Inside :func:`batch_share` it draws for the whole global
    batch (``x`` at this rank's rows of a zero tensor) and returns this rank's rows."""
    share = _SHARE.get()
    if share is None:
        return draw(x)
    full = x.detach().new_zeros((share.total, *x.shape[1:]))
    full[share.start : share.stop] = x.detach()
    return draw(full)[share.start : share.stop]


class Replicated(DistributedDataParallel):
    """DDP that still answers the wrapped model's own attributes (``certified_lipschitz``, …)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _gathered(values: Sequence[float]) -> Tensor:
    """Every rank's ``values`` as rows of a ``(world_size, len(values))`` float64 tensor."""
    local = torch.tensor(list(values), dtype=torch.float64)
    parts = [torch.empty_like(local) for _ in range(distributed.world_size())]
    dist.all_gather(parts, local)
    return torch.stack(parts)


def reduce_weighted(values: Sequence[float], weight: float) -> list[float]:
    """``Σ_rank weight·values`` summed in rank order: a batch mean from per-rank means weighted
    by each rank's share of the batch; identical on every rank."""
    rows = _gathered([weight * value for value in values])
    total = rows[0]
    for row in rows[1:]:
        total = total + row
    return [float(v) for v in total]


def reduce_max(value: float) -> float:
    """The largest of every rank's ``value``."""
    return float(_gathered([value]).max())


def from_main(value: float | None) -> float | None:
    """Rank 0's ``value`` on every rank (``None`` travels as NaN, so a NaN arrives as ``None``)."""
    first = float(_gathered([math.nan if value is None else value])[0, 0])
    return None if math.isnan(first) else first


def wrap(model: nn.Module) -> Replicated:
    """``model`` under DDP (``rank 0``'s weights are broadcast to every rank)."""
    return Replicated(model)
