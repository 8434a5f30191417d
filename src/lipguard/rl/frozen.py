"""A NumPy snapshot of a reward model, for the per-step reward calls of an environment wrapper.

Environments step one small batch at a time, where PyTorch's per-call overhead (tens of
microseconds per layer, plus lipguard's certificate checks) dwarfs the arithmetic.
:class:`FrozenReward` reads the model once through the bound engine's graph (a chain of dense
layers — lipguard's constrained layers with their effective weights —, standardisation, ReLU,
tanh, GroupSort/MaxMin) and evaluates it with NumPy in float64. Before every call it compares
the model with the snapshot's sources — every parameter and buffer by value (``torch.equal``
semantics, so ``.data`` edits, which autograd's version counter does not see, are caught, and so
are replaced tensors) and every module's settings (a layer's ``lipschitz``, say) — and re-reads
the model when anything differs, so it never serves a stale reward. Models with other operators
raise :class:`~lipguard.errors.UnsupportedModuleError` (call the module directly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from lipguard.bounds.graph import infer_input_shape, module_graph, module_settings
from lipguard.bounds.ops import Activation, Dense, Scale, Sort
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


def _scale(scale: np.ndarray, shift: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: x * scale + shift


def _different_objects(current: Sequence[object], snapshot: Sequence[object]) -> bool:
    return len(current) != len(snapshot) or any(
        a is not b for a, b in zip(current, snapshot, strict=True)
    )


class FrozenReward:
    """``features (N, d) -> rewards (N,)`` computed with NumPy from a snapshot of ``model``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._shape = infer_input_shape(model)
        self._modules: list[nn.Module] = []
        self._tensors: list[torch.Tensor] = []
        self._pointers: list[int] = []
        self._views: list[np.ndarray | torch.Tensor] = []
        self._copies: list[np.ndarray | torch.Tensor] = []
        self._settings: list[tuple[nn.Module, str, object]] = []
        self._layers: list[Callable[[np.ndarray], np.ndarray]] = []
        self._read()

    def _sources(self) -> tuple[list[nn.Module], list[torch.Tensor]]:
        modules = list(self.model.modules())
        tensors = [
            tensor
            for module in modules
            for tensor in (*module._parameters.values(), *module._buffers.values())
            if tensor is not None
        ]
        return modules, tensors

    def _changed(self) -> bool:
        """True when any module, parameter, buffer or module setting differs from the
        snapshot's (tensors by value and storage, settings by ``==``)."""
        modules, tensors = self._sources()
        if _different_objects(modules, self._modules) or _different_objects(tensors, self._tensors):
            return True
        for tensor, pointer, view, copy in zip(
            tensors, self._pointers, self._views, self._copies, strict=True
        ):
            if tensor.data_ptr() != pointer:  # `.data = ...` swapped the storage
                return True
            if isinstance(copy, np.ndarray):
                if not np.array_equal(view, copy):
                    return True
            elif not torch.equal(tensor.detach(), copy):
                return True
        return any(vars(m).get(key) != value for m, key, value in self._settings)

    def _read(self) -> None:
        self._modules, self._tensors = self._sources()
        self._pointers = [t.data_ptr() for t in self._tensors]
        numpy_able = [t.device.type == "cpu" and t.dtype != torch.bfloat16 for t in self._tensors]
        self._views = [
            t.detach().numpy() if able else t
            for t, able in zip(self._tensors, numpy_able, strict=True)
        ]
        self._copies = [
            view.copy() if isinstance(view, np.ndarray) else view.detach().clone()
            for view in self._views
        ]
        self._settings = [
            (module, key, vars(module)[key])
            for module in self._modules
            for key in module_settings(module)
        ]
        with torch.no_grad():
            graph = module_graph(self.model, self._shape)
        layers: list[Callable[[np.ndarray], np.ndarray]] = []
        for index, node in enumerate(graph.nodes[1:], start=1):
            op = node.op
            if node.inputs != (index - 1,):
                raise UnsupportedModuleError(
                    "FrozenReward evaluates chains of layers only; call the model itself"
                )
            if isinstance(op, Dense) and op.blocks == 1:
                layers.append(_dense(op.matrix.value.cpu().numpy(), op.bias.value.cpu().numpy()))
            elif isinstance(op, Scale):
                scale, shift = op.scale.value.cpu().numpy(), op.shift.value.cpu().numpy()
                layers.append(_scale(scale, shift))
            elif isinstance(op, Activation) and op.spec.name in _ACTIVATIONS:
                layers.append(_ACTIVATIONS[op.spec.name])
            elif isinstance(op, Sort):
                layers.append(_sort(op.group_size, op.descending))
            else:
                raise UnsupportedModuleError(
                    f"FrozenReward evaluates dense layers, scalings, ReLU, tanh and GroupSort "
                    f"only, not {type(op).__name__} ({node.where}); call the model itself"
                )
        self._layers = layers

    def numpy(self, features: np.ndarray) -> np.ndarray:
        """Rewards ``(N,)`` (float64) of the rows of ``features``."""
        if self._changed():
            self._read()
        values = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        for layer in self._layers:
            values = layer(values)
        return values[:, 0]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.numpy(np.asarray(features)))
