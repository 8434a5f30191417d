"""ATen operations of the ``torch.export`` front end: the table, linear layers, re-indexing and
arithmetic (see :mod:`lipguard.bounds.trace`); activations, sorting and max-pooling are in
:mod:`lipguard.bounds.aten_pointwise`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.fx import Node

from lipguard.bounds import activations as act
from lipguard.bounds import aten_pointwise as pointwise
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ops import Conv, Dense, Scale, Sum
from lipguard.bounds.trace import (
    TRACE_BATCH,
    Args,
    Converter,
    Handler,
    Kwargs,
    Result,
    Traced,
    Value,
    aten,
    depends_on_input,
    per_sample,
    target_function,
    tupled,
    with_batch,
)
from lipguard.errors import UnsupportedModuleError
from lipguard.linalg import U64


def _reindex(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, Traced)]
    if tensor_positions == [0]:
        rest = with_batch(args[1:])
        kw = with_batch(kwargs)
        function = target_function(node)
        return converter.reindex(lambda t: function(t, *rest, **kw), [args[0]], where)
    raise UnsupportedModuleError(f"{where}: {node.target} with several tensor arguments")


def _tuple_reindex(
    converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str
) -> Result:
    """Operations returning several tensors (split, chunk, unbind): one Gather per part."""
    rest, kw = with_batch(args[1:]), with_batch(kwargs)
    count = len(node.meta["val"])
    function = target_function(node)
    return tuple(
        converter.reindex(lambda t, k=k: function(t, *rest, **kw)[k], [args[0]], where)
        for k in range(count)
    )


def _concatenate(
    converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str
) -> Result:
    parts = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    sources = [p for p in parts if isinstance(p, Traced)]
    if len(sources) != len(parts):
        raise UnsupportedModuleError(f"{where}: concatenating constants with inputs")
    function = target_function(node)
    return converter.reindex(lambda *ts: function(list(ts), dim), sources, where)


def _pad(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    pads = with_batch(args[1])
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value", 0.0)
    if mode != "constant":
        raise UnsupportedModuleError(f"{where}: {mode} padding")
    value = 0.0 if value is None else float(value)
    return converter.reindex(lambda t: F.pad(t, pads, value=-1.0), [args[0]], where, value)


def _constant_pad(
    converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str
) -> Result:
    value = args[2] if len(args) > 2 else kwargs.get("value", 0.0)
    return _pad(converter, node, (args[0], args[1], "constant", value), {}, where)


def _identity(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    return args[0]


def _dropout(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    train = args[2] if len(args) > 2 else kwargs.get("train", False)
    if train:
        raise UnsupportedModuleError(f"{where}: dropout in training mode is random; use eval()")
    return args[0]


def _linear(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return _dense(converter, x, weight, bias, where)


def _dense(converter: Converter, x: Value, weight: Value, bias: Value, where: str) -> Traced:
    if not isinstance(x, Traced) or depends_on_input([weight, bias]):
        raise UnsupportedModuleError(f"{where}: a product of two input-dependent tensors")
    weight = torch.as_tensor(weight).detach().to(torch.float64).cpu()
    if weight.dim() != 2:
        raise UnsupportedModuleError(f"{where}: a {weight.dim()}-D weight")
    shape = converter.shape(x)
    if shape[-1] != weight.shape[1]:
        raise UnsupportedModuleError(f"{where}: {weight.shape[1]} features expected, got {shape}")
    values = (
        torch.zeros(weight.shape[0], dtype=torch.float64)
        if bias is None
        else per_sample(bias, (weight.shape[0],), where)
    )
    _finite(where, weight, values)
    out_shape = (*shape[:-1], weight.shape[0])
    op = Dense(Enclosure(weight), Enclosure(values), shape, out_shape)
    return converter.add(op, [x], where)


def _finite(where: str, *tensors: torch.Tensor) -> None:
    for tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            raise UnsupportedModuleError(f"{where}: a weight holds NaN or infinity")


def _addmm(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    bias, x, matrix = args[0], args[1], args[2]
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        raise UnsupportedModuleError(f"{where}: addmm with alpha/beta")
    return _dense(converter, x, torch.as_tensor(matrix).T, bias, where)


def _matmul(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    x, matrix = args[0], args[1]
    if isinstance(x, Traced) and isinstance(matrix, Traced):
        raise UnsupportedModuleError(f"{where}: a product of two input-dependent tensors")
    if not isinstance(x, Traced):
        raise UnsupportedModuleError(
            f"{where}: a matrix product with the constant on the left (W @ x); transpose it to "
            "x @ Wᵀ"
        )
    return _dense(converter, x, torch.as_tensor(matrix).T, None, where)


def _convolution(
    converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str
) -> Result:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if node.target == aten.convolution.default:
        stride, padding, dilation, transposed, _, groups = args[3:9]
        if transposed:
            raise UnsupportedModuleError(f"{where}: transposed convolution")
    else:
        stride = args[3] if len(args) > 3 else 1
        padding = args[4] if len(args) > 4 else 0
        dilation = args[5] if len(args) > 5 else 1
        groups = args[6] if len(args) > 6 else 1
    weight = torch.as_tensor(weight).detach().to(torch.float64).cpu()
    spatial = weight.dim() - 2
    if spatial not in (1, 2):
        raise UnsupportedModuleError(f"{where}: {spatial}-D convolution")
    bias = (
        torch.zeros(weight.shape[0], dtype=torch.float64)
        if bias is None
        else torch.as_tensor(bias).detach().to(torch.float64).cpu()
    )
    _finite(where, weight, bias)

    shape = converter.shape(x)
    padding = padding if isinstance(padding, str) else tupled(padding, spatial)
    functional = F.conv1d if spatial == 1 else F.conv2d
    probe = functional(
        torch.zeros(1, *shape, dtype=torch.float64),
        weight,
        None,
        tupled(stride, spatial),
        padding,
        tupled(dilation, spatial),
        groups,
    )
    op = Conv(
        weight,
        bias,
        tupled(stride, spatial),
        padding,
        tupled(dilation, spatial),
        int(groups),
        shape,
        tuple(probe.shape[1:]),
    )
    return converter.add(op, [x], where)


def _batch_norm(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    if node.target == aten.batch_norm.default:
        x, weight, bias, mean, var, training, _, eps = args[:8]
        if training:
            raise UnsupportedModuleError(
                f"{where}: batch norm in training mode normalises by the batch; use eval()"
            )
    else:  # _native_batch_norm_legit_no_training: (x, weight, bias, mean, var, momentum, eps)
        x, weight, bias, mean, var, _, eps = args[:7]
    if mean is None or var is None:
        raise UnsupportedModuleError(f"{where}: batch norm without running statistics")
    result = _normalise(converter, x, weight, bias, mean, var, float(eps), where)
    if node.target == aten.batch_norm.default:
        return result
    return (result, None, None)


def _normalise(
    converter: Converter,
    x: Traced,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    where: str,
) -> Traced:
    """``(x - μ)/√(σ² + ε)·γ + β`` per channel (per-sample dimension 0) as a scaling whose
    constants carry their float64 rounding."""
    mean, var = (torch.as_tensor(t).detach().to(torch.float64).cpu() for t in (mean, var))
    channels = mean.numel()
    gamma = (
        torch.ones(channels, dtype=torch.float64)
        if weight is None
        else torch.as_tensor(weight).detach().to(torch.float64).cpu()
    )
    beta = (
        torch.zeros(channels, dtype=torch.float64)
        if bias is None
        else torch.as_tensor(bias).detach().to(torch.float64).cpu()
    )
    _finite(where, mean, var, gamma, beta)
    if bool((var + eps <= 0).any()):
        raise UnsupportedModuleError(f"{where}: batch norm with a non-positive variance")
    scale = gamma / torch.sqrt(var + eps)  # 3 roundings: +, √, ÷
    scale_error = 4 * U64 * scale.abs()
    shift = beta - mean * scale
    shift_error = 3 * U64 * (beta.abs() + (mean * scale).abs()) + mean.abs() * scale_error
    shape = converter.shape(x)
    if shape[0] != channels:
        raise UnsupportedModuleError(f"{where}: {channels} channels expected, got {shape}")
    positions = math.prod(shape[1:])

    def spread(values: torch.Tensor) -> torch.Tensor:
        return values.repeat_interleave(positions)

    op = Scale(
        Enclosure(spread(scale), spread(scale_error) * (1 + 4 * U64)),
        Enclosure(spread(shift), spread(shift_error) * (1 + 4 * U64)),
        shape,
    )
    return converter.add(op, [x], where)


def _binary(sign: float) -> Handler:
    def handler(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
        a, b = args[0], args[1]
        alpha = float(kwargs["alpha"] if "alpha" in kwargs else args[2] if len(args) > 2 else 1.0)
        if isinstance(a, Traced) and isinstance(b, Traced):
            shape = tuple(int(s) for s in node.meta["val"].shape[1:])
            a, b = converter.broadcast(a, shape, where), converter.broadcast(b, shape, where)
            return converter.add(Sum((1.0, sign * alpha), shape), [a, b], where)
        if isinstance(a, Traced):
            return converter.scale(a, 1.0, sign * alpha * torch.as_tensor(b), where)
        return converter.scale(b, sign * alpha, torch.as_tensor(a), where)

    return handler


def _multiply(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    a, b = args[0], args[1]
    if isinstance(a, Traced) and isinstance(b, Traced):
        raise UnsupportedModuleError(
            f"{where}: a product of two input-dependent tensors has no global Lipschitz constant"
        )
    x, factor = (a, b) if isinstance(a, Traced) else (b, a)
    return converter.scale(x, torch.as_tensor(factor), 0.0, where)


def _divide(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    a, b = args[0], args[1]
    if isinstance(b, Traced) or kwargs.get("rounding_mode") is not None:
        raise UnsupportedModuleError(f"{where}: division by an input-dependent tensor")
    divisor = torch.as_tensor(b, dtype=torch.float64)
    if bool((divisor == 0).any()):
        raise UnsupportedModuleError(f"{where}: division by zero")
    shape = converter.shape(a)
    factor = per_sample(1.0 / divisor, shape, where)
    op = Scale(
        Enclosure(factor, U64 * factor.abs() * (1 + 4 * U64)),
        Enclosure(torch.zeros_like(factor)),
        shape,
    )
    return converter.add(op, [a], where)


def _negate(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    return converter.scale(args[0], -1.0, 0.0, where)


def _rsub(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    alpha = float(kwargs.get("alpha", 1.0))
    return converter.scale(args[0], -alpha, torch.as_tensor(args[1]), where)


def _avg_pool(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
    x = args[0]
    kernel = args[1]
    stride = args[2] if len(args) > 2 and args[2] else kernel
    padding = args[3] if len(args) > 3 else 0
    ceil_mode = args[4] if len(args) > 4 else False
    count_include_pad = args[5] if len(args) > 5 else True
    divisor = args[6] if len(args) > 6 else None
    if ceil_mode or divisor is not None:
        raise UnsupportedModuleError(
            f"{where}: average pooling with ceil_mode or a divisor override"
        )
    return _average_conv(converter, x, kernel, stride, padding, where, count_include_pad)


def _average_conv(
    converter: Converter,
    x: Traced,
    kernel: int | list[int] | tuple[int, ...],
    stride: int | list[int] | tuple[int, ...],
    padding: int | list[int] | tuple[int, ...],
    where: str,
    count_include_pad: bool = True,
) -> Traced:
    """The window sums (a depthwise convolution of ones, exact) divided by the window size —
    or, without counting the padding, by each window's number of real entries — as a scaling
    whose ``1/k`` carries its rounding."""
    shape = converter.shape(x)
    spatial = len(shape) - 1
    kernel, stride, padding = (tupled(v, spatial) for v in (kernel, stride, padding))
    channels = shape[0]
    weight = torch.ones((channels, 1, *kernel), dtype=torch.float64)
    functional = F.conv1d if spatial == 1 else F.conv2d
    ones = torch.ones(1, *shape, dtype=torch.float64)
    counts = functional(ones, weight, None, stride, padding, 1, channels)
    out_shape = tuple(counts.shape[1:])
    op = Conv(
        weight,
        torch.zeros(channels, dtype=torch.float64),
        stride,
        padding,
        (1,) * spatial,
        channels,
        shape,
        out_shape,
    )
    summed = converter.add(op, [x], where)
    if count_include_pad:
        counts = torch.full_like(counts, float(math.prod(kernel)))
    return _divided(converter, summed, counts.reshape(-1), where)


def _divided(converter: Converter, value: Traced, count: int | torch.Tensor, where: str) -> Traced:
    """``value / count`` (a number, or one per entry) as a scaling by ``1/count`` with its
    rounding bound."""
    shape = converter.shape(value)
    counts = torch.as_tensor(count, dtype=torch.float64).expand(math.prod(shape))
    factor = 1.0 / counts
    op = Scale(
        Enclosure(factor, U64 * factor * (1 + 4 * U64)),
        Enclosure(torch.zeros_like(factor)),
        shape,
    )
    return converter.add(op, [value], where)


def _adaptive_avg_pool(
    converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str
) -> Result:
    x, size = args[0], args[1]
    shape = converter.shape(x)
    spatial = shape[1:]
    size = tuple(size) if isinstance(size, list | tuple) else (size,) * len(spatial)
    if any(s is None or n % s for n, s in zip(spatial, size, strict=True)):
        raise UnsupportedModuleError(
            f"{where}: adaptive average pooling from {spatial} to {size} (uneven windows)"
        )
    kernel = tuple(n // s for n, s in zip(spatial, size, strict=True))
    return _average_conv(converter, x, kernel, kernel, 0, where)


def _reduce(mean: bool) -> Handler:
    def handler(converter: Converter, node: Node, args: Args, kwargs: Kwargs, where: str) -> Result:
        x = args[0]
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        shape = converter.shape(x)
        rank = len(shape) + 1
        dims = [dims] if isinstance(dims, int) else list(dims or range(1, rank))
        axes = sorted({d % rank for d in dims})
        if 0 in axes:
            raise UnsupportedModuleError(f"{where}: a reduction over the batch dimension")
        kept = [a for a in range(1, rank) if a not in axes]
        count = math.prod(shape[a - 1] for a in axes)
        in_shape = (*[shape[a - 1] for a in kept], count)
        order = [0, *kept, *axes]
        grouped = converter.reindex(
            lambda t: t.permute(order).reshape(TRACE_BATCH, *in_shape), [x], where
        )
        out_shape = (*in_shape[:-1], 1)
        ones = Enclosure(torch.ones((1, count), dtype=torch.float64))
        op = Dense(ones, Enclosure(torch.zeros(1, dtype=torch.float64)), in_shape, out_shape)
        reduced = converter.add(op, [grouped], where)
        if mean:
            reduced = _divided(converter, reduced, count, where)
        final = tuple(int(s) for s in node.meta["val"].shape[1:])
        return converter.reshape(reduced, final, where)

    return handler


_REINDEX = (
    "view",
    "_unsafe_view",
    "reshape",
    "flatten",
    "unflatten",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "expand",
    "slice",
    "select",
    "narrow",
    "repeat",
    "flip",
    "roll",
    "movedim",
    "index_select",
)
HANDLERS: dict[str, Handler] = {name: _reindex for name in _REINDEX}
#: activations without arguments, each one fixed spec
_FIXED = {
    "relu": act.RELU,
    "silu": act.SILU,
    "tanh": act.TANH,
    "sigmoid": act.SIGMOID,
    "abs": act.ABS,
    "mish": act.MISH,
    "hardswish": act.HARDSWISH,
    "hardsigmoid": act.HARDSIGMOID,
}
HANDLERS.update(
    {name: pointwise.activation(lambda *a, s=spec, **k: s) for name, spec in _FIXED.items()}
)
HANDLERS.update(
    {
        "clone": _identity,
        "contiguous": _identity,
        "alias": _identity,
        "detach": _identity,
        "lift_fresh_copy": _identity,
        "_to_copy": _identity,
        "dropout": _dropout,
        "cat": _concatenate,
        "stack": _concatenate,
        "split": _tuple_reindex,
        "split_with_sizes": _tuple_reindex,
        "chunk": _tuple_reindex,
        "unbind": _tuple_reindex,
        "pad": _pad,
        "constant_pad_nd": _constant_pad,
        "linear": _linear,
        "addmm": _addmm,
        "mm": _matmul,
        "matmul": _matmul,
        "conv1d": _convolution,
        "conv2d": _convolution,
        "convolution": _convolution,
        "batch_norm": _batch_norm,
        "_native_batch_norm_legit_no_training": _batch_norm,
        "add": _binary(1.0),
        "sub": _binary(-1.0),
        "rsub": _rsub,
        "mul": _multiply,
        "div": _divide,
        "neg": _negate,
        "leaky_relu": pointwise.activation(pointwise.leaky),
        "elu": pointwise.elu,
        "selu": pointwise.selu,
        "celu": pointwise.celu,
        "gelu": pointwise.gelu,
        "hardtanh": pointwise.clamp,
        "clamp": pointwise.clamp,
        "relu6": pointwise.relu6,
        "softplus": pointwise.softplus,
        "prelu": pointwise.prelu,
        "_prelu_kernel": pointwise.prelu,
        "sort": pointwise.sort,
        "max_pool1d": pointwise.max_pool,
        "max_pool2d": pointwise.max_pool,
        "max_pool1d_with_indices": pointwise.max_pool,
        "max_pool2d_with_indices": pointwise.max_pool,
        "avg_pool1d": _avg_pool,
        "avg_pool2d": _avg_pool,
        "adaptive_avg_pool1d": _adaptive_avg_pool,
        "adaptive_avg_pool2d": _adaptive_avg_pool,
        "mean": _reduce(True),
        "sum": _reduce(False),
    }
)
#: why an operation is refused, where there is more to say than "unknown"
REFUSED = {
    "_native_batch_norm_legit_functional": "batch norm in training mode normalises by the "
    "batch; call eval()",
    "_native_batch_norm_legit": "batch norm in training mode normalises by the batch; call eval()",
    "layer_norm": "LayerNorm divides by the input's own spread: no useful global Lipschitz "
    "constant (it is unbounded near constant inputs)",
    "native_layer_norm": "LayerNorm has no useful global Lipschitz constant",
    "group_norm": "GroupNorm divides by the input's own spread: no useful global constant",
    "softmax": "softmax has no useful global constant here (bound the logits instead)",
    "_softmax": "softmax has no useful global constant here (bound the logits instead)",
    "log_softmax": "log-softmax has no useful global constant here",
    "exp": "exp has no global Lipschitz constant",
    "log": "log has no global Lipschitz constant",
    "sqrt": "sqrt has no global Lipschitz constant",
    "pow": "powers have no global Lipschitz constant",
    "bmm": "a product of two input-dependent tensors has no global Lipschitz constant",
    "max": "max over a dimension: use max-pooling or GroupSort",
    "embedding": "an embedding lookup is not a continuous function of its input",
}
