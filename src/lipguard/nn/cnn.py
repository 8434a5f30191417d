"""A convolutional network with a guaranteed Lipschitz constant: :class:`LipschitzCNN`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast, get_args

import torch
from torch import nn

from lipguard import _checks
from lipguard._modules import placed_children
from lipguard.errors import InvalidArgumentError, ShapeError, UnsupportedModuleError
from lipguard.linalg import mul_up
from lipguard.nn.activations import GroupSort, MaxMin
from lipguard.nn.base import LipschitzLinear
from lipguard.nn.conv import AOLConv2d, LipschitzConv2d, SLLConv2d, SpectralConv2d
from lipguard.nn.mlp import LipschitzMLP, split_lipschitz
from lipguard.nn.orthogonal import OrthogonalLinear, SVDLinear
from lipguard.nn.spectral import SpectralLinear
from lipguard.results import LipschitzBound

#: the constrained convolution of each stage
ConvKind = Literal["aol", "spectral"]
#: the channel activation after each convolution
ConvActivation = Literal["maxmin", "groupsort"]
#: how each stage downsamples: ``PixelUnshuffle(2)``, a stride-2 convolution, or not at all
Downsample = Literal["unshuffle", "stride", "none"]
#: how :meth:`LipschitzCNN.certified_lipschitz` proves its bound
BoundMethod = Literal["best", "layers", "engine"]

CONV_KINDS: tuple[ConvKind, ...] = get_args(ConvKind)
CONV_ACTIVATIONS: tuple[ConvActivation, ...] = get_args(ConvActivation)
DOWNSAMPLES: tuple[Downsample, ...] = get_args(Downsample)
BOUND_METHODS: tuple[BoundMethod, ...] = get_args(BoundMethod)

#: children that are 1-Lipschitz in ℓ2 by construction (permutations, sorting, reshapes), by
#: exact type: a subclass may compute something else
_ONE_LIPSCHITZ = (GroupSort, MaxMin, nn.PixelUnshuffle, nn.Flatten, nn.Identity, nn.ReLU)
#: children whose ``certified_lipschitz()`` proves their own bound, by exact type
_OWN_BOUND = (AOLConv2d, SpectralConv2d, SLLConv2d, SpectralLinear, OrthogonalLinear, SVDLinear)


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ShapeError(f"input_shape must be (C, H, W), got {shape!r}")
    channels, height, width = (_checks.positive_int("input_shape", size) for size in shape)
    return channels, height, width


class LipschitzCNN(nn.Sequential):
    """A CNN on ``(N, C, H, W)`` images whose ℓ2 Lipschitz constant is guaranteed ``<= lipschitz``.

    Each stage is ``conv → channel activation → SLL blocks → downsampling``, then ``Flatten`` and
    a dense head. The bound is split into equal factors over the stages' convolutions and the
    head (:func:`~lipguard.nn.split_lipschitz`): every convolution (:class:`AOLConv2d`, or
    :class:`SpectralConv2d` proven for its stage's input size) and the head guarantee their
    factor, and everything else is 1-Lipschitz in ℓ2 — MaxMin/GroupSort over the channels (a
    sort), :class:`SLLConv2d` blocks, ``PixelUnshuffle`` (a permutation) and ``Flatten`` — so
    the model is ``lipschitz``-Lipschitz from the image (ℓ2 over all pixels) to the outputs
    (ℓ2), for every input, floating-point rounding included (each layer's guarantee covers its
    stored weights).

    Args:
        input_shape: ``(C, H, W)`` of one image.
        out_features: outputs (classes, or 1 for a reward model).
        channels: output channels of each stage's convolution (at least one stage).
        lipschitz: the guaranteed bound.
        layer: ``"aol"`` (default, any input size) or ``"spectral"``.
        activation: ``"maxmin"`` (default) or ``"groupsort"``, over the channels.
        group_size: GroupSort group size; must divide every stage's channels.
        kernel_size: odd kernel size (``'same'`` zero padding).
        downsample: ``"unshuffle"`` (default: ``PixelUnshuffle(2)`` after every stage, 4× the
            channels), ``"stride"`` (stride-2 convolutions) or ``"none"``.
        sll_blocks: :class:`SLLConv2d` residual blocks after each stage's activation.
        head_hidden: hidden widths of the dense head (a :class:`LipschitzMLP`; empty: one
            :class:`SpectralLinear`).
        bias: biases on the convolutions and the head.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (16, 32),
        *,
        lipschitz: float = 1.0,
        layer: ConvKind = "aol",
        activation: ConvActivation = "maxmin",
        group_size: int = 2,
        kernel_size: int = 3,
        downsample: Downsample = "unshuffle",
        sll_blocks: int = 0,
        head_hidden: Sequence[int] = (),
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = _image_shape(input_shape)
        _checks.positive_int("out_features", out_features)
        lipschitz = _checks.positive_float("lipschitz", lipschitz)
        widths = [_checks.positive_int("channel width", width) for width in channels]
        if not widths:
            raise InvalidArgumentError("channels must name at least one stage")
        for name, value, kinds in (
            ("layer", layer, CONV_KINDS),
            ("activation", activation, CONV_ACTIVATIONS),
            ("downsample", downsample, DOWNSAMPLES),
        ):
            if value not in kinds:
                raise InvalidArgumentError(f"{name} must be one of {list(kinds)}, got {value!r}")
        if _checks.positive_int("kernel_size", kernel_size) % 2 == 0:
            raise InvalidArgumentError(
                f"kernel_size must be odd ('same' padding), got {kernel_size}"
            )
        if isinstance(sll_blocks, bool) or not isinstance(sll_blocks, int) or sll_blocks < 0:
            raise InvalidArgumentError(f"sll_blocks must be an integer >= 0, got {sll_blocks!r}")
        group = 2 if activation == "maxmin" else _checks.positive_int("group_size", group_size)
        if group < 2:
            raise InvalidArgumentError(f"group_size must be >= 2, got {group_size}")
        for width in widths:
            if width % group:
                raise InvalidArgumentError(
                    f"{activation} groups of {group} do not divide stage width {width}"
                )
        factors = split_lipschitz(lipschitz, len(widths) + 1)
        modules: list[nn.Module] = []
        in_channels, height, width_px = shape
        padding = kernel_size // 2
        for index, out_channels in enumerate(widths):
            stride = 2 if downsample == "stride" else 1
            conv: LipschitzConv2d
            if layer == "aol":
                conv = AOLConv2d(
                    in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                    bias=bias, lipschitz=factors[index], device=device, dtype=dtype,
                )  # fmt: skip
            else:
                conv = SpectralConv2d(
                    in_channels, out_channels, kernel_size, input_size=(height, width_px),
                    stride=stride, padding=padding, bias=bias, lipschitz=factors[index],
                    device=device, dtype=dtype,
                )  # fmt: skip
            modules.append(conv)
            height, width_px = (
                (height + 2 * padding - kernel_size) // stride + 1,
                (width_px + 2 * padding - kernel_size) // stride + 1,
            )
            if min(height, width_px) < 1:
                raise ShapeError(f"input_shape {shape} is too small for {len(widths)} stages")
            modules.append(MaxMin(dim=1) if activation == "maxmin" else GroupSort(group, dim=1))
            for _ in range(sll_blocks):
                modules.append(SLLConv2d(out_channels, device=device, dtype=dtype))
            in_channels = out_channels
            if downsample == "unshuffle":
                if height % 2 or width_px % 2:
                    raise ShapeError(
                        f"PixelUnshuffle(2) after stage {index + 1} needs an even size, got "
                        f"{height}×{width_px} (input_shape {shape}); use fewer stages or "
                        "downsample='stride'"
                    )
                modules.append(nn.PixelUnshuffle(2))
                in_channels, height, width_px = 4 * in_channels, height // 2, width_px // 2
        features = in_channels * height * width_px
        modules.append(nn.Flatten())
        if head_hidden:
            modules.append(
                LipschitzMLP(
                    features,
                    out_features,
                    head_hidden,
                    lipschitz=factors[-1],
                    bias=bias,
                    device=device,
                    dtype=dtype,
                )
            )
        else:
            modules.append(
                SpectralLinear(
                    features,
                    out_features,
                    bias=bias,
                    lipschitz=factors[-1],
                    device=device,
                    dtype=dtype,
                )
            )
        super().__init__(*modules)
        self.lipschitz = lipschitz
        self.input_shape: tuple[int, int, int] = shape
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(N, out_features)`` for images ``(N, *input_shape)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(
                f"LipschitzCNN expects images of shape (N, {', '.join(map(str, self.input_shape))})"
                f", got {tuple(x.shape)}"
            )
        return super().forward(x)

    def layer_product(self) -> LipschitzBound:
        """The product of the children's own proven bounds (each one's ``certified_lipschitz``,
        multiplied rounding upwards; 1 for sorting, ``PixelUnshuffle``, ``Flatten``).

        Raises:
            UnsupportedModuleError: a child (or a head layer) with no proven bound of its own.
        """
        from lipguard.bounds.graph import to_operators

        # the engine's reading refuses hooks, forward overrides, replaced class forwards and
        # unknown modules by name; the product then trusts only these exact types
        to_operators(self, self.input_shape)
        value = 1.0
        for name, child in placed_children(self):
            parts = (
                [c for _, c in placed_children(child)] if type(child) is LipschitzMLP else [child]
            )
            for part in parts:
                if type(part) in _ONE_LIPSCHITZ:
                    continue
                if type(part) not in _OWN_BOUND:
                    raise UnsupportedModuleError(
                        f"child {name} ({type(part).__name__}) has no proven bound of its own"
                    )
                bound = cast(LipschitzConv2d | LipschitzLinear | SLLConv2d, part)
                value = mul_up(value, bound.certified_lipschitz().value)
        return LipschitzBound(value=value, norm=2.0, method="layer-product")

    def certified_lipschitz(self, method: BoundMethod = "best") -> LipschitzBound:
        """A sound ℓ2 bound on the whole model as it is now (children swapped or retrained
        included): ``"layers"`` multiplies the layers' own proven bounds
        (:meth:`layer_product`; reads :class:`SLLConv2d` as 1), ``"engine"`` asks the bound
        engine (:func:`lipguard.bounds.lipschitz_bound`, ``method="product"``: exact
        operator norms of the convolutions at this input size, but an SLL block read as
        ``x + body(x)``), ``"best"`` (default) the smaller of the two (the engine alone when a
        child has no bound of its own).
        """
        from lipguard.bounds import lipschitz_bound

        if method not in BOUND_METHODS:
            raise InvalidArgumentError(
                f"method must be one of {list(BOUND_METHODS)}, got {method!r}"
            )
        bounds: list[LipschitzBound] = []
        with torch.no_grad():
            if method != "engine":
                try:
                    bounds.append(self.layer_product())
                except UnsupportedModuleError:
                    if method == "layers":
                        raise
            if method != "layers":
                bounds.append(lipschitz_bound(self, 2, "product", input_shape=self.input_shape))
        return min(bounds, key=lambda bound: bound.value)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, lipschitz={self.lipschitz:g}"
