"""Spectral normalisation with a proven bound: :class:`SpectralLinear`."""

from __future__ import annotations

import math

import torch
from torch import nn

from lipguard.nn._guard import GuardedLinear, safe_scale


class SpectralLinear(GuardedLinear):
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

    The forward pass applies exactly :meth:`effective_weight` (``F.linear(x, W, b)``), so the
    function the bound engine certifies, the exported :func:`~lipguard.nn.vanilla` layer and the
    layer itself are one and the same.

    Cost: the certificate (a float64 Gram matrix and a Cholesky factorisation, warm-started from
    the previous one) is recomputed only when the parameter changed, which ``torch.equal`` checks
    on every call. While the weights are frozen (evaluation, attacks, monitoring) the scaled
    weight is cached, so a call costs a plain linear layer plus that comparison; each optimiser
    step costs one certificate and two passes over the weight.

    Gradients are those of spectral normalisation, ``W = weight / σ̂`` with ``σ̂ = uᵀ·weight·v``
    from the certificate's singular vectors, so the parameter's scale stays put under training.
    Forward-mode AD, double backward (gradient penalties) and ``torch.func`` transforms over
    inputs work as for ``nn.Linear``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (it does not affect the Lipschitz constant).
        lipschitz: the guaranteed bound on ``σ_max(W)``; must be > 0.
        device, dtype: as for ``nn.Linear``.
    """

    #: the scaled weight while the parameter is frozen: (certificate, scale, weight)
    _frozen: tuple[object, float, torch.Tensor] | None = None

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
        if frozen is None or frozen[0] is not certificate or frozen[1] != scale:
            with torch.no_grad():
                frozen = (certificate, scale, self.weight.detach() * scale)
            self._frozen = frozen
        return frozen[2]
