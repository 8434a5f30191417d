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

from collections.abc import Callable

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
        first, second = (np.maximum, np.minimum) if descending else (np.minimum, np.maximum)

        def pairs(x: np.ndarray) -> np.ndarray:
            even, odd, out = x[:, 0::2], x[:, 1::2], np.empty_like(x)
            first(even, odd, out=out[:, 0::2])
            second(even, odd, out=out[:, 1::2])
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


class FrozenReward:
    """``features (N, d) -> rewards (N,)`` computed with NumPy from a snapshot of ``model``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._shape = infer_input_shape(model)
        self._modules: list[nn.Module] = []  # the snapshot holds its sources, so their ids
        self._tensors: list[torch.Tensor] = []  # stay theirs: equal ids are the same objects
        self._ids: list[int] = []
        self._pointers: list[int] = []
        self._host_views: list[np.ndarray] = []  # CPU tensors as arrays, and their bytes
        self._host_bytes: list[bytes] = []
        self._device_copies: list[tuple[torch.Tensor, torch.Tensor]] = []  # the others
        self._setting_keys: list[tuple[nn.Module, str]] = []
        self._setting_values: list[object] = []
        self._layers: list[Callable[[np.ndarray], np.ndarray]] = []
        self._read()

    def _sources(self) -> tuple[list[nn.Module], list[torch.Tensor]]:
        # model.modules()' order, without its recursive generators and path strings
        modules, seen = [self.model], {id(self.model)}
        for module in modules:
            for child in module._modules.values():
                if child is not None and id(child) not in seen:
                    seen.add(id(child))
                    modules.append(child)
        tensors = [
            tensor
            for module in modules
            for tensor in (*module._parameters.values(), *module._buffers.values())
            if tensor is not None
        ]
        return modules, tensors

    def _changed(self) -> bool:
        """True when any module, parameter, buffer or module setting differs from the
        snapshot's (CPU tensors by bytes — equal bytes are equal values; a flipped sign of zero
        re-reads —, other tensors by ``torch.equal``, storage by address, settings by ``==``),
        or a forward hook is registered (re-reading refuses it by name)."""
        modules, tensors = self._sources()
        hooks = torch.nn.modules.module
        return (
            [*map(id, modules), *map(id, tensors)] != self._ids
            or [t.data_ptr() for t in tensors] != self._pointers  # `.data = ...` swapped storage
            or [view.tobytes() for view in self._host_views] != self._host_bytes
            or not all(torch.equal(t.detach(), copy) for t, copy in self._device_copies)
            or [vars(m).get(key) for m, key in self._setting_keys] != self._setting_values
            or bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)
            or any(m._forward_hooks or m._forward_pre_hooks for m in modules)
        )

    def _read(self) -> None:
        self._modules, self._tensors = self._sources()
        self._ids = []  # until the layers are read: a refused model is read again next call
        self._pointers = [t.data_ptr() for t in self._tensors]
        host = [t.device.type == "cpu" and t.dtype != torch.bfloat16 for t in self._tensors]
        self._host_views = [
            t.detach().numpy() for t, on_host in zip(self._tensors, host, strict=True) if on_host
        ]
        self._host_bytes = [view.tobytes() for view in self._host_views]
        self._device_copies = [
            (t, t.detach().clone())
            for t, on_host in zip(self._tensors, host, strict=True)
            if not on_host
        ]
        self._setting_keys = [(m, key) for m in self._modules for key in module_settings(m)]
        self._setting_values = [vars(m)[key] for m, key in self._setting_keys]
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
        self._ids = [*map(id, self._modules), *map(id, self._tensors)]

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
