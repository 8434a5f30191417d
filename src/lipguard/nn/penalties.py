"""Soft Lipschitz constraints: penalties to add to a training loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lipguard import _checks
from lipguard._gradients import input_gradient_norms
from lipguard.errors import ShapeError
from lipguard.norm import L2, Norm, NormLike


def gradient_penalty(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    lipschitz: float,
    *,
    one_sided: bool = True,
    norm: NormLike = L2,
    interpolate_with: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Penalise input-gradient norms above a target Lipschitz constant.

    Returns ``mean_i max(0, ||∇f(x_i)||_q - L)²`` (one-sided, the default) or
    ``mean_i (||∇f(x_i)||_q - L)²`` (two-sided, WGAN-GP with target ``L``), where ``q`` is the
    dual of the input norm ``norm``. The result keeps its graph (``create_graph=True``), so it can
    be added to a loss and minimised. For ``f(x) = w·x`` it equals ``max(0, ||w||_q - L)²``.

    This is a soft constraint: it encourages, but does not guarantee, a Lipschitz bound (use the
    layers of :mod:`lipguard.nn` for a guarantee).

    Args:
        model: maps a batch ``(N, ...)`` to one scalar per sample, shape ``(N,)`` or ``(N, 1)``.
        x: the batch where gradients are measured.
        lipschitz: the target ``L`` (> 0).
        one_sided: penalise only norms above ``L``.
        norm: the input norm ``p`` (1, 2 or inf); the gradient is measured in its dual.
        interpolate_with: if given (same shape as ``x``), gradients are taken at random
            interpolates ``α·x + (1 - α)·y`` with ``α ~ U(0, 1)`` per sample (WGAN-GP).
        generator: random generator for ``α``.
    """
    target = _checks.positive_float("lipschitz", lipschitz)
    norm = Norm.parse(norm)
    _checks.finite_tensor("x", x)
    if x.dim() < 1 or x.shape[0] == 0:
        raise ShapeError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
    points = x.detach()
    if interpolate_with is not None:
        _checks.finite_tensor("interpolate_with", interpolate_with)
        if interpolate_with.shape != x.shape:
            raise ShapeError(
                f"interpolate_with has shape {tuple(interpolate_with.shape)}, x has "
                f"{tuple(x.shape)}"
            )
        alpha = torch.rand(
            (x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, dtype=x.dtype
        ).to(x.device)
        points = alpha * points + (1.0 - alpha) * interpolate_with.detach()
    points.requires_grad_(True)
    outputs = model(points)
    if outputs.shape not in ((x.shape[0],), (x.shape[0], 1)):
        raise ShapeError(
            f"gradient_penalty needs one scalar output per sample, got shape "
            f"{tuple(outputs.shape)} for a batch of {x.shape[0]}; reduce the output first"
        )
    return gradient_penalty_from_outputs(outputs, points, target, norm=norm, one_sided=one_sided)


def gradient_penalty_from_outputs(
    outputs: torch.Tensor,
    points: torch.Tensor,
    lipschitz: float | torch.Tensor,
    *,
    norm: NormLike = L2,
    one_sided: bool = True,
) -> torch.Tensor:
    """The penalty of :func:`gradient_penalty` for outputs already computed.

    For callers that need the forward pass for more than the penalty (a training loss, say):
    ``outputs`` holds one scalar per sample, computed from ``points`` (which require a gradient),
    and ``lipschitz`` is the target, a float or one value per sample (shape ``(N,)``, a
    state-dependent target). Nothing is validated here; the result keeps its graph.
    """
    size = input_gradient_norms(outputs, points, norm, create_graph=True)
    excess = size - lipschitz
    if one_sided:
        excess = F.relu(excess)
    return (excess * excess).mean()
