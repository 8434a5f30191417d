"""The soundness guard shared by lipguard's linear layers.

A layer computes a raw weight ``W`` (the parameter itself, an orthogonalised matrix, an SVD
product, ...), and :class:`SpectralGuard` turns a proven bound ``σ_max(W) <= b`` into a scale
``s`` such that the weight the layer uses, ``W·s`` (rounded to the weight's dtype), has spectral
norm ``<= lipschitz``. The certificate is cached together with an exact copy of the matrix it was
computed for and reused while ``torch.equal`` says the matrix is unchanged; any change, through
an optimiser, ``.data`` or ``load_state_dict``, triggers a new certificate: a full one, or, when
the guard has a ``tolerance`` and the matrix moved little since the last full one, the cheaper
proven bound ``b_c + ||W - W_c||_F``.
"""

from __future__ import annotations

import abc

import torch

from lipguard.errors import InvalidArgumentError
from lipguard.linalg import (
    U64,
    SpectralNormCertificate,
    cast_margin,
    spectral_norm_certificate,
    underflow_margin,
)
from lipguard.nn._amortised import amortised_certificate, drift_bound
from lipguard.nn.base import LipschitzLinear

#: at most this many changes between two drift tests while they keep failing
_MAX_BACKOFF = 32


class SpectralGuard:
    """Caches the spectral-norm certificate of one weight matrix and keeps it sound as the matrix
    changes.

    Every call to :meth:`certificate` returns a certificate whose ``upper`` bounds ``σ_max`` of
    the matrix *as it is at that call*, whatever changed it (an optimiser, ``.data``,
    ``load_state_dict``, a dtype conversion):

    * unchanged since the last call (``torch.equal`` with an exact copy): the same certificate;
    * otherwise, with ``W_c`` the matrix of the last *full* certificate ``b_c`` (an exact
      float64 copy is kept): ``σ_max(W) <= b_c + ||W - W_c||_F`` (triangle inequality, the
      Frobenius norm proven by :func:`~lipguard.nn._amortised.drift_bound`). If that slack is at
      most ``tolerance · b_c``, this *amortised* certificate is returned (one pass over the
      weight, no factorisation);
    * else a full certificate (:func:`~lipguard.linalg.spectral_norm_certificate`, warm-started
      from the previous witness) becomes the new ``W_c``.

    When a single change already exceeds the tolerance (large optimiser steps), the drift test
    would be wasted work: after consecutive failed tests the next 0, 1, 3, 7, ... (at most
    ``_MAX_BACKOFF - 1``) changes are certified in full without it. This only decides *which*
    sound certificate is computed, never whether one is.

    ``tolerance = 0`` certifies every change in full. The amortised bound is sound but looser
    than a full one: ``b_c + drift <= (1 + tolerance)·b_c`` while
    ``σ_max(W) >= σ_max(W_c) - drift``, so a layer that normalises by it keeps
    ``σ_max >= lipschitz·(1 - 2·tolerance)/(1 + tolerance)`` (about ``1 - 3·tolerance``;
    typically much closer, as the drift rarely lowers ``σ_max``).

    Attributes:
        tolerance: relative slack accepted before a full certificate (``>= 0``).
        full_certificates: how many full certificates were computed (monitoring, tests).
        amortised_certificates: how many changes were certified by the drift bound instead.
    """

    def __init__(self, tolerance: float = 0.0) -> None:
        self.tolerance = tolerance
        self.full_certificates = 0
        self.amortised_certificates = 0
        self._snapshot: torch.Tensor | None = None  # exact copy of the last matrix seen
        self._certificate: SpectralNormCertificate | None = None  # ... and its certificate
        self._base: tuple[torch.Tensor, SpectralNormCertificate] | None = None  # W_c (f64), b_c
        self._vectors: tuple[SpectralNormCertificate, torch.Tensor, torch.Tensor] | None = None
        self._backoff = 0  # after failed drift tests, skip the next 1, 2, 4, ... changes
        self._skip = 0

    def certificate(self, weight: torch.Tensor) -> SpectralNormCertificate:
        """A sound certificate for ``weight`` as it is now (see the class docstring)."""
        matrix = weight.detach()
        snapshot = self._snapshot
        if (
            snapshot is not None
            and self._certificate is not None
            and _same_layout(snapshot, matrix)
            and torch.equal(snapshot, matrix)
        ):
            return self._certificate
        certificate = None
        base = self._base
        if self._skip > 0:
            self._skip -= 1
        elif self.tolerance > 0.0 and base is not None and _same_layout(base[0], matrix, False):
            current = matrix.to(torch.float64)  # non-finite entries: drift is inf
            drift = drift_bound(current, base[0])
            if drift <= self.tolerance * base[1].upper:
                certificate = amortised_certificate(base[1], drift, current)
                self.amortised_certificates += 1
                self._backoff = 0
            else:  # steps too large for the tolerance: test less often (a cost heuristic only)
                self._backoff = min(2 * self._backoff or 1, _MAX_BACKOFF)
                self._skip = self._backoff - 1
        if certificate is None:
            warm = self._certificate.right_vector if self._certificate is not None else None
            certificate = spectral_norm_certificate(matrix, warm_start=warm)
            self.full_certificates += 1
            self._base = (matrix.to(torch.float64, copy=True), certificate)
        self._snapshot = matrix.clone()
        self._certificate = certificate
        return certificate

    def scale(self, weight: torch.Tensor, lipschitz: float, *, normalize: bool) -> float:
        """The scale of :func:`safe_scale` for ``weight``'s current certificate."""
        return safe_scale(self.certificate(weight), weight, lipschitz, normalize=normalize)

    def vectors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The current certificate's ``(left, right)`` singular vectors in ``dtype``."""
        certificate = self._certificate
        if certificate is None:
            raise RuntimeError("no certificate yet: call certificate(weight) first")
        cached = self._vectors
        if cached is None or cached[0] is not certificate or cached[1].dtype != dtype:
            left = certificate.left_vector.to(dtype)
            cached = (certificate, left, certificate.right_vector.to(dtype))
            self._vectors = cached
        return cached[1], cached[2]


def _same_layout(a: torch.Tensor, b: torch.Tensor, dtype: bool = True) -> bool:
    return a.shape == b.shape and a.device == b.device and (not dtype or a.dtype == b.dtype)


def safe_scale(
    certificate: SpectralNormCertificate,
    weight: torch.Tensor,
    lipschitz: float,
    *,
    normalize: bool,
) -> float:
    """A scale ``s`` with ``σ_max(s·weight) <= lipschitz`` and ``σ_max(fl(weight·s)) <= lipschitz``.

    ``normalize=True`` rescales to the target (``s = lipschitz / b``, spectral normalisation);
    ``normalize=False`` only shrinks (``s = min(1, lipschitz / b)``). The certified bound ``b`` is
    inflated by :func:`~lipguard.linalg.cast_margin` (relative rounding of each product) and the
    target lowered by :func:`~lipguard.linalg.underflow_margin` (absolute rounding of products
    that land in the dtype's subnormal range), so rounding the product to the weight's dtype
    cannot push it over the target.

    Raises:
        InvalidArgumentError: ``lipschitz`` is so small that the dtype's subnormal rounding alone
            could take half of it.
    """
    available = lipschitz - underflow_margin(weight.dtype, weight.numel())
    if available <= lipschitz / 2:
        raise InvalidArgumentError(
            f"lipschitz={lipschitz:g} is too small for a {tuple(weight.shape)} {weight.dtype} "
            f"weight: rounding its entries to {weight.dtype} alone can move the spectral norm "
            f"by {lipschitz - available:.3g}; use a wider dtype or a larger bound"
        )
    if certificate.upper == 0.0:
        return available if normalize else 1.0
    rank = min(weight.shape)
    safe = certificate.upper * (1.0 + cast_margin(weight.dtype, rank)) * (1.0 + 4.0 * U64)
    scale = available / safe
    return scale if normalize else min(1.0, scale)


class EffectiveWeightCache:
    """Remembers a layer's effective weight for the exact parameter values and settings it came
    from.

    Used when no gradient is needed (inference, evaluation, attacks on inputs with frozen
    parameters), where recomputing an orthogonalisation on every call would be wasted work. The
    key is every tensor the weight is computed from (compared with ``torch.equal``, so ``.data``
    edits are seen) and every setting (e.g. the layer's ``lipschitz``, compared with ``==``).
    """

    def __init__(self) -> None:
        self._sources: tuple[torch.Tensor, ...] = ()
        self._settings: tuple[object, ...] = ()
        self._weight: torch.Tensor | None = None
        self._version = 0

    def lookup(
        self, sources: tuple[torch.Tensor, ...], settings: tuple[object, ...] = ()
    ) -> torch.Tensor | None:
        if self._weight is None or len(sources) != len(self._sources):
            return None
        if settings != self._settings or self._weight._version != self._version:
            return None  # other settings, or the weight handed out was edited in place
        for cached, current in zip(self._sources, sources, strict=True):
            if (
                cached.shape != current.shape
                or cached.dtype != current.dtype
                or cached.device != current.device
                or not torch.equal(cached, current.detach())
            ):
                return None
        return self._weight

    def store(
        self,
        sources: tuple[torch.Tensor, ...],
        weight: torch.Tensor,
        settings: tuple[object, ...] = (),
    ) -> torch.Tensor:
        self._sources = tuple(source.detach().clone() for source in sources)
        self._settings = settings
        self._weight = weight.detach()
        self._version = self._weight._version
        return self._weight


class GuardedLinear(LipschitzLinear):
    """A :class:`LipschitzLinear` with :class:`torch.nn.Linear`'s constructor whose weight goes
    through a :class:`SpectralGuard` (``self._guard``).

    Subclasses create their parameters in :meth:`_init_parameters`, which runs after the base
    class has drawn the bias.
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
        self._guard = SpectralGuard()
        self._init_parameters(
            torch.empty(self.out_features, self.in_features, device=device, dtype=dtype)
        )

    @abc.abstractmethod
    def _init_parameters(self, initial: torch.Tensor) -> None:
        """Create the layer's parameters; ``initial`` is an uninitialised ``(out, in)`` tensor
        on the layer's device, in its dtype."""
