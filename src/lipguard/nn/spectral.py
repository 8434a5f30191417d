"""Spectral normalisation with a proven bound: :class:`SpectralLinear`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipguard.nn._guard import SpectralGuard, safe_scale
from lipguard.nn.base import LipschitzLinear


class SpectralLinear(LipschitzLinear):
    """Drop-in for :class:`torch.nn.Linear` whose weight has spectral norm ``<= lipschitz``.

    The layer stores a free parameter ``weight`` (shape and initialisation of ``nn.Linear``) and
    applies ``W = weight · lipschitz / b``, where ``b >= σ_max(weight)`` is *proven* by
    :func:`lipguard.linalg.spectral_norm_certificate`. Unlike power-iteration spectral
    normalisation (``torch.nn.utils.parametrizations.spectral_norm``, whose estimate
    undershoots and lets ``σ_max`` exceed 1 during training), the guarantee

        ``σ_max(W) <= lipschitz``

    holds at every forward call, in training and in evaluation, for the weight exactly as stored:
    the bound includes every rounding error of its own computation and of rounding ``W`` to the
    parameter's dtype. It is tight: ``σ_max(W)`` is within about 1e-6 of ``lipschitz``.

    Cost: the certificate (a float64 Gram matrix and a Cholesky factorisation, warm-started from
    the previous one) is recomputed only when the parameter changed, which ``torch.equal`` checks
    on every call. While the weights are frozen (evaluation, attacks, monitoring) a call costs a
    plain linear layer plus that comparison; each optimiser step costs one certificate.

    Gradients are those of spectral normalisation, ``W = weight / σ̂`` with ``σ̂ = uᵀ·weight·v``
    from the certificate's singular vectors, so the parameter's scale stays put under training.
    The ``σ̂`` term is computed inside the layer's own matrix product (one extra input row), so
    it costs no extra pass over the weight. Forward-mode AD, double backward (gradient penalties)
    and ``torch.func`` transforms over inputs work as for ``nn.Linear``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (it does not affect the Lipschitz constant).
        lipschitz: the guaranteed bound on ``σ_max(W)``; must be > 0.
        device, dtype: as for ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        lipschitz: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features, out_features, bias=bias, lipschitz=lipschitz, device=device, dtype=dtype
        )
        self.weight = nn.Parameter(
            torch.empty(self.out_features, self.in_features, device=device, dtype=dtype)
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # torch.nn.Linear's initialisation
        self._guard = SpectralGuard()

    def _scale_and_vectors(self, dtype: torch.dtype) -> tuple[float, tuple | None]:
        """The normalising scale, and the certificate's ``(u, v)`` in ``dtype`` when the
        gradient of ``1/σ̂`` is needed (``None`` otherwise)."""
        certificate = self._guard.certificate(self.weight)
        scale = safe_scale(certificate, self.weight, self.lipschitz, normalize=True)
        needs_sigma = (
            torch.is_grad_enabled() and self.weight.requires_grad and certificate.lower > 0.0
        )
        return scale, self._guard.vectors(dtype) if needs_sigma else None

    @staticmethod
    def _normaliser(u: torch.Tensor, image_of_v: torch.Tensor, scale: float) -> torch.Tensor:
        """``scale·σ̂₀/σ̂`` with ``σ̂ = uᵀ(W v)``: value ``scale`` exactly, gradient of ``1/σ̂``."""
        sigma_hat = u @ image_of_v
        return (sigma_hat.detach() / sigma_hat) * scale

    def effective_weight(self) -> torch.Tensor:
        scale, vectors = self._scale_and_vectors(self.weight.dtype)
        if vectors is None:
            return self.weight * scale
        u, v = vectors
        return self.weight * self._normaliser(u, self.weight @ v, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        scale, vectors = self._scale_and_vectors(flat.dtype)
        if vectors is None:
            out = F.linear(flat, self.weight) * scale
        else:
            u, v = vectors
            stacked = F.linear(torch.cat([flat, v.unsqueeze(0)]), self.weight)
            out, image_of_v = stacked.split([flat.shape[0], 1])
            out = out * self._normaliser(u, image_of_v.squeeze(0), scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)
