"""Hypothesis strategies for the soundness suite: networks from every module the bound engine
supports, with adversarial parameters (negative and huge slopes, in-place flags, extreme weights,
tiny Lipschitz targets, narrow dtypes, residual stacks, convolution configurations)."""

from __future__ import annotations

import copy
import math
import os

import torch
from hypothesis import strategies as st
from torch import nn

from lipguard.nn import (
    DiagonalAffine,
    GroupSort,
    LipschitzLinearModel,
    MaxMin,
    OrthogonalLinear,
    Residual,
    SpectralLinear,
    SVDLinear,
)
from lipguard.nn.base import LipschitzLinear

#: examples per property test: by default a derandomized subset (well under two minutes in all);
#: with HYPOTHESIS_PROFILE=thorough, more than 10,000 generated cases over the suite;
#: LIPGUARD_SOUNDNESS_EXAMPLES sets the number directly
_THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
EXAMPLES = int(os.environ.get("LIPGUARD_SOUNDNESS_EXAMPLES", 1600 if _THOROUGH else 10))

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
SLOPES = (-5.0, -0.5, -1e-3, 0.0, 0.01, 0.5, 1.0, 5.0, 100.0)
SCALES = (1e-3, 0.3, 1.0, 3.0, 100.0)
TARGETS = (1e-3, 0.5, 1.0, 7.0, 1e3)


#: activations only the tracing front end reads (about one network in four has one)
TRACED = {
    "prelu": lambda draw, width: nn.PReLU(draw(st.sampled_from([1, width])), init=-0.3),
    "selu": lambda draw, width: nn.SELU(),
    "celu": lambda draw, width: nn.CELU(draw(st.sampled_from([0.3, 1.0, 2.0]))),
    "hardtanh": lambda draw, width: nn.Hardtanh(-draw(st.sampled_from([0.1, 1.0])), 2.0),
    "relu6": lambda draw, width: nn.ReLU6(),
    "softplus": lambda draw, width: nn.Softplus(draw(st.sampled_from([0.5, 3.0])), math.inf),
    "mish": lambda draw, width: nn.Mish(),
    "hardswish": lambda draw, width: nn.Hardswish(),
    "hardsigmoid": lambda draw, width: nn.Hardsigmoid(),
}


@st.composite
def activations(draw, width: int, sorting: bool = True) -> nn.Module:
    """Any elementwise or (``sorting``, flat features) sorting activation for ``width``
    features (inplace flags random)."""
    inplace = draw(st.booleans())
    if draw(st.integers(0, 11)) == 0:
        return TRACED[draw(st.sampled_from(sorted(TRACED)))](draw, width)
    kinds = ["relu", "leaky", "tanh", "sigmoid", "elu", "gelu", "silu"]
    if sorting and width % 2 == 0:
        kinds += ["maxmin", "groupsort"]
    kind = draw(st.sampled_from(kinds))
    if kind == "relu":
        return nn.ReLU(inplace=inplace)
    if kind == "leaky":
        return nn.LeakyReLU(draw(st.sampled_from(SLOPES)), inplace=inplace)
    if kind == "elu":
        return nn.ELU(draw(st.sampled_from((0.0, 0.5, 1.0, 3.0))), inplace=inplace)
    if kind == "silu":
        return nn.SiLU(inplace=inplace)
    if kind == "maxmin":
        return MaxMin()
    if kind == "groupsort":
        group = draw(st.sampled_from([g for g in (2, width) if width % g == 0]))
        return GroupSort(group, descending=draw(st.booleans()))
    return {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}[kind]()


@st.composite
def linear_layers(draw, fan_in: int, fan_out: int) -> nn.Module:
    kind = draw(st.sampled_from(["linear", "linear", "spectral", "orthogonal", "svd", "model"]))
    target = draw(st.sampled_from(TARGETS))
    bias = draw(st.booleans())
    if kind == "linear":
        return nn.Linear(fan_in, fan_out, bias=bias)
    if kind == "model":
        norm = draw(st.sampled_from([1, 2, "inf"]))
        return LipschitzLinearModel(fan_in, fan_out, lipschitz=target, norm=norm, bias=bias)
    layer_type = {"spectral": SpectralLinear, "orthogonal": OrthogonalLinear, "svd": SVDLinear}
    return layer_type[kind](fan_in, fan_out, bias=bias, lipschitz=target)


@st.composite
def flat_blocks(draw, width: int, depth: int) -> list[nn.Module]:
    """Layers on flat features of ``width`` that end at ``width`` again."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        kinds = ["dense"] * 4 + ["affine", "residual"] * 2 + ["pass"] * 2 + ["norm", "graph"]
        kind = draw(st.sampled_from(kinds))
        if kind == "dense":
            hidden = draw(st.sampled_from([2, 4, 6]))
            layers += [draw(linear_layers(width, hidden)), draw(activations(hidden))]
            layers.append(draw(linear_layers(hidden, width)))
        elif kind == "affine":
            scale = torch.randn(width) * draw(st.sampled_from(SCALES))
            layers.append(DiagonalAffine(scale, torch.randn(width)))
        elif kind == "residual":
            body = draw(flat_blocks(width, 1))
            layers.append(Residual(nn.Sequential(draw(activations(width)), *body)))
        elif kind == "norm":
            layers.append(batch_norm(nn.BatchNorm1d(width), draw(st.sampled_from(SCALES))))
        elif kind == "graph":
            layers.append(Branches(width, draw(st.booleans()), draw(activations(width))))
        else:
            layers.append(draw(st.sampled_from([nn.Identity(), nn.Dropout(0.3)])))
            layers.append(draw(activations(width)))
    return layers


def batch_norm(module: nn.Module, scale: float) -> nn.Module:
    """A batch norm in eval mode with random statistics (variances down to ``1e-3·scale``)."""
    with torch.no_grad():
        module.running_mean.normal_()
        module.running_var.uniform_(1e-3, 2.0).mul_(scale)
        module.weight.normal_()
        module.bias.normal_()
    return module.eval()


class Branches(nn.Module):
    """A DAG the registry cannot walk: ``a(x) + b(x)`` (a projection shortcut) or
    ``head(cat(a(x), b(x)))`` (a concatenation)."""

    def __init__(self, width: int, concatenate: bool, activation: nn.Module) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(width, width), activation, nn.Linear(width, width))
        self.b = nn.Linear(width, width)
        self.head = nn.Linear(2 * width, width) if concatenate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.a(x) + self.b(x)
        return self.head(torch.cat([self.a(x), self.b(x)], dim=-1))


@st.composite
def conv_stem(draw) -> tuple[list[nn.Module], tuple[int, ...], int]:
    """A convolution (1-D or 2-D, any stride/padding/dilation/groups) and an activation,
    flattened; returns the layers, the input shape and the flat width after them."""
    two_d = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2]))
    channels_in = groups * draw(st.integers(1, 2))
    channels_out = groups * draw(st.integers(1, 2))
    size = draw(st.integers(3, 5))
    kernel = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.sampled_from([0, 1, 2, "same", "valid"]))
    stride = 1 if padding == "same" else draw(st.integers(1, 2))
    if (kernel - 1) * dilation + 1 > size + 2 * (padding if isinstance(padding, int) else 0):
        kernel, dilation = 1, 1
    conv_type = nn.Conv2d if two_d else nn.Conv1d
    conv = conv_type(
        channels_in,
        channels_out,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
    )
    shape = (channels_in, size, size) if two_d else (channels_in, size)
    layers = [conv, draw(activations(channels_out, sorting=False))]  # PReLU: per channel
    extra = draw(st.sampled_from(["none"] * 4 + ["norm", "max", "average"]))
    if extra == "norm":
        norm = nn.BatchNorm2d if two_d else nn.BatchNorm1d
        layers.append(batch_norm(norm(channels_out), draw(st.sampled_from(SCALES))))
    elif extra in ("max", "average"):
        pool_kernel = draw(st.integers(1, 2))
        pool_stride = draw(st.integers(1, 2))
        if extra == "max":
            pool = (nn.MaxPool2d if two_d else nn.MaxPool1d)(
                pool_kernel, pool_stride, ceil_mode=draw(st.booleans())
            )
        else:
            pool = (nn.AvgPool2d if two_d else nn.AvgPool1d)(
                pool_kernel + 1,
                pool_stride,
                padding=1,
                count_include_pad=draw(st.booleans()),
            )
        if width_of([*layers, pool], shape) > 0:
            layers.append(pool)
    layers.append(nn.Flatten())
    return layers, shape, width_of(layers, shape)


def width_of(layers: list[nn.Module], shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        try:
            return nn.Sequential(*layers)(torch.zeros(1, *shape)).numel()
        except RuntimeError:  # a pooling window larger than its input
            return 0


@st.composite
def networks(draw, max_depth: int = 3) -> tuple[nn.Module, tuple[int, ...]]:
    """A random supported network in a random dtype, weights scaled adversarially."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    if draw(st.integers(0, 3)) == 0:
        layers, shape, width = draw(conv_stem())
    else:
        width = draw(st.sampled_from([2, 3, 4]))
        layers, shape = [], (width,)
    layers += draw(flat_blocks(width, draw(st.integers(1, max_depth))))
    layers.append(draw(linear_layers(width, draw(st.integers(1, 2)))))
    model = nn.Sequential(*layers)
    scale = draw(st.sampled_from(SCALES))
    with torch.no_grad():
        for module in model.modules():
            if type(module) in (nn.Linear, nn.Conv1d, nn.Conv2d):
                module.weight.mul_(scale)
    return model.to(draw(st.sampled_from(DTYPES))).eval(), shape


class _ExactLinear(nn.Module):
    """``x ↦ W x + b`` with a fixed float64 weight (a lipguard layer's effective weight)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def float64_replica(model: nn.Module) -> nn.Module:
    """The same real-valued function evaluated in float64: every module as it is (in-place flags
    and all), converted exactly; lipguard's layers replaced by their effective weight as stored
    (a float64 copy of them would recompute the weight with other margins)."""
    replica = copy.deepcopy(model)

    def replace(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, LipschitzLinear | LipschitzLinearModel):
                with torch.no_grad():
                    weight = child.effective_weight().detach().double()
                bias = None if child.bias is None else child.bias.detach().double()
                setattr(module, name, _ExactLinear(weight, bias))
            else:
                replace(child)

    replace(replica)
    return replica.double().eval()


def weight_scale(model: nn.Module) -> float:
    """``Π ||W||_F`` over the replica's linear maps (a crude independent size of the Jacobian,
    for absolute tolerances on float64 oracles)."""
    value = 1.0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            value *= max(float(weight.detach().double().norm()), 1.0)
        scale = getattr(module, "scale", None)
        if isinstance(scale, torch.Tensor):
            value *= max(float(scale.detach().double().abs().max()), 1.0)
        if isinstance(module, nn.LeakyReLU | nn.ELU):
            value *= max(
                abs(getattr(module, "negative_slope", 0.0)), getattr(module, "alpha", 1.0), 1.0
            )
    return value
