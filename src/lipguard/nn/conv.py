"""Convolutions with a proven operator norm: :class:`SpectralConv2d`, :class:`AOLConv2d` and the
residual :class:`SLLConv2d`.

Each layer's guarantee is about the operator norm of the *whole* convolution — zero padding and
stride included, not the reshaped kernel (whose spectral norm can be smaller than the
operator's: torch's ``spectral_norm`` on a 3×3 convolution reaches 1.56, pytorch#99149) — for
the kernel exactly as stored, after rounding. The forward pass applies exactly the kernel the
proof is about (``F.conv2d(x, effective_weight(), bias, ...)``), so the layer, its
:func:`~lipguard.nn.vanilla` export and what the bound engine certifies are one function.

For 1-Lipschitz downsampling use ``torch.nn.PixelUnshuffle`` (a permutation of entries: norm 1
in every ℓp, invertible) or a strided :class:`AOLConv2d`; the bound engine knows both.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from lipguard import _checks
from lipguard.convolution import conv_spectral_norm
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.linalg import U64, unit_roundoff
from lipguard.nn._guard import EffectiveWeightCache
from lipguard.nn._kernel_proofs import fit_kernel, gram_blocks, schur_bound, schur_row_sums
from lipguard.nn.base import LipschitzSetting
from lipguard.results import LipschitzBound

Padding = int | tuple[int, int] | str


@dataclass(frozen=True)
class _Geometry:
    """A convolution's kernel and geometry (:class:`lipguard.convolution.ConvGeometry`)."""

    weight: torch.Tensor
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Refuse NaN/inf parameters with a clear error (no proof can cover them)."""
    for tensor in tensors:
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise InvalidArgumentError(
                f"{name}: its parameters hold NaN or infinity (a diverged optimiser step or a "
                "bad edit); no bound can be proven for them"
            )


def _with_gradient_of(value: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
    """``value`` exactly (``graph - graph`` is zero), with the gradient of ``graph``.

    The difference is taken in ``graph``'s own dtype and cast after: casting ``graph`` first
    could overflow a half-precision dtype to inf, and ``inf - inf`` would make the value NaN."""
    return value + (graph - graph.detach()).to(value.dtype)


class LipschitzConv2d(LipschitzSetting, nn.Module, metaclass=abc.ABCMeta):
    """A 2-D convolution ``x ↦ conv2d(x, K) + b`` (zero padding) whose operator norm is proven
    ``<= lipschitz`` in ℓ2, for the kernel ``K = effective_weight()`` exactly as stored.

    The constructor mirrors :class:`torch.nn.Conv2d` (``dilation=1``, ``groups=1``,
    ``padding_mode="zeros"``); inputs are ``(N, C, H, W)`` or ``(C, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: Padding = 0,
        bias: bool = True,
        lipschitz: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = _checks.positive_int("in_channels", in_channels)
        self.out_channels = _checks.positive_int("out_channels", out_channels)
        self.kernel_size: tuple[int, int] = _pair(kernel_size)
        self.stride: tuple[int, int] = _pair(stride)
        for name, pair in (("kernel_size", self.kernel_size), ("stride", self.stride)):
            for size in pair:
                _checks.positive_int(name, size)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise InvalidArgumentError(f"padding must be 'same', 'valid' or sizes: {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise InvalidArgumentError("padding='same' needs stride 1 (as for nn.Conv2d)")
            self.padding: tuple[int, int] | str = padding
        else:
            self.padding = _pair(padding)
            if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in self.padding):
                raise InvalidArgumentError(f"padding must be >= 0, got {padding!r}")
        self.lipschitz = lipschitz
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, *self.kernel_size, device=device, dtype=dtype)
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's initialisation
        if bias:
            fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
            self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        else:
            self.register_parameter("bias", None)
        self._cache = EffectiveWeightCache()

    @abc.abstractmethod
    def effective_weight(self) -> torch.Tensor:
        """The ``(out_channels, in_channels, k_h, k_w)`` kernel :meth:`forward` applies."""

    @abc.abstractmethod
    def certified_lipschitz(self) -> LipschitzBound:
        """A sound ℓ2 bound on the layer's operator norm, proven again from the stored effective
        kernel (so it also checks the layer's own construction)."""

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__} expects inputs of shape (N, {self.in_channels}, H, W) or "
                f"({self.in_channels}, H, W), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            f"lipschitz={self.lipschitz:g}"
        )


class SpectralConv2d(LipschitzConv2d):
    """Drop-in for :class:`torch.nn.Conv2d` whose convolution has operator norm ``<= lipschitz``
    on every input of up to ``input_size`` pixels.

    The layer applies ``K = weight · s`` with ``s`` from a *proven* bound ``b`` of the whole
    zero-padded, strided convolution: its polyphase frequency responses on the smallest exact
    circular grid for ``input_size``
    (:func:`lipguard.convolution.conv_spectral_norm`, Sedghi et al. 2019, every rounding error
    included), so the *circular* convolution on that grid has norm within about 1e-6 of
    ``lipschitz`` — not the reshaped-kernel estimate of power-iteration spectral normalisation.
    The zero-padded convolution itself can be smaller (the border sees fewer taps: far below
    ``lipschitz`` on inputs not much larger than the kernel, within 0.3% on 32×32
    images with a 3×3 kernel, measured). The zero-padded
    convolution on a smaller input is a restriction of the same circular one, so the guarantee
    covers every input of at most ``input_size``; larger inputs are refused.

    Gradients are those of spectral normalisation (``K = weight/σ̂``, ``σ̂ = ⟨u, conv(v)⟩`` with
    ``u, v`` from one power-iteration step per training call, warm-started). The proof is
    recomputed when the weight changed (``torch.equal``), so a training step costs one
    certificate; with frozen weights the kernel is cached.

    Args:
        in_channels: as for :class:`torch.nn.Conv2d`.
        out_channels: as for :class:`torch.nn.Conv2d`.
        kernel_size: as for :class:`torch.nn.Conv2d`.
        input_size: the largest ``(H, W)`` (or ``H`` for square inputs) the layer accepts.
        stride: as for :class:`torch.nn.Conv2d`.
        padding: as for :class:`torch.nn.Conv2d`.
        bias: as for :class:`torch.nn.Conv2d`.
        lipschitz: the guaranteed bound on the convolution's ℓ2 operator norm; must be > 0.
        device: as for :class:`torch.nn.Conv2d`.
        dtype: as for :class:`torch.nn.Conv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        input_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: Padding = 0,
        bias: bool = True,
        lipschitz: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, bias, lipschitz, device, dtype
        )
        self.input_size: tuple[int, int] = _pair(input_size)
        for size in self.input_size:
            _checks.positive_int("input_size", size)
        self.out_size = self._output_size(self.input_size)
        self._vector: torch.Tensor | None = None  # power-iteration input vector (1, C, H, W)

    def _output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        if self.padding == "same":
            return size
        padding = (0, 0) if self.padding == "valid" else self.padding
        assert not isinstance(padding, str)
        out = tuple(
            (n + 2 * p - k) // s + 1
            for n, p, k, s in zip(size, padding, self.kernel_size, self.stride, strict=True)
        )
        if min(out) < 1:
            raise ShapeError(f"input_size {size} is smaller than the kernel {self.kernel_size}")
        return (out[0], out[1])

    def _prove(self, kernel: torch.Tensor) -> float:
        # out_size from the *current* input_size: the attribute may have been changed
        geometry = _Geometry(
            kernel.detach().to(torch.float64),
            self.stride,
            self.padding,
            (1, 1),
            1,
            (self.in_channels, *self.input_size),
            (self.out_channels, *self._output_size(self.input_size)),
        )
        return conv_spectral_norm(geometry)

    def _fitted(self) -> tuple[torch.Tensor, float]:
        # the proof depends on the geometry as well: a kernel fitted for a smaller input_size
        # (or another stride/padding) must not be reused after those attributes change
        settings = (self.lipschitz, self.input_size, self.stride, self.padding)
        cached = self._cache.lookup((self.weight,), settings)
        scale = getattr(self, "_scale", None)
        if cached is not None and scale is not None:
            return cached, scale
        _check_finite(type(self).__name__, self.weight)
        stored, scale, _ = fit_kernel(
            self.weight, self._prove(self.weight), self.lipschitz, normalize=True, prove=self._prove
        )
        self._scale = scale
        return self._cache.store((self.weight,), stored, settings), scale

    def effective_weight(self) -> torch.Tensor:
        stored, scale = self._fitted()
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return stored
        sigma = self._sigma_hat()
        # the gradient's graph in float32 or wider, its scale capped to the dtype's range: the
        # scale of a zero or tiny kernel (up to ~1e160) overflowed to inf there, and inf·0 made
        # the forward value NaN
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        weight = self.weight.to(dtype) * min(scale, torch.finfo(dtype).max)
        if float(sigma.detach()) == 0.0:
            return _with_gradient_of(stored, weight)
        return _with_gradient_of(stored, weight * (sigma.detach() / sigma))

    def _sigma_hat(self) -> torch.Tensor:
        """``⟨u, conv(v)⟩`` after one warm-started power-iteration step (differentiable in the
        weight; ``u``, ``v`` are constants)."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        weight = self.weight.to(dtype)
        shape = (1, self.in_channels, *self.input_size)
        vector = self._vector
        if vector is None or vector.dtype != dtype or tuple(vector.shape) != shape:
            # a fixed, generic start (no random draw: valid inside vmap, reproducible)
            count = self.in_channels * self.input_size[0] * self.input_size[1]
            vector = torch.cos(torch.arange(count, dtype=dtype) * 2.399963).reshape(shape)
        vector = vector.to(weight.device)
        frozen = weight.detach()

        def convolve(v: torch.Tensor) -> torch.Tensor:
            return F.conv2d(v, frozen, None, self.stride, self.padding)

        # torch.func.vjp, not autograd.grad: the step stays valid inside torch.func transforms
        # of the caller (jacrev/vmap over inputs while the weight requires grad)
        linearised = torch.func.vjp(convolve, vector)
        out, pull_back = linearised[0], linearised[1]
        u = (out / out.norm().clamp_min(1e-30)).detach()
        (adjoint,) = pull_back(u)
        self._vector = (adjoint / adjoint.norm().clamp_min(1e-30)).detach()
        return (u * F.conv2d(self._vector, weight, None, self.stride, self.padding)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]:
            raise ShapeError(
                f"SpectralConv2d's bound is proven for inputs of up to {self.input_size} pixels, "
                f"got {tuple(x.shape[-2:])}; build it with a larger input_size"
            )
        return super().forward(x)

    def certified_lipschitz(self) -> LipschitzBound:
        bound = self._prove(self.effective_weight())
        return LipschitzBound(value=bound, norm=2.0, method="conv-frequency-certificate")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input_size={self.input_size}"


class AOLConv2d(LipschitzConv2d):
    """An almost-orthogonal convolution (AOL, Prach & Lampert 2022) with a proven bound for every
    input size: ``K = weight · diag(d)`` on the input channels with
    ``d_j = lipschitz · (Σ_{d,i} |G_d|_{ji})^{-1/2}``, where ``G`` is the kernel's
    infinite-grid Gram operator. The Schur test makes ``||conv(K)||₂ <= lipschitz`` in exact
    arithmetic; the stored kernel is then proven again from its own float64 Gram operator,
    rounding included (:func:`~lipguard.nn._kernel_proofs.schur_bound`), and scaled down in the
    rare case rounding pushed it over. A strided convolution keeps a subset of the outputs, so
    stride does not break the bound (it makes it less tight).

    AOL is gradient-norm preserving where the kernel is close to orthogonal, needs no input size,
    and a training step costs one small self-convolution of the kernel (float64 for the proof,
    the layer's dtype for the gradient).
    """

    def _scaled(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # room for rounding the product to the dtype: each Gram entry moves by <= ~2u relative
        room = 2.0**-20 + 3 * unit_roundoff(weight.dtype)
        factor = self.lipschitz * (1.0 - room) / rows.clamp_min(1e-300).sqrt()
        # formed in float64, rounded once: the factor of a tiny (or zero) channel overflows a
        # half-precision dtype (inf, and inf·0 = NaN); fit_kernel proves the result anyway
        return (weight.double() * factor[None, :, None, None]).to(weight.dtype)

    def _fitted(self) -> torch.Tensor:
        settings = (self.lipschitz,)
        cached = self._cache.lookup((self.weight,), settings)
        if cached is not None:
            return cached
        _check_finite(type(self).__name__, self.weight)
        rows = schur_row_sums(self.weight)
        if not bool(torch.isfinite(rows).all()):  # a float64 kernel beyond ~1e150
            raise InvalidArgumentError(
                "AOLConv2d: the kernel is too large for its float64 Gram operator (entries "
                "beyond ~1e150); rescale the weight"
            )
        candidate = self._scaled(self.weight.detach(), rows)
        weights = rows.clamp_min(1e-300).sqrt()  # w = 1/d up to the constant factor
        stored, _, _ = fit_kernel(
            candidate,
            schur_bound(candidate, weights),
            self.lipschitz,
            normalize=False,
            prove=lambda kernel: schur_bound(kernel, weights),
        )
        return self._cache.store((self.weight,), stored, settings)

    def effective_weight(self) -> torch.Tensor:
        stored = self._fitted()
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return stored
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        weight = self.weight.to(dtype)
        rows = gram_blocks(weight).abs().sum(dim=(1, 2, 3))
        factor = self.lipschitz / rows.clamp_min(torch.finfo(dtype).tiny).sqrt()
        return _with_gradient_of(stored, (weight * factor[None, :, None, None]).to(stored.dtype))

    def certified_lipschitz(self) -> LipschitzBound:
        kernel = self.effective_weight().detach()
        weights = schur_row_sums(self.weight).clamp_min(1e-300).sqrt()
        bound = min(schur_bound(kernel), schur_bound(kernel, weights))
        return LipschitzBound(value=bound, norm=2.0, method="conv-schur-certificate")


class SLLConv2d(nn.Module):
    """A 1-Lipschitz convolutional residual block (SDP-based Lipschitz layer, Araujo et al. 2023):

        ``y = x - 2 · convᵀ(t⁻¹ ⊙ relu(conv(x) + b))``

    with ``conv`` a stride-1, ``'same'``-padded convolution from ``channels`` to
    ``inner_channels`` and ``convᵀ`` its exact adjoint. If the diagonal ``T = diag(t)`` satisfies
    ``T ⪰ conv ∘ convᵀ``, every difference quotient of the block is ``I - 2WT⁻¹ΛWᵀ`` with ``Λ``
    diagonal in ``[0, 1]`` (ReLU is monotone and 1-Lipschitz), whose norm is at most 1. ``t`` comes
    from the Schur test on the adjoint's infinite-grid Gram operator with learned positive
    weights ``q`` (``t_a = Σ_{d,b} |H_d|_{ab}·q_b/q_a``), computed in float64 with its rounding,
    and the stored ``t⁻¹`` is rounded down and checked against it, so the guarantee holds for the
    block's stored values. Any input size; the operator norm of the block is ``<= 1``.

    The bound engine reads the block as ``x + body(x)`` and so proves a looser bound than 1 for
    it; :meth:`certified_lipschitz` proves 1 from the block's structure.

    Args:
        channels: input and output channels.
        inner_channels: channels of the inner convolution (default ``channels``).
        kernel_size: odd kernel size.
    """

    def __init__(
        self,
        channels: int,
        inner_channels: int | None = None,
        kernel_size: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = _checks.positive_int("channels", channels)
        self.inner_channels = _checks.positive_int(
            "inner_channels", channels if inner_channels is None else inner_channels
        )
        self.kernel_size = _checks.positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise InvalidArgumentError(f"SLLConv2d needs an odd kernel_size, got {kernel_size}")
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(
            torch.empty(
                self.inner_channels, channels, kernel_size, kernel_size, device=device, dtype=dtype
            )
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(self.inner_channels, device=device, dtype=dtype))
        self.log_q = nn.Parameter(torch.zeros(self.inner_channels, device=device, dtype=dtype))
        self._cache = EffectiveWeightCache()

    def _proven_inverse(self) -> torch.Tensor:
        """``t⁻¹`` as stored: rounded down from a proven upper bound of ``t``."""
        cached = self._cache.lookup((self.weight, self.log_q))
        if cached is not None:
            return cached
        _check_finite(type(self).__name__, self.weight, self.log_q)
        q = self._schur_weights()
        adjoint = self.weight.detach().transpose(0, 1)  # conv ∘ convᵀ is this kernel's Gram
        t = schur_row_sums(adjoint, q) / q * (1.0 + 16 * U64)
        largest = torch.finfo(self.weight.dtype).max  # a smaller t⁻¹ keeps the guarantee
        ceiling = torch.where(t > 0, 1.0 / t, 0.0).clamp(max=largest)  # < 1/t before inflation
        inverse = ceiling.to(self.weight.dtype)
        # rounding to the dtype may round up: step down until 1/stored >= t holds exactly
        for _ in range(4):
            too_large = inverse.double() > ceiling
            if not bool(too_large.any()):
                break
            inverse = torch.where(
                too_large, torch.nextafter(inverse, torch.zeros_like(inverse)), inverse
            )
        else:
            raise InvalidArgumentError("SLLConv2d: cannot store t⁻¹ below its proven bound")
        return self._cache.store((self.weight, self.log_q), inverse)

    def _schur_weights(self) -> torch.Tensor:
        """``q`` for the proof, float64: ``t`` only depends on ratios ``q_b/q_a``, so ``q`` is
        taken relative to its largest entry and kept above e⁻⁶⁰⁰ — any positive ``q`` is a valid
        Schur certificate. Without this, ``exp(log_q)`` in float64's subnormal range (log_q near
        -740) made ``t = fl(Σ|H|q)/q`` too small by up to 30% and the block 1.3-Lipschitz."""
        log_q = self.log_q.detach().double()
        if log_q.numel() == 0:
            return log_q.exp()
        return (log_q - log_q.max()).clamp_min(-600.0).exp()

    def inverse_t(self) -> torch.Tensor:
        """The ``t⁻¹`` the block applies, with SLL's gradient in training."""
        stored = self._proven_inverse()
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            return stored
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        log_q = self.log_q.to(dtype)
        # relative to the largest (t only depends on ratios; same gradient): exp(log_q) alone
        # underflows to 0 for log_q < -104 and made t = 0/0, the block's output NaN
        q = (log_q - log_q.detach().max()).exp()
        gram = gram_blocks(self.weight.to(dtype).transpose(0, 1)).abs().sum(dim=(2, 3))
        t = ((gram @ q) / q.clamp_min(torch.finfo(dtype).tiny)).clamp_min(torch.finfo(dtype).tiny)
        return _with_gradient_of(stored, 1.0 / t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != self.channels:
            raise ShapeError(
                f"SLLConv2d expects inputs of shape (N, {self.channels}, H, W), got "
                f"{tuple(x.shape)}"
            )
        hidden = F.relu(F.conv2d(x, self.weight, self.bias, padding=self.padding))
        hidden = hidden * self.inverse_t()[:, None, None]
        return x - 2 * F.conv_transpose2d(hidden, self.weight, padding=self.padding)

    def certified_lipschitz(self) -> LipschitzBound:
        """The block's bound, 1, proven again from its stored values: ``1/t⁻¹ >= t`` entry by
        entry (``t`` proven from the current kernel and weights); raises if the check fails."""
        with torch.no_grad():
            inverse = self.inverse_t().double()
        q = self._schur_weights()
        t = schur_row_sums(self.weight.detach().transpose(0, 1), q) / q
        if not bool((inverse * t * (1.0 + 4 * U64) <= 1.0).all()):
            raise InvalidArgumentError("SLLConv2d: the stored t⁻¹ does not satisfy T ⪰ WᵀW")
        return LipschitzBound(value=1.0, norm=2.0, method="sll-schur-certificate")

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}"
        )
