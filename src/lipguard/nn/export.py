"""Export lipguard models to plain ``torch.nn`` modules: :func:`vanilla`."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lipguard._modules import placed_children
from lipguard.errors import UnsupportedModuleError
from lipguard.nn.activations import GroupSort
from lipguard.nn.base import LipschitzLinear
from lipguard.nn.conv import LipschitzConv2d, SLLConv2d
from lipguard.nn.linear_model import LipschitzLinearModel
from lipguard.nn.residual import Residual


@torch.no_grad()
def vanilla(
    model: nn.Module,
    *,
    expand_activations: bool = True,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Return a copy of ``model`` built only from ``torch.nn`` modules, computing the same function.

    Every lipguard linear layer becomes an ``nn.Linear`` holding its effective weight (so the
    exported weights carry the same guarantee), and with ``expand_activations`` every
    :class:`GroupSort` / :class:`MaxMin` becomes an exact ``Linear → ReLU → Linear`` sorting
    network (odd–even transposition sort; each comparator uses
    ``max(a, b) = relu(a - b) + relu(b) - relu(-b)``), so the export runs, and can be verified,
    without lipguard. In float64 the outputs agree to rounding (about 1e-15 relative).

    Containers are copied and their children exported recursively; other modules are deep-copied
    unchanged. A sorting network needs the feature width: inside an ``nn.Sequential`` it is taken
    from the preceding linear layer; elsewhere pass ``example_input`` (one forward pass records
    it), or keep the activations with ``expand_activations=False``.

    Raises:
        UnsupportedModuleError: a GroupSort whose width is unknown, or which does not sort the
            last dimension, with ``expand_activations=True``.
    """
    recorded: dict[int, _Features] = {}
    if expand_activations and example_input is not None:
        recorded = _record_group_sort_inputs(model, example_input)
    return _export(model, expand_activations, recorded, None)


#: modules after which a GroupSort sees the features of the layer before them
_WIDTH_PRESERVING = (GroupSort, nn.ReLU, nn.Identity, nn.Dropout, nn.Dropout2d, Residual, SLLConv2d)


@dataclass(frozen=True)
class _Features:
    """Width, dtype and device of the features a GroupSort receives, and whether they are the
    channels of an image (sorted by 1×1 convolutions) rather than the last dimension."""

    width: int
    dtype: torch.dtype
    device: torch.device
    channels: bool = False


def _record_group_sort_inputs(model: nn.Module, example: torch.Tensor) -> dict[int, _Features]:
    recorded: dict[int, _Features] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = args[0]
        dim = module.dim % x.dim() if isinstance(module, GroupSort) else -1
        channels = x.dim() == 4 and dim == 1
        recorded[id(module)] = _Features(x.shape[dim], x.dtype, x.device, channels)

    handles = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, GroupSort)
    ]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def _export(
    module: nn.Module, expand: bool, recorded: dict[int, _Features], features: _Features | None
) -> nn.Module:
    if isinstance(module, LipschitzLinear | LipschitzLinearModel):
        return _as_linear(module)
    if isinstance(module, LipschitzConv2d):
        return _as_conv(module)
    if isinstance(module, SLLConv2d):
        return _as_residual(module)
    if isinstance(module, GroupSort) and expand:
        return _sorting_network(module, recorded.get(id(module), features))
    if isinstance(module, nn.Sequential):
        children = []
        for child in module:
            exported_child = _export(child, expand, recorded, features)
            children.append(exported_child)
            if isinstance(exported_child, nn.Linear | nn.Conv2d):
                weight = exported_child.weight
                channels = isinstance(exported_child, nn.Conv2d)
                features = _Features(weight.shape[0], weight.dtype, weight.device, channels)
            elif not isinstance(child, _WIDTH_PRESERVING):
                features = None  # the width after an unknown module is unknown
        return nn.Sequential(*children).train(module.training)
    exported = copy.deepcopy(module)
    for name, child in placed_children(module):
        setattr(exported, name, _export(child, expand, recorded, None))
    return exported


def _as_linear(layer: LipschitzLinear | LipschitzLinearModel) -> nn.Linear:
    weight = layer.effective_weight().detach()
    linear = nn.Linear(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    linear.weight.copy_(weight)
    if layer.bias is not None:
        linear.bias.copy_(layer.bias.detach())
    return linear.train(layer.training)


def _as_conv(layer: LipschitzConv2d) -> nn.Conv2d:
    kernel = layer.effective_weight().detach()
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        bias=layer.bias is not None,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    conv.weight.copy_(kernel)
    if layer.bias is not None and conv.bias is not None:
        conv.bias.copy_(layer.bias.detach())
    return conv.train(layer.training)


def _as_residual(block: SLLConv2d) -> Residual:
    """``x + conv₂(relu(conv₁(x)))`` with ``conv₂`` the adjoint convolution (flipped,
    channel-transposed kernel) times ``-2·t⁻¹`` per inner channel, computed in float64 and
    rounded once to the block's dtype."""
    kernel = block.weight.detach()
    inverse = block.inverse_t().detach().double()
    first = nn.Conv2d(
        block.channels,
        block.inner_channels,
        block.kernel_size,
        padding=block.padding,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    first.weight.copy_(kernel)
    first.bias = nn.Parameter(block.bias.detach().clone())
    second = nn.Conv2d(
        block.inner_channels,
        block.channels,
        block.kernel_size,
        padding=block.padding,
        bias=False,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    adjoint = kernel.double().transpose(0, 1).flip(2, 3) * (-2.0 * inverse)[None, :, None, None]
    second.weight.copy_(adjoint.to(kernel.dtype))
    return Residual(nn.Sequential(first, nn.ReLU(), second)).train(block.training)


def _sorting_network(activation: GroupSort, features: _Features | None) -> nn.Sequential:
    name = type(activation).__name__
    if features is None:
        raise UnsupportedModuleError(
            f"the feature width of {name}(dim={activation.dim}) is unknown; pass "
            "example_input=... or "
            "expand_activations=False"
        )
    if activation.dim not in ((1, -3) if features.channels else (-1,)):
        where = "the channels of an image (dim=1)" if features.channels else "the last dimension"
        raise UnsupportedModuleError(
            f"{name}(dim={activation.dim}) after a layer whose features are {where} cannot be "
            "exported as a sorting network; pass expand_activations=False to keep it"
        )
    width, group = features.width, activation.group_size
    layers: list[nn.Module] = []
    for round_index in range(group):  # odd–even transposition sort: `group` rounds suffice
        pairs = [
            (start + i, start + i + 1)
            for start in range(0, width, group)
            for i in range(round_index % 2, group - 1, 2)
        ]
        if pairs:
            layers += _comparator_round(width, pairs, activation.descending, features.channels)
    network = nn.Sequential(*layers).to(device=features.device, dtype=features.dtype)
    return network.train(activation.training)


def _comparator_round(
    width: int, pairs: list[tuple[int, int]], descending: bool, channels: bool
) -> list[nn.Module]:
    """One round of comparators as ``Linear → ReLU → Linear`` (1×1 convolutions on the channels
    of an image when ``channels``).

    For a pair ``(a, b)`` the hidden units are ``relu(a-b), relu(b), relu(-b), relu(a),
    relu(-a)``; then ``max = relu(a-b) + relu(b) - relu(-b)`` and
    ``min = relu(a) - relu(-a) - relu(a-b)``. Unpaired features pass through as
    ``relu(x) - relu(-x)``.
    """
    paired = {index for pair in pairs for index in pair}
    singles = [index for index in range(width) if index not in paired]
    hidden = 5 * len(pairs) + 2 * len(singles)
    spread = torch.zeros(hidden, width, dtype=torch.float64)
    gather = torch.zeros(width, hidden, dtype=torch.float64)
    row = 0
    for a, b in pairs:
        spread[row, a], spread[row, b] = 1.0, -1.0
        spread[row + 1, b], spread[row + 2, b] = 1.0, -1.0
        spread[row + 3, a], spread[row + 4, a] = 1.0, -1.0
        high, low = (a, b) if descending else (b, a)
        gather[high, row], gather[high, row + 1], gather[high, row + 2] = 1.0, 1.0, -1.0
        gather[low, row + 3], gather[low, row + 4], gather[low, row] = 1.0, -1.0, -1.0
        row += 5
    for index in singles:
        spread[row, index], spread[row + 1, index] = 1.0, -1.0
        gather[index, row], gather[index, row + 1] = 1.0, -1.0
        row += 2
    if channels:
        first: nn.Conv2d | nn.Linear = nn.Conv2d(width, hidden, 1, bias=False)
        second: nn.Conv2d | nn.Linear = nn.Conv2d(hidden, width, 1, bias=False)
        spread, gather = spread[:, :, None, None], gather[:, :, None, None]
    else:
        first, second = nn.Linear(width, hidden, bias=False), nn.Linear(hidden, width, bias=False)
    first.weight.copy_(spread)
    second.weight.copy_(gather)
    return [first, nn.ReLU(), second]
