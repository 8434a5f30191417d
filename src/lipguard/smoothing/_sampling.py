"""Batched Monte-Carlo evaluation of a model under noise.

The ``count`` samples of every input are processed in blocks of ``m = min(count, batch_size)``
samples. Each block's noise is drawn **once** and added to every input of the batch (as many
inputs per forward pass as fit in ``batch_size`` rows), so the cost of drawing noise does not
grow with the number of inputs. Each input still sees ``count`` independent samples, which is
all its certificate needs; the certificates of *different* inputs share noise and are therefore
dependent, which changes no per-input guarantee, nor a union bound over inputs (neither assumes
independence). Separate calls (selection vs. estimation, rounds of early stopping) draw fresh
noise.

The caller's ``consume`` reduces each forward pass's outputs on the device (counts, sums,
stored samples), so nothing per sample goes through Python.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lipguard.smoothing.noise import GaussianNoise

Consumer = Callable[[slice, slice, torch.Tensor], None]


def run_noisy(
    model: nn.Module,
    inputs: torch.Tensor,
    noise: GaussianNoise,
    count: int,
    batch_size: int,
    generator: torch.Generator | None,
    consume: Consumer,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Evaluate ``model(inputs[i] + ε_j)`` for ``count`` noise draws ``ε_j`` and every ``i``.

    ``consume(input_slice, sample_slice, outputs)`` receives each forward pass: ``outputs`` has
    ``len(input_slice)·len(sample_slice)`` rows, input-major (all samples of the first input,
    then the next).
    """
    size = inputs.shape[0]
    if size == 0 or count == 0:
        return
    block = min(count, batch_size)
    group = max(1, batch_size // block)
    noise_rows = torch.empty((block, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)
    buffer = torch.empty(
        (min(group, size), block, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device
    )
    with torch.inference_mode():
        for sample_start in range(0, count, block):
            m = min(block, count - sample_start)
            draws = noise.sample_(noise_rows[:m], generator)
            for first in range(0, size, group):
                last = min(first + group, size)
                rows = buffer[: last - first, :m]
                torch.add(inputs[first:last].unsqueeze(1), draws.unsqueeze(0), out=rows)
                outputs = model(rows.flatten(0, 1))
                consume(slice(first, last), slice(sample_start, sample_start + m), outputs)
                if advance is not None:
                    advance((last - first) * m)
