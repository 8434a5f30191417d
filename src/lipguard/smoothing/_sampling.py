"""Batched Monte-Carlo evaluation of a model under noise, with keyed random streams.

The ``count`` samples of every input are processed in blocks of ``m = min(count, batch_size)``
samples, as many inputs per forward pass as fit in ``batch_size`` rows. Every block of noise is
drawn from a generator seeded with a hash of ``(seed, phase, i, b)`` (:func:`stream_seed`):
``b`` the block's index, ``phase`` separating the selection, the estimation rounds and the
other uses of one seed, and ``i`` either

- the input's index in the data set (``per_input=True``): every input has its own independent
  noise; or
- ``-1`` (the default): block ``b`` is drawn once and added to every input, so the cost of
  drawing noise does not grow with the number of inputs (on a CPU with small inputs, drawing it
  per input makes CERTIFY about 1.3× slower). Each input still sees ``count`` independent
  samples, which is all its certificate needs; the certificates of *different* inputs share
  noise and are therefore dependent, which changes no per-input guarantee, nor a union bound
  over inputs (neither assumes independence).

Either way an input's noise depends on nothing but the seed, the phase and (per input) its own
index: not on the other inputs of the batch, nor on how the data set is split into forward
passes or over ``torchrun`` ranks, which makes a data set's certificates bit-identical for every
world size.

Under ``torchrun`` (:mod:`lipguard.distributed`), :func:`run_noisy` evaluates only this rank's
share of the inputs (:func:`~lipguard.distributed.shard`) and :func:`gather_rows` puts every
rank's per-input results together, in input order, on every rank.

The caller's ``consume`` reduces each forward pass's outputs on the device (counts, sums,
stored samples), so nothing per sample goes through Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lipguard import distributed
from lipguard.smoothing.noise import GaussianNoise

Consumer = Callable[[slice, slice, torch.Tensor], None]


def stream_seed(seed: int, phase: str, index: int, block: int) -> int:
    """The 63-bit seed of the noise of sample block ``block`` of input ``index``."""
    key = f"lipguard-smoothing/{seed}/{phase}/{index}/{block}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def local_rows(size: int) -> range:
    """The inputs ``0 … size-1`` this rank evaluates (all of them outside ``torchrun``)."""
    return distributed.shard(size)


def gather_rows(tensor: torch.Tensor, rows: range) -> torch.Tensor:
    """``tensor`` (one row per input, this rank's ``rows`` filled in) with every rank's rows,
    bit for bit (a plain copy outside ``torchrun``)."""
    if distributed.world_size() == 1:
        return tensor
    parts = distributed.gather([tensor[rows.start : rows.stop].cpu()])
    return torch.cat(parts).to(tensor.device)


def run_noisy(
    model: nn.Module,
    inputs: torch.Tensor,
    noise: GaussianNoise,
    count: int,
    batch_size: int,
    seed: int,
    phase: str,
    consume: Consumer,
    advance: Callable[[int], None] | None = None,
    indices: Sequence[int] | None = None,
    per_input: bool = False,
) -> range:
    """Evaluate ``model(inputs[i] + ε_ij)`` for ``count`` noise draws ``ε_ij`` of each input
    of this rank's share; returns that share (rows of ``inputs``).

    ``indices[i]`` is the index of ``inputs[i]`` in the data set (default ``i``): with
    ``per_input`` it, ``seed`` and ``phase`` alone determine the input's noise; without, the
    noise is shared by all inputs and determined by ``seed`` and ``phase``.
    ``consume(input_slice, sample_slice, outputs)`` receives each forward pass: ``outputs``
    has ``len(input_slice)·len(sample_slice)`` rows, input-major (all samples of the first
    input, then the next).
    """
    size = inputs.shape[0]
    rows = local_rows(size)
    if len(rows) == 0 or count == 0:
        return rows
    identity = list(range(size)) if indices is None else [int(i) for i in indices]
    block = min(count, batch_size)
    group = max(1, batch_size // block)
    buffer = torch.empty(
        (min(group, len(rows)), block, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device
    )
    noise_rows = torch.empty_like(buffer[0]) if not per_input else buffer[0]
    generator = torch.Generator(device=inputs.device)
    with torch.inference_mode():
        for number, sample_start in enumerate(range(0, count, block)):
            m = min(block, count - sample_start)
            if not per_input:
                generator.manual_seed(stream_seed(seed, phase, -1, number))
                shared = noise.sample_(noise_rows[:m], generator)
            for first in range(rows.start, rows.stop, group):
                last = min(first + group, rows.stop)
                batch = buffer[: last - first, :m]
                if per_input:
                    for offset in range(last - first):
                        key = stream_seed(seed, phase, identity[first + offset], number)
                        noise.sample_(batch[offset], generator.manual_seed(key))
                    batch.add_(inputs[first:last].unsqueeze(1))
                else:
                    torch.add(inputs[first:last].unsqueeze(1), shared.unsqueeze(0), out=batch)
                outputs = model(batch.flatten(0, 1))
                consume(slice(first, last), slice(sample_start, sample_start + m), outputs)
                if advance is not None:
                    advance((last - first) * m)
    return rows
