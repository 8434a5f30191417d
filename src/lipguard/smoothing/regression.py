"""Smoothed regression and reward models with certified two-sided bounds.

**Bounded outputs** (Salman et al., NeurIPS 2019, Lemma 2). Let ``h`` map inputs to ``[a, b]``
(lipguard clips the base model's output to that range, so this holds by construction) and
``ĥ = E[h(x + ε)]``, ``ε ~ N(0, Σ)``. Then ``x ↦ Φ⁻¹((ĥ(x) - a)/(b - a))`` is 1-Lipschitz in
the whitened norm ``||Σ^{-1/2}·||₂``, so for every ``δ`` with ``||Σ^{-1/2}δ||₂ <= r``:

    a + (b - a)·Φ(Φ⁻¹(p̲) - r) <= ĥ(x + δ) <= a + (b - a)·Φ(Φ⁻¹(p̄) + r),

where ``[p̲, p̄]`` contains ``(ĥ(x) - a)/(b - a)``. lipguard estimates ``ĥ(x)`` from ``n``
noisy samples with Hoeffding's or the empirical-Bernstein inequality (each side at ``α/2``; a
Clopper–Pearson bound would be invalid here because the outputs are not 0/1), so the bounds
hold for all such ``δ`` at once with probability >= ``1 - α``.

**Unbounded outputs: percentile smoothing** (Chiang et al., NeurIPS 2020). With
``h_q(x)`` the ``q``-quantile of ``f(x + ε)``, for ``||Σ^{-1/2}δ||₂ <= r``:
``h_{q̲}(x) <= h_q(x + δ) <= h_{q̄}(x)``, ``q̲ = Φ(Φ⁻¹(q) - r)``, ``q̄ = Φ(Φ⁻¹(q) + r)``. The two
outer quantiles are bounded by order statistics of ``n`` samples with exact binomial tail
probabilities (each side at ``α/2``), valid for any output distribution.

**Preference flips.** :func:`certify_preference` smooths the pair classifier
``1[r(a) > r(b)]`` with noise on both inputs: within the certified radius (of the joint
perturbation ``(δ_a, δ_b)``) the smoothed preference cannot change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from scipy import stats
from torch import nn

from lipguard import _checks
from lipguard._deprecation import renamed_keyword
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.smoothing import stats as confidence
from lipguard.smoothing._sampling import Consumer, gather_rows, run_noisy
from lipguard.smoothing.classifier import ClassifierCertificates, SmoothedClassifier
from lipguard.smoothing.noise import GaussianNoise, as_noise, check_fixed

#: the concentration inequality of :meth:`SmoothedRegressor.certify`
ConfidenceBound = Literal["bernstein", "hoeffding"]
BOUNDS: tuple[ConfidenceBound, ...] = get_args(ConfidenceBound)


def _scalar_outputs(outputs: torch.Tensor) -> torch.Tensor:
    if outputs.dim() == 2 and outputs.shape[1] == 1:
        outputs = outputs[:, 0]
    if outputs.dim() != 1:
        raise ShapeError(
            f"the base model must return one value per input, got shape {tuple(outputs.shape)}"
        )
    return outputs


def _whitened(noise: GaussianNoise, eps: float) -> float:
    """The whitened radius that covers the ℓ2 ball of radius ``eps``."""
    if eps < 0:
        raise InvalidArgumentError(f"eps must be >= 0, got {eps!r}")
    return float(eps) / noise.min_std()


class _Smoothed:
    """What the smoothed regressors share: the base model, the noise, seeded sampling."""

    def __init__(
        self, base: nn.Module, sigma: float | GaussianNoise, seed: int, per_input_noise: bool
    ) -> None:
        self.base = base
        self.noise = as_noise(sigma)
        self.seed = seed
        self.per_input_noise = per_input_noise

    def _sample(
        self,
        x: torch.Tensor,
        n: int,
        batch_size: int,
        consume: Consumer,
        progress: bool,
        phase: str,
        accumulators: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        """Run the noisy samples of this rank's inputs through ``consume`` (input ``i``'s noise
        from the stream ``(seed, phase, i)``), then return the ``accumulators`` (one row per
        input) with every rank's rows."""
        _checks.finite_tensor("x", x)
        if not x.is_floating_point() or x.dim() < 2:
            raise ShapeError("x must be a floating-point batch of shape (N, *input_shape)")
        check_fixed(self.noise, x)
        _checks.positive_int("n", n)
        _checks.positive_int("batch_size", batch_size)
        rows = run_noisy(
            self.base,
            x,
            self.noise,
            n,
            batch_size,
            self.seed,
            phase,
            _scalar_outputs,
            consume,
            per_input=self.per_input_noise,
            progress=progress,
        )
        return [gather_rows(tensor, rows) for tensor in accumulators]


@dataclass(frozen=True)
class RegressionCertificates:
    """``ĥ(x)`` for a batch: its estimate, a confidence interval, and certified bounds on
    ``ĥ(x + δ)`` for any radius (all hold together with probability >= ``1 - alpha``)."""

    mean: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    output_range: tuple[float, float]
    noise: GaussianNoise
    alpha: float
    samples: int

    @renamed_keyword("epsilon", "eps")
    def bounds(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds on ``ĥ(x + δ)`` valid for every ``||δ||₂ <= eps``."""
        return self.bounds_whitened(_whitened(self.noise, eps))

    def bounds_whitened(self, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds valid for every ``||Σ^{-1/2}δ||₂ <= radius``."""
        a, b = self.output_range
        width = b - a
        p_low = ((self.lower - a) / width).clamp(0, 1).numpy()
        p_high = ((self.upper - a) / width).clamp(0, 1).numpy()
        low = a + width * stats.norm.cdf(stats.norm.ppf(p_low) - radius)
        high = a + width * stats.norm.cdf(stats.norm.ppf(p_high) + radius)
        return torch.as_tensor(low), torch.as_tensor(high)


class SmoothedRegressor(_Smoothed):
    """``ĥ(x) = E[clip(f(x + ε), a, b)]`` with certified bounds (see the module docstring).

    Args:
        base: maps a batch to one value per input (``(batch,)`` or ``(batch, 1)``).
        sigma: a standard deviation or a fixed :class:`GaussianNoise`.
        output_range: ``(a, b)``; the base output is clipped into it.
        seed: the noise's seed, as for :class:`~lipguard.smoothing.SmoothedClassifier`.
        per_input_noise: one noise stream per input, as for
            :class:`~lipguard.smoothing.SmoothedClassifier`.
    """

    def __init__(
        self,
        base: nn.Module,
        sigma: float | GaussianNoise,
        output_range: tuple[float, float],
        *,
        seed: int = 0,
        per_input_noise: bool = False,
    ) -> None:
        super().__init__(base, sigma, seed, per_input_noise)
        a, b = (float(v) for v in output_range)
        if not (np.isfinite(a) and np.isfinite(b) and a < b):
            raise InvalidArgumentError(
                f"output_range must be finite with a < b, got {output_range}"
            )
        self.output_range = (a, b)

    def certify(
        self,
        x: torch.Tensor,
        n: int = 10_000,
        alpha: float = 0.001,
        batch_size: int = 10_000,
        *,
        bound: ConfidenceBound = "bernstein",
        progress: bool = False,
    ) -> RegressionCertificates:
        """Estimate ``ĥ`` at each input from ``n`` samples, with a ``1 - alpha`` interval."""
        alpha = _checks.probability("alpha", alpha)
        if bound not in BOUNDS:
            raise InvalidArgumentError(f"bound must be one of {BOUNDS}, got {bound!r}")
        if bound == "bernstein" and n < 2:
            raise InvalidArgumentError("the empirical-Bernstein bound needs n >= 2")
        a, b = self.output_range
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        squares = torch.zeros_like(total)

        def consume(rows: slice, _: slice, outputs: torch.Tensor) -> None:
            values = outputs.to(torch.float64).clamp(a, b) - a  # in [0, b - a]
            values = values.view(rows.stop - rows.start, -1)
            total[rows] += values.sum(1)
            squares[rows] += (values * values).sum(1)

        total, squares = self._sample(x, n, batch_size, consume, progress, "mean", [total, squares])
        shifted = (total / n).cpu()
        mean = a + shifted
        width = b - a
        if bound == "hoeffding":
            radius = torch.full_like(mean, confidence.hoeffding_radius(n, alpha / 2, width))
        else:
            # the sample variance from the sums, plus a margin for their float64 rounding
            variance = (squares.cpu() - n * shifted * shifted) / (n - 1)
            variance = variance.clamp_min(0) + 1e-12 * width * width
            bernstein = confidence.bernstein_radius(variance.numpy(), n, alpha / 2, width)
            radius = torch.as_tensor(bernstein)
        lower = (mean - radius).clamp(a, b)
        upper = (mean + radius).clamp(a, b)
        return RegressionCertificates(mean, lower, upper, self.output_range, self.noise, alpha, n)


@dataclass(frozen=True)
class QuantileCertificates:
    """Sorted noisy outputs of a batch and the quantile they smooth; :meth:`bounds` gives
    certified bounds on ``h_q(x + δ)`` (holding with probability >= ``1 - alpha``)."""

    sorted_outputs: torch.Tensor  # (N, n), ascending
    quantile: float
    noise: GaussianNoise
    alpha: float

    @property
    def estimate(self) -> torch.Tensor:
        """The empirical ``q``-quantile of each input's noisy outputs."""
        n = self.sorted_outputs.shape[1]
        index = min(n - 1, max(0, int(np.ceil(self.quantile * n)) - 1))
        return self.sorted_outputs[:, index]

    @renamed_keyword("epsilon", "eps")
    def bounds(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds on ``h_q(x + δ)`` for every ``||δ||₂ <= eps`` (``±inf`` where ``n`` is too
        small for the confidence level)."""
        return self.bounds_whitened(_whitened(self.noise, eps))

    def bounds_whitened(self, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.sorted_outputs.shape[1]
        centre = stats.norm.ppf(self.quantile)
        low_q = float(stats.norm.cdf(centre - radius))
        high_q = float(stats.norm.cdf(centre + radius))
        k_low = int(confidence.quantile_lower_index(n, low_q, self.alpha / 2))
        k_high = int(confidence.quantile_upper_index(n, high_q, self.alpha / 2))
        rows = self.sorted_outputs.shape[0]
        low = (
            self.sorted_outputs[:, k_low - 1]
            if k_low >= 1
            else torch.full((rows,), -torch.inf, dtype=torch.float64)
        )
        high = (
            self.sorted_outputs[:, k_high - 1]
            if k_high <= n
            else torch.full((rows,), torch.inf, dtype=torch.float64)
        )
        return low, high


class SmoothedQuantile(_Smoothed):
    """Percentile smoothing ``h_q(x)`` = the ``quantile`` of ``f(x + ε)`` (median by default),
    for outputs without known bounds."""

    def __init__(
        self,
        base: nn.Module,
        sigma: float | GaussianNoise,
        quantile: float = 0.5,
        *,
        seed: int = 0,
        per_input_noise: bool = False,
    ) -> None:
        super().__init__(base, sigma, seed, per_input_noise)
        self.quantile = _checks.probability("quantile", quantile)

    def certify(
        self,
        x: torch.Tensor,
        n: int = 10_000,
        alpha: float = 0.001,
        batch_size: int = 10_000,
        *,
        progress: bool = False,
    ) -> QuantileCertificates:
        alpha = _checks.probability("alpha", alpha)
        outputs = torch.empty(x.shape[0], n, dtype=torch.float64, device=x.device)

        def consume(rows: slice, samples: slice, values: torch.Tensor) -> None:
            outputs[rows, samples] = values.view(rows.stop - rows.start, -1)

        (outputs,) = self._sample(x, n, batch_size, consume, progress, "quantile", [outputs])
        if not bool(torch.isfinite(outputs).all()):
            raise InvalidArgumentError("the base model returned NaN or infinite outputs")
        ordered = outputs.sort(dim=1).values.cpu()
        return QuantileCertificates(ordered, self.quantile, self.noise, alpha)


class _PairPreference(nn.Module):
    """``1[r(a) > r(b)]`` for a batch of stacked pairs ``(batch, 2, *shape)``."""

    def __init__(self, reward: nn.Module) -> None:
        super().__init__()
        self.reward = reward

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        rewards = _scalar_outputs(self.reward(pairs.flatten(0, 1))).view(pairs.shape[0], 2)
        return (rewards[:, 0] > rewards[:, 1]).long()


def certify_preference(
    reward: nn.Module,
    first: torch.Tensor,
    second: torch.Tensor,
    sigma: float | GaussianNoise,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 10_000,
    *,
    seed: int = 0,
    progress: bool = False,
) -> ClassifierCertificates:
    """Certify that the smoothed preference between ``first[i]`` and ``second[i]`` cannot flip.

    ``prediction[i]`` is 1 if the smoothed model prefers ``first[i]`` (``r(a) > r(b)`` under
    noise), 0 if ``second[i]``, ``ABSTAIN`` otherwise; ``radius[i]`` bounds the joint
    perturbation ``||(δ_a, δ_b)||₂`` within which that preference holds (probability >=
    ``1 - alpha``). A noise model, if given, must have the pair shape ``(2, *input_shape)``.
    """
    if first.shape != second.shape:
        raise ShapeError(f"first {tuple(first.shape)} and second {tuple(second.shape)} differ")
    pairs = torch.stack([first, second], dim=1)
    smoothed = SmoothedClassifier(_PairPreference(reward), 2, sigma, seed=seed)
    return smoothed.certify(pairs, n0, n, alpha, batch_size, progress=progress)
