"""From a model to the engine's graph: which front end reads it.

- A model built from registered modules (``nn.Sequential`` trees of known layers, lipguard's
  models) is read by the module registry (:func:`lipguard.bounds.graph.module_graph`): exact
  module semantics, no tracing, module paths in every message.
- A model whose own ``forward`` the registry does not describe — a custom ``forward``
  (two inputs concatenated, a projection shortcut), a container it does not know — is traced
  with ``torch.export`` (:mod:`lipguard.bounds.trace`).

Process-wide and per-module overrides (hooks, instance ``forward`` overrides, compiled calls) are
refused for both; see :mod:`lipguard.bounds.graph`.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from lipguard.bounds.graph import (
    UnregisteredModuleError,
    check_untampered,
    infer_input_shape,
    module_graph,
    module_settings,
)
from lipguard.bounds.ir import Graph
from lipguard.bounds.trace import trace_graph
from lipguard.errors import InvalidArgumentError, ShapeError

Shapes = tuple[tuple[int, ...], ...]


def input_shapes(
    model: nn.Module, input_shape: Sequence[int] | Sequence[Sequence[int]] | None
) -> Shapes:
    """One per-sample shape per model input: ``input_shape`` as given (a shape, or a list of
    shapes), or inferred from a first linear layer."""
    if input_shape is None:
        return (infer_input_shape(model),)
    given: list[object] = list(input_shape)
    nested = bool(given) and all(isinstance(item, Sequence) for item in given)
    shapes = []
    for item in given if nested else [given]:
        sizes = tuple(item) if isinstance(item, Sequence) else ()
        shape = tuple(
            size
            for size in sizes
            if isinstance(size, int) and not isinstance(size, bool) and size >= 1
        )
        if not shape or len(shape) != len(sizes):
            raise ShapeError(
                f"input_shape must be a shape of positive sizes (or a list of them), got "
                f"{input_shape!r}"
            )
        shapes.append(shape)
    if not shapes:
        raise InvalidArgumentError("input_shape is empty")
    return tuple(shapes)


def to_graph(model: nn.Module, shapes: Shapes) -> Graph:
    """The graph of ``model`` for inputs of per-sample ``shapes``: the module registry's when it
    knows every module (one input), else the traced computation's (cached while the model's
    modules, tensors and settings stay exactly as they were)."""
    if len(shapes) == 1:
        try:
            return module_graph(model, shapes[0])
        except UnregisteredModuleError:
            pass  # a module the registry does not know: trace the whole model instead
    check_untampered(model)
    key = (id(model), shapes)
    cached = _TRACED.get(key)
    if cached is not None and cached[0]() is model and cached[1].unchanged(model):
        return cached[2]
    graph = trace_graph(model, shapes)
    _TRACED[key] = (weakref.ref(model), _Snapshot(model), graph)
    while len(_TRACED) > _CACHE_SIZE:
        _TRACED.popitem(last=False)
    return graph


class _Snapshot:
    """Every module, tensor (by value and storage) and module setting of a model."""

    def __init__(self, model: nn.Module) -> None:
        self.state = self._state(model)
        self.copies = [tensor.detach().clone() for tensor in self.state[1]]

    @staticmethod
    def _state(
        model: nn.Module,
    ) -> tuple[list[nn.Module], list[torch.Tensor], list[dict[str, object]]]:
        modules = list(model.modules())
        tensors = [t for m in modules for t in (*m._parameters.values(), *m._buffers.values())]
        settings = [module_settings(m) for m in modules]
        return modules, [t for t in tensors if t is not None], settings

    def unchanged(self, model: nn.Module) -> bool:
        modules, tensors, settings = self._state(model)
        if settings != self.state[2] or len(tensors) != len(self.copies):
            return False
        if any(a is not b for a, b in zip(modules, self.state[0], strict=False)):
            return False
        return all(
            a is b and a.shape == c.shape and a.dtype == c.dtype and torch.equal(a.detach(), c)
            for a, b, c in zip(tensors, self.state[1], self.copies, strict=True)
        ) and len(modules) == len(self.state[0])


#: traced graphs by (model id, input shapes), with what they were traced from (most recent last)
_TRACED: OrderedDict[tuple[int, Shapes], tuple[weakref.ref[nn.Module], _Snapshot, Graph]] = (
    OrderedDict()
)
_CACHE_SIZE = 16
