"""Batched Monte-Carlo evaluation of a model under noise: inputs × samples in one stream.

The work is the list of (input, sample) pairs, processed in slices of ``batch_size`` rows: a
slice may hold many samples of one input or a few samples of many inputs, so small and large
``n`` both fill the batch. Noise is drawn straight into one reused buffer and the input added in
place; the caller's ``consume`` reduces each slice's outputs on the device (counts, sums,
samples), so nothing per sample goes through Python.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lipguard.smoothing.noise import GaussianNoise


def run_noisy(
    model: nn.Module,
    inputs: torch.Tensor,
    noise: GaussianNoise,
    count: int,
    batch_size: int,
    generator: torch.Generator | None,
    consume: Callable[[torch.Tensor, torch.Tensor], None],
    advance: Callable[[int], None] | None = None,
) -> None:
    """Evaluate ``model(inputs[i] + noise)`` ``count`` times for every ``i`` and hand each slice
    to ``consume(owner, outputs)``, ``owner[k]`` the input index of output row ``k``."""
    total = inputs.shape[0] * count
    if total == 0:
        return
    buffer = torch.empty(
        (min(batch_size, total), *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device
    )
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            rows = buffer[: stop - start]
            noise.sample_(rows, generator)
            owner = torch.arange(start, stop, device=inputs.device) // count
            first, last = start // count, (stop - 1) // count
            if first == last:
                rows.add_(inputs[first])
            else:
                rows.add_(inputs.index_select(0, owner))
            consume(owner, model(rows))
            if advance is not None:
                advance(stop - start)
