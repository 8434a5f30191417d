"""A multilayer perceptron with a guaranteed Lipschitz constant: :class:`LipschitzMLP`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from lipguard import _checks
from lipguard.errors import InvalidArgumentError
from lipguard.linalg import down, mul_up
from lipguard.nn.activations import GroupSort, MaxMin
from lipguard.nn.base import LipschitzLinear
from lipguard.nn.orthogonal import OrthogonalLinear, SVDLinear
from lipguard.nn.spectral import SpectralLinear
from lipguard.results import LipschitzBound

#: the constrained linear layer a :class:`LipschitzMLP` is built from
LayerKind = Literal["spectral", "orthogonal", "svd"]
#: the activation between its layers
ActivationKind = Literal["groupsort", "maxmin", "relu"]

LAYERS: dict[str, type[LipschitzLinear]] = {
    "spectral": SpectralLinear,
    "orthogonal": OrthogonalLinear,
    "svd": SVDLinear,
}
ACTIVATIONS: tuple[ActivationKind, ...] = get_args(ActivationKind)


def split_lipschitz(lipschitz: float, parts: int) -> list[float]:
    """Split a bound over ``parts`` layers: equal factors whose floating-point product is ``<= L``.

    Each factor is ``L^(1/parts)``; the last one is lowered ulp by ulp until the product, rounded
    upwards, no longer exceeds ``L``.
    """
    lipschitz = _checks.positive_float("lipschitz", lipschitz)
    parts = _checks.positive_int("parts", parts)
    factor = lipschitz ** (1.0 / parts)
    factors = [factor] * parts
    head = 1.0
    for value in factors[:-1]:
        head = mul_up(head, value)
    last = min(factor, lipschitz / head)
    while mul_up(head, last) > lipschitz:
        last = down(last)
    factors[-1] = last
    return factors


def _activation(name: ActivationKind, group_size: int) -> nn.Module:
    if name == "groupsort":
        return GroupSort(group_size)
    if name == "maxmin":
        return MaxMin()
    return nn.ReLU()


class LipschitzMLP(nn.Sequential):
    """An MLP whose ℓ2 Lipschitz constant is guaranteed ``<= lipschitz``.

    ``Linear → activation → … → Linear`` with lipguard layers: the bound is split into equal
    per-layer factors (:func:`split_lipschitz`) and every activation is 1-Lipschitz, so the
    product of the per-layer guarantees is ``<= lipschitz`` for every input.
    :meth:`certified_lipschitz` proves a bound again from the stored weights, for the module as
    it is now (children swapped or appended included).

    Args:
        in_features: input size.
        out_features: output size (1 for a reward or value model).
        hidden: widths of the hidden layers (may be empty: a single layer).
        lipschitz: the guaranteed bound.
        activation: ``"groupsort"`` (default; with orthogonal layers the gradient norm equals the
            bound), ``"maxmin"`` or ``"relu"``.
        group_size: GroupSort group size; must divide every hidden width.
        layer: ``"spectral"`` (:class:`SpectralLinear`), ``"orthogonal"`` or ``"svd"``.
        bias: biases on every layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        *,
        lipschitz: float = 1.0,
        activation: ActivationKind = "groupsort",
        group_size: int = 2,
        layer: LayerKind = "spectral",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if layer not in LAYERS:
            raise InvalidArgumentError(f"layer must be one of {sorted(LAYERS)}, got {layer!r}")
        if activation not in ACTIVATIONS:
            raise InvalidArgumentError(
                f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}"
            )
        widths = [_checks.positive_int("in_features", in_features)]
        widths += [_checks.positive_int("hidden width", width) for width in hidden]
        widths.append(_checks.positive_int("out_features", out_features))
        group = {"groupsort": group_size, "maxmin": 2}.get(activation)
        if group is not None:
            _checks.positive_int("group_size", group)
            for width in widths[1:-1]:
                if width % group:
                    raise InvalidArgumentError(
                        f"{activation} groups of {group} do not divide hidden width {width}"
                    )
        factors = split_lipschitz(lipschitz, len(widths) - 1)
        modules: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            modules.append(
                LAYERS[layer](
                    fan_in, fan_out, bias=bias, lipschitz=factors[index], device=device, dtype=dtype
                )
            )
            if index < len(widths) - 2:
                modules.append(_activation(activation, group_size))
        super().__init__(*modules)
        self.lipschitz = float(lipschitz)

    def linear_layers(self) -> list[LipschitzLinear]:
        """The constrained linear layers, input to output."""
        return [module for module in self if isinstance(module, LipschitzLinear)]

    def certified_lipschitz(self) -> LipschitzBound:
        """A sound ℓ2 bound on the whole module as it is now, proven by the bound engine
        (:func:`lipguard.bounds.lipschitz_bound`, ``method="product"``): every child is
        converted by the engine, so a swapped or appended module is bounded for what it is, and
        one the engine does not know raises :class:`~lipguard.errors.UnsupportedModuleError`."""
        from lipguard.bounds import lipschitz_bound

        with torch.no_grad():
            return lipschitz_bound(self, 2, "product")
