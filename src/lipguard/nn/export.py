"""Export lipguard models to plain ``torch.nn`` modules: :func:`vanilla`."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lipguard.errors import UnsupportedModuleError
from lipguard.nn.activations import GroupSort
from lipguard.nn.base import LipschitzLinear
from lipguard.nn.linear_model import LipschitzLinearModel


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


@dataclass(frozen=True)
class _Features:
    """Width, dtype and device of the features a GroupSort receives."""

    width: int
    dtype: torch.dtype
    device: torch.device


def _record_group_sort_inputs(model: nn.Module, example: torch.Tensor) -> dict[int, _Features]:
    recorded: dict[int, _Features] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = args[0]
        recorded[id(module)] = _Features(x.shape[-1], x.dtype, x.device)

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
    if isinstance(module, GroupSort) and expand:
        return _sorting_network(module, recorded.get(id(module), features))
    if isinstance(module, nn.Sequential):
        children = []
        for child in module:
            exported_child = _export(child, expand, recorded, features)
            children.append(exported_child)
            if isinstance(exported_child, nn.Linear):
                weight = exported_child.weight
                features = _Features(weight.shape[0], weight.dtype, weight.device)
        return nn.Sequential(*children).train(module.training)
    exported = copy.deepcopy(module)
    for name, child in module.named_children():
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


def _sorting_network(activation: GroupSort, features: _Features | None) -> nn.Sequential:
    name = type(activation).__name__
    if activation.dim != -1:
        raise UnsupportedModuleError(
            f"{name}(dim={activation.dim}) cannot be exported as Linear/ReLU layers (only dim=-1);"
            " pass expand_activations=False to keep it"
        )
    if features is None:
        raise UnsupportedModuleError(
            f"the feature width of {name} is unknown; pass example_input=... or "
            "expand_activations=False"
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
            layers += _comparator_round(width, pairs, activation.descending)
    network = nn.Sequential(*layers).to(device=features.device, dtype=features.dtype)
    return network.train(activation.training)


def _comparator_round(
    width: int, pairs: list[tuple[int, int]], descending: bool
) -> list[nn.Module]:
    """One round of comparators as ``Linear → ReLU → Linear``.

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
    first = nn.Linear(width, hidden, bias=False)
    second = nn.Linear(hidden, width, bias=False)
    first.weight.copy_(spread)
    second.weight.copy_(gather)
    return [first, nn.ReLU(), second]
