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

Under ``torchrun`` (:mod:`lipguard.distributed`) the work is split over ranks in one of two
ways, chosen by :func:`split`:

- **by input** (at least as many inputs as ranks): each rank evaluates all samples of its share
  of the inputs (:func:`~lipguard.distributed.shard`), and :func:`gather_rows` puts every rank's
  per-input results together, in input order, on every rank;
- **by sample block** (fewer inputs than ranks, e.g. one input certified with n = 100,000):
  each rank evaluates its share of the blocks for every input, the per-sample values (a label
  or a scalar each) are gathered on every rank, and every rank reduces all blocks in block
  order, exactly as one process does.

Either way the caller's ``consume`` sees the same calls for each input's samples in the same
order, so floating-point sums come out bit for bit the same.

The model's outputs are first reduced on the device to one value per sample (``summarise``:
a label, a scalar), then handed to ``consume`` (counts, sums, stored samples), so nothing per
sample goes through Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from lipguard import _checks, distributed
from lipguard._progress import progress_bar
from lipguard.smoothing.noise import GaussianNoise

Consumer = Callable[[slice, slice, torch.Tensor], None]
Summariser = Callable[[torch.Tensor], torch.Tensor]


def stream_seed(seed: int, phase: str, index: int, block: int) -> int:
    """The 63-bit seed of the noise of sample block ``block`` of input ``index``."""
    key = f"lipguard-smoothing/{seed}/{phase}/{index}/{block}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


Split = Literal["inputs", "blocks"]


def split(size: int) -> Split:
    """How ``size`` inputs are shared over the ranks: by input when every rank gets one."""
    return "inputs" if size >= distributed.world_size() else "blocks"


def local_samples(size: int, count: int, batch_size: int) -> int:
    """How many noisy samples this rank evaluates (for its progress bar)."""
    if split(size) == "inputs":
        return len(distributed.shard(size)) * count
    block = min(count, batch_size)
    blocks = range(0, count, block)
    return size * sum(min(block, count - blocks[b]) for b in distributed.shard(len(blocks)))


def local_rows(size: int) -> range:
    """The inputs ``0 … size-1`` whose results this rank holds after :func:`run_noisy`: its
    share when split by input, all of them when split by sample block."""
    return distributed.shard(size) if split(size) == "inputs" else range(size)


def gather_rows(tensor: torch.Tensor, rows: range) -> torch.Tensor:
    """``tensor`` (one row per input, this rank's ``rows`` filled in) with every rank's rows,
    bit for bit (unchanged when ``rows`` already covers every input)."""
    if distributed.world_size() == 1 or len(rows) == tensor.shape[0]:
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
    summarise: Summariser,
    consume: Consumer,
    indices: Sequence[int] | None = None,
    per_input: bool = False,
    progress: bool = False,
) -> range:
    """Evaluate ``model(inputs[i] + ε_ij)`` for ``count`` noise draws ``ε_ij`` of each input
    and hand them to ``consume``; returns the rows of ``inputs`` whose results this rank holds
    (:func:`local_rows`).

    ``indices[i]`` is the index of ``inputs[i]`` in the data set (default ``i``): with
    ``per_input`` it, ``seed`` and ``phase`` alone determine the input's noise; without, the
    noise is shared by all inputs and determined by ``seed`` and ``phase``.
    ``summarise(outputs)`` turns a forward pass's outputs into one value per sample, and
    ``consume(input_slice, sample_slice, values)`` receives them: ``len(input_slice)·
    len(sample_slice)`` values, input-major (all samples of the first input, then the next),
    each input's sample slices in increasing order. The model runs in eval mode (restored
    after); ``progress`` shows a bar of this rank's samples on rank 0.
    """
    size = inputs.shape[0]
    rows = local_rows(size)
    if size == 0 or count == 0:
        return rows
    block = min(count, batch_size)
    starts = range(0, count, block)
    evaluate = _Evaluator(model, inputs, noise, block, batch_size, seed, phase, indices, per_input)
    shown = progress and distributed.is_main()
    with (
        _checks.evaluating(model),
        progress_bar(local_samples(size, count, batch_size), "noisy samples", shown) as advance,
        torch.inference_mode(),
    ):
        if split(size) == "inputs":
            for number, start in enumerate(starts):
                m = min(block, count - start)
                for first, last, outputs in evaluate(number, m, rows):
                    consume(slice(first, last), slice(start, start + m), summarise(outputs))
                    advance((last - first) * m)
            return rows
        mine = []
        for number in distributed.shard(len(starts)):
            m = min(block, count - starts[number])
            parts = []
            for first, last, outputs in evaluate(number, m, rows):
                parts.append(summarise(outputs))
                advance((last - first) * m)
            mine.append(torch.cat(parts))
        for number, values in enumerate(distributed.gather(mine)):
            start, m = starts[number], min(block, count - starts[number])
            consume(slice(0, size), slice(start, start + m), values.to(inputs.device))
    return rows


class _Evaluator:
    """The forward passes of one sample block: the rows of ``inputs`` plus that block's noise,
    as many inputs per pass as fit in ``batch_size`` rows."""

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        noise: GaussianNoise,
        block: int,
        batch_size: int,
        seed: int,
        phase: str,
        indices: Sequence[int] | None,
        per_input: bool,
    ) -> None:
        self.model, self.inputs, self.noise = model, inputs, noise
        self.seed, self.phase, self.per_input = seed, phase, per_input
        size = inputs.shape[0]
        self.identity = list(range(size)) if indices is None else [int(i) for i in indices]
        self.group = max(1, batch_size // block)
        shape = (min(self.group, size), block, *inputs.shape[1:])
        self.buffer = torch.empty(shape, dtype=inputs.dtype, device=inputs.device)
        self.shared = torch.empty_like(self.buffer[0])
        self.generator = torch.Generator(device=inputs.device)

    def __call__(self, number: int, m: int, rows: range) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(first, last, outputs)`` for each forward pass over ``rows`` in block ``number``
        (``m`` samples per input); the caller holds ``torch.inference_mode``."""
        if not self.per_input:
            self.generator.manual_seed(stream_seed(self.seed, self.phase, -1, number))
            shared = self.noise.sample_(self.shared[:m], self.generator)
        for first in range(rows.start, rows.stop, self.group):
            last = min(first + self.group, rows.stop)
            batch = self.buffer[: last - first, :m]
            if self.per_input:
                for offset in range(last - first):
                    key = stream_seed(self.seed, self.phase, self.identity[first + offset], number)
                    self.noise.sample_(batch[offset], self.generator.manual_seed(key))
                batch.add_(self.inputs[first:last].unsqueeze(1))
            else:
                torch.add(self.inputs[first:last].unsqueeze(1), shared.unsqueeze(0), out=batch)
            yield first, last, self.model(batch.flatten(0, 1))
