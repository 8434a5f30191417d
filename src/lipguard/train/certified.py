"""Certified robustness of Lipschitz classifiers from their margins, and the losses that train it.

A classifier ``f`` whose outputs (logits) are ``L``-Lipschitz from ℓ2 inputs to ℓ2 outputs
cannot change its prediction within the ℓ2 radius

    r(x) = (f_y(x) - max_{j≠y} f_j(x)) / (√2 · L),

(Tsuzuku, Sato & Sugiyama 2018, "Lipschitz-Margin Training"): each logit difference
``f_y - f_j = (e_y - e_j)ᵀf`` is ``||e_y - e_j||₂ · L = √2·L``-Lipschitz. For a linear model
whose rows satisfy ``||w_y - w_j|| = √2·||W||₂`` (e.g. two classes ``W = [w; -w]``) the radius
is exactly the distance to the decision boundary; in general it is a lower bound on it.

:func:`certified_margins` returns ``r``; :func:`lipschitz_certified_accuracy` the fraction of
points that are correct *and* certified at ``ε`` (it is not
:func:`lipguard.smoothing.certified_accuracy`, which certifies a smoothed classifier). The losses
train the margin: :func:`certified_hinge_loss` (a multi-class hinge with margin ``√2·L·ε``,
zero exactly when every point is certified at ``ε``) and :func:`offset_cross_entropy`
(cross-entropy on temperature-scaled logits with ``√2·L·ε`` added to the non-target logits: the
recipe of Prach & Lampert 2022, "Almost-orthogonal layers", and Prach et al. 2024, "1-Lipschitz
Layers Compared"). :func:`fit_certified` is a short training loop with either loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from lipguard import _checks
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.linalg import mul_up, up
from lipguard.results import LipschitzBound

#: the certified-training losses of :func:`fit_certified`
CertifiedLoss = Literal["offset-ce", "hinge"]
CERTIFIED_LOSSES: tuple[CertifiedLoss, ...] = get_args(CertifiedLoss)
#: √2 rounded upwards: the logit-difference factor, so that radii are never overstated
SQRT2_UP = up(math.sqrt(2.0))


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    _checks.finite_tensor("logits", logits)
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ShapeError(f"logits must be (N, classes >= 2), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ShapeError(f"labels must be ({logits.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype in (torch.bool,) or labels.is_floating_point() or labels.is_complex():
        raise InvalidArgumentError(f"labels must be integer class indices, got {labels.dtype}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise InvalidArgumentError(f"labels must lie in [0, {logits.shape[1]})")


def _lipschitz_value(lipschitz: float | LipschitzBound) -> float:
    if isinstance(lipschitz, LipschitzBound):
        if not lipschitz.sound or lipschitz.norm != 2.0:
            raise InvalidArgumentError(
                f"certified radii need a sound ℓ2 bound, got {lipschitz} (sound={lipschitz.sound})"
            )
        return _checks.positive_float("lipschitz", lipschitz.value)
    return _checks.positive_float("lipschitz", lipschitz)


def _check_eps(eps: float) -> float:
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"eps must be finite and >= 0, got {eps!r}")
    return value


def logit_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_y - max_{j≠y} f_j`` per sample (negative where the prediction is wrong)."""
    _check_logits(logits, labels)
    target = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -math.inf)
    return target - others.max(dim=1).values


def certified_margins(
    logits: torch.Tensor, labels: torch.Tensor, lipschitz: float | LipschitzBound
) -> torch.Tensor:
    """The certified ℓ2 radius per sample, ``(f_y - max_{j≠y} f_j) / (√2·L)`` (float64), for
    logits of a model that is ``lipschitz``-Lipschitz (ℓ2 → ℓ2); ``<= 0`` where the prediction is
    wrong. Computed in float64 from the logits with the divisor rounded up, so a radius is never
    overstated; a :class:`LipschitzBound` must be sound and in ℓ2.

    Within ``||δ||₂ < r`` the model predicts ``y`` (Tsuzuku et al. 2018).
    """
    value = _lipschitz_value(lipschitz)
    margins = logit_margins(logits.detach().double(), labels)
    radii = margins / mul_up(SQRT2_UP, value)
    return torch.nextafter(radii, torch.full_like(radii, -math.inf))  # the quotient rounded down


@dataclass(frozen=True)
class CertifiedAccuracy:
    """Clean and certified accuracy of a Lipschitz classifier at one ℓ2 radius.

    Attributes:
        eps: the ℓ2 radius.
        clean: fraction of points classified correctly.
        certified: fraction classified correctly with a certified radius ``> eps``.
        lipschitz: the ℓ2 bound the radii were computed with.
        count: number of points.
        radii: the certified radius of every point (``<= 0`` where wrong), float64.
    """

    eps: float
    clean: float
    certified: float
    lipschitz: float
    count: int
    radii: torch.Tensor

    def at(self, eps: float) -> float:
        """Certified accuracy at another radius (same points and bound)."""
        return float((self.radii > _check_eps(eps)).double().mean()) if self.count else 0.0


@torch.no_grad()
def lipschitz_certified_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    lipschitz: float | LipschitzBound | None = None,
    *,
    batch_size: int = 1024,
) -> CertifiedAccuracy:
    """Clean accuracy and the fraction of points correct *and* certified at ℓ2 radius ``eps``.

    ``lipschitz`` is the model's ℓ2 bound; by default ``model.certified_lipschitz()`` (a sound,
    proven bound of the model as it is now). Pass a bound you have proven otherwise — a
    claimed, unproven constant gives an unproven accuracy.
    """
    eps = _check_eps(eps)
    _checks.finite_tensor("x", x)
    if len(x) != len(y):
        raise ShapeError(f"need one label per input: {len(x)} inputs, {len(y)} labels")
    if lipschitz is None:
        certify = getattr(model, "certified_lipschitz", None)
        if certify is None:
            raise InvalidArgumentError(
                f"{type(model).__name__} has no certified_lipschitz(); pass lipschitz= (a proven "
                "bound, e.g. lipguard.bounds.lipschitz_bound(model, 2))"
            )
        lipschitz = certify()
    value = _lipschitz_value(lipschitz)
    batch_size = _checks.positive_int("batch_size", batch_size)
    with _checks.evaluating(model):
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    radii = certified_margins(logits, y, value)
    count = len(y)
    clean = float((logits.argmax(1) == y).double().mean()) if count else 0.0
    certified = float((radii > eps).double().mean()) if count else 0.0
    return CertifiedAccuracy(eps, clean, certified, value, count, radii)


def certified_hinge_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    lipschitz: float = 1.0,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Multi-class hinge ``max(0, √2·L·ε - (f_y - max_{j≠y} f_j))`` (Tsuzuku et al. 2018): zero
    exactly when the point is classified correctly with logit margin ``>= √2·L·ε``, i.e. with
    certified radius ``>= ε``."""
    margin = math.sqrt(2.0) * _checks.positive_float("lipschitz", lipschitz) * _check_eps(eps)
    loss = F.relu(margin - logit_margins(logits, labels))
    return _reduce(loss, reduction)


def offset_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    lipschitz: float = 1.0,
    *,
    temperature: float = 8.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``temperature · (f + √2·L·ε·(1 - e_y))``: the non-target logits are
    raised by the margin a certificate at ``ε`` needs (Prach & Lampert 2022; Prach et al. 2024),
    and the temperature sharpens the softmax of a model whose logits move slowly (``L`` is
    small). Minimising it pushes the logit margin beyond ``√2·L·ε``."""
    _check_logits(logits, labels)
    offset = math.sqrt(2.0) * _checks.positive_float("lipschitz", lipschitz) * _check_eps(eps)
    temperature = _checks.positive_float("temperature", temperature)
    shifted = logits + offset * (1.0 - F.one_hot(labels, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(temperature * shifted, labels, reduction=reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise InvalidArgumentError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def certified_loss(
    name: CertifiedLoss, eps: float, lipschitz: float = 1.0, *, temperature: float = 8.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``name`` as ``loss(logits, labels)`` (mean over the batch)."""
    if name == "offset-ce":
        return lambda z, t: offset_cross_entropy(z, t, eps, lipschitz, temperature=temperature)
    if name == "hinge":
        return lambda z, t: certified_hinge_loss(z, t, eps, lipschitz)
    raise InvalidArgumentError(f"loss must be one of {list(CERTIFIED_LOSSES)}, got {name!r}")


def fit_certified(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    lipschitz: float = 1.0,
    loss: CertifiedLoss = "offset-ce",
    temperature: float = 8.0,
    epochs: int = 30,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` (its ``lipschitz`` is guaranteed by construction) for certified accuracy
    at ``eps`` with Adam and a cosine schedule; returns the seconds each epoch took.

    ``eps`` is the training radius (often larger than the one evaluated); ``lipschitz`` is the
    model's guaranteed bound, which sets the margin ``√2·L·ε`` the loss asks for.
    """
    objective = certified_loss(loss, eps, lipschitz, temperature=temperature)
    epochs = _checks.positive_int("epochs", epochs)
    batch_size = _checks.positive_int("batch_size", batch_size)
    _checks.finite_tensor("x", x)
    if len(x) != len(y) or len(x) == 0:
        raise ShapeError(f"need as many labels as inputs (> 0): {len(x)} inputs, {len(y)} labels")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    seconds: list[float] = []
    model.train()
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            batch = order[i : i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            value = objective(model(x[batch]), y[batch])
            value.backward()
            optimizer.step()
            schedule.step()
        seconds.append(time.perf_counter() - start)
    model.eval()
    return seconds
