"""Randomized smoothing of classifiers (Cohen, Rosenfeld & Kolter, ICML 2019), exactly.

The smoothed classifier ``g(x) = argmax_c P(f(x + ε) = c)``, ``ε ~ N(0, Σ)``.

``certify(x, n0, n, α)``: the class ``c_A`` with the most votes over ``n0`` noisy samples
(*selection*, then discarded); ``n_A`` = votes for ``c_A`` over ``n`` *fresh* samples;
``p_A = Beta.ppf(α; n_A, n - n_A + 1)`` (one-sided Clopper–Pearson). If ``p_A < 1/2`` abstain,
else with probability >= ``1 - α`` over the sampling, ``g(x + δ) = c_A`` for every ``δ`` with
``||Σ^{-1/2}δ||₂ < Φ⁻¹(p_A)`` — for ``Σ = σ²I`` the ℓ2 ball of radius ``σ·Φ⁻¹(p_A)``.

``predict(x, n, α)``: the two largest vote counts ``n₁ >= n₂``; abstain unless the two-sided
binomial test of ``n₁`` out of ``n₁ + n₂`` against ``1/2`` has p-value <= ``α``; then the
returned class is ``g(x)`` except with probability <= ``α``.

**Sequential early stopping** (``certify(..., looks=K)``): the ``n`` estimation samples are drawn
in ``K`` rounds of geometrically growing size, and every round's Clopper–Pearson bounds use
``α/K``. By the union bound all ``K`` bounds of an input hold together with probability >=
``1 - α``, so stopping at any round — when the upper bound on ``p_A`` is below ``1/2`` (it
will abstain) or when the lower bound already certifies ``target_radius`` — and reporting that
round's certificate keeps the ``1 - α`` guarantee. It saves samples on easy and hopeless inputs
at the price of slightly smaller radii (``α/K`` instead of ``α``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from scipy import stats
from torch import nn

from lipguard import _checks, distributed
from lipguard._progress import progress_bar
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.smoothing import stats as confidence
from lipguard.smoothing._sampling import gather_rows, run_noisy
from lipguard.smoothing.noise import GaussianNoise, as_noise, check_fixed

#: the prediction of an input on which smoothing abstains (no class is certified)
ABSTAIN = -1


@dataclass(frozen=True)
class ClassifierCertificates:
    """Certificates of a batch of inputs. ``prediction[i] == ABSTAIN`` (-1) means none.

    ``whitened_radius[i]`` is ``Φ⁻¹(p_A)``: the certified set is
    ``{δ : ||Σ^{-1/2}δ||₂ < whitened_radius[i]}``; :attr:`radius` is the largest ℓ2 ball inside
    it and :attr:`equal_volume_radius` the ball of the same volume. Each certificate holds with
    probability >= ``1 - alpha`` over the Monte-Carlo sampling.
    """

    prediction: torch.Tensor
    p_lower: torch.Tensor
    whitened_radius: torch.Tensor
    votes: torch.Tensor
    samples: torch.Tensor
    noise: GaussianNoise
    alpha: float

    @property
    def radius(self) -> torch.Tensor:
        """Certified ℓ2 radius (the inscribed ball; ``σ·Φ⁻¹(p_A)`` for isotropic noise)."""
        return self.whitened_radius * self.noise.min_std()

    @property
    def equal_volume_radius(self) -> torch.Tensor:
        return self.whitened_radius * self.noise.volume_std()

    @property
    def abstained(self) -> torch.Tensor:
        return self.prediction == ABSTAIN

    def contains(self, delta: torch.Tensor) -> torch.Tensor:
        """Whether each perturbation ``delta[i]`` lies in input ``i``'s certified set (never
        for an abstention)."""
        if delta.shape[0] != self.prediction.shape[0]:
            raise ShapeError(f"delta needs one row per certificate ({self.prediction.shape[0]})")
        inside = self.noise.whitened_norm(delta).cpu() < self.whitened_radius
        return inside & ~self.abstained

    def to_dict(self) -> dict[str, Any]:
        return {
            "prediction": self.prediction.tolist(),
            "radius": self.radius.tolist(),
            "equal_volume_radius": self.equal_volume_radius.tolist(),
            "p_lower": self.p_lower.tolist(),
            "votes": self.votes.tolist(),
            "samples": self.samples.tolist(),
            "alpha": self.alpha,
            "noise": self.noise.to_dict(),
        }


def _labels(outputs: torch.Tensor, num_classes: int) -> torch.Tensor:
    if outputs.dim() == 1 and not outputs.is_floating_point():
        labels = outputs.long()
    elif outputs.dim() == 2 and outputs.shape[1] == num_classes:
        labels = outputs.argmax(1)
    else:
        raise ShapeError(
            f"the base classifier must return (batch, {num_classes}) scores or (batch,) integer "
            f"labels, got shape {tuple(outputs.shape)}"
        )
    return labels


class SmoothedClassifier:
    """The Gaussian-smoothed version of ``base``.

    Args:
        base: maps a batch of inputs to ``(batch, num_classes)`` scores or ``(batch,)`` labels.
        num_classes: number of classes.
        sigma: the noise: a standard deviation (``N(0, σ²I)``) or a fixed
            :class:`~lipguard.smoothing.noise.GaussianNoise` (diagonal, low-rank, DCT, ...).
            A noise chosen per input is refused (:class:`PerInputNoiseError`).
        seed: seed of the noise: each noise block is drawn from a stream derived from the seed,
            the phase (selection, estimation round, prediction) and the block's index only (and
            the input's index ``i`` in the data set with ``per_input_noise``), so results are
            reproducible given the seed and identical for every ``torchrun`` world size and
            batch composition (``docs/scaling.md``).
        per_input_noise: draw every input's noise from its own stream ``(seed, i)`` (independent
            across inputs) instead of sharing each noise block across the inputs (faster where
            drawing noise costs as much as the forward pass; see
            :mod:`lipguard.smoothing._sampling`).
    """

    def __init__(
        self,
        base: nn.Module,
        num_classes: int,
        sigma: float | GaussianNoise,
        *,
        seed: int = 0,
        per_input_noise: bool = False,
    ) -> None:
        self.base = base
        self.num_classes = _checks.positive_int("num_classes", num_classes)
        self.noise = as_noise(sigma)
        self.seed = seed
        self.per_input_noise = per_input_noise

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        _checks.finite_tensor("x", x)
        if not x.is_floating_point() or x.dim() < 2:
            raise ShapeError("x must be a floating-point batch of shape (N, *input_shape)")
        check_fixed(self.noise, x)
        return x

    def votes(
        self,
        x: torch.Tensor,
        count: int,
        batch_size: int = 10_000,
        *,
        phase: str = "votes",
        indices: Sequence[int] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """``(N, num_classes)`` vote counts of the base classifier over ``count`` noisy samples
        per input (counted on the device).

        The noise of ``x[i]`` comes from its own stream, determined by the seed, ``phase`` and
        its index ``indices[i]`` in the data set (default ``i``), so its votes do not depend on
        the other inputs. Under ``torchrun`` every rank counts its share of the inputs (or, for
        fewer inputs than ranks, of the sample blocks) and every rank gets all counts.
        """
        x = self._check(x)
        _checks.positive_int("batch_size", batch_size)
        if indices is not None and len(indices) != x.shape[0]:
            raise ShapeError(f"indices needs one entry per input ({x.shape[0]})")
        counts = torch.zeros(x.shape[0] * self.num_classes, dtype=torch.long, device=x.device)
        classes = self.num_classes

        def summarise(outputs: torch.Tensor) -> torch.Tensor:
            labels = _labels(outputs, classes)
            if bool(((labels < 0) | (labels >= classes)).any()):
                raise InvalidArgumentError(
                    f"the base classifier returned labels outside [0, {classes})"
                )
            return labels

        def consume(rows: slice, _: slice, labels: torch.Tensor) -> None:
            owner = torch.arange(rows.start, rows.stop, device=labels.device)
            owner = owner.repeat_interleave(labels.numel() // (rows.stop - rows.start))
            counts.index_add_(0, owner * classes + labels, torch.ones_like(labels))

        rows = run_noisy(
            self.base,
            x,
            self.noise,
            count,
            batch_size,
            self.seed,
            phase,
            summarise,
            consume,
            indices,
            self.per_input_noise,
            progress,
        )
        return gather_rows(counts.view(x.shape[0], classes), rows).cpu()

    def predict(
        self,
        x: torch.Tensor,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 10_000,
        progress: bool = False,
    ) -> torch.Tensor:
        """Cohen's PREDICT for each input: the smoothed class, or ``ABSTAIN``; a returned class
        differs from ``g(x)`` with probability at most ``alpha``."""
        _checks.positive_int("n", n)
        alpha = _checks.probability("alpha", alpha)
        counts = self.votes(x, n, batch_size, phase="predict", progress=progress)
        top2 = counts.topk(min(2, self.num_classes), dim=1)
        n1 = top2.values[:, 0]
        n2 = top2.values[:, 1] if self.num_classes > 1 else torch.zeros_like(n1)
        p_values = torch.as_tensor(confidence.binomial_p_value(n1.numpy(), (n1 + n2).numpy()))
        return torch.where(p_values <= alpha, top2.indices[:, 0], ABSTAIN)

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 10_000,
        *,
        looks: int = 1,
        target_radius: float | None = None,
        progress: bool = False,
    ) -> ClassifierCertificates:
        """Cohen's CERTIFY for each input (see the module docstring); ``looks > 1`` enables
        sequential early stopping with the same ``1 - alpha`` guarantee."""
        x = self._check(x)
        _checks.positive_int("n0", n0)
        _checks.positive_int("n", n)
        _checks.positive_int("looks", looks)
        alpha = _checks.probability("alpha", alpha)
        if looks > 1 and n < 2 ** (looks - 1):
            raise InvalidArgumentError(f"n = {n} is too small for {looks} looks")
        selection = self.votes(x, n0, batch_size, phase="selection").argmax(1)
        level = alpha / looks
        schedule = [math.ceil(n / 2 ** (looks - 1 - k)) for k in range(looks)]
        size = x.shape[0]
        votes = torch.zeros(size, dtype=torch.long)
        used = torch.zeros(size, dtype=torch.long)
        active = torch.ones(size, dtype=torch.bool)
        target = None
        if target_radius is not None:
            target = _checks.positive_float("target_radius", target_radius) / self.noise.min_std()
        with progress_bar(size * n, "certifying", progress and distributed.is_main()) as advance:
            for look, total in enumerate(schedule):
                index = active.nonzero().squeeze(1)
                if index.numel() == 0:
                    break
                extra = total - (schedule[look - 1] if look else 0)
                counts = self.votes(
                    x[index.to(x.device)],
                    extra,
                    batch_size,
                    phase=f"estimation-{look}",
                    indices=index.tolist(),
                )
                votes[index] += counts.gather(1, selection[index, None]).squeeze(1)
                used[index] = total
                advance(int(index.numel()) * extra)
                if look == looks - 1:
                    break
                lower = confidence.clopper_pearson_lower(votes[index].numpy(), total, level)
                upper = confidence.clopper_pearson_upper(votes[index].numpy(), total, level)
                done = upper < 0.5
                if target is not None:
                    done |= (lower >= 0.5) & (stats.norm.ppf(lower) >= target)
                active[index[torch.as_tensor(done)]] = False
        p_lower = torch.as_tensor(
            confidence.clopper_pearson_lower(votes.numpy(), used.numpy(), level),
            dtype=torch.float64,
        )
        certified = p_lower >= 0.5
        whitened = torch.where(
            certified, torch.as_tensor(stats.norm.ppf(p_lower.numpy())), torch.zeros(size)
        ).to(torch.float64)
        prediction = torch.where(certified, selection, ABSTAIN)
        return ClassifierCertificates(prediction, p_lower, whitened, votes, used, self.noise, alpha)
