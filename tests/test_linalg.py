"""The spectral-norm certificate: oracles, soundness on adversarial spectra, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lipguard.errors import InvalidArgumentError, NonFiniteError, ShapeError
from lipguard.linalg import (
    cast_margin,
    gamma,
    max_spectral_norm,
    spectral_norm_certificate,
    unit_roundoff,
)
from tests.conftest import true_sigma

# The float64 SVD reference is itself accurate to a few units of 1e-16; a sound bound must not
# fall below it by more than that.
REFERENCE_SLACK = 1e-14


def assert_sound_and_tight(matrix: torch.Tensor, tightness: float = 1e-4, **kwargs) -> None:
    certificate = spectral_norm_certificate(matrix, **kwargs)
    sigma = true_sigma(matrix)
    assert certificate.upper >= sigma * (1 - REFERENCE_SLACK), (certificate, sigma)
    assert certificate.upper <= sigma * (1 + tightness) + 1e-300
    assert certificate.lower <= sigma * (1 + REFERENCE_SLACK)


def with_spectrum(singular_values: torch.Tensor, rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    left = torch.linalg.qr(torch.randn(rows, rows, generator=generator, dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(cols, cols, generator=generator, dtype=torch.float64)).Q
    rank = singular_values.numel()
    return (left[:, :rank] * singular_values) @ right[:, :rank].T


class TestOracles:
    def test_diagonal_matrix_gives_its_largest_entry(self):
        matrix = torch.diag(torch.tensor([0.5, -3.0, 2.0]))
        certificate = spectral_norm_certificate(matrix)
        assert 3.0 <= certificate.upper <= 3.0 * (1 + 1e-6)
        assert certificate.lower == pytest.approx(3.0)

    def test_rank_one_matrix_gives_product_of_norms(self):
        a, b = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0, 2.0])
        certificate = spectral_norm_certificate(torch.outer(a, b))
        assert 15.0 <= certificate.upper <= 15.0 * (1 + 1e-6)

    def test_orthogonal_matrix_has_norm_one(self):
        q = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64)).Q
        certificate = spectral_norm_certificate(q)
        assert 1.0 <= certificate.upper <= 1.0 + 1e-9

    def test_zero_matrix(self):
        certificate = spectral_norm_certificate(torch.zeros(4, 3))
        assert certificate.upper == 0.0
        assert certificate.method == "zero"

    def test_witness_vectors_realise_the_lower_bound(self):
        matrix = torch.randn(30, 20, dtype=torch.float64)
        certificate = spectral_norm_certificate(matrix)
        image = matrix @ certificate.right_vector
        assert float(torch.linalg.vector_norm(image)) == pytest.approx(certificate.lower)
        assert torch.allclose(image / certificate.lower, certificate.left_vector)
        assert certificate.gap >= 1.0

    def test_gamma_and_margins(self):
        assert gamma(1) == pytest.approx(2.0**-53)
        assert unit_roundoff(torch.float32) == 2.0**-24
        assert cast_margin(torch.float32, 16) == pytest.approx(2.0**-24 * 6)
        with pytest.raises(OverflowError):
            gamma(2**53)


class TestSoundness:
    def test_warm_start_orthogonal_to_the_top_vector(self):
        # Power iteration from e1 on diag(1, 100) sees a zero residual at the wrong eigenvalue.
        matrix = torch.diag(torch.tensor([1.0, 100.0]))
        assert_sound_and_tight(matrix, warm_start=torch.tensor([1.0, 0.0]))

    def test_hidden_top_direction_with_stale_warm_start(self):
        generator = torch.Generator().manual_seed(3)
        matrix = torch.randn(300, 200, generator=generator, dtype=torch.float64) / 30
        stale = spectral_norm_certificate(matrix).right_vector
        spike = torch.randn(200, generator=generator, dtype=torch.float64)
        spike -= (spike @ stale) * stale  # orthogonal to the warm start
        spiked = matrix + 50 * torch.outer(torch.randn(300, dtype=torch.float64), spike)
        assert_sound_and_tight(spiked, warm_start=stale)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
    def test_every_floating_dtype(self, dtype):
        matrix = (torch.randn(40, 24) / 5).to(dtype)
        assert_sound_and_tight(matrix)

    @pytest.mark.parametrize("magnitude", [1e-300, 1e-30, 1e30, 1e300])
    def test_extreme_magnitudes(self, magnitude):
        matrix = torch.randn(20, 30, dtype=torch.float64) * magnitude
        assert_sound_and_tight(matrix)

    def test_wide_and_tall_lanczos_sizes(self):
        for rows, cols in [(300, 100), (100, 300), (257, 257)]:
            assert_sound_and_tight(torch.randn(rows, cols) / math.sqrt(cols))

    @given(
        rows=st.integers(1, 90),
        cols=st.integers(1, 90),
        kind=st.sampled_from(["gaussian", "clustered", "orthogonal", "rank-deficient", "decaying"]),
        log_scale=st.floats(-20, 20),
        seed=st.integers(0, 2**16),
    )
    def test_bound_holds_on_structured_spectra(self, rows, cols, kind, log_scale, seed):
        rank = min(rows, cols)
        generator = torch.Generator().manual_seed(seed)
        if kind == "gaussian":
            matrix = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
        else:
            spectrum = {
                "clustered": 1.0
                + 1e-7 * torch.rand(rank, generator=generator, dtype=torch.float64),
                "orthogonal": torch.ones(rank, dtype=torch.float64),
                "rank-deficient": torch.cat(
                    [
                        torch.rand(max(rank // 3, 1), dtype=torch.float64, generator=generator)
                        + 0.5,
                        torch.zeros(rank - max(rank // 3, 1), dtype=torch.float64),
                    ]
                ),
                "decaying": 0.5 ** torch.arange(rank, dtype=torch.float64),
            }[kind]
            matrix = with_spectrum(spectrum, rows, cols, seed)
        matrix = (matrix * 10.0**log_scale).float()
        assert_sound_and_tight(matrix)

    @given(seed=st.integers(0, 2**16), steps=st.integers(1, 6))
    def test_bound_holds_along_a_training_trajectory(self, seed, steps):
        generator = torch.Generator().manual_seed(seed)
        matrix = torch.randn(80, 70, generator=generator) / 9
        certificate = spectral_norm_certificate(matrix)
        for _ in range(steps):
            matrix = matrix + 1e-2 * torch.sign(torch.randn(80, 70, generator=generator))
            certificate = spectral_norm_certificate(matrix, warm_start=certificate.right_vector)
            assert certificate.upper >= true_sigma(matrix) * (1 - REFERENCE_SLACK)


class TestErrors:
    def test_non_finite_entries(self):
        for bad in (math.nan, math.inf):
            matrix = torch.ones(3, 3)
            matrix[1, 2] = bad
            with pytest.raises(NonFiniteError):
                spectral_norm_certificate(matrix)

    def test_wrong_rank(self):
        with pytest.raises(ShapeError):
            spectral_norm_certificate(torch.ones(3))

    def test_integer_dtype(self):
        with pytest.raises(InvalidArgumentError):
            spectral_norm_certificate(torch.ones(3, 3, dtype=torch.int64))

    def test_errors_are_value_errors(self):
        with pytest.raises(ValueError, match="NaN or infinity"):
            spectral_norm_certificate(torch.full((2, 2), math.nan))


class TestBatchedMaximum:
    """``max_spectral_norm``: one sound bound on the largest σ_max of a batch."""

    @staticmethod
    def _batch(tops: list[float], size: int, seed: int) -> torch.Tensor:
        """Matrices with a top singular value each and a dense cluster just below it, which
        power iteration ranks poorly in a few steps."""
        generator = torch.Generator().manual_seed(seed)
        matrices = []
        for top in tops:
            q, _ = torch.linalg.qr(
                torch.randn(size, size, dtype=torch.float64, generator=generator)
            )
            values = top * (1 - 1e-4 * torch.rand(size, dtype=torch.float64, generator=generator))
            values[0] = top
            matrices.append(q @ torch.diag(values) @ q.T)
        return torch.stack(matrices)

    @given(seed=st.integers(0, 10_000), count=st.integers(1, 12), size=st.integers(2, 80))
    def test_bound_covers_the_largest_and_is_tight(self, seed, count, size):
        tops = [1.0 + 1e-5 * k for k in range(count)]
        batch = self._batch(tops, size, seed)
        exact = float(torch.linalg.matrix_norm(batch, 2).max())
        bound = max_spectral_norm(batch)
        assert exact <= bound <= exact * (1 + 1e-5)

    def test_a_member_the_ranking_misses_is_proven_separately(self):
        # White-box: matrix 0's top eigenvector is orthogonal to the ranking's fixed start
        # vector, so power iteration sees only its second eigenvalue and ranks two other
        # matrices first; its proof at their level fails and it takes the eigensolver ladder.
        size = 70
        start = torch.randn(
            3, size, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0x11B)
        )[0, :, 0]
        hidden = torch.randn(size, dtype=torch.float64)
        hidden -= (hidden @ start) / (start @ start) * start
        hidden /= torch.linalg.vector_norm(hidden)
        first = torch.eye(size, dtype=torch.float64) + torch.outer(hidden, hidden)  # λ_max = 2
        batch = torch.stack([first, *self._batch([1.5, 1.5], size, 0)])
        assert 2.0 <= max_spectral_norm(batch) <= 2.0 * (1 + 1e-5)

    def test_zero_and_wide_matrices(self):
        assert 0.0 <= max_spectral_norm(torch.zeros(3, 4, 5)) <= 1e-150
        wide = torch.randn(5, 3, 9, dtype=torch.float64)
        assert max_spectral_norm(wide) >= float(torch.linalg.matrix_norm(wide, 2).max())

    def test_refuses_non_finite_and_out_of_range(self):
        with pytest.raises(NonFiniteError):
            max_spectral_norm(torch.full((2, 2, 2), math.nan))
        with pytest.raises(InvalidArgumentError):
            max_spectral_norm(torch.full((2, 2, 2), 2.0**500, dtype=torch.float64))
