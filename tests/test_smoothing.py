"""Randomized smoothing: REFERENCES.md test vectors and closed-form oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.smoothing import (
    ABSTAIN,
    DCTNoise,
    DiagonalNoise,
    IsotropicNoise,
    LowRankNoise,
    PerInputNoiseError,
    SmoothedClassifier,
    SmoothedQuantile,
    SmoothedRegressor,
    certified_accuracy,
    certify_preference,
    plot_certified_accuracy,
)
from lipguard.smoothing import stats as confidence


class Halfspace(nn.Module):
    """``1[wᵀx + b >= 0]`` as two-class scores: its smoothing is known in closed form."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ self.w + self.b >= 0).long()


class FirstCoordinate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class Step(nn.Module):
    """``1[x₁ >= 0]`` as a real output in [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] >= 0).to(x.dtype)


# --- REFERENCES.md test vectors (α = 0.001) ----------------------------------------------


def test_clopper_pearson_vectors():
    assert confidence.clopper_pearson_lower(100_000, 100_000, 0.001) == pytest.approx(
        0.9999309, abs=5e-8
    )
    assert stats.norm.ppf(confidence.clopper_pearson_lower(100_000, 100_000, 0.001)) == (
        pytest.approx(3.8115, abs=5e-5)
    )
    assert confidence.clopper_pearson_lower(99_000, 100_000, 0.001) == pytest.approx(
        0.988989, abs=5e-7
    )
    assert stats.norm.ppf(confidence.clopper_pearson_lower(99_000, 100_000, 0.001)) == (
        pytest.approx(2.2900, abs=5e-5)
    )
    assert stats.norm.ppf(confidence.clopper_pearson_lower(980, 1000, 0.001)) == (
        pytest.approx(1.7780, abs=5e-5)
    )
    assert confidence.clopper_pearson_lower(50_000, 100_000, 0.001) < 0.5  # abstain
    assert confidence.clopper_pearson_lower(0, 10, 0.001) == 0.0
    assert confidence.clopper_pearson_upper(10, 10, 0.001) == 1.0


def test_predict_p_value_vectors():
    assert confidence.binomial_p_value(553, 1000) == pytest.approx(0.00089, abs=5e-6)
    assert confidence.binomial_p_value(552, 1000) == pytest.approx(0.00112, abs=5e-6)


class Votes(nn.Module):
    """A classifier that ignores its input and cycles through a fixed list of labels, so the
    vote counts of PREDICT are exactly what the test chooses."""

    def __init__(self, labels: list[int]) -> None:
        super().__init__()
        self.labels = torch.tensor(labels)
        self.position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (torch.arange(x.shape[0]) + self.position) % len(self.labels)
        self.position += x.shape[0]
        return self.labels[index]


@pytest.mark.parametrize(("top", "expected"), [(553, 0), (552, ABSTAIN)])
def test_predict_decides_by_the_binomial_test(top, expected):
    labels = [0] * top + [1] * (1000 - top)
    smoothed = SmoothedClassifier(Votes(labels), num_classes=3, sigma=0.1)
    prediction = smoothed.predict(torch.zeros(1, 2), n=1000, alpha=0.001, batch_size=128)
    assert prediction.tolist() == [expected]


def test_certify_constant_classifier_reaches_the_largest_radius():
    constant = Halfspace(torch.zeros(3), 1.0)  # always class 1
    smoothed = SmoothedClassifier(constant, 2, sigma=0.5)
    result = smoothed.certify(torch.zeros(2, 3), n0=100, n=100_000, alpha=0.001)
    assert result.prediction.tolist() == [1, 1]
    assert result.radius.numpy() == pytest.approx(0.5 * 3.8115, abs=1e-4)
    assert result.votes.tolist() == [100_000, 100_000]


def test_certify_abstains_on_the_boundary():
    smoothed = SmoothedClassifier(Halfspace(torch.tensor([1.0, 0.0]), 0.0), 2, sigma=1.0)
    result = smoothed.certify(torch.zeros(1, 2), n0=100, n=20_000, alpha=0.001)
    assert result.prediction.tolist() == [ABSTAIN]
    assert result.radius.tolist() == [0.0]
    assert not bool(result.contains(torch.zeros(1, 2)).any())


# --- the linear-classifier oracle ---------------------------------------------------------


def _halfspace_case(dimension: int = 10, distance: float = 0.5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(dimension, generator=generator)
    x = torch.randn(1, dimension, generator=generator)
    b = float(distance * w.norm() - x[0] @ w)  # x is at ℓ2 distance `distance`, on the + side
    return Halfspace(w, b), x


def test_linear_oracle_radius_never_exceeds_the_distance():
    model, x = _halfspace_case()
    smoothed = SmoothedClassifier(model, 2, sigma=0.5)
    alpha, trials = 0.001, 200
    over = 0
    for trial in range(trials):
        smoothed.seed = trial
        result = smoothed.certify(x, n0=50, n=2_000, alpha=alpha, batch_size=4096)
        over += int(result.radius[0] > 0.5)
    assert over <= 2  # expected <= α·trials = 0.2


def test_linear_oracle_radius_approaches_the_distance():
    model, x = _halfspace_case()
    result = SmoothedClassifier(model, 2, sigma=0.5).certify(x, n0=100, n=100_000, alpha=0.001)
    assert result.prediction.tolist() == [1]
    assert 0.95 * 0.5 <= float(result.radius[0]) <= 0.5


def test_batch_layout_does_not_change_the_counts_total():
    model, x = _halfspace_case()
    inputs = x.repeat(5, 1) + 0.1 * torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    smoothed = SmoothedClassifier(model, 2, sigma=0.5)
    for batch_size in (7, 300, 10_000):
        votes = smoothed.votes(inputs, 300, batch_size=batch_size)
        assert votes.sum(1).tolist() == [300] * 5


def test_sequential_early_stopping_saves_samples_and_stays_sound():
    class Argmax(nn.Module):  # class = the largest coordinate
        def forward(self, x):
            return x

    easy = torch.tensor([[2.0, 0.0, 0.0]])  # exact radius: distance to x₁ = x₂, 2/√2
    hopeless = torch.zeros(1, 3)  # three classes at 1/3 each: can never certify
    smoothed = SmoothedClassifier(Argmax(), 3, sigma=0.5)
    inputs = torch.cat([easy, hopeless])
    result = smoothed.certify(inputs, n0=100, n=64_000, alpha=0.001, looks=4, target_radius=1.0)
    assert result.prediction.tolist() == [0, ABSTAIN]
    assert result.samples.tolist() == [8_000, 8_000]  # both decided at the first look
    assert 1.0 <= float(result.radius[0]) <= 2 / math.sqrt(2)
    full = smoothed.certify(inputs, n0=100, n=64_000, alpha=0.001)
    assert full.samples.tolist() == [64_000, 64_000]
    assert float(full.radius[0]) > float(result.radius[0])  # the price: a smaller radius


# --- anisotropic noise ------------------------------------------------------------------


def _noises(dimension: int = 16):
    generator = torch.Generator().manual_seed(3)
    return [
        DiagonalNoise(torch.rand(dimension, generator=generator) + 0.2),
        LowRankNoise(
            0.5 * torch.randn(dimension, 3, generator=generator),
            torch.rand(dimension, generator=generator) + 0.2,
        ),
        DCTNoise.low_frequency((4, 4), low=1.0, high=0.2),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_noise_samples_have_the_declared_covariance(index):
    noise = _noises()[index]
    shape = noise.shape
    samples = noise.sample_(
        torch.empty(200_000, *shape, dtype=torch.float64), torch.Generator().manual_seed(0)
    ).flatten(1)
    covariance = samples.T @ samples / samples.shape[0]
    whitened = noise.whitened_norm(samples.view(-1, *shape))
    # whitened samples are standard normal: E||Σ^{-1/2}ε||² = d
    assert float((whitened**2).mean()) == pytest.approx(samples.shape[1], rel=0.01)
    # the inscribed and equal-volume radii come from Σ's eigenvalues
    eigenvalues = torch.linalg.eigvalsh(covariance)
    assert noise.min_std() == pytest.approx(math.sqrt(float(eigenvalues[0])), rel=0.05)
    assert noise.volume_std() == pytest.approx(
        math.exp(float(torch.log(eigenvalues).mean()) / 2), rel=0.02
    )


def test_low_rank_whitened_norm_matches_the_dense_inverse():
    noise = _noises()[1]
    delta = torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dense = torch.linalg.solve(noise.covariance(), delta.T).T
    assert noise.whitened_norm(delta).numpy() == pytest.approx(
        (delta * dense).sum(1).sqrt().numpy(), rel=1e-10
    )


@pytest.mark.parametrize("index", [0, 1, 2])
def test_ellipsoid_certificate_contains_only_safe_points(index):
    noise = _noises()[index]
    generator = torch.Generator().manual_seed(index)
    w = torch.randn(16, generator=generator)
    x = torch.randn(1, *noise.shape, generator=generator)
    b = float(1.0 - x.flatten() @ w)  # wᵀx + b = 1 > 0
    model = Halfspace(w, b)
    result = SmoothedClassifier(model, 2, noise).certify(x, n0=100, n=50_000, alpha=0.001)
    assert result.prediction.tolist() == [1]
    # the exact certified set of a smoothed halfspace: wᵀδ > -1, i.e. whitened radius 1/||Σ^{1/2}w||
    exact = 1.0 / math.sqrt(float(_sigma_quadratic(noise, w)))
    assert 0.9 * exact <= float(result.whitened_radius[0]) <= exact
    directions = torch.randn(500, 16, dtype=torch.float64, generator=generator)
    on_boundary = directions / noise.whitened_norm(directions.view(-1, *noise.shape))[:, None]
    inside = 0.999 * float(result.whitened_radius[0]) * on_boundary
    assert bool(result.contains(inside[:1].view(1, *noise.shape)).all())
    assert bool((inside @ w.double() > -1.0).all())  # every contained point is classified 1
    assert result.equal_volume_radius[0] >= result.radius[0]


def _sigma_quadratic(noise, w: torch.Tensor) -> torch.Tensor:
    """``wᵀΣw`` by sampling-free means: Σ = E[εεᵀ] applied through the whitening map."""
    if isinstance(noise, DiagonalNoise):
        return (noise.std.flatten() ** 2 * w.double() ** 2).sum()
    if isinstance(noise, LowRankNoise):
        return w.double() @ noise.covariance() @ w.double()
    frequencies = noise._transform(w.double().view(noise.shape), inverse=False)
    return ((noise.std * frequencies) ** 2).sum()


def test_per_input_covariance_is_refused():
    x = torch.zeros(4, 3)
    per_input = DiagonalNoise(torch.ones(4, 3))
    with pytest.raises(PerInputNoiseError):
        SmoothedClassifier(Halfspace(torch.ones(3), 0.0), 2, per_input).certify(x, n=100)
    with pytest.raises(PerInputNoiseError):
        SmoothedClassifier(Halfspace(torch.ones(3), 0.0), 2, lambda x: 0.1 * x)
    with pytest.raises(ShapeError):
        SmoothedClassifier(Halfspace(torch.ones(3), 0.0), 2, DiagonalNoise(torch.ones(5))).certify(
            x, n=100
        )


def test_invalid_arguments():
    smoothed = SmoothedClassifier(Halfspace(torch.ones(3), 0.0), 2, sigma=0.5)
    with pytest.raises(InvalidArgumentError):
        smoothed.certify(torch.zeros(1, 3), alpha=1.5)
    with pytest.raises(InvalidArgumentError):
        SmoothedClassifier(Halfspace(torch.ones(3), 0.0), 2, sigma=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        smoothed.certify(torch.full((1, 3), float("nan")))


def test_model_mode_is_restored_and_eval_is_used():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return torch.zeros(x.shape[0], dtype=torch.long)

    model = Recorder().train()
    SmoothedClassifier(model, 2, sigma=0.1).predict(torch.zeros(1, 2), n=10)
    assert seen
    assert not any(seen)
    assert model.training


# --- regression, quantiles and preferences ----------------------------------------------


def test_regression_halfspace_oracle():
    sigma, epsilon = 0.5, 0.2
    x = torch.tensor([[0.3, 0.0], [-0.4, 1.0]])
    smoothed = SmoothedRegressor(Step(), sigma, output_range=(0.0, 1.0))
    for bound in ("bernstein", "hoeffding"):
        result = smoothed.certify(x, n=100_000, alpha=0.001, bound=bound)
        exact = stats.norm.cdf(x[:, 0].numpy() / sigma)
        assert bool((result.lower.numpy() <= exact).all() and (exact <= result.upper.numpy()).all())
        low, high = result.bounds(epsilon)
        worst_low = stats.norm.cdf((x[:, 0].numpy() - epsilon) / sigma)
        worst_high = stats.norm.cdf((x[:, 0].numpy() + epsilon) / sigma)
        assert bool((low.numpy() <= worst_low).all() and (worst_high <= high.numpy()).all())
        assert low.numpy() == pytest.approx(worst_low, abs=0.02)  # near equality
        assert high.numpy() == pytest.approx(worst_high, abs=0.02)


def test_regression_clips_outputs_into_the_range():
    class Wild(nn.Module):
        def forward(self, x):
            return 100 * x[:, 0]

    result = SmoothedRegressor(Wild(), 1.0, output_range=(-1.0, 1.0)).certify(
        torch.zeros(1, 2), n=2000
    )
    assert -1.0 <= float(result.lower[0]) <= float(result.upper[0]) <= 1.0


def test_quantile_indices_match_their_definition():
    for n in (1, 7, 50, 400):
        for q in (0.1, 0.5, 0.93):
            k = int(confidence.quantile_lower_index(n, q, 0.01))
            assert k == 0 or stats.binom.cdf(k - 1, n, q) <= 0.01
            assert k == n or stats.binom.cdf(k, n, q) > 0.01
            k_up = int(confidence.quantile_upper_index(n, q, 0.01))
            assert k_up == n + 1 or stats.binom.cdf(k_up - 1, n, q) >= 0.99
            assert k_up <= 1 or stats.binom.cdf(k_up - 2, n, q) < 0.99


def test_median_smoothing_of_a_linear_output():
    sigma, epsilon = 0.5, 0.3
    x = torch.tensor([[1.0, 2.0], [-3.0, 0.0]])
    result = SmoothedQuantile(FirstCoordinate(), sigma).certify(x, n=50_000, alpha=0.001)
    assert result.estimate.numpy() == pytest.approx(x[:, 0].numpy(), abs=0.02)
    low, high = result.bounds(epsilon)
    # h_q(x + δ) = x₁ + δ₁ for the median: its range over the ball is x₁ ± ε
    assert bool((low.numpy() <= x[:, 0].numpy() - epsilon).all())
    assert bool((high.numpy() >= x[:, 0].numpy() + epsilon).all())
    assert low.numpy() == pytest.approx(x[:, 0].numpy() - epsilon, abs=0.03)
    few = SmoothedQuantile(FirstCoordinate(), sigma).certify(x, n=5, alpha=0.001)
    assert bool(torch.isinf(few.bounds(epsilon)[0]).all())  # too few samples: no bound


def test_preference_flip_radius_oracle():
    sigma = 0.4
    first = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    second = torch.tensor([[0.0, 0.0], [1.5, 5.0]])
    result = certify_preference(FirstCoordinate(), first, second, sigma, n=100_000)
    assert result.prediction.tolist() == [1, 0]
    # r(a) - r(b) = ±d changes sign once the joint perturbation reaches d/√2
    exact = np.array([1 / math.sqrt(2), 1.5 / math.sqrt(2)])
    assert bool((result.radius.numpy() <= exact).all())
    assert result.radius.numpy() == pytest.approx(exact, rel=0.05)


def test_certified_accuracy_curve(tmp_path):
    model, x = _halfspace_case()
    inputs = x + 0.3 * torch.randn(20, 10, generator=torch.Generator().manual_seed(2))
    labels = (inputs @ model.w + model.b >= 0).long()
    result = SmoothedClassifier(model, 2, sigma=0.25).certify(inputs, n0=50, n=2000)
    curve = certified_accuracy(result, labels, np.linspace(0, 1, 11))
    assert curve.accuracy[0] == pytest.approx(float((result.prediction == labels).float().mean()))
    assert bool(np.all(np.diff(curve.accuracy) <= 0))
    assert bool(np.all(curve.lower <= curve.accuracy) and np.all(curve.accuracy <= curve.upper))
    plot_certified_accuracy({"σ = 0.25": curve}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_isotropic_noise_certificate_is_a_ball():
    noise = IsotropicNoise(0.5)
    delta = torch.tensor([[3.0, 4.0]])
    assert float(noise.whitened_norm(delta)[0]) == pytest.approx(10.0)
    assert noise.min_std() == noise.volume_std() == 0.5
