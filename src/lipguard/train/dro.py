"""The DRO ↔ dual-norm identity for linear models (SPEC D3).

For a linear score ``s(x) = wᵀx + b``, a label ``y ∈ {-1, +1}`` and a loss ``ℓ`` that decreases
in the margin ``m = y·s(x)`` (logistic ``log(1 + e^{-m})``, hinge ``max(0, 1 - m)``), the
worst case over an ℓp ball is attained at ``δ = -ε·y·argmax_{||δ||_p<=1} wᵀδ`` and

    max_{||δ||_p <= ε} ℓ(y·(wᵀ(x + δ) + b)) = ℓ(m - ε·||w||_q),    1/p + 1/q = 1,

so adversarial training of a linear model is exactly training with its margin reduced by the
dual-norm regularizer ``ε·||w||_q`` — no inner maximisation needed.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch.nn import functional

from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.norm import NormLike, dual_norm

#: a loss decreasing in the margin ``m``: ``log(1 + e^{-m})`` or ``max(0, 1 - m)``
MarginLoss = Literal["logistic", "hinge"]
LOSSES: tuple[MarginLoss, ...] = get_args(MarginLoss)


def dual_norm_regularizer(weight: torch.Tensor, eps: float, norm: NormLike) -> torch.Tensor:
    """``ε·||w||_q`` with ``q`` the dual of the input norm ``p``."""
    if eps < 0:
        raise InvalidArgumentError(f"eps must be >= 0, got {eps!r}")
    return eps * torch.linalg.vector_norm(weight.flatten(), ord=dual_norm(norm))


def margin_loss(margin: torch.Tensor, loss: MarginLoss) -> torch.Tensor:
    if loss == "logistic":
        return functional.softplus(-margin)
    if loss == "hinge":
        return functional.relu(1 - margin)
    raise InvalidArgumentError(f"loss must be one of {LOSSES}, got {loss!r}")


def robust_linear_loss(
    weight: torch.Tensor,
    bias: torch.Tensor | float,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: NormLike,
    loss: MarginLoss = "logistic",
) -> torch.Tensor:
    """Per-sample worst-case loss over ``||δ||_p <= eps`` of the linear classifier, in closed
    form; labels ``y`` in ``{-1, +1}``."""
    if weight.dim() != 1 or x.dim() != 2 or x.shape[1] != weight.shape[0]:
        raise ShapeError("need weight (d,) and x (N, d)")
    if not bool(((y == 1) | (y == -1)).all()):
        raise InvalidArgumentError("labels must be -1 or +1")
    margin = y * (x @ weight + bias)
    return margin_loss(margin - dual_norm_regularizer(weight, eps, norm), loss)
