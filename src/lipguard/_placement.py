"""Where a model lives: the dtype and device its inputs must have.

Every public function that runs a user's model follows the model: inputs given on another
device (NumPy arrays, CPU tensors for a GPU model) are moved to it, and results meant for the
caller (certificates, reports, NumPy values) come back on the CPU.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    """The dtype and device of a model's floating-point parameters."""

    dtype: torch.dtype
    device: torch.device


def placement(model: nn.Module) -> Placement:
    """The dtype and device of ``model``'s first floating-point parameter (or buffer); the
    default dtype on the CPU for a model without any."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    first = next((t for t in tensors if t.is_floating_point()), None)
    if first is None:
        return Placement(torch.get_default_dtype(), CPU)
    return Placement(first.dtype, first.device)


def to_model(model: object, values: ArrayLike | torch.Tensor) -> torch.Tensor:
    """``values`` (an array or a tensor) as a tensor ``model`` can take: on its device, in its
    dtype (float32 on the CPU for a callable that is not a module)."""
    where = placement(model) if isinstance(model, nn.Module) else Placement(torch.float32, CPU)
    return torch.as_tensor(values).to(where.device, where.dtype)


def to_numpy(values: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy of ``values`` from any device."""
    return values.detach().to("cpu", torch.float64).numpy()
