"""ATen operations of the ``torch.export`` front end, part two: activations, sorting and
max-pooling (see :mod:`lipguard.bounds.trace`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.fx import Node

from lipguard.bounds import activations as act
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ops import Activation, MaxPool, Scale, Shape, Sort, Sum
from lipguard.bounds.trace import (
    Args,
    Converter,
    Handler,
    Kwargs,
    Result,
    Value,
    aten,
    depends_on_input,
    tupled,
)
from lipguard.errors import UnsupportedModuleError


def activation(spec_of: Callable[..., act.ActivationSpec]) -> Handler:
    def handler(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
        spec = spec_of(*args[1:], **kwargs)
        x = args[0]
        return converter.add(Activation(spec, converter.shape(x)), [x], where)

    return handler


def leaky(x_slope: float = 0.01, *_: Value) -> act.ActivationSpec:
    return act.leaky_relu(float(x_slope))


def elu(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    x = args[0]
    alpha = float(args[1]) if len(args) > 1 else 1.0
    scale = float(args[2]) if len(args) > 2 else 1.0
    input_scale = float(args[3]) if len(args) > 3 else 1.0
    if alpha < 0:
        raise UnsupportedModuleError(f"{where}: ELU with alpha < 0")
    if input_scale != 1.0:
        x = converter.scale(x, input_scale, 0.0, where)
    y = converter.add(Activation(act.elu(alpha), converter.shape(x)), [x], where)
    return y if scale == 1.0 else converter.scale(y, scale, 0.0, where)


def selu(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return elu(converter, node, (args[0], alpha, scale), {}, where)


def celu(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    alpha = float(args[1]) if len(args) > 1 else kwargs.get("alpha", 1.0)
    if alpha <= 0:
        raise UnsupportedModuleError(f"{where}: CELU with alpha <= 0")
    inner = converter.scale(args[0], 1.0 / alpha, 0.0, where) if alpha != 1.0 else args[0]
    y = converter.add(Activation(act.elu(1.0), converter.shape(inner)), [inner], where)
    return y if alpha == 1.0 else converter.scale(y, alpha, 0.0, where)


def gelu(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    if approximate != "none":
        raise UnsupportedModuleError(f"{where}: GELU(approximate={approximate!r})")
    return converter.add(Activation(act.GELU, converter.shape(args[0])), [args[0]], where)


def softplus(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    beta = float(args[1]) if len(args) > 1 else 1.0
    threshold = float(args[2]) if len(args) > 2 else 20.0
    if math.isfinite(threshold):
        raise UnsupportedModuleError(
            f"{where}: Softplus(threshold={threshold:g}) switches to the identity above the "
            "threshold with a jump, so it is not Lipschitz; use threshold=float('inf')"
        )
    if beta <= 0:
        raise UnsupportedModuleError(f"{where}: Softplus with beta <= 0")
    return converter.add(Activation(act.softplus(beta), converter.shape(args[0])), [args[0]], where)


def clamp(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    hardtanh = node.target == aten.hardtanh.default  # defaults -1, 1; clamp's are None
    low = args[1] if len(args) > 1 else kwargs.get("min", -1.0 if hardtanh else None)
    high = args[2] if len(args) > 2 else kwargs.get("max", 1.0 if hardtanh else None)
    if (
        depends_on_input([low, high])
        or isinstance(low, torch.Tensor)
        or isinstance(high, torch.Tensor)
    ):
        raise UnsupportedModuleError(f"{where}: clamp to tensor bounds")
    spec = act.clamp(None if low is None else float(low), None if high is None else float(high))
    return converter.add(Activation(spec, converter.shape(args[0])), [args[0]], where)


def relu6(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    spec = act.clamp(0.0, 6.0)
    return converter.add(Activation(spec, converter.shape(args[0])), [args[0]], where)


def prelu(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    """``relu(x) - a ⊙ relu(-x)`` (exact), ``a`` per channel; one slope is a LeakyReLU."""
    x, weight = args[0], torch.as_tensor(args[1]).detach().to(torch.float64).cpu()
    shape = converter.shape(x)
    if weight.numel() == 1:
        spec = act.leaky_relu(float(weight))
        return converter.add(Activation(spec, shape), [x], where)
    if shape[0] != weight.numel():
        raise UnsupportedModuleError(f"{where}: {weight.numel()} slopes for shape {shape}")
    slopes = weight.repeat_interleave(math.prod(shape[1:]))
    positive = converter.add(Activation(act.RELU, shape), [x], where)
    flipped = converter.scale(x, -1.0, 0.0, where)
    negative = converter.add(Activation(act.RELU, shape), [flipped], where)
    scaled = converter.add(
        Scale(Enclosure(-slopes), Enclosure(torch.zeros_like(slopes)), shape), [negative], where
    )
    return converter.add(Sum((1.0, 1.0), shape), [positive, scaled], where)


def sort(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
    descending = args[2] if len(args) > 2 else kwargs.get("descending", False)
    if node.target == aten.sort.stable:
        dim = kwargs.get("dim", -1)
        descending = kwargs.get("descending", False)
    shape = converter.shape(x)
    axis = dim % (len(shape) + 1)
    if axis == 0:
        raise UnsupportedModuleError(f"{where}: sorting along the batch dimension")
    moved = converter.reindex(lambda t: t.movedim(axis, -1), [x], where)
    moved_shape = converter.shape(moved)
    ordered = converter.add(Sort(moved_shape[-1], bool(descending), moved_shape), [moved], where)
    back = converter.reindex(lambda t: t.movedim(-1, axis), [ordered], where)
    return (back, None)


def max_pool(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    x = args[0]
    shape = converter.shape(x)
    spatial = len(shape) - 1
    kernel = tupled(args[1], spatial)
    stride = tupled(args[2], spatial) if len(args) > 2 and args[2] else kernel
    padding = tupled(args[3] if len(args) > 3 else 0, spatial)
    dilation = tupled(args[4] if len(args) > 4 else 1, spatial)
    ceil_mode = bool(args[5]) if len(args) > 5 else False
    windows = pool_windows(shape, kernel, stride, padding, dilation, ceil_mode)
    value = node.meta["val"]
    out = tuple(int(s) for s in (value[0] if isinstance(value, tuple | list) else value).shape[1:])
    result = converter.add(MaxPool(windows, shape, out), [x], where)
    if node.target in (aten.max_pool2d_with_indices.default, aten.max_pool1d_with_indices.default):
        return (result, None)
    return result


def pool_windows(
    shape: Shape,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    ceil_mode: bool,
) -> torch.Tensor:
    """``(outputs, k)`` flat input positions of each pooling window over ``(C, *spatial)``
    (``-1`` where the window lies in the padding), PyTorch's output-size rule included."""
    axes = []
    for size, k, s, p, d in zip(shape[1:], kernel, stride, padding, dilation, strict=True):
        span = size + 2 * p - d * (k - 1) - 1
        count = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (count - 1) * s >= size + p:
            count -= 1
        starts = torch.arange(count) * s - p
        positions = starts[:, None] + torch.arange(k) * d  # (count, k)
        axes.append(torch.where((positions >= 0) & (positions < size), positions, -1))
    channels, spatial = shape[0], shape[1:]
    if len(axes) == 1:
        local = axes[0]
    else:
        rows, cols = axes
        valid = (rows[:, None, :, None] >= 0) & (cols[None, :, None, :] >= 0)
        flat = rows[:, None, :, None] * spatial[1] + cols[None, :, None, :]
        local = torch.where(valid, flat, -1).reshape(rows.shape[0] * cols.shape[0], -1)
    area = math.prod(spatial)
    offsets = (torch.arange(channels) * area)[:, None, None]
    windows = torch.where(local >= 0, local[None] + offsets, -1)
    return windows.reshape(-1, local.shape[1])
