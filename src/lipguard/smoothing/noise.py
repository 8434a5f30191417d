"""Gaussian noise models ``N(0, Σ)`` for randomized smoothing.

Smoothing with ``N(0, Σ)`` is smoothing with ``N(0, I)`` after the change of variables
``x ↦ Σ^{-1/2} x``, so every isotropic certificate of radius ``R`` (in units of the noise)
becomes the ellipsoid ``{δ : ||Σ^{-1/2} δ||₂ <= R}``. A model describes ``Σ`` through:

- :meth:`GaussianNoise.sample_` — fill a buffer with noise;
- :meth:`GaussianNoise.whitened_norm` — ``||Σ^{-1/2} δ||₂`` (ellipsoid membership);
- :meth:`GaussianNoise.min_std` — ``sqrt(λ_min(Σ))``: the ellipsoid ``R`` contains the ℓ2
  ball of radius ``R·min_std`` (the inscribed radius);
- :meth:`GaussianNoise.volume_std` — ``det(Σ)^{1/(2d)}``: the ball of radius ``R·volume_std``
  has the ellipsoid's volume (the equal-volume radius used to compare anisotropic certificates).

``Σ`` must be fixed before the data are seen. Choosing it per input (e.g. optimising it for each
test point, as ANCER does) breaks the guarantee unless a memory-based post-processing step
resolves overlapping certificates; lipguard refuses that case (:func:`check_fixed`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from scipy import fft

from lipguard import _checks
from lipguard._deprecation import warn_renamed
from lipguard.errors import InvalidArgumentError, PerInputNoiseError, ShapeError


class GaussianNoise(ABC):
    """``N(0, Σ)`` on inputs of a fixed per-sample ``shape`` (``None``: any shape)."""

    shape: tuple[int, ...] | None

    @abstractmethod
    def sample_(self, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Fill ``out`` (shape ``(m, *shape)``) with ``m`` independent draws, in place."""

    @abstractmethod
    def whitened_norm(self, delta: torch.Tensor) -> torch.Tensor:
        """``||Σ^{-1/2} δ||₂`` for each row of ``delta`` (shape ``(m, *shape)``)."""

    @abstractmethod
    def min_std(self) -> float:
        """``sqrt(λ_min(Σ))``."""

    @abstractmethod
    def volume_std(self) -> float:
        """``det(Σ)^{1/(2d)}``, the geometric mean of the standard deviations."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""

    def describe(self) -> dict[str, Any]:
        """Deprecated spelling of :meth:`to_dict`."""
        warn_renamed("describe()", "to_dict()")
        return self.to_dict()

    @property
    def isotropic(self) -> bool:
        return False


class IsotropicNoise(GaussianNoise):
    """``N(0, σ² I)``: Cohen et al.'s noise. Its certificate is the ℓ2 ball of radius ``σ·R``."""

    def __init__(self, sigma: float, shape: tuple[int, ...] | None = None) -> None:
        self.sigma = _checks.positive_float("sigma", sigma)
        self.shape = tuple(shape) if shape is not None else None

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(out.shape, generator=generator, out=out).mul_(self.sigma)

    def whitened_norm(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1) / self.sigma

    def min_std(self) -> float:
        return self.sigma

    def volume_std(self) -> float:
        return self.sigma

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "isotropic", "sigma": self.sigma}

    @property
    def isotropic(self) -> bool:
        return True


def _std_tensor(name: str, std: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(std, dtype=torch.float64)
    _checks.finite_tensor(name, tensor)
    if tensor.dim() == 0 or bool((tensor <= 0).any()):
        raise InvalidArgumentError(f"{name} must be a tensor of positive standard deviations")
    return tensor


class DiagonalNoise(GaussianNoise):
    """``N(0, diag(std²))``: one standard deviation per input coordinate; ``std`` has the
    per-sample shape."""

    def __init__(self, std: torch.Tensor | np.ndarray) -> None:
        self.std = _std_tensor("std", std)
        self.shape = tuple(self.std.shape)
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _std(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.std.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(out.shape, generator=generator, out=out).mul_(self._std(out))

    def whitened_norm(self, delta: torch.Tensor) -> torch.Tensor:
        return (delta.to(torch.float64) / self.std.to(delta.device)).flatten(1).norm(dim=1)

    def min_std(self) -> float:
        return float(self.std.min())

    def volume_std(self) -> float:
        return float(torch.exp(torch.log(self.std).mean()))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "diagonal", "std_min": self.min_std(), "std_max": float(self.std.max())}


class LowRankNoise(GaussianNoise):
    """``N(0, diag(std²) + F Fᵀ)``: independent noise plus ``k`` correlated directions (the
    columns of ``factor``, ``d × k``), for inputs of per-sample ``shape`` with ``d`` entries."""

    def __init__(
        self,
        factor: torch.Tensor | np.ndarray,
        std: torch.Tensor | np.ndarray,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        self.factor = _checks.matrix("factor", torch.as_tensor(factor, dtype=torch.float64))
        self.diagonal_std = _std_tensor("std", std).reshape(-1)
        d = self.diagonal_std.numel()
        if self.factor.shape[0] != d:
            raise ShapeError(f"factor has {self.factor.shape[0]} rows; std has {d} entries")
        self.shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.shape) != d:
            raise ShapeError(f"shape {self.shape} does not have {d} entries")
        scaled = self.factor / self.diagonal_std[:, None]  # D^{-1/2} F
        self._capacitance = torch.eye(self.factor.shape[1], dtype=torch.float64) + scaled.T @ scaled
        self._capacitance_factor = torch.linalg.cholesky(self._capacitance)

    def covariance(self) -> torch.Tensor:
        return torch.diag(self.diagonal_std**2) + self.factor @ self.factor.T

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        m = out.shape[0]
        flat = torch.randn(out.shape, generator=generator, out=out).view(m, -1)
        flat.mul_(self.diagonal_std.to(out))
        mixing = torch.randn(
            (m, self.factor.shape[1]), generator=generator, dtype=out.dtype, device=out.device
        )
        flat.addmm_(mixing, self.factor.T.to(out))
        return out

    def whitened_norm(self, delta: torch.Tensor) -> torch.Tensor:
        # Woodbury: δᵀΣ⁻¹δ = ||D^{-1/2}δ||² - ||L⁻¹ (D^{-1/2}F)ᵀ D^{-1/2}δ||², L Lᵀ = I + FᵀD⁻¹F
        scaled = delta.to(torch.float64).flatten(1) / self.diagonal_std.to(delta.device)
        projected = scaled @ (self.factor / self.diagonal_std[:, None]).to(delta.device)
        solved = torch.linalg.solve_triangular(
            self._capacitance_factor.to(delta.device), projected.T, upper=False
        )
        return ((scaled**2).sum(1) - (solved**2).sum(0)).clamp_min(0).sqrt()

    def min_std(self) -> float:
        d = self.diagonal_std.numel()
        if d <= 4096:
            return math.sqrt(float(torch.linalg.eigvalsh(self.covariance())[0]))
        return float(self.diagonal_std.min())  # Σ ⪰ D: a valid (smaller) inscribed radius

    def volume_std(self) -> float:
        log_det = 2.0 * float(torch.log(self.diagonal_std).sum()) + 2.0 * float(
            torch.log(self._capacitance_factor.diagonal()).sum()
        )
        return math.exp(log_det / (2.0 * self.diagonal_std.numel()))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "low-rank", "rank": self.factor.shape[1], "volume_std": self.volume_std()}


def _dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C`` (``C x`` = ``scipy.fft.dct(x, norm="ortho")``)."""
    return torch.as_tensor(fft.dct(np.eye(size), norm="ortho", axis=0))


class DCTNoise(GaussianNoise):
    """``N(0, Cᵀ diag(std²) C)`` with ``C`` the orthonormal DCT over the last one or two axes:
    independent noise per *frequency*, e.g. strong at low frequencies and weak at high ones.
    ``std`` has the per-sample shape and is indexed by frequency."""

    def __init__(self, std: torch.Tensor | np.ndarray) -> None:
        self.std = _std_tensor("std", std)
        self.shape = tuple(self.std.shape)
        self._axes = self.shape[-2:] if len(self.shape) >= 2 else self.shape[-1:]
        self._matrices = [_dct_matrix(n) for n in self._axes]

    @classmethod
    def low_frequency(
        cls, shape: tuple[int, ...], low: float, high: float, cutoff: float = 0.25
    ) -> DCTNoise:
        """``std = low`` for frequencies below ``cutoff`` (a fraction of each transformed axis),
        ``high`` above."""
        low = _checks.positive_float("low", low)
        high = _checks.positive_float("high", high)
        axes = shape[-2:] if len(shape) >= 2 else shape[-1:]
        grids = torch.meshgrid(*[torch.arange(n) / n for n in axes], indexing="ij")
        inside = torch.stack(grids).amax(0) < cutoff
        std = torch.where(inside, low, high).to(torch.float64).expand(shape).clone()
        return cls(std)

    def _transform(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        for position, matrix in enumerate(self._matrices):
            axis = x.dim() - len(self._matrices) + position
            c = matrix.to(dtype=x.dtype, device=x.device)
            c = c.T if inverse else c
            x = torch.movedim(torch.movedim(x, axis, -1) @ c.T, -1, axis)
        return x

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        torch.randn(out.shape, generator=generator, out=out).mul_(self.std.to(out))
        out.copy_(self._transform(out, inverse=True))
        return out

    def whitened_norm(self, delta: torch.Tensor) -> torch.Tensor:
        frequencies = self._transform(delta.to(torch.float64), inverse=False)
        return (frequencies / self.std.to(delta.device)).flatten(1).norm(dim=1)

    def min_std(self) -> float:
        return float(self.std.min())

    def volume_std(self) -> float:
        return float(torch.exp(torch.log(self.std).mean()))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "dct", "std_min": self.min_std(), "std_max": float(self.std.max())}


def as_noise(sigma: float | GaussianNoise) -> GaussianNoise:
    """A noise model from a standard deviation (isotropic) or a :class:`GaussianNoise`."""
    if isinstance(sigma, GaussianNoise):
        return sigma
    if callable(sigma) or isinstance(sigma, list | tuple):
        raise PerInputNoiseError(
            "a noise chosen per input (a callable or a list of noises) voids the certificate: "
            "the smoothed classifier would differ from point to point, and overlapping "
            "certificates can contradict each other. Fix Σ for the dataset (e.g. fit it on "
            "training data) or use memory-based certification."
        )
    return IsotropicNoise(sigma)


def check_fixed(noise: GaussianNoise, inputs: torch.Tensor) -> None:
    """Check that ``inputs`` (a batch) match the noise's per-sample shape, and refuse a
    covariance given per input (an extra leading batch axis)."""
    if noise.shape is None:
        return
    sample_shape = tuple(inputs.shape[1:])
    if noise.shape == sample_shape:
        return
    if noise.shape == tuple(inputs.shape) and inputs.shape[0] > 1:
        raise PerInputNoiseError(
            f"the noise has the shape of the whole batch {noise.shape}: one Σ per input voids "
            "the certificate (see lipguard.smoothing.noise); fix Σ for the dataset"
        )
    raise ShapeError(f"inputs have per-sample shape {sample_shape}; the noise has {noise.shape}")
