"""Layers with orthogonal factors: :class:`OrthogonalLinear` and :class:`SVDLinear`."""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from lipguard.nn._guard import EffectiveWeightCache, GuardedLinear


def orthonormal_columns(matrix: torch.Tensor) -> torch.Tensor:
    """The orthonormal factor ``Q`` of the QR decomposition of a tall matrix, signs fixed so that
    ``R`` has a non-negative diagonal (which makes the map smooth where ``matrix`` has full rank).
    Differentiable through ``torch.linalg.qr``; half-precision inputs are factorised in float32
    and the factor is rounded back (the layers' guard certifies the rounded matrix)."""
    q, r = torch.linalg.qr(matrix.to(torch.promote_types(matrix.dtype, torch.float32)))
    signs = torch.sign(r.diagonal())
    return (q * torch.where(signs == 0, torch.ones_like(signs), signs)).to(matrix.dtype)


def orthonormal(matrix: torch.Tensor) -> torch.Tensor:
    """A matrix of ``matrix``'s shape whose singular values are all 1 (semi-orthogonal)."""
    rows, cols = matrix.shape
    return orthonormal_columns(matrix) if rows >= cols else orthonormal_columns(matrix.T).T


class _ClippedFactorLayer(GuardedLinear):
    """Shared machinery: a raw weight built from factors, certified and shrunk if rounding
    pushed its spectral norm over the target."""

    def _init_parameters(self, initial: torch.Tensor) -> None:
        self._cache = EffectiveWeightCache()
        self._init_factors(initial)

    @abc.abstractmethod
    def _init_factors(self, initial: torch.Tensor) -> None:
        """Create the factors' parameters (see :meth:`GuardedLinear._init_parameters`)."""

    def _sources(self) -> tuple[torch.Tensor, ...]:
        return tuple(p for name, p in self.named_parameters() if name != "bias")

    @abc.abstractmethod
    def _raw_weight(self) -> torch.Tensor:
        """The weight before certification; its nominal spectral norm is ``<= lipschitz``."""

    def effective_weight(self) -> torch.Tensor:
        track = torch.is_grad_enabled() and any(p.requires_grad for p in self._sources())
        settings = (self.lipschitz,)
        if not track:
            cached = self._cache.lookup(self._sources(), settings)
            if cached is not None:
                return cached
        raw = self._raw_weight()
        weight = raw * self._guard.scale(raw, self.lipschitz, normalize=False)
        return weight if track else self._cache.store(self._sources(), weight, settings)


class OrthogonalLinear(_ClippedFactorLayer):
    """Drop-in for :class:`torch.nn.Linear` whose weight is ``lipschitz`` times a semi-orthogonal
    matrix: every singular value equals ``lipschitz`` (rectangular shapes allowed).

    The free parameter ``weight`` is mapped to its orthonormal QR factor (signs fixed), so any
    optimiser can train it. ``σ_max(W) <= lipschitz`` is guaranteed at every call: the factor is
    certified by :func:`lipguard.linalg.spectral_norm_certificate` and shrunk by the proven
    excess, which is only the float32 orthogonality error of QR (about 1e-6). All singular values
    then lie in ``[lipschitz·(1 - ~1e-5), lipschitz]``. A layer whose Jacobian is semi-orthogonal
    preserves gradient norms, which with :class:`GroupSort` makes networks whose gradient norm
    equals the bound.

    Cost: one QR factorisation and one certificate per call while the parameter requires a
    gradient; with frozen parameters the weight is cached.
    """

    def _init_factors(self, initial: torch.Tensor) -> None:
        wide = torch.empty_like(initial, dtype=torch.promote_types(initial.dtype, torch.float32))
        self.weight = nn.Parameter(nn.init.orthogonal_(wide).to(initial.dtype))

    def _raw_weight(self) -> torch.Tensor:
        return orthonormal(self.weight) * self.lipschitz


class SVDLinear(_ClippedFactorLayer):
    """Drop-in for :class:`torch.nn.Linear` parametrised as ``W = U·diag(s)·Vᵀ`` with ``|s| <= L``.

    ``U`` (``out × r``) and ``V`` (``in × r``), ``r = min(in, out)``, are the orthonormal QR
    factors of the free parameters ``left`` and ``right``; the free ``singular_values`` are
    clipped to ``[-lipschitz, lipschitz]`` (the SVD re-parametrisation of seed 003). The
    guarantee ``σ_max(W) <= lipschitz`` holds at every call: the assembled weight is certified
    and shrunk by the proven rounding excess. Initialised from the SVD of ``nn.Linear``'s
    initial weight, so it starts as the same function (singular values above the bound clipped).

    Clipping stops the gradient of a singular value beyond the bound; call :meth:`project_`
    after an optimiser step to move the parameter back to the bound (projected gradient descent).
    """

    def _init_factors(self, initial: torch.Tensor) -> None:
        nn.init.kaiming_uniform_(initial, a=math.sqrt(5))
        wide = torch.promote_types(initial.dtype, torch.float32)  # no half-precision SVD on CPU
        u, s, vh = torch.linalg.svd(initial.to(wide), full_matrices=False)
        self.left = nn.Parameter(u.to(initial.dtype))
        self.right = nn.Parameter(vh.T.contiguous().to(initial.dtype))
        self.singular_values = nn.Parameter(s.to(initial.dtype))

    def clipped_singular_values(self) -> torch.Tensor:
        """The singular values in use: ``singular_values`` clipped to ``[-L, L]``."""
        return self.singular_values.clamp(-self.lipschitz, self.lipschitz)

    def _raw_weight(self) -> torch.Tensor:
        u = orthonormal_columns(self.left)
        v = orthonormal_columns(self.right)
        return (u * self.clipped_singular_values()) @ v.T

    @torch.no_grad()
    def project_(self) -> SVDLinear:
        """Clip the ``singular_values`` parameter itself to ``[-L, L]`` (in place)."""
        self.singular_values.clamp_(-self.lipschitz, self.lipschitz)
        return self
