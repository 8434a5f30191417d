"""The module front end: a per-module registry turns a model into a chain of operators.

:func:`to_operators` walks a model and turns each supported module into operators of
:mod:`lipguard.bounds.ops` on the flattened per-sample feature vector (``nn.Linear`` and
lipguard's linear layers → ``Dense``, convolutions → ``Conv``, activations → ``Activation``,
GroupSort/MaxMin → ``Sort``, residual blocks → ``Skip``, …); :func:`module_graph` makes the
chain a :class:`~lipguard.bounds.ir.Graph`, labelling every node with its module's path.

Dispatch is on the module's exact type (a subclass may override ``forward``, so it is never
assumed to behave like its parent); parametrised modules (``torch.nn.utils.parametrize``) map to
their original class, whose ``forward`` reads the parametrised weight. A handler describes what
the class's ``forward`` computes, so anything that makes a call compute something else is
refused by name (:class:`UnsupportedModuleError`), never assumed:

- forward hooks and pre-hooks, on the module or global (``register_module_forward_hook``);
- an instance attribute ``forward``/``__call__``/``_call_impl`` (what accelerate-style wrappers
  set), a ``Module.compile()``d call, a class whose ``forward`` or ``torch.nn.Module``'s call
  machinery was replaced after registration, a replaced ``torch.nn.functional`` op, an active
  ``TorchFunctionMode`` or ``TorchDispatchMode``;
- an in-place module (``inplace=True``) whose input is read again afterwards: the input of a
  residual block's body (``x + body(x)`` would add the overwritten ``x``) and the model's own
  input, reached through views and pass-through modules (``Identity``, ``Flatten``, eval
  ``Dropout``);
- dropout in training mode, unregistered types, non-finite weights or activation parameters.

:func:`register_module` adds handlers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lipguard._modules import placed_children
from lipguard.bounds import activations as act
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ir import Builder, Graph
from lipguard.bounds.ops import (
    Activation,
    Conv,
    Dense,
    Gather,
    Operator,
    Scale,
    Shape,
    Skip,
    Sort,
    index_map,
)
from lipguard.errors import (
    InvalidArgumentError,
    ShapeError,
    UnregisteredModuleError,
    UnsupportedModuleError,
)
from lipguard.nn.activations import GroupSort, MaxMin
from lipguard.nn.affine import DiagonalAffine
from lipguard.nn.base import LipschitzLinear
from lipguard.nn.cnn import LipschitzCNN
from lipguard.nn.conv import AOLConv2d, LipschitzConv2d, SLLConv2d, SpectralConv2d
from lipguard.nn.linear_model import LipschitzLinearModel
from lipguard.nn.mlp import LipschitzMLP
from lipguard.nn.orthogonal import OrthogonalLinear, SVDLinear
from lipguard.nn.residual import Residual
from lipguard.nn.spectral import SpectralLinear

M = TypeVar("M", bound=nn.Module)
#: ``handler(module, input_shape, path)``: the operators of a module and its output shape
Handler = Callable[[nn.Module, Shape, str], tuple[list[Operator], Shape]]
_HANDLERS: dict[type[nn.Module], Handler] = {}
#: each registered type's ``forward`` when it was registered (a later replacement is refused)
_FORWARDS: dict[type[nn.Module], Callable[..., object]] = {}
#: ``torch.nn.Module``'s call machinery as imported
_CALL_MACHINERY = {name: vars(nn.Module)[name] for name in ("__call__", "_wrapped_call_impl")}
_CALL_MACHINERY["_call_impl"] = vars(nn.Module)["_call_impl"]
#: the functional ops the registered forwards call, as imported
_FUNCTIONAL = {
    name: getattr(F, name)
    for name in (
        "linear",
        "conv1d",
        "conv2d",
        "relu",
        "leaky_relu",
        "elu",
        "gelu",
        "silu",
        "dropout",
        "dropout1d",
        "dropout2d",
        "alpha_dropout",
    )
}
_TORCH_OPS = {name: getattr(torch, name) for name in ("tanh", "sigmoid")}
#: instance attributes that replace what calling a module does
_INSTANCE_OVERRIDES = ("forward", "__call__", "_call_impl", "_wrapped_call_impl")
#: True while the tensor the next module receives is also read later (a residual block's
#: input, the model's input): an in-place module there would change what is read
_INPUT_SHARED: ContextVar[bool] = ContextVar("lipguard_input_shared", default=False)
#: the module path of each operator made during a walk (keyed by id), for the graph's labels
_LABELS: ContextVar[dict[int, str] | None] = ContextVar("lipguard_labels", default=None)


def register_module(
    module_type: type[M], handler: Callable[[M, Shape, str], tuple[list[Operator], Shape]]
) -> None:
    """Teach the bound engine a module type.

    ``handler(module, input_shape, path)`` returns the module's operators and its output shape
    (per sample, without the batch dimension). Registering a type you can only bound loosely is
    fine; registering one whose operators do not compute the module's function is unsound. The
    type's ``forward`` is recorded now: a module whose class ``forward`` is later replaced is
    refused.
    """
    # dispatch is on the exact type (or the original class of a parametrised module, a base of
    # its own): the handler only ever receives instances of module_type
    _HANDLERS[module_type] = cast(Handler, handler)
    _FORWARDS[module_type] = module_type.forward


def to_operators(model: nn.Module, input_shape: Sequence[int]) -> list[Operator]:
    """The operators of ``model`` for per-sample inputs of shape ``input_shape``."""
    return _walk(model, input_shape)[0]


def module_graph(model: nn.Module, input_shape: Sequence[int]) -> Graph:
    """The graph of ``model``'s operator chain, each node labelled with its module's path."""
    operators, labels = _walk(model, input_shape)
    builder = Builder()
    start = builder.input(tuple(int(size) for size in input_shape), "input")
    return builder.finish(builder.chain(operators, start, "model", labels))


def _walk(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[Operator], dict[int, str]]:
    shape = tuple(int(size) for size in input_shape)
    if not shape or any(size < 1 for size in shape):
        raise ShapeError(f"input_shape must be a non-empty shape of positive sizes, got {shape}")
    _check_global_state()
    labels: dict[int, str] = {}
    shared, labelled = _INPUT_SHARED.set(True), _LABELS.set(labels)  # the caller's input
    try:
        operators, _ = _convert(model, shape, "model")
    finally:
        _INPUT_SHARED.reset(shared)
        _LABELS.reset(labelled)
    return operators, labels


def _check_global_state() -> None:
    """Refuse process-wide changes to what calling a module computes."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        raise UnsupportedModuleError(
            "a global forward hook or pre-hook is registered "
            "(torch.nn.modules.module.register_module_forward_hook / _pre_hook); it can change "
            "every module's output: remove it before bounding a model"
        )
    for name, original in _CALL_MACHINERY.items():
        if vars(nn.Module)[name] is not original:
            raise UnsupportedModuleError(f"torch.nn.Module.{name} has been replaced")
    for namespace, originals, label in (
        (F, _FUNCTIONAL, "torch.nn.functional"),
        (torch, _TORCH_OPS, "torch"),
    ):
        for name, original in originals.items():
            if getattr(namespace, name) is not original:
                raise UnsupportedModuleError(f"{label}.{name} has been replaced")
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    modes = [m for m in _get_current_function_mode_stack() if type(m) is not DeviceContext]
    if modes or _get_current_dispatch_mode_stack():  # a default-device context only places
        raise UnsupportedModuleError(
            "a TorchFunctionMode or TorchDispatchMode is active; it can change what every "
            "operation computes: bound the model outside it"
        )


_SIMPLE = (bool, int, float, str, type(None))


def module_settings(module: nn.Module) -> dict[str, object]:
    """A module's own settings: every attribute of a simple type (or a tuple/list of them),
    ``training`` excepted — e.g. ``in_features``, ``negative_slope``, ``inplace``, a lipguard
    layer's ``_lipschitz``. Anything a handler reads besides tensors is among them."""
    settings: dict[str, object] = {}
    for key, value in sorted(vars(module).items()):
        if key == "training":
            continue
        if isinstance(value, _SIMPLE) or (
            isinstance(value, tuple | list) and all(isinstance(v, _SIMPLE) for v in value)
        ):
            settings[key] = list(value) if isinstance(value, tuple | list) else value
    return settings


def infer_input_shape(model: nn.Module) -> Shape:
    """The per-sample input shape when the first layer determines it (a linear layer)."""
    first = model
    while isinstance(first, nn.Sequential | Residual) and len(list(first.children())):
        first = next(iter(first.children()))
    for attribute in ("in_features",):
        if hasattr(first, attribute) and not isinstance(first, nn.Sequential):
            return (int(getattr(first, attribute)),)
    if isinstance(first, DiagonalAffine):
        return (first.scale.numel(),)
    raise InvalidArgumentError(
        f"cannot infer the input shape of a model starting with {type(first).__name__}; "
        "pass input_shape=(...) (per sample, without the batch dimension)"
    )


def _dispatch_type(module: nn.Module, path: str) -> type[nn.Module]:
    if parametrize.is_parametrized(module):
        if module.training:
            raise UnsupportedModuleError(
                f"{path} ({type(module).__name__}) is parametrised and in training mode, where "
                "its weight changes at every call; call model.eval() first"
            )
        return type(module).__bases__[0]
    return type(module)


def check_untampered(model: nn.Module) -> None:
    """Refuse global overrides and, in every submodule, hooks and overrides of what calling it
    computes (the checks the registry applies module by module, for a model it will not walk)."""
    _check_global_state()
    for path, module in model.named_modules(prefix="model"):
        _check_calls(module, path)


def _check_calls(module: nn.Module, path: str) -> None:
    name = type(module).__name__
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedModuleError(
            f"{path} ({name}) has forward hooks, which can change its output; "
            "remove them before bounding the model"
        )
    for attribute in _INSTANCE_OVERRIDES:
        if attribute in vars(module):
            raise UnsupportedModuleError(
                f"{path} ({name}) has its own instance attribute {attribute!r}, which replaces "
                "what calling it computes (a forward override); lipguard bounds only what the "
                "class's forward computes"
            )
    if getattr(module, "_compiled_call_impl", None) is not None:
        raise UnsupportedModuleError(
            f"{path} ({name}) was compiled with Module.compile(); bound the uncompiled module"
        )
    for attribute, original in _CALL_MACHINERY.items():
        if getattr(type(module), attribute) is not original:
            raise UnsupportedModuleError(
                f"{path} ({name}) defines or replaces {attribute}; only forward is understood"
            )


def _convert(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    name = type(module).__name__
    _check_calls(module, path)
    dispatch = _dispatch_type(module, path)
    handler = _HANDLERS.get(dispatch)
    if handler is None:
        raise UnregisteredModuleError(
            f"{path}: {name} is not supported by the bound engine (it is never "
            "assumed to be 1-Lipschitz); register it with lipguard.bounds.register_module"
        )
    if type(module).forward is not _FORWARDS[dispatch]:
        raise UnsupportedModuleError(
            f"{path}: {name}.forward was replaced after it was registered with the bound engine"
        )
    if getattr(module, "inplace", False) and _INPUT_SHARED.get():
        raise UnsupportedModuleError(
            f"{path} ({name}, inplace=True) overwrites its input in-place, which is read again "
            "afterwards (by a residual connection, or it is the model's input); use "
            "inplace=False there"
        )
    operators, out_shape = handler(module, shape, path)
    if operators:  # a fresh tensor: later in-place modules change nothing that is read again
        _INPUT_SHARED.set(False)
    labels = _LABELS.get()
    if labels is not None:
        for operator in operators:  # children labelled their own operators first
            labels.setdefault(id(operator), path)
    return operators, out_shape


def sequential_handler(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    """The handler of ``nn.Sequential``: its children's operators in order. Register it for
    ``Sequential`` subclasses whose ``forward`` is the plain chain."""
    operators: list[Operator] = []
    for name, child in placed_children(module):
        converted, shape = _convert(child, shape, f"{path}.{name}")
        operators += converted
    return operators, shape


def _dense(
    weight: torch.Tensor, bias: torch.Tensor | None, shape: Shape, path: str, layer: nn.Module
) -> tuple[list[Operator], Shape]:
    if shape[-1] != weight.shape[1]:
        raise ShapeError(
            f"{path} ({type(layer).__name__}) expects {weight.shape[1]} features in the last "
            f"dimension, gets inputs of shape {shape}"
        )
    for label, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and not bool(torch.isfinite(tensor.detach()).all()):
            raise UnsupportedModuleError(
                f"{path} ({type(layer).__name__}): its effective {label} holds NaN or infinity"
            )
    out_shape = (*shape[:-1], weight.shape[0])
    bias_value = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias
    operator = Dense(Enclosure.exact(weight), Enclosure.exact(bias_value), shape, out_shape)
    return [operator], out_shape


def _linear(module: nn.Linear, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    return _dense(module.weight, module.bias, shape, path, module)


def _diagonal_affine(
    module: DiagonalAffine, shape: Shape, path: str
) -> tuple[list[Operator], Shape]:
    if shape[-1] != module.scale.numel():
        raise ShapeError(
            f"{path} (DiagonalAffine) scales {module.scale.numel()} features, gets inputs of "
            f"shape {shape}"
        )
    for label, tensor in (("scale", module.scale), ("offset", module.offset)):
        if not bool(torch.isfinite(tensor).all()):
            raise UnsupportedModuleError(f"{path} (DiagonalAffine): its {label} is not finite")
    rows = math.prod(shape[:-1])
    scale = Enclosure.exact(module.scale.detach().repeat(rows))
    shift = Enclosure.exact(module.offset.detach().repeat(rows))
    return [Scale(scale, shift, shape)], shape


def _lipguard_linear(
    module: LipschitzLinear | LipschitzLinearModel, shape: Shape, path: str
) -> tuple[list[Operator], Shape]:
    with torch.no_grad():
        weight = module.effective_weight()
    return _dense(weight, module.bias, shape, path, module)


def _conv(module: nn.Conv1d | nn.Conv2d, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    spatial = 1 if isinstance(module, nn.Conv1d) else 2
    if len(shape) != spatial + 1 or shape[0] != module.in_channels:
        raise ShapeError(
            f"{path} ({type(module).__name__}) needs inputs of shape (channels={module.in_channels}"
            f", {spatial} spatial sizes), gets {shape}"
        )
    if module.padding_mode != "zeros":
        raise UnsupportedModuleError(
            f"{path}: padding_mode={module.padding_mode!r} is not supported (only 'zeros')"
        )
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    operator = _conv_operator(
        module.weight.detach(),
        module.bias,
        tuple(module.stride),
        padding,
        tuple(module.dilation),
        module.groups,
        shape,
    )
    return [operator], operator.out_shape


def _conv_operator(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...] | str,
    dilation: tuple[int, ...],
    groups: int,
    shape: Shape,
) -> Conv:
    """The engine's convolution for a kernel applied with zero padding to inputs of ``shape``."""
    weight = weight.detach().to("cpu", torch.float64)
    bias64 = (
        torch.zeros(weight.shape[0], dtype=torch.float64)
        if bias is None
        else bias.detach().to("cpu", torch.float64)
    )
    functional = F.conv1d if len(shape) == 2 else F.conv2d
    with warnings.catch_warnings():  # padding='same' with even kernels warns about a copy
        warnings.simplefilter("ignore", UserWarning)
        probe = functional(
            torch.zeros(1, *shape, dtype=torch.float64),
            weight,
            None,
            stride,
            padding,
            dilation,
            groups,
        )
    out_shape = tuple(probe.shape[1:])
    return Conv(weight, bias64, stride, padding, dilation, groups, shape, out_shape)


def _lipguard_conv(
    module: LipschitzConv2d, shape: Shape, path: str
) -> tuple[list[Operator], Shape]:
    if len(shape) != 3 or shape[0] != module.in_channels:
        raise ShapeError(
            f"{path} ({type(module).__name__}) needs inputs of shape (channels="
            f"{module.in_channels}, height, width), gets {shape}"
        )
    if isinstance(module, SpectralConv2d) and (
        shape[1] > module.input_size[0] or shape[2] > module.input_size[1]
    ):
        raise ShapeError(
            f"{path} (SpectralConv2d) is proven for inputs of up to {module.input_size} pixels, "
            f"gets {shape}"
        )
    with torch.no_grad():
        kernel = module.effective_weight()
    _check_finite(module, path, kernel, module.bias)
    operator = _conv_operator(kernel, module.bias, module.stride, module.padding, (1, 1), 1, shape)
    return [operator], operator.out_shape


def _sll(module: SLLConv2d, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    """``x - 2·convᵀ(t⁻¹ ⊙ relu(conv(x) + b))`` as a residual chain; the adjoint of a stride-1
    ``'same'`` convolution is the convolution with the flipped, channel-transposed kernel."""
    if len(shape) != 3 or shape[0] != module.channels:
        raise ShapeError(
            f"{path} (SLLConv2d) needs inputs of shape (channels={module.channels}, height, "
            f"width), gets {shape}"
        )
    with torch.no_grad():
        inverse = module.inverse_t().detach().to("cpu", torch.float64)
    kernel = module.weight.detach().cpu()
    _check_finite(module, path, kernel, module.bias)
    padding = (module.padding, module.padding)
    inner = _conv_operator(kernel, module.bias, (1, 1), padding, (1, 1), 1, shape)
    pixels = math.prod(inner.out_shape[1:])
    scale = Scale(
        Enclosure.exact(-2.0 * inverse.repeat_interleave(pixels)),
        Enclosure.exact(torch.zeros(inner.out_shape[0] * pixels, dtype=torch.float64)),
        inner.out_shape,
    )
    adjoint = kernel.transpose(0, 1).flip(2, 3)
    outer = _conv_operator(adjoint, None, (1, 1), padding, (1, 1), 1, inner.out_shape)
    body: list[Operator] = [inner, Activation(act.RELU, inner.out_shape), scale, outer]
    return [Skip(tuple(body), shape)], shape


def _check_finite(
    module: nn.Module, path: str, kernel: torch.Tensor, bias: torch.Tensor | None
) -> None:
    for label, tensor in (("weight", kernel), ("bias", bias)):
        if tensor is not None and not bool(torch.isfinite(tensor.detach()).all()):
            raise UnsupportedModuleError(
                f"{path} ({type(module).__name__}): its effective {label} holds NaN or infinity"
            )


def _pixel_shuffle(
    module: nn.PixelShuffle | nn.PixelUnshuffle, shape: Shape, path: str
) -> tuple[list[Operator], Shape]:
    """A re-indexing (every entry copied once): norm 1 in every ℓp."""
    if len(shape) != 3:
        raise ShapeError(f"{path} ({type(module).__name__}) needs (C, H, W) inputs, gets {shape}")
    if isinstance(module, nn.PixelShuffle):
        factor = module.upscale_factor

        def function(t: torch.Tensor) -> torch.Tensor:
            return F.pixel_shuffle(t, factor)
    else:
        factor = module.downscale_factor

        def function(t: torch.Tensor) -> torch.Tensor:
            return F.pixel_unshuffle(t, factor)

    try:
        out_shape = tuple(function(torch.zeros(1, *shape)).shape[1:])
    except RuntimeError as error:
        raise ShapeError(f"{path} ({type(module).__name__}): {error}") from None
    index = index_map(function, [shape])
    return [Gather(index, None, (math.prod(shape),), out_shape)], out_shape


def _activation(spec: act.ActivationSpec) -> Handler:
    def handler(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
        return [Activation(spec, shape)], shape

    return handler


def _parameter(module: nn.Module, name: str, path: str) -> float:
    value = getattr(module, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnsupportedModuleError(
            f"{path}: {type(module).__name__}.{name} must be a number, got {value!r}"
        )
    if not math.isfinite(value):
        raise UnsupportedModuleError(f"{path}: {type(module).__name__}.{name} = {value!r}")
    return float(value)


def _leaky_relu(module: nn.LeakyReLU, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    slope = _parameter(module, "negative_slope", path)
    return [Activation(act.leaky_relu(slope), shape)], shape


def _elu(module: nn.ELU, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    alpha = _parameter(module, "alpha", path)
    if alpha < 0:
        raise UnsupportedModuleError(f"{path}: ELU with alpha < 0 is not monotone; unsupported")
    return [Activation(act.elu(alpha), shape)], shape


def _gelu(module: nn.GELU, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    if module.approximate != "none":
        raise UnsupportedModuleError(
            f"{path}: GELU(approximate={module.approximate!r}) is "
            "not supported (use approximate='none')"
        )
    return [Activation(act.GELU, shape)], shape


def _group_sort(module: GroupSort, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    """Sorting along the last dimension, or along the channels of an image (moved last and
    back by two permutations of the entries, each of norm 1)."""
    dim = module.dim % (len(shape) + 1) if isinstance(module.dim, int) else -1
    if dim not in (len(shape), 1):
        raise UnsupportedModuleError(
            f"{path}: {type(module).__name__}(dim={module.dim}) on features of shape {shape}; "
            "only sorting along the last feature dimension or the channels is supported"
        )
    if shape[dim - 1] % module.group_size:
        raise ShapeError(
            f"{path}: group size {module.group_size} does not divide dimension {module.dim} of "
            f"features of shape {shape}"
        )
    if dim == len(shape):
        return [Sort(module.group_size, module.descending, shape)], shape
    moved = (*shape[1:], shape[0])
    size = math.prod(shape)
    to_last = index_map(lambda t: t.movedim(1, -1), [shape])
    back = index_map(lambda t: t.movedim(-1, 1), [moved])
    return [
        Gather(to_last, None, (size,), moved),
        Sort(module.group_size, module.descending, moved),
        Gather(back, None, (size,), shape),
    ], shape


def _flatten(module: nn.Flatten, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    start, end = module.start_dim, module.end_dim
    if start != 1 or end not in (-1, len(shape)):
        raise UnsupportedModuleError(
            f"{path}: Flatten(start_dim={start}, end_dim={end}) must flatten every per-sample "
            "dimension (start_dim=1, end_dim=-1)"
        )
    return [], (math.prod(shape),)


def _identity(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    return [], shape


def _dropout(
    module: nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.AlphaDropout, shape: Shape, path: str
) -> tuple[list[Operator], Shape]:
    if module.training and module.p > 0:
        raise UnsupportedModuleError(
            f"{path}: {type(module).__name__} in training mode is random; call model.eval()"
        )
    return [], shape


def _residual(module: Residual, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    token = _INPUT_SHARED.set(True)  # x is read again by the skip connection
    try:
        body, out_shape = _convert(module.body, shape, f"{path}.body")
    finally:
        _INPUT_SHARED.reset(token)
    if out_shape != shape:
        raise ShapeError(f"{path}: the residual body maps {shape} to {out_shape}")
    return [Skip(tuple(body), shape)], shape


register_module(nn.Sequential, sequential_handler)
register_module(LipschitzMLP, sequential_handler)
register_module(LipschitzCNN, sequential_handler)  # its forward only checks the shape
register_module(nn.Linear, _linear)
register_module(DiagonalAffine, _diagonal_affine)
register_module(SpectralLinear, _lipguard_linear)
register_module(OrthogonalLinear, _lipguard_linear)
register_module(SVDLinear, _lipguard_linear)
register_module(LipschitzLinearModel, _lipguard_linear)
register_module(nn.Conv1d, _conv)
register_module(nn.Conv2d, _conv)
register_module(SpectralConv2d, _lipguard_conv)
register_module(AOLConv2d, _lipguard_conv)
register_module(SLLConv2d, _sll)
register_module(nn.PixelUnshuffle, _pixel_shuffle)
register_module(nn.PixelShuffle, _pixel_shuffle)
register_module(nn.ReLU, _activation(act.RELU))
register_module(nn.Tanh, _activation(act.TANH))
register_module(nn.Sigmoid, _activation(act.SIGMOID))
register_module(nn.SiLU, _activation(act.SILU))
register_module(nn.LeakyReLU, _leaky_relu)
register_module(nn.ELU, _elu)
register_module(nn.GELU, _gelu)
register_module(GroupSort, _group_sort)
register_module(MaxMin, _group_sort)
register_module(nn.Flatten, _flatten)
register_module(nn.Identity, _identity)
register_module(nn.Dropout, _dropout)
register_module(nn.Dropout1d, _dropout)
register_module(nn.Dropout2d, _dropout)
register_module(nn.AlphaDropout, _dropout)
register_module(Residual, _residual)
