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

from collections.abc import Sequence

from torch import nn

from lipguard.bounds.graph import (
    UnregisteredModuleError,
    check_untampered,
    infer_input_shape,
    module_graph,
)
from lipguard.bounds.ir import Graph
from lipguard.bounds.trace import trace_graph
from lipguard.errors import InvalidArgumentError, ShapeError

Shapes = tuple[tuple[int, ...], ...]


def input_shapes(model: nn.Module, input_shape: Sequence | None) -> Shapes:
    """One per-sample shape per model input: ``input_shape`` as given (a shape, or a list of
    shapes), or inferred from a first linear layer."""
    if input_shape is None:
        return (infer_input_shape(model),)
    given = list(input_shape)
    nested = bool(given) and all(isinstance(item, Sequence) for item in given)
    shapes = [tuple(item) for item in given] if nested else [tuple(given)]
    for shape in shapes:
        if not shape or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in shape
        ):
            raise ShapeError(
                f"input_shape must be a shape of positive sizes (or a list of them), got "
                f"{input_shape!r}"
            )
    if not shapes:
        raise InvalidArgumentError("input_shape is empty")
    return tuple(shapes)


def to_graph(model: nn.Module, shapes: Shapes) -> Graph:
    """The graph of ``model`` for inputs of per-sample ``shapes``: the module registry's when it
    knows every module (one input), else the traced computation's."""
    if len(shapes) == 1:
        try:
            return module_graph(model, shapes[0])
        except UnregisteredModuleError:
            pass  # a module the registry does not know: trace the whole model instead
    check_untampered(model)
    return trace_graph(model, shapes)
