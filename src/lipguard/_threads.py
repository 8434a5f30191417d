"""Thread counts that do not oversubscribe a shared machine.

torch runs its CPU kernels on as many threads as cores. When another process keeps a core busy,
every parallel region waits for the thread that lost its core, and the bound engine's many
medium-sized operations run 2–3× *slower* on two threads than on one (measured: the product
bound of a 4C3F CIFAR CNN 6.3 s on two threads against 1.9 s on one, a compositional bound of a
64-1024×3-1 MLP 18.8 s against 9.3 s, with one core busy; issue 17 measured up to 30×).

:func:`adapted_threads` runs a block of work on the cores that are idle right now: it samples
``/proc/stat`` for :data:`SAMPLE_SECONDS` and uses ``max(1, idle cores)`` threads, never more
than ``torch.get_num_threads()`` (the caller's own limit), then restores the caller's setting.
``LIPGUARD_THREADS=n`` fixes the count instead (``0`` or unset: adaptive). Off Linux the
caller's setting is kept.

:func:`small_network_threads` is for work made of many tiny operations — SB3 policies and the
main job's 64×64 reward models — where every parallel region costs more in OpenMP start-up and
spinning than it saves: one thread unless ``LIPGUARD_THREADS`` says otherwise (SB3's SAC on
Pendulum ran at 66 steps/s on one thread against 7.5 on torch's default two, next to one other
busy process).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

import torch

from lipguard.errors import InvalidArgumentError

VARIABLE = "LIPGUARD_THREADS"
SAMPLE_SECONDS = 0.02
_active: ContextVar[bool] = ContextVar("lipguard_threads_active", default=False)

P = ParamSpec("P")
R = TypeVar("R")


def _cpu_times() -> tuple[int, int] | None:
    """``(idle, total)`` jiffies of all CPUs, or ``None`` where ``/proc/stat`` is missing."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def idle_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of this machine's cores were idle over the last ``seconds`` (``None`` where it
    cannot be measured)."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return None
    fraction = (after[0] - before[0]) / (after[1] - before[1])
    return fraction * (os.cpu_count() or 1)


def work_threads() -> int:
    """The thread count for a block of work now (see the module docstring)."""
    fixed = os.environ.get(VARIABLE, "").strip()
    if fixed not in ("", "0"):
        if not fixed.isdigit():
            raise InvalidArgumentError(f"{VARIABLE} must be a whole number, got {fixed!r}")
        return int(fixed)
    limit = torch.get_num_threads()
    idle = idle_cores()
    if idle is None:
        return limit
    return max(1, min(limit, math.floor(idle + 0.25)))


@contextlib.contextmanager
def adapted_threads() -> Iterator[int]:
    """Run the block on :func:`work_threads` threads (measured once for nested blocks) and
    restore the caller's count."""
    if _active.get():
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    threads = work_threads()
    token = _active.set(True)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
        _active.reset(token)


@contextlib.contextmanager
def small_network_threads() -> Iterator[int]:
    """Run the block on one torch thread (``LIPGUARD_THREADS=n``: n), then restore the caller's
    count; bound computations inside it adapt within that limit."""
    fixed = os.environ.get(VARIABLE, "").strip()
    threads = work_threads() if fixed not in ("", "0") else 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def on_idle_cores(function: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run ``function`` inside :func:`adapted_threads`."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with adapted_threads():
            return function(*args, **kwargs)

    return wrapper
