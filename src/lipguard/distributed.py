"""Running under ``torchrun``: the process group, this process's share of the work, and gathering
results on rank 0.

lipguard uses ``torch.distributed`` as launched by ``torchrun`` (``gloo`` on CPU, ``nccl`` when
every rank has a GPU); nothing here starts processes. Outside ``torchrun`` (no ``WORLD_SIZE`` in
the environment, or ``WORLD_SIZE=1``) every function works as for a single process, so library
code calls them unconditionally.

Results that must not depend on the world size are computed per *item* (an input, a sample
block) with randomness derived from ``(seed, item index)`` only; :func:`shard` assigns items to
ranks and :func:`gather` puts the per-item results back in item order on every rank.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from lipguard.errors import InvalidArgumentError

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets
    ``WORLD_SIZE``) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialise() -> bool:
    """Join the process group ``torchrun`` describes (once; ``gloo`` unless CUDA is available
    to every rank, then ``nccl``). Returns whether this process is part of a group of several.

    Raises:
        InvalidArgumentError: ``WORLD_SIZE`` is set but the rest of ``torchrun``'s environment
            (``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) is missing.
    """
    if not launched():
        return False
    if dist.is_initialized():
        return True
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise InvalidArgumentError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    # leave the group before the interpreter tears down the backend's threads (without this,
    # gloo now and then aborts a finished rank: "terminate called without an active exception")
    atexit.register(_leave)
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """How many processes share the work (1 outside ``torchrun``)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's index among them (0 outside ``torchrun``)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes results (rank 0)."""
    return rank() == 0


def shard(count: int) -> range:
    """The items ``0 … count-1`` this rank handles: a contiguous block, the first
    ``count % world_size`` ranks taking one more."""
    if count < 0:
        raise InvalidArgumentError(f"count must be >= 0, got {count}")
    size, index = world_size(), rank()
    base, extra = divmod(count, size)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def gather(items: Sequence[T]) -> list[T]:
    """Every rank's :func:`shard` results, concatenated in rank (hence item) order, on every
    rank. Items must be picklable; tensors are moved to the CPU first."""
    if world_size() == 1:
        return list(items)
    local = [item.detach().cpu() if isinstance(item, torch.Tensor) else item for item in items]
    parts: list[list[T] | None] = [None] * world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts if part is not None for item in part]


def barrier() -> None:
    """Wait for every rank (nothing outside ``torchrun``)."""
    if dist.is_initialized():
        dist.barrier()
