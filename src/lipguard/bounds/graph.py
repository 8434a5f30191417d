"""Models as the bound engine sees them: a sequence of operators built by a per-module registry.

:func:`to_operators` walks a model and turns each supported module into operators on the
flattened per-sample feature vector:

- :class:`Dense` — ``y = W x + b`` (``nn.Linear``, lipguard's linear layers);
- :class:`Conv` — a convolution on a known input shape (``nn.Conv1d``/``nn.Conv2d``, zero padding);
- :class:`Activation` — an elementwise :class:`~lipguard.bounds.activations.ActivationSpec`;
- :class:`Sort` — GroupSort / MaxMin on groups of consecutive features;
- :class:`Skip` — a residual block ``x + body(x)``.

Dispatch is on the module's exact type (a subclass may override ``forward``, so it is never
assumed to behave like its parent); parametrised modules (``torch.nn.utils.parametrize``) map to
their original class, whose ``forward`` reads the parametrised weight. Modules with forward hooks,
dropout in training mode and unregistered types raise :class:`UnsupportedModuleError` naming
the module: nothing is silently treated as 1-Lipschitz. :func:`register_module` adds handlers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lipguard.bounds import activations as act
from lipguard.bounds.enclosure import Enclosure
from lipguard.errors import InvalidArgumentError, ShapeError, UnsupportedModuleError
from lipguard.nn.activations import GroupSort, MaxMin
from lipguard.nn.affine import DiagonalAffine
from lipguard.nn.linear_model import LipschitzLinearModel
from lipguard.nn.mlp import LipschitzMLP
from lipguard.nn.orthogonal import OrthogonalLinear, SVDLinear
from lipguard.nn.residual import Residual
from lipguard.nn.spectral import SpectralLinear

Shape = tuple[int, ...]

#: a convolution is materialised as a dense matrix only up to this many entries
MAX_DENSE_ENTRIES = 2**24


@dataclass(frozen=True)
class Dense:
    """``y = W x + b`` on flattened features; ``matrix`` and ``bias`` carry rounding bounds."""

    matrix: Enclosure
    bias: Enclosure
    in_shape: Shape
    out_shape: Shape


@dataclass(frozen=True)
class Conv:
    """A convolution (cross-correlation, zero padding) on inputs of shape ``in_shape``."""

    weight: torch.Tensor  # float64, (out_channels, in_channels / groups, *kernel)
    bias: torch.Tensor  # float64, (out_channels,)
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    in_shape: Shape
    out_shape: Shape

    def apply(self, x: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """The convolution on a batch of flattened float64 inputs."""
        functional = F.conv1d if len(self.in_shape) == 2 else F.conv2d
        out = functional(
            x.reshape(-1, *self.in_shape),
            self.weight,
            self.bias if with_bias else None,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return out.reshape(x.shape[0], -1)

    def dense(self) -> Dense:
        """The exact dense matrix (columns are responses to basis vectors: one product each)."""
        size_in, size_out = math.prod(self.in_shape), math.prod(self.out_shape)
        if size_in * size_out > MAX_DENSE_ENTRIES:
            raise UnsupportedModuleError(
                f"a convolution from {self.in_shape} to {self.out_shape} is too large to "
                f"materialise ({size_in}×{size_out}); use method='product'"
            )
        basis = torch.eye(size_in, dtype=torch.float64, device=self.weight.device)
        matrix = self.apply(basis, with_bias=False).T.contiguous()
        bias = self.bias.repeat_interleave(math.prod(self.out_shape[1:]))
        return Dense(Enclosure(matrix), Enclosure(bias), self.in_shape, self.out_shape)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation."""

    spec: act.ActivationSpec
    shape: Shape


@dataclass(frozen=True)
class Sort:
    """Sort consecutive groups of ``group_size`` features (GroupSort, MaxMin)."""

    group_size: int
    descending: bool
    shape: Shape


@dataclass(frozen=True)
class Skip:
    """A residual block ``x + body(x)``."""

    body: tuple[Operator, ...]
    shape: Shape


Operator = Dense | Conv | Activation | Sort | Skip
Handler = Callable[[nn.Module, Shape, str], tuple[list[Operator], Shape]]
_HANDLERS: dict[type[nn.Module], Handler] = {}


def register_module(module_type: type[nn.Module], handler: Handler) -> None:
    """Teach the bound engine a module type.

    ``handler(module, input_shape, path)`` returns the module's operators and its output shape
    (per sample, without the batch dimension). Registering a type you can only bound loosely is
    fine; registering one whose operators do not compute the module's function is unsound.
    """
    _HANDLERS[module_type] = handler


def to_operators(model: nn.Module, input_shape: Sequence[int]) -> list[Operator]:
    """The operators of ``model`` for per-sample inputs of shape ``input_shape``."""
    shape = tuple(int(size) for size in input_shape)
    if not shape or any(size < 1 for size in shape):
        raise ShapeError(f"input_shape must be a non-empty shape of positive sizes, got {shape}")
    operators, _ = _convert(model, shape, "model")
    return operators


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


def _convert(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedModuleError(
            f"{path} ({type(module).__name__}) has forward hooks, which can change its output; "
            "remove them before bounding the model"
        )
    handler = _HANDLERS.get(_dispatch_type(module, path))
    if handler is None:
        raise UnsupportedModuleError(
            f"{path}: {type(module).__name__} is not supported by the bound engine (it is never "
            "assumed to be 1-Lipschitz); register it with lipguard.bounds.register_module"
        )
    return handler(module, shape, path)


def _flat_size(shape: Shape, path: str, layer: nn.Module) -> int:
    if len(shape) != 1:
        raise ShapeError(
            f"{path} ({type(layer).__name__}) receives features of shape {shape}; lipguard "
            "bounds linear layers on flat features only (add nn.Flatten before it)"
        )
    return shape[0]


def sequential_handler(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    """The handler of ``nn.Sequential``: its children's operators in order. Register it for
    ``Sequential`` subclasses whose ``forward`` is the plain chain."""
    operators: list[Operator] = []
    for name, child in module.named_children():
        converted, shape = _convert(child, shape, f"{path}.{name}")
        operators += converted
    return operators, shape


def _dense(
    weight: torch.Tensor, bias: torch.Tensor | None, shape: Shape, path: str, layer: nn.Module
) -> tuple[list[Operator], Shape]:
    size = _flat_size(shape, path, layer)
    if weight.shape[1] != size:
        raise ShapeError(f"{path} expects {weight.shape[1]} features, gets {size}")
    out = weight.shape[0]
    bias_value = torch.zeros(out, dtype=weight.dtype) if bias is None else bias
    operator = Dense(Enclosure.exact(weight), Enclosure.exact(bias_value), shape, (out,))
    return [operator], (out,)


def _linear(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    return _dense(module.weight, module.bias, shape, path, module)


def _diagonal_affine(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    return _dense(torch.diag(module.scale), module.offset, shape, path, module)


def _lipguard_linear(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    with torch.no_grad():
        weight = module.effective_weight()
    return _dense(weight, module.bias, shape, path, module)


def _conv(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
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
    weight = module.weight.detach().to(torch.float64)
    bias = (
        torch.zeros(module.out_channels, dtype=torch.float64, device=weight.device)
        if module.bias is None
        else module.bias.detach().to(torch.float64)
    )
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    functional = F.conv1d if spatial == 1 else F.conv2d
    with warnings.catch_warnings():  # padding='same' with even kernels warns about a copy
        warnings.simplefilter("ignore", UserWarning)
        probe = functional(
            torch.zeros(1, *shape, dtype=torch.float64, device=weight.device),
            weight,
            None,
            module.stride,
            padding,
            module.dilation,
            module.groups,
        )
    out_shape = tuple(probe.shape[1:])
    operator = Conv(
        weight,
        bias,
        tuple(module.stride),
        padding,
        tuple(module.dilation),
        module.groups,
        shape,
        out_shape,
    )
    return [operator], out_shape


def _activation(spec: act.ActivationSpec) -> Handler:
    def handler(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
        return [Activation(spec, shape)], shape

    return handler


def _leaky_relu(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    return [Activation(act.leaky_relu(module.negative_slope), shape)], shape


def _elu(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    if module.alpha < 0:
        raise UnsupportedModuleError(f"{path}: ELU with alpha < 0 is not monotone; unsupported")
    return [Activation(act.elu(module.alpha), shape)], shape


def _gelu(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    if module.approximate != "none":
        raise UnsupportedModuleError(
            f"{path}: GELU(approximate={module.approximate!r}) is "
            "not supported (use approximate='none')"
        )
    return [Activation(act.GELU, shape)], shape


def _group_sort(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    if module.dim % (len(shape) + 1) != len(shape):
        raise UnsupportedModuleError(
            f"{path}: {type(module).__name__}(dim={module.dim}) on features of shape {shape}; "
            "only sorting along the last feature dimension is supported"
        )
    size = _flat_size(shape, path, module)
    if size % module.group_size:
        raise ShapeError(f"{path}: group size {module.group_size} does not divide {size}")
    return [Sort(module.group_size, module.descending, shape)], shape


def _flatten(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    start, end = module.start_dim, module.end_dim
    if start != 1 or end not in (-1, len(shape)):
        raise UnsupportedModuleError(
            f"{path}: Flatten(start_dim={start}, end_dim={end}) must flatten every per-sample "
            "dimension (start_dim=1, end_dim=-1)"
        )
    return [], (math.prod(shape),)


def _identity(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    return [], shape


def _dropout(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    if module.training and module.p > 0:
        raise UnsupportedModuleError(
            f"{path}: {type(module).__name__} in training mode is random; call model.eval()"
        )
    return [], shape


def _residual(module: nn.Module, shape: Shape, path: str) -> tuple[list[Operator], Shape]:
    body, out_shape = _convert(module.body, shape, f"{path}.body")
    if out_shape != shape:
        raise ShapeError(f"{path}: the residual body maps {shape} to {out_shape}")
    return [Skip(tuple(body), shape)], shape


for _type in (nn.Sequential, LipschitzMLP):
    register_module(_type, sequential_handler)
register_module(nn.Linear, _linear)
register_module(DiagonalAffine, _diagonal_affine)
for _type in (SpectralLinear, OrthogonalLinear, SVDLinear, LipschitzLinearModel):
    register_module(_type, _lipguard_linear)
register_module(nn.Conv1d, _conv)
register_module(nn.Conv2d, _conv)
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
for _type in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout):
    register_module(_type, _dropout)
register_module(Residual, _residual)
