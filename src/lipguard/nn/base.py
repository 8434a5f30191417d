"""The common interface of lipguard's linear layers."""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from lipguard import _checks
from lipguard.linalg import spectral_norm_certificate
from lipguard.results import LipschitzBound


class LipschitzSetting:
    """The ``lipschitz`` attribute shared by lipguard's constrained layers."""

    _lipschitz: float

    @property
    def lipschitz(self) -> float:
        """The guaranteed bound (``σ_max`` of a dense layer's effective weight, the operator norm
        of a convolution); may be changed at any time (validated: finite and > 0), and the next
        call applies the new bound."""
        return self._lipschitz

    @lipschitz.setter
    def lipschitz(self, value: float) -> None:
        self._lipschitz = _checks.positive_float("lipschitz", value)


class LipschitzLinear(LipschitzSetting, nn.Module, metaclass=abc.ABCMeta):
    """An affine map ``x ↦ W x + b`` whose weight satisfies ``σ_max(W) <= lipschitz``.

    Subclasses define :meth:`effective_weight`, the weight the layer really applies; the
    guarantee is about that matrix exactly as stored, rounding included. Inputs and outputs have
    the shapes of :class:`torch.nn.Linear`: ``(*, in_features) -> (*, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        lipschitz: float,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        self.in_features = _checks.positive_int("in_features", in_features)
        self.out_features = _checks.positive_int("out_features", out_features)
        self.lipschitz = lipschitz
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
            bound = 1.0 / math.sqrt(in_features)  # torch.nn.Linear's initialisation
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

    @abc.abstractmethod
    def effective_weight(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` weight applied by :meth:`forward`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def certified_lipschitz(self) -> LipschitzBound:
        """A sound ℓ2 bound on this layer's Lipschitz constant, proven independently on the
        effective weight as stored (so it also checks the layer's own construction)."""
        certificate = spectral_norm_certificate(self.effective_weight().detach())
        return LipschitzBound(
            value=certificate.upper,
            norm=2.0,
            method="spectral-certificate",
            margin=certificate.margin,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, lipschitz={self.lipschitz:g}"
        )
