"""Argument validation shared by the public API; raises :mod:`lipguard.errors`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from lipguard.errors import InvalidArgumentError, NonFiniteError, ShapeError


def positive_float(name: str, value: float) -> float:
    """Return ``value`` as a float after checking that it is finite and > 0."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(result) or result <= 0.0:
        raise InvalidArgumentError(f"{name} must be finite and > 0, got {value!r}")
    return result


def positive_int(name: str, value: int) -> int:
    """Return ``value`` after checking that it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def finite_tensor(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` after checking that every entry is finite."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"{name} contains NaN or infinity; the guarantee needs finite values")
    return tensor


def matrix(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` after checking that it is a finite, floating-point 2-D tensor."""
    finite_tensor(name, tensor)
    if tensor.dim() != 2:
        raise ShapeError(f"{name} must be a 2-D matrix, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise InvalidArgumentError(f"{name} must have a floating-point dtype, got {tensor.dtype}")
    return tensor


def probability(name: str, value: float) -> float:
    """Return ``value`` as a float after checking that it lies strictly between 0 and 1."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < result < 1.0:
        raise InvalidArgumentError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return result


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` (and every submodule) in eval mode and restore each one's mode after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
