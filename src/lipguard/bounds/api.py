"""The bound engine's entry points.

Models with several inputs (``forward(image, text)``) are bounded jointly — the ℓp norm of all
inputs flattened and concatenated — and, with :func:`block_lipschitz_bounds`, input by input.
``input_shape`` is one per-sample shape, or a list of them (one per input).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, get_args

import torch
from torch import nn

from lipguard import _checks
from lipguard._deprecation import renamed_keyword
from lipguard._placement import placement
from lipguard._threads import on_idle_cores
from lipguard.bounds import lmi, sdp
from lipguard.bounds.chain import as_chain, chain_bound
from lipguard.bounds.compositional import compositional_bound, dp_bound
from lipguard.bounds.evaluate import enclose
from lipguard.bounds.exact import ExactLipschitz
from lipguard.bounds.exact import exact_lipschitz as _exact
from lipguard.bounds.frontend import Shapes, input_shapes, to_graph
from lipguard.bounds.ir import Graph
from lipguard.bounds.local import interval_slopes
from lipguard.bounds.network import Network
from lipguard.bounds.norms import matrix_norm
from lipguard.bounds.product import product_bound
from lipguard.bounds.rounding import forward_error
from lipguard.errors import (
    CertificationError,
    InvalidArgumentError,
    LipguardError,
    ShapeError,
    UnsupportedModuleError,
)
from lipguard.linalg import up
from lipguard.norm import L2, Norm, NormLike, parse_norm
from lipguard.results import LipschitzBound

#: "auto" adds LipSDP when the matrix inequality has at most this many rows
AUTO_LIPSDP_SIZE = 1000
#: time budget of the LipSDP solver (descent and barrier, see :func:`sdp.solve_lipsdp`)
LIPSDP_SECONDS = 8.0
#: random inputs on which a model's own forward pass is compared with its graph
FORWARD_PROBES = 4

#: ``input_shape``: one per-sample shape, or a list of them (one per model input)
InputShape = Sequence[int] | Sequence[Sequence[int]]
#: a block of input coordinates (:func:`block_lipschitz_bounds`): a slice, integer indices or a
#: boolean mask (a list or a tensor)
Block = Sequence[int] | slice | torch.Tensor
#: a LipSDP solver: the names in :data:`lipguard.bounds.sdp.SOLVERS`
Solver = Literal["barrier", "clarabel", "scs"]
#: a LipSDP variant: LipSDP-Neuron (a multiplier per neuron) or LipSDP-Layer (one per layer)
Variant = Literal["neuron", "layer"]


def _prepare(
    model: nn.Module, norm: NormLike, input_shape: InputShape | None
) -> tuple[float, Shapes]:
    p = parse_norm(norm)
    if p not in (2.0, math.inf):
        raise InvalidArgumentError(f"bounds are available in ℓ2 and ℓ∞, got norm={norm!r}")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _checks.NonFiniteError(f"model parameter {name!r} holds NaN or infinity")
    return p, input_shapes(model, input_shape)


def read_model(model: nn.Module, shapes: Shapes) -> Graph:
    """The graph of ``model`` (:func:`~lipguard.bounds.frontend.to_graph`), checked against the
    model's own forward pass: on :data:`FORWARD_PROBES` random inputs, representable in the
    model's dtype, the outputs must lie within twice the proven rounding error
    (:func:`~lipguard.bounds.rounding.forward_error`) of the graph's exact function (outputs
    that may overflow the dtype are not compared). A model whose calls compute something else —
    whatever the reason — is refused."""
    graph = to_graph(model, shapes)
    where = placement(model)
    dtype = where.dtype
    generator = torch.Generator().manual_seed(0x11B)
    probes = [
        torch.randn((FORWARD_PROBES, *shape), generator=generator).to(where.device, dtype)
        for shape in shapes
    ]
    joint = torch.cat([probe.reshape(FORWARD_PROBES, -1).cpu() for probe in probes], dim=1)
    with torch.no_grad():
        try:
            output = model(*[probe.clone() for probe in probes])
        except Exception as error:  # whatever the model raises, the engine cannot bound it
            raise UnsupportedModuleError(
                f"the model's forward pass fails on inputs of shapes "
                f"{[tuple(p.shape) for p in probes]} ({dtype}): {type(error).__name__}: {error}"
            ) from error
        if not isinstance(output, torch.Tensor):
            raise UnsupportedModuleError(
                f"the model returns a {type(output).__name__}, not one tensor; bound a module "
                "that returns the output you want bounded"
            )
        actual = output.reshape(FORWARD_PROBES, -1).to("cpu", torch.float64)
        low, high = enclose(graph, joint.to(torch.float64))
        rounding = forward_error(graph, joint.to(torch.float64), dtype)
    if actual.shape != low.shape:
        raise UnsupportedModuleError(
            f"the model returns {actual.shape[1]} values per sample where its graph has "
            f"{low.shape[1]}: its forward is not what its modules describe"
        )
    slack = 2 * rounding + 1e-300
    checkable = torch.isfinite(rounding)  # where the dtype may overflow, nothing can be compared
    outside = ((actual < low - slack) | (actual > high + slack) | actual.isnan()) & checkable
    if bool(outside.any()):
        deviation = float(torch.maximum(low - actual, actual - high).max())
        raise UnsupportedModuleError(
            "the model's forward pass does not compute what its modules describe (off by "
            f"{deviation:.3g}, more than floating-point rounding allows): something overrides "
            "it (a patched method, a hook, a custom module); refusing to bound it"
        )
    return graph


def _network(model: nn.Module, shapes: Shapes) -> Network:
    return Network.from_graph(read_model(model, shapes))


def network_product(network: Network, norm: float) -> float:
    """Product of the normal form's layer norms and activation constants (sound)."""
    value = 1.0
    for weight in network.weights:
        value = up(value * matrix_norm(weight, norm))
    for layer in network.hidden:
        value = up(value * max(spec.lipschitz for spec, _ in layer.segments))
    return value


def _lipsdp(
    network: Network, variant: Variant, solver: Solver, slopes: lmi.Slopes | None = None
) -> LipschitzBound:
    slopes = lmi.global_slopes(network) if slopes is None else slopes
    if lmi.has_linear_neurons(slopes):
        raise UnsupportedModuleError(
            "LipSDP handles elementwise slope-restricted activations; networks with identity "
            "neurons (GroupSort/MaxMin, max-pooling, residual branches) are bounded by "
            "method='compositional' or 'product'"
        )
    multipliers, rho = sdp.solve_lipsdp(
        network, slopes, variant=variant, solver=solver, seconds=LIPSDP_SECONDS
    )
    adjusted = lmi.feasible(network, slopes, multipliers)
    proof = lmi.verify(network, slopes, *adjusted) if adjusted is not None else None
    if proof is None:
        raise CertificationError(
            f"LipSDP-{variant} ({solver}) returned ρ = {rho:.6g} but its "
            "multipliers could not be verified"
        )
    return _lipsdp_result(proof, f"lipsdp-{variant}")


def _lipsdp_result(proof: lmi.LipSDPProof, method: str) -> LipschitzBound:
    details = {"rho": proof.rho, "multipliers": [m.tolist() for m in proof.multipliers]}
    return LipschitzBound(proof.value, 2.0, method, details=details)


class _Job:
    """One :func:`lipschitz_bound` call: the graph and options, with the normal form and its
    global slopes built at most once, whichever methods run."""

    def __init__(self, graph: Graph, norm: float, solver: Solver, seconds: float) -> None:
        self.graph, self.norm, self.solver, self.seconds = graph, norm, solver, seconds
        self._network: Network | LipguardError | None = None
        self._slopes: lmi.Slopes | None = None

    @property
    def network(self) -> Network:
        """The normal form (raises the reason when it cannot be built)."""
        if self._network is None:
            try:
                self._network = Network.from_graph(self.graph)
            except LipguardError as error:
                self._network = error
        if isinstance(self._network, LipguardError):
            raise self._network
        return self._network

    @property
    def slopes(self) -> lmi.Slopes:
        if self._slopes is None:
            self._slopes = lmi.global_slopes(self.network)
        return self._slopes

    def lipsdp_applies(self) -> bool:
        """Whether ``auto`` runs LipSDP: ℓ2, hidden layers, no identity neurons and at most
        :data:`AUTO_LIPSDP_SIZE` rows in the matrix inequality."""
        network = self.network
        size = network.input_size + sum(layer.size for layer in network.hidden)
        return (
            self.norm == 2.0
            and bool(network.hidden)
            and size <= AUTO_LIPSDP_SIZE
            and not lmi.has_linear_neurons(self.slopes)
        )


def _product(job: _Job) -> LipschitzBound:
    return LipschitzBound(product_bound(job.graph, job.norm), job.norm, "product")


def _compositional(job: _Job) -> LipschitzBound:
    """The cut/merge programme (and fast LipSDP certificate) on the normal form; a chain too
    large for the normal form gets the chain programme, which needs no dense matrix."""
    try:
        network = job.network
    except LipguardError:
        chain = as_chain(job.graph)
        if chain is None:
            raise
        return LipschitzBound(chain_bound(chain, job.norm), job.norm, "compositional")
    found = compositional_bound(network, job.norm, job.slopes, seconds=job.seconds)
    if found.proof is not None:
        return _lipsdp_result(found.proof, "compositional")
    return LipschitzBound(found.value, job.norm, "compositional")


def _lipsdp_variant(variant: Variant) -> Callable[[_Job], LipschitzBound]:
    def run(job: _Job) -> LipschitzBound:
        if job.norm != 2.0:
            raise InvalidArgumentError("LipSDP bounds the ℓ2 constant; use norm=2")
        return _lipsdp(job.network, variant, job.solver, job.slopes)

    return run


#: a bound method of :data:`BOUNDS`
BoundMethod = Literal["product", "compositional", "lipsdp", "lipsdp-layer"]
#: a ``method`` of :func:`lipschitz_bound` and :func:`~lipguard.bounds.certify`: a bound method
#: or ``"auto"``
Method = Literal["auto", BoundMethod]
#: a ``method`` of :func:`block_lipschitz_bounds`
BlockMethod = Literal["product", "compositional", "lipsdp"]

#: what each method name runs; "auto" runs the product, compositional and (where it applies)
#: LipSDP bounds and keeps the smallest
BOUNDS: dict[BoundMethod, Callable[[_Job], LipschitzBound]] = {
    "product": _product,
    "compositional": _compositional,
    "lipsdp": _lipsdp_variant("neuron"),
    "lipsdp-layer": _lipsdp_variant("layer"),
}
#: every ``method`` name :func:`lipschitz_bound` accepts
METHODS: tuple[Method, ...] = ("auto", *BOUNDS)
BLOCK_METHODS: tuple[BlockMethod, ...] = get_args(BlockMethod)


def _auto(job: _Job) -> LipschitzBound:
    """The smallest of the bounds that apply; a method that refuses the model or cannot verify
    its solution is skipped (the product bound always applies)."""
    results = [_product(job)]
    with contextlib.suppress(LipguardError):
        results.append(_compositional(job))
    with contextlib.suppress(LipguardError):
        if job.lipsdp_applies():
            results.append(BOUNDS["lipsdp"](job))
    return min(results, key=lambda bound: bound.value)


@on_idle_cores
def lipschitz_bound(
    model: nn.Module,
    norm: NormLike = L2,
    method: Method = "auto",
    *,
    input_shape: InputShape | None = None,
    solver: Solver = "barrier",
    seconds: float = 0.05,
) -> LipschitzBound:
    """A sound global upper bound on the Lipschitz constant of ``model`` in ℓ2 or ℓ∞.

    Args:
        model: any module the bound engine can read (see ``docs/bounds.md``): registered modules
            (``nn.Sequential``, linear and convolutional layers, the supported activations,
            lipguard's layers, …) directly, other modules through ``torch.export``; anything it
            cannot prove raises :class:`~lipguard.errors.UnsupportedModuleError` naming it.
        norm: 2 or ``inf`` — the same norm on inputs and outputs (all inputs jointly).
        method: ``"product"`` (per-operator norms over the graph), ``"compositional"`` (cut/merge
            dynamic programme and, in ℓ2, a fast verified LipSDP-style certificate; for a
            convolutional chain too large for dense matrices, the programme of
            :mod:`lipguard.bounds.chain`), ``"lipsdp"`` (LipSDP-Neuron, ℓ2), ``"lipsdp-layer"``,
            or ``"auto"``: the smallest of those that apply (LipSDP only up to
            :data:`AUTO_LIPSDP_SIZE` rows).
        input_shape: per-sample input shape (a list of them for several inputs); inferred from
            a first linear layer.
        solver: for LipSDP, ``"barrier"`` (fast, default), ``"clarabel"`` or ``"scs"``.
        seconds: time budget of the compositional method's refinement.

    Returns:
        A :class:`LipschitzBound` with ``sound=True``: it holds for every pair of inputs,
        floating-point rounding included.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}, got {method!r}")
    p, shapes = _prepare(model, norm, input_shape)
    job = _Job(read_model(model, shapes), p, solver, seconds)
    return _auto(job) if method == "auto" else BOUNDS[method](job)


def _joint_points(inputs: torch.Tensor | Sequence[torch.Tensor], shapes: Shapes) -> torch.Tensor:
    """Joint input vectors ``(N, total)`` from one tensor per input (or one tensor)."""
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if len(tensors) != len(shapes):
        raise ShapeError(f"the model takes {len(shapes)} inputs, got {len(tensors)} tensors")
    for tensor, shape in zip(tensors, shapes, strict=True):
        _checks.finite_tensor("inputs", tensor)
        if tuple(tensor.shape[1:]) != tuple(shape):
            raise ShapeError(
                f"inputs have per-sample shape {tuple(tensor.shape[1:])}, expected {shape}"
            )
    if len({len(tensor) for tensor in tensors}) != 1:
        raise ShapeError("every input needs the same number of samples")
    flat = [t.detach().to("cpu", torch.float64).reshape(len(t), -1) for t in tensors]
    return torch.cat(flat, dim=1)


@renamed_keyword("radius", "eps")
@on_idle_cores
def local_lipschitz_bound(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    eps: float,
    norm: NormLike = L2,
    *,
    input_shape: InputShape | None = None,
) -> list[LipschitzBound]:
    """Sound bounds on the Lipschitz constant of ``model`` restricted to each ball
    ``B(inputs[i], eps)`` (ℓ2 or ℓ∞, over all inputs jointly: pass one tensor per input for
    a model with several): interval propagation fixes stable neurons, then the compositional
    bound runs with the local slope ranges (never above the global one)."""
    r = _checks.positive_float("eps", eps) if eps != 0 else 0.0
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    for tensor in tensors:
        _checks.finite_tensor("inputs", tensor)
    if input_shape is None:
        input_shape = [tuple(t.shape[1:]) for t in tensors]
        input_shape = input_shape[0] if len(tensors) == 1 else input_shape
    p, shapes = _prepare(model, norm, input_shape)
    points = _joint_points(inputs, shapes)
    network = _network(model, shapes)
    global_value = compositional_bound(network, p).value  # a local bound is never worse
    results = []
    for index, point in enumerate(points):
        slopes = interval_slopes(network, point, r, p)
        value = min(dp_bound(network, slopes, p), global_value)
        scope = f"ball(inputs[{index}], eps={r:g}, {Norm(p).label})"
        results.append(LipschitzBound(value, p, "local-compositional", scope=scope))
    return results


@on_idle_cores
def block_lipschitz_bounds(
    model: nn.Module,
    blocks: Mapping[str, Block] | Sequence[Block] | None = None,
    norm: NormLike = L2,
    method: BlockMethod = "compositional",
    *,
    input_shape: InputShape | None = None,
) -> dict[str, LipschitzBound]:
    """Bounds with respect to each block of input coordinates (the others held fixed): e.g. one
    modality of a multimodal model. ``blocks`` maps names to slices, lists or integer tensors of
    distinct indices, or boolean masks with one entry per coordinate, of the joint input vector
    (all inputs flattened and concatenated); ``None`` makes one block per input of the model
    (``input0``, ``input1``, …). ``method``: ``"product"``, ``"compositional"`` or
    ``"lipsdp"``."""
    p, shapes = _prepare(model, norm, input_shape)
    graph = read_model(model, shapes)
    named: dict[str, Block]
    if blocks is None:
        named = {f"input{i}": part for i, part in enumerate(graph.input_slices())}
    else:
        named = (
            dict(blocks)
            if isinstance(blocks, Mapping)
            else {f"block{i}": block for i, block in enumerate(blocks)}
        )
    if method not in BLOCK_METHODS:
        raise InvalidArgumentError(
            f"method must be product, compositional or lipsdp; got {method!r}"
        )
    network = Network.from_graph(graph)
    size = network.input_size
    results = {}
    for name, block in named.items():
        sub = network.restrict_inputs(_block_index(name, block, size))
        if method == "product":
            bound = LipschitzBound(network_product(sub, p), p, "product")
        elif method == "lipsdp":
            bound = _lipsdp(sub, "neuron", "barrier")
        else:
            found = compositional_bound(sub, p)
            bound = LipschitzBound(found.value, p, "compositional")
        results[name] = LipschitzBound(bound.value, p, bound.method, scope=f"input block {name!r}")
    return results


def _block_index(name: str, block: Block, size: int) -> torch.Tensor:
    """The distinct coordinates a block names: a slice, integer indices or a boolean mask."""
    if isinstance(block, slice):
        index = torch.arange(size)[block]
    else:
        try:
            given = torch.as_tensor(block)
        except (TypeError, ValueError, RuntimeError):
            given = None
        if given is None or given.dim() != 1:
            raise InvalidArgumentError(
                f"block {name!r} must be a slice, a list of indices or a boolean mask"
            )
        if given.dtype == torch.bool:
            if given.numel() != size:
                raise InvalidArgumentError(
                    f"block {name!r}: a boolean mask needs one entry per input coordinate "
                    f"({size}), got {given.numel()}"
                )
            index = given.nonzero().flatten()
        elif given.is_floating_point() or given.is_complex():
            raise InvalidArgumentError(
                f"block {name!r}: indices must be integers (or a boolean mask), got {given.dtype}"
            )
        else:
            index = given.long()
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= size:
        raise InvalidArgumentError(
            f"block {name!r} must name at least one of the {size} input coordinates, "
            f"each within 0..{size - 1}"
        )
    if torch.unique(index).numel() != index.numel():
        raise InvalidArgumentError(f"block {name!r} names a coordinate more than once")
    return index


@on_idle_cores
def exact_lipschitz(
    model: nn.Module,
    norm: NormLike = L2,
    *,
    input_shape: InputShape | None = None,
    max_regions: int = 100_000,
) -> ExactLipschitz:
    """The exact constant of a small piecewise-linear network by region enumeration (a test
    oracle; see :mod:`lipguard.bounds.exact`)."""
    p, shapes = _prepare(model, norm, input_shape)
    return _exact(_network(model, shapes), p, max_regions=max_regions)
