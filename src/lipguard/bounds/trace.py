"""The ``torch.export`` front end: any module's traced computation as an engine graph.

A model whose ``forward`` the module registry cannot describe (its own ``forward``, several
inputs, containers and layers the registry does not know) is traced with
``torch.export.export`` — on a copy whose lipguard layers are replaced by ``nn.Linear`` layers
holding their effective weights (the same function; a certificate's Lanczos iteration is not
something to trace) — with a symbolic batch dimension, so an operation that mixes samples cannot
pass for a per-sample one (a forward that fixes the batch size, ``x.reshape(len(x), -1)``, is
traced for a fixed batch of two instead; every operation is still checked to act on each sample
alike). Each ATen operation of the exported program becomes graph nodes:

- ``linear``/``addmm``/``mm``/``matmul`` with a constant matrix, ``conv1d``/``conv2d``/
  ``convolution`` → ``Dense``/``Conv``; eval-mode ``batch_norm`` → ``Scale`` per channel;
  ``avg_pool`` (counting padding) and divisible ``adaptive_avg_pool`` → ``Conv``; ``mean``/``sum``
  over feature dimensions → ``Dense``;
- ``add``/``sub``/``mul``/``div``/``neg`` with constants → ``Scale``; ``add``/``sub`` of two
  branches (broadcast) → ``Sum``;
- every re-indexing (``view``, ``reshape``, ``flatten``, ``permute``, ``transpose``,
  ``slice``, ``select``, ``cat``, ``stack``, ``expand``, ``pad``, ``split``, …) → ``Gather``, its
  index found by running the operation on position tensors of a batch of two — which also
  proves that it acts on every sample alike;
- activations (ReLU, LeakyReLU, PReLU, ELU, SELU, CELU, GELU, SiLU, Tanh, Sigmoid, Hardtanh,
  ReLU6, clamp, abs, Softplus without threshold, Mish, Hardswish, Hardsigmoid), ``sort``
  (GroupSort) and ``max_pool``.

Operations with no useful global Lipschitz constant (``layer_norm``, ``softmax``, products of
two branches, ``exp``, …) and anything else are refused by name with the module path and the
source line they come from. Constant sub-expressions (weights transposed, reshaped, combined) are
evaluated. Hooks and instance-level ``forward`` overrides are refused before tracing, as in the
module registry.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import operator as py_operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeAlias

import torch
from torch import nn

from lipguard._modules import placed_children
from lipguard._placement import placement
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.ir import Builder, Graph
from lipguard.bounds.ops import (
    Gather,
    Operator,
    Scale,
    Shape,
)
from lipguard.errors import UnsupportedModuleError

aten = torch.ops.aten
TRACE_BATCH = 2  # the traced batch size: two samples, so per-sample behaviour can be checked


class _Batch:
    """The symbolic batch size of the traced program."""


BATCH = _Batch()

#: a resolved argument of a traced operation: an input-dependent value (:class:`Traced`), the
#: symbolic batch size (:data:`BATCH`), a constant (a tensor, number, dtype, string, ``None``, …)
#: or a list/tuple of these; torch.fx arguments are that open, hence ``Any``
Value: TypeAlias = Any


def trace_graph(model: nn.Module, shapes: Sequence[Shape]) -> Graph:
    """The graph of ``model``'s traced computation for inputs of per-sample ``shapes``."""
    lowered = _lowered(model)
    where = placement(model)
    args = tuple(
        torch.randn(TRACE_BATCH, *shape, dtype=where.dtype, device=where.device) for shape in shapes
    )
    batch = torch.export.Dim("batch", min=2)
    per_input = tuple({0: batch} for _ in shapes)
    # forward(*inputs): one entry holding them all
    dims = (per_input,) if _takes_varargs(lowered) else per_input
    with _quiet_tracer():
        try:
            program = torch.export.export(lowered, args, dynamic_shapes=dims, strict=False)
        except Exception:  # e.g. len(x) fixes the batch: trace it fixed, every op is checked
            try:
                program = torch.export.export(lowered, args, strict=False)
            except Exception as error:  # torch.export raises many types; the message says why
                text = str(error).strip()
                first = text.splitlines()[0] if text else type(error).__name__
                raise UnsupportedModuleError(
                    f"{type(model).__name__}: torch.export cannot trace its forward ({first})"
                ) from error
        if _mutates(program):
            # functionalise: in-place operations become pure ones with their uses rewired, so
            # reading each node as a function of its arguments is exact (aliasing included)
            program = program.run_decompositions(decomp_table={})
    return Converter(program).graph()


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence the tracer's own error logging: a failed trace becomes one clear refusal."""
    names = ("torch._subclasses.fake_tensor", "torch.export", "torch._export", "torch.fx")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():  # torch's own deprecation notices while it traces
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _mutates(program: torch.export.ExportedProgram) -> bool:
    """True when an operation of the program writes into one of its arguments."""
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            return True
    return False


def _takes_varargs(model: nn.Module) -> bool:
    parameters = inspect.signature(model.forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)


def _lowered(model: nn.Module) -> nn.Module:
    """A copy whose lipguard layers are plain ``nn.Linear`` with their effective weights."""
    from lipguard.nn.base import LipschitzLinear
    from lipguard.nn.linear_model import LipschitzLinearModel

    copied = copy.deepcopy(model)  # modes as they are: a training-mode layer is refused

    def replace(module: nn.Module) -> None:
        for name, child in placed_children(module):
            if isinstance(child, LipschitzLinear | LipschitzLinearModel):
                with torch.no_grad():
                    weight = child.effective_weight().detach().clone()
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias=child.bias is not None).to(
                    weight
                )
                with torch.no_grad():
                    layer.weight.copy_(weight)
                    if child.bias is not None:
                        layer.bias.copy_(child.bias.detach())
                setattr(module, name, layer)
            else:
                replace(child)

    replace(copied)
    return copied


class Traced:
    """An input-dependent value: the index of its graph node."""

    def __init__(self, index: int) -> None:
        self.index = index


class Converter:
    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self.program = program
        self.builder = Builder()
        self.values: dict[torch.fx.Node, Value] = {}
        self.constants = self._constants()

    def _constants(self) -> dict[str, torch.Tensor]:
        state = dict(self.program.state_dict)
        state.update(self.program.constants)
        table: dict[str, torch.Tensor] = {}
        for spec in self.program.graph_signature.input_specs:
            if spec.kind.name != "USER_INPUT":
                table[spec.arg.name] = state[spec.target].detach()
        return table

    def graph(self) -> Graph:
        graph = self.program.graph
        output_node = next(n for n in graph.nodes if n.op == "output")
        needed = _needed(output_node)
        for node in graph.nodes:
            if node not in needed:
                continue
            if node.op == "placeholder":
                self.values[node] = self._placeholder(node)
            elif node.op == "call_function":
                self.values[node] = self._call(node)
        results = output_node.args[0]
        if not isinstance(results, list | tuple) or len(results) != 1:
            raise UnsupportedModuleError("the model must return one tensor")
        result = self.values[results[0]]
        if not isinstance(result, Traced):
            raise UnsupportedModuleError("the model's output does not depend on its input")
        return self.builder.finish(result.index)

    def _placeholder(self, node: torch.fx.Node) -> Value:
        if node.name in self.constants:
            return self.constants[node.name]
        shape = tuple(node.meta["val"].shape[1:])
        return Traced(self.builder.input(tuple(int(s) for s in shape), f"input {node.name}"))

    def _resolve(self, value: Value) -> Value:
        if isinstance(value, torch.fx.Node):
            return self.values[value]
        if isinstance(value, list | tuple):
            return type(value)(self._resolve(v) for v in value)
        return value

    def _call(self, node: torch.fx.Node) -> Value:
        args = self._resolve(node.args)
        kwargs = {k: self._resolve(v) for k, v in node.kwargs.items()}
        if node.target is py_operator.getitem:
            return args[0][args[1]]
        if node.target in (aten.sym_size.int,):
            return BATCH if args[1] == 0 else int(node.meta["val"])
        if not depends_on_input(args) and not depends_on_input(kwargs.values()):
            return _evaluate(target_function(node), args, kwargs)
        packet = getattr(node.target, "overloadpacket", None)
        name = getattr(packet, "__name__", str(node.target))
        from lipguard.bounds.aten_layers import HANDLERS, REFUSED

        handler = HANDLERS.get(name)
        where = _where(node)
        if handler is None:
            reason = REFUSED.get(name, "the bound engine does not know it")
            raise UnsupportedModuleError(f"{where}: operation {name} — {reason}")
        result = handler(self, node, args, kwargs, where)
        if isinstance(result, Traced):
            expected = tuple(int(s) for s in node.meta["val"].shape[1:])
            actual = self.builder.nodes[result.index].shape
            if math.prod(expected) != math.prod(actual):
                raise UnsupportedModuleError(
                    f"{where}: {name} gives {actual} per sample where the program has {expected}"
                )
            if actual != expected:
                result = self.reshape(result, expected, where)
        return result

    # helpers used by the handlers ------------------------------------------------------------

    def shape(self, value: Traced) -> Shape:
        return self.builder.nodes[value.index].shape

    def add(self, op: Operator, sources: Sequence[Traced], where: str) -> Traced:
        return Traced(self.builder.add(op, [s.index for s in sources], where))

    def reshape(self, value: Traced, shape: Shape, where: str) -> Traced:
        size = math.prod(shape)
        index = torch.arange(size)
        return self.add(Gather(index, None, (size,), shape), [value], where)

    def reindex(
        self,
        function: Callable[..., torch.Tensor],
        sources: Sequence[Traced],
        where: str,
        fill: float | None = None,
    ) -> Traced:
        """A re-indexing applied to ``sources``, as a checked per-sample Gather; ``function``
        marks entries that come from no input with ``-1`` (they become ``fill``)."""
        shapes = [self.shape(s) for s in sources]
        sizes = [math.prod(shape) for shape in shapes]
        total, offset = sum(sizes), 0
        tensors: list[torch.Tensor] = []
        for shape, size in zip(shapes, sizes, strict=True):
            positions = torch.arange(offset, offset + size, dtype=torch.float64).reshape(shape)
            tensors.append(torch.stack([positions, positions + total]))
            offset += size
        out = function(*tensors)
        if out.dim() == 0 or out.shape[0] != TRACE_BATCH:
            raise UnsupportedModuleError(f"{where}: the operation changes the batch dimension")
        first, second = out[0].reshape(-1), out[1].reshape(-1)
        padding = first < 0
        same = torch.where(padding, second == first, second == first + total)
        if not bool(same.all()) or bool((first >= total).any()):
            raise UnsupportedModuleError(f"{where}: the operation mixes samples of the batch")
        index = torch.where(padding, -1, first.round().long())
        out_shape = tuple(out.shape[1:])
        constants = None
        if bool(padding.any()):
            if fill is None:
                raise UnsupportedModuleError(f"{where}: the operation invents entries")
            constants = torch.where(padding, fill, 0.0).to(torch.float64)
        return self.add(Gather(index, constants, tuple(sizes), out_shape), sources, where)

    def broadcast(self, value: Traced, shape: Shape, where: str) -> Traced:
        if self.shape(value) == shape:
            return value
        return self.reindex(lambda t: t.expand(TRACE_BATCH, *shape), [value], where)

    def scale(
        self, value: Traced, factor: torch.Tensor | float, shift: torch.Tensor | float, where: str
    ) -> Traced:
        """``factor ⊙ x + shift`` with constants broadcast per sample (never along the batch)."""
        shape = self.shape(value)
        s = per_sample(factor, shape, where)
        t = per_sample(shift, shape, where)
        return self.add(Scale(Enclosure(s), Enclosure(t), shape), [value], where)


#: a traced operation's positional and keyword arguments, resolved (see :data:`Value`)
Args: TypeAlias = tuple[Value, ...]
Kwargs: TypeAlias = dict[str, Value]
#: what a handler makes of an operation: its value, or one per output (``None`` for outputs
#: nothing may read, such as the indices of ``sort`` or ``max_pool2d_with_indices``)
Result: TypeAlias = Traced | tuple[Traced | None, ...]
#: ``handler(converter, node, args, kwargs, where)``: the graph nodes of one ATen operation
#: (:data:`lipguard.bounds.aten_layers.HANDLERS`)
Handler: TypeAlias = Callable[[Converter, torch.fx.Node, Args, Kwargs, str], Result]


def target_function(node: torch.fx.Node) -> Callable[..., Any]:
    """The function a ``call_function`` node calls (torch.fx also allows a method name)."""
    target = node.target
    if isinstance(target, str):
        raise UnsupportedModuleError(f"{_where(node)}: a call of the method {target!r}")
    return target


def _needed(output: torch.fx.Node) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    pending = [output]
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        pending += [n for n in node.all_input_nodes]
    return seen


def depends_on_input(values: Iterable[Value]) -> bool:
    for value in values:
        if isinstance(value, Traced | _Batch):
            return True
        if isinstance(value, list | tuple) and depends_on_input(value):
            return True
    return False


def _evaluate(target: Callable[..., Any], args: Args, kwargs: Kwargs) -> Value:
    with torch.no_grad():
        return target(*args, **kwargs)


def _where(node: torch.fx.Node) -> str:
    """``model.path (Class) [source line]`` of a traced operation."""
    stack = node.meta.get("nn_module_stack") or {}
    path, kind = list(stack.values())[-1] if stack else ("", "the model")
    kind = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", "")
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    line = f" [{trace[-1].strip()}]" if trace else ""
    return f"{'model.' + path if path else 'model'} ({kind}){line}"


def per_sample(constant: torch.Tensor | float, shape: Shape, where: str) -> torch.Tensor:
    """A constant broadcast against outputs ``(N, *shape)``, per sample (float64, flat)."""
    tensor = torch.as_tensor(constant, dtype=torch.float64).detach().cpu()
    full = (1, *shape)
    try:
        broadcast = torch.broadcast_shapes(tensor.shape, full)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(full):
        raise UnsupportedModuleError(
            f"{where}: a constant of shape {tuple(tensor.shape)} broadcast against per-sample "
            f"values {shape} changes their shape"
        )
    return tensor.expand(full).reshape(-1).clone()


def with_batch(args: Value, batch: int = TRACE_BATCH) -> Value:
    """Shape arguments with the symbolic batch size replaced by ``batch``."""
    if isinstance(args, _Batch):
        return batch
    if isinstance(args, list | tuple):
        return type(args)(with_batch(a, batch) for a in args)
    return args


def tupled(value: int | list[int] | tuple[int, ...], count: int) -> tuple[int, ...]:
    """An ATen size argument (an int or a list) as a tuple of ``count`` ints."""
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return (int(value),) * count
