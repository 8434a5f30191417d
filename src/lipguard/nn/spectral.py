"""Spectral normalisation with a proven bound: :class:`SpectralLinear`."""

from __future__ import annotations

import math

import torch
from torch import nn

from lipguard.errors import InvalidArgumentError
from lipguard.nn._guard import GuardedLinear, safe_scale

#: default ``recertify_tolerance``: the amortised bound may be up to 1% above the full one
DEFAULT_RECERTIFY_TOLERANCE = 1e-2


class SpectralLinear(GuardedLinear):
    """Drop-in for :class:`torch.nn.Linear` whose weight has spectral norm ``<= lipschitz``.

    The layer stores a free parameter ``weight`` (shape and initialisation of ``nn.Linear``) and
    applies ``W = weight · lipschitz / b``, where ``b >= σ_max(weight)`` is *proven* for the
    parameter as it is at that call. Unlike power-iteration spectral normalisation
    (``torch.nn.utils.parametrizations.spectral_norm``, whose estimate undershoots and lets
    ``σ_max`` exceed 1 during training), the guarantee

        ``σ_max(W) <= lipschitz``

    holds at every forward call, in training and in evaluation, for the weight exactly as stored
    (float64, float32, float16 or bfloat16, subnormals included): the bound includes every
    rounding error of its own computation and of rounding ``W`` to the parameter's dtype. The
    only assumptions are IEEE round-to-nearest arithmetic and LAPACK/BLAS kernels whose errors
    obey the standard (Higham) bounds; see :mod:`lipguard.linalg`.

    ``b`` comes from one of two proofs (see :class:`~lipguard.nn._guard.SpectralGuard`):

    * a *full* certificate (:func:`lipguard.linalg.spectral_norm_certificate`'s proof: a
      float64 Gram matrix, a warm-started Lanczos estimate and a Cholesky factorisation),
      tight: ``σ_max(W)`` is within about 1e-6 of ``lipschitz``;
    * an *amortised* one, ``b = b_c + ||weight - W_c||_F`` with ``b_c`` the last full certificate
      of the matrix ``W_c`` (triangle inequality, the Frobenius norm proven in float64), used
      while that slack is at most ``recertify_tolerance · b_c``. It costs one pass over the
      weight; ``σ_max(W)`` then stays within ``recertify_tolerance`` (worst case about three times
      that) of ``lipschitz``.

    Cost: nothing is recomputed while the parameter is unchanged (``torch.equal`` with a copy, on
    every call); while the weights are frozen (evaluation, attacks, monitoring) the scaled weight
    is cached, so a call costs a plain linear layer plus that comparison. After a change, the
    amortised bound costs a few passes over the weight, a full certificate
    ``O(k²·max(m, n))`` float64 work (``k = min(m, n)``): about one and a half float64 ``k × k``
    matrix products. An optimiser step moves an ``n × n`` weight by ``||Δ||_F`` of order
    ``lr·n`` (Adam), a large fraction of ``σ_max`` at usual learning rates (at ``lr=1e-3``, 5-90%
    for ``n`` = 256-1024), so ordinary training certifies in full at every step and costs several
    times ``nn.Linear`` (``docs/benchmarks/layers.md``); the amortised bound pays off for small
    steps (fine-tuning, decayed learning rates, small ``.data`` edits).

    Gradients are those of spectral normalisation, ``W = weight / σ̂`` with ``σ̂ = uᵀ·weight·v``
    from the certificate's singular vectors, so the parameter's scale stays put under training.
    Forward-mode AD, double backward (gradient penalties) and ``torch.func`` transforms over
    inputs work as for ``nn.Linear``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (it does not affect the Lipschitz constant).
        lipschitz: the guaranteed bound on ``σ_max(W)``; must be > 0.
        device: as for ``nn.Linear``.
        dtype: as for ``nn.Linear``.
        recertify_tolerance: relative slack of the amortised bound above the last full
            certificate before a new full one is computed (``>= 0``; ``0`` certifies every
            change in full). Trades tightness for cost, never soundness.
    """

    #: the scaled weight while the parameter is frozen: (certificate, scale, weight, its version)
    _frozen: tuple[object, float, torch.Tensor, int] | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        lipschitz: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        recertify_tolerance: float = DEFAULT_RECERTIFY_TOLERANCE,
    ) -> None:
        super().__init__(
            in_features, out_features, bias=bias, lipschitz=lipschitz, device=device, dtype=dtype
        )
        self.recertify_tolerance = recertify_tolerance

    @property
    def recertify_tolerance(self) -> float:
        """Relative slack of the amortised bound before a full certificate (``>= 0``; ``0``
        certifies every change in full). May be changed at any time."""
        return self._guard.tolerance

    @recertify_tolerance.setter
    def recertify_tolerance(self, value: float) -> None:
        try:
            tolerance = float(value)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"recertify_tolerance must be a number >= 0, got {value!r}"
            ) from None
        if not math.isfinite(tolerance) or tolerance < 0.0:
            raise InvalidArgumentError(
                f"recertify_tolerance must be finite and >= 0, got {value!r}"
            )
        self._guard.tolerance = tolerance

    def _init_parameters(self, initial: torch.Tensor) -> None:
        self.weight = nn.Parameter(initial)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # torch.nn.Linear's initialisation

    def effective_weight(self) -> torch.Tensor:
        certificate = self._guard.certificate(self.weight)
        scale = safe_scale(certificate, self.weight, self.lipschitz, normalize=True)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            if certificate.lower == 0.0:
                return self.weight * scale
            # The value is exactly fl(weight·scale) (σ̂₀/σ̂ is 1.0 in floating point); the
            # gradient is that of weight·scale·σ̂₀/σ̂, spectral normalisation's.
            dtype = torch.promote_types(self.weight.dtype, torch.float32)  # no underflow
            u, v = self._guard.vectors(dtype)
            sigma_hat = u @ (self.weight.to(dtype) @ v)
            return self.weight * scale * (sigma_hat.detach() / sigma_hat)
        frozen = self._frozen
        if (
            frozen is None
            or frozen[0] is not certificate
            or frozen[1] != scale
            or frozen[2]._version != frozen[3]  # the weight handed out was edited in place
        ):
            with torch.no_grad():
                weight = self.weight.detach() * scale
            frozen = (certificate, scale, weight, weight._version)
            self._frozen = frozen
        return frozen[2]
