"""Sensitivity analysis (SPEC C4): which input changes move the output most, and the smallest
change that flips a decision.

- :func:`substitution_scan` — every single-symbol substitution of one-hot sequences (e.g. DNA:
  each position × each base), evaluated exhaustively in batches;
- :func:`feature_ranking` — tabular features ranked by mean input-gradient magnitude, or by the
  loss an attack reaches when it may change only that feature;
- :func:`single_feature_flip` — per input, the feature and the smallest change of it alone that
  makes the objective succeed (bisection, verified at the returned value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lipguard import _checks
from lipguard.attacks.base import evaluate, loss_and_gradient
from lipguard.attacks.gradient import PGD
from lipguard.attacks.objectives import Objective
from lipguard.attacks.threat import ThreatModel
from lipguard.errors import InvalidArgumentError, ShapeError


@dataclass(frozen=True)
class SubstitutionScan:
    """``change[n, i, a]``: the output change when position ``i`` of sequence ``n`` becomes
    symbol ``a`` (0 for the symbol already there)."""

    change: torch.Tensor

    def top(self, k: int = 1) -> list[list[tuple[int, int, float]]]:
        """For each sequence, the ``k`` substitutions ``(position, symbol, change)`` with the
        largest absolute change."""
        flat = self.change.flatten(1)
        index = flat.abs().topk(k, dim=1).indices
        symbols = self.change.shape[2]
        return [
            [(int(j) // symbols, int(j) % symbols, float(flat[n, j])) for j in index[n]]
            for n in range(flat.shape[0])
        ]


def substitution_scan(
    model: nn.Module,
    sequences: torch.Tensor,
    output: int | None = None,
    batch_size: int = 4096,
) -> SubstitutionScan:
    """Evaluate every single substitution of one-hot ``sequences`` ``(N, length, symbols)``.
    ``output`` picks one output column of a multi-output model."""
    _checks.finite_tensor("sequences", sequences)
    if sequences.dim() != 3:
        raise ShapeError("sequences must be one-hot with shape (N, length, symbols)")
    if not bool(((sequences == 0) | (sequences == 1)).all()) or not bool(
        (sequences.sum(-1) == 1).all()
    ):
        raise InvalidArgumentError("sequences must be one-hot along the last axis")
    n, length, symbols = sequences.shape

    def scalar(out: torch.Tensor) -> torch.Tensor:
        if output is not None:
            out = out[:, output]
        if out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.dim() != 1:
            raise ShapeError("the model has several outputs: choose one with output=")
        return out

    with _checks.evaluating(model), torch.no_grad():
        base = scalar(model(sequences))
        variants = sequences[:, None, None].repeat(1, length, symbols, 1, 1)
        positions = torch.arange(length)
        variants[:, positions, :, positions, :] = torch.eye(symbols, dtype=sequences.dtype)
        flat = variants.view(-1, length, symbols)
        values = torch.cat([scalar(model(chunk)) for chunk in flat.split(batch_size)])
    return SubstitutionScan(values.view(n, length, symbols) - base[:, None, None])


def feature_ranking(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    method: Literal["gradient", "attack"] = "gradient",
    eps: float = 0.1,
    steps: int = 10,
) -> torch.Tensor:
    """A score per feature (flattened), higher = more influential: the mean ``|∂loss/∂x_i|``
    (``"gradient"``) or the mean loss PGD reaches changing only feature ``i`` by at most ``eps``
    (``"attack"``). The gradient method needs an objective whose gradient at the clean point is
    informative: ``RewardShift("up")`` rather than ``"abs"``, whose gradient there is zero."""
    _checks.finite_tensor("x", x)
    if method == "gradient":
        with _checks.evaluating(model):
            with torch.no_grad():
                clean = model(x)
            bound = objective.bind(model, x, clean)
            _, _, _, gradient = loss_and_gradient(model, bound, x)
        return gradient.abs().flatten(1).mean(0)
    if method != "attack":
        raise InvalidArgumentError(f"method must be 'gradient' or 'attack', got {method!r}")
    features = x[0].numel()
    scores = torch.empty(features)
    for i in range(features):
        mask = torch.zeros(features, dtype=torch.bool)
        mask[i] = True
        threat = ThreatModel(eps, "inf", mask=mask.view(x.shape[1:]))
        scores[i] = PGD(threat, steps=steps)(model, x, objective).loss.mean()
    return scores


@dataclass(frozen=True)
class FeatureFlip:
    """Per input: the feature whose change alone flips the decision with the smallest
    magnitude (``-1`` if none within the limit), and the signed change."""

    feature: torch.Tensor
    change: torch.Tensor


def single_feature_flip(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    max_change: float,
    steps: int = 30,
) -> FeatureFlip:
    """For each input, try every feature in both directions: bisection on the magnitude in
    ``[0, max_change]`` for the smallest change that makes ``objective`` succeed. Every reported
    change was verified to succeed."""
    limit = _checks.positive_float("max_change", max_change)
    _checks.finite_tensor("x", x)
    n, features = x.shape[0], x[0].numel()
    best = torch.full((n,), math.inf)
    best_feature = torch.full((n,), -1, dtype=torch.long)
    best_change = torch.zeros(n)
    with _checks.evaluating(model):
        with torch.no_grad():
            clean = model(x)
        bound = objective.bind(model, x, clean)
        eye = torch.eye(features, dtype=x.dtype).view(features, *x.shape[1:])
        for i in range(features):
            for sign in (1.0, -1.0):
                direction = sign * eye[i]
                low = torch.zeros(n, dtype=x.dtype)
                high = torch.full((n,), limit, dtype=x.dtype)
                _, _, reachable = evaluate(model, bound, x + limit * direction)
                for _ in range(steps):
                    middle = (low + high) / 2
                    point = x + middle.view(-1, *([1] * (x.dim() - 1))) * direction
                    _, _, success = evaluate(model, bound, point)
                    high = torch.where(success, middle, high)
                    low = torch.where(success, low, middle)
                better = reachable & (high < best)
                best = torch.where(better, high, best)
                best_feature = torch.where(better, i, best_feature)
                best_change = torch.where(better, sign * high, best_change)
    return FeatureFlip(best_feature, best_change)
