"""1-Lipschitz, gradient-norm-preserving activations: :class:`GroupSort` and :class:`MaxMin`."""

from __future__ import annotations

import torch
from torch import nn

from lipguard import _checks
from lipguard.errors import InvalidArgumentError, ShapeError


class GroupSort(nn.Module):
    """Sort each contiguous group of ``group_size`` features (Anil, Lucas & Grosse, 2019).

    Sorting is 1-Lipschitz in every ℓp norm, and its Jacobian is a permutation matrix wherever it
    exists, so it preserves gradient norms: with orthogonal layers this gives networks whose
    gradient norm equals their Lipschitz bound. ``group_size`` must divide the size of ``dim``.

    Args:
        group_size: features per group, >= 2 (2 is MaxMin up to order; the full width is a
            full sort).
        dim: the feature dimension (default: last).
        descending: sort each group in decreasing order.
    """

    def __init__(self, group_size: int = 2, dim: int = -1, descending: bool = False) -> None:
        super().__init__()
        self.group_size = _checks.positive_int("group_size", group_size)
        if self.group_size < 2:
            raise InvalidArgumentError(f"group_size must be >= 2, got {group_size}")
        self.dim = dim
        self.descending = bool(descending)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim % x.dim() if x.dim() else 0
        size = x.shape[dim] if x.dim() else 0
        if size % self.group_size:
            raise ShapeError(
                f"{type(self).__name__}: group_size {self.group_size} does not divide the size "
                f"{size} of dimension {self.dim} (input shape {tuple(x.shape)})"
            )
        grouped = x.unflatten(dim, (size // self.group_size, self.group_size))
        ordered = grouped.sort(dim=dim + 1, descending=self.descending).values
        return ordered.flatten(dim, dim + 1)

    def extra_repr(self) -> str:
        order = ", descending=True" if self.descending else ""
        return f"group_size={self.group_size}, dim={self.dim}{order}"


class MaxMin(GroupSort):
    """Replace each pair of features ``(a, b)`` by ``(max(a, b), min(a, b))`` (GroupSort with
    groups of two, largest first). 1-Lipschitz and gradient-norm preserving."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__(group_size=2, dim=dim, descending=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
