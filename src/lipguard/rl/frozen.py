"""A NumPy snapshot of a reward model, for the per-step reward calls of an environment wrapper.

Environments step one small batch at a time, where PyTorch's per-call overhead (tens of
microseconds per layer, plus lipguard's certificate checks) dwarfs the arithmetic.
:class:`FrozenReward` reads the model once through the bound engine's operators (dense layers —
lipguard's constrained layers with their effective weights, standardisation included — ReLU,
tanh, GroupSort/MaxMin) and evaluates them with NumPy in float64. It tracks the parameters'
in-place version counters (and storage) and re-reads the model whenever one changes, so it
never serves a stale reward after an optimiser step or ``load_state_dict`` (a parameter
*replaced* by a new tensor object is not seen: build a new snapshot then). Models with other
operators raise :class:`~lipguard.errors.UnsupportedModuleError` (call the module directly).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lipguard.bounds.graph import Activation, Dense, Sort, infer_input_shape, to_operators
from lipguard.errors import UnsupportedModuleError

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


def _sort(group_size: int, descending: bool) -> Callable[[np.ndarray], np.ndarray]:
    if group_size == 2:  # MaxMin: an elementwise min and max beat np.sort on tiny groups

        def pairs(x: np.ndarray) -> np.ndarray:
            low, high = np.minimum(x[:, 0::2], x[:, 1::2]), np.maximum(x[:, 0::2], x[:, 1::2])
            out = np.empty_like(x)
            out[:, 0::2], out[:, 1::2] = (high, low) if descending else (low, high)
            return out

        return pairs

    def apply(x: np.ndarray) -> np.ndarray:
        grouped = np.sort(x.reshape(len(x), -1, group_size), axis=2)
        return (grouped[:, :, ::-1] if descending else grouped).reshape(len(x), -1)

    return apply


def _dense(matrix: np.ndarray, bias: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    transposed = np.ascontiguousarray(matrix.T)
    return lambda x: x @ transposed + bias


class FrozenReward:
    """``features (N, d) -> rewards (N,)`` computed with NumPy from a snapshot of ``model``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._shape = infer_input_shape(model)
        self._versions: list[tuple[int, int]] = []
        self._tensors: list[torch.Tensor] = []
        self._layers: list[Callable[[np.ndarray], np.ndarray]] = []
        self._read()

    def _current_versions(self) -> list[tuple[int, int]]:
        return [(tensor._version, tensor.data_ptr()) for tensor in self._tensors]

    def _read(self) -> None:
        self._tensors = [*self.model.parameters(), *self.model.buffers()]
        with torch.no_grad():
            operators = to_operators(self.model, self._shape)
        layers = []
        for operator in operators:
            if isinstance(operator, Dense):
                layers.append(
                    _dense(operator.matrix.value.cpu().numpy(), operator.bias.value.cpu().numpy())
                )
            elif isinstance(operator, Activation) and operator.spec.name in _ACTIVATIONS:
                layers.append(_ACTIVATIONS[operator.spec.name])
            elif isinstance(operator, Sort):
                layers.append(_sort(operator.group_size, operator.descending))
            else:
                raise UnsupportedModuleError(
                    f"FrozenReward evaluates dense layers, ReLU, tanh and GroupSort only, not "
                    f"{type(operator).__name__}; call the model itself"
                )
        self._layers = layers
        self._versions = self._current_versions()

    def numpy(self, features: np.ndarray) -> np.ndarray:
        """Rewards ``(N,)`` (float64) of the rows of ``features``."""
        if self._current_versions() != self._versions:
            self._read()
        values = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        for layer in self._layers:
            values = layer(values)
        return values[:, 0]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.numpy(np.asarray(features)))
