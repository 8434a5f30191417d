"""Soundness properties on generated networks: every sound result lipguard returns — global,
local and block bounds, certificates' lower/upper pairs, the pessimistic oracle, layer and MLP
certificates — holds against independent lower bounds computed on the model itself (its own
forward in float64, see ``oracles.py``). A refusal by name is always allowed; a wrong number is
not. ``HYPOTHESIS_PROFILE=thorough`` runs more than 10,000 cases (see ``strategies.EXAMPLES``)."""

from __future__ import annotations

import math
import unittest.mock

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from lipguard.bounds import (
    block_lipschitz_bounds,
    lipschitz_bound,
    lipschitz_lower_bound,
    local_lipschitz_bound,
)
from lipguard.bounds import chain as chain_module
from lipguard.bounds.api import read_model
from lipguard.bounds.chain import as_chain, chain_bound
from lipguard.bounds.frontend import input_shapes
from lipguard.errors import InvalidArgumentError, UnsupportedModuleError
from lipguard.nn import (
    LipschitzLinearModel,
    LipschitzMLP,
    OrthogonalLinear,
    SpectralLinear,
    SVDLinear,
)
from lipguard.rl import PessimisticReward
from tests.soundness.oracles import ascent, gradient_norms, pair_ratios
from tests.soundness.strategies import (
    DTYPES,
    EXAMPLES,
    SCALES,
    TARGETS,
    activations,
    float64_replica,
    networks,
    weight_scale,
)

NORMS = st.sampled_from([2.0, math.inf])
#: float64 oracles carry rounding: a relative and an absolute (× the weights' size) allowance
RELATIVE = 1e-7
ABSOLUTE = 1e-11


def refused_or(call):
    """The engine's result, or ``None`` when it refuses the model by name."""
    try:
        return call()
    except UnsupportedModuleError:
        return None


def replica_of(model: nn.Module) -> nn.Module:
    try:
        return float64_replica(model)
    except InvalidArgumentError:  # a Lipschitz target below the dtype's resolution: refused
        assume(False)
        raise


def observed_slope(replica, points, norm, columns=None) -> float:
    """Largest finite gradient norm (and difference ratio, rounding discounted) at ``points``."""
    norms = gradient_norms(replica, points, norm, columns)
    slope = float(norms[torch.isfinite(norms)].max()) if bool(torch.isfinite(norms).any()) else 0.0
    if columns is None:
        shifted = points + 1e-3 * (points.abs() + 1) * torch.randn_like(points)
        with torch.no_grad():
            size = replica(points).abs().flatten(1).sum(1) + replica(shifted).abs().flatten(1).sum(
                1
            )
        distance = torch.linalg.vector_norm((points - shifted).flatten(1), ord=norm, dim=1)
        ratios = pair_ratios(replica, points, shifted, norm) - 1e-13 * size / distance
        finite = ratios[torch.isfinite(ratios)]
        if finite.numel():
            slope = max(slope, float(finite.max()))
    return slope


def sample_points(shape, count=24) -> torch.Tensor:
    scales = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64).repeat(count // 3 + 1)[:count]
    return torch.randn(count, *shape, dtype=torch.float64) * scales.reshape(-1, *[1] * len(shape))


@settings(max_examples=EXAMPLES)
@given(network=networks(), norm=NORMS)
def test_global_bounds_hold(network, norm):
    model, shape = network
    replica = replica_of(model)
    points = sample_points(shape)
    points = torch.cat([points, ascent(replica, points[:6], norm)])
    observed = observed_slope(replica, points, norm)
    tolerance = ABSOLUTE * weight_scale(replica)
    for method in ("product", "compositional", "auto"):
        bound = refused_or(
            lambda method=method: lipschitz_bound(
                model, norm, method, input_shape=shape, seconds=0.01
            )
        )
        if bound is None:
            continue
        assert bound.sound
        assert bound.value >= observed * (1 - RELATIVE) - tolerance, (method, bound, observed)


@settings(max_examples=EXAMPLES)
@given(network=networks(), norm=NORMS, limit=st.sampled_from([0, 64, 2**24]))
def test_chain_bounds_hold(network, norm, limit):
    """The convolutional chain programme (what ``compositional`` uses when the normal form is
    too large), with blocks materialised never, sometimes or always."""
    model, shape = network
    replica = replica_of(model)
    graph = refused_or(lambda: read_model(model, input_shapes(model, shape)))
    chain = None if graph is None else as_chain(graph)
    if chain is None:  # branches, sorting, max-pooling: not a chain
        return
    with unittest.mock.patch.object(chain_module, "MAX_BLOCK_ENTRIES", limit):
        value = chain_bound(chain, norm)
    points = sample_points(shape)
    points = torch.cat([points, ascent(replica, points[:6], norm)])
    observed = observed_slope(replica, points, norm)
    assert value >= observed * (1 - RELATIVE) - ABSOLUTE * weight_scale(replica)


@settings(max_examples=EXAMPLES)
@given(
    network=networks(max_depth=2),
    norm=NORMS,
    radius=st.sampled_from([1e-3, 0.1, 1.0, 1e3, 1e307]),
)
def test_local_bounds_hold_inside_their_ball(network, norm, radius):
    model, shape = network
    replica = replica_of(model)
    center = torch.randn(1, *shape, dtype=torch.float64)
    bound = refused_or(lambda: local_lipschitz_bound(model, center, radius, norm)[0])
    if bound is None:
        return
    directions = torch.rand(32, *shape, dtype=torch.float64) * 2 - 1
    if norm == 2.0:
        flat = directions.flatten(1)
        directions = (flat / flat.norm(dim=1, keepdim=True)).reshape(directions.shape)
    reach = torch.tensor([1.0, 1e-1, 1e-3, 1e-6], dtype=torch.float64).repeat(8)
    reach = torch.minimum(reach * radius, torch.tensor(1e3))  # the replica overflows beyond
    inside = (
        center
        + (reach * torch.rand(32, dtype=torch.float64)).reshape(-1, *[1] * len(shape)) * directions
    )

    def project(points):
        delta = (points - center).flatten(1)
        if norm == math.inf:
            delta = delta.clamp(-radius, radius)
        else:
            delta = delta * torch.clamp(radius / delta.norm(dim=1, keepdim=True), max=1.0)
        return center + delta.reshape(points.shape)

    inside = torch.cat([inside, project(ascent(replica, inside[:6], norm, project=project))])
    norms = gradient_norms(replica, inside, norm)
    finite = norms[torch.isfinite(norms)]
    observed = float(finite.max()) if finite.numel() else 0.0
    assert math.isfinite(bound.value)
    assert bound.value >= observed * (1 - RELATIVE) - ABSOLUTE * weight_scale(replica)


@settings(max_examples=EXAMPLES)
@given(network=networks(max_depth=2), norm=NORMS, data=st.data())
def test_block_bounds_hold(network, norm, data):
    model, shape = network
    replica = replica_of(model)
    size = math.prod(shape)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    assume(bool(mask.any()))
    bounds = refused_or(lambda: block_lipschitz_bounds(model, {"b": mask}, norm, input_shape=shape))
    if bounds is None:
        return
    points = sample_points(shape, 12)
    columns = mask.nonzero().flatten()
    norms = gradient_norms(replica, points, norm, columns)
    finite = norms[torch.isfinite(norms)]
    observed = float(finite.max()) if finite.numel() else 0.0
    assert bounds["b"].value >= observed * (1 - RELATIVE) - ABSOLUTE * weight_scale(replica)


@settings(max_examples=EXAMPLES)
@given(network=networks(max_depth=2), norm=NORMS)
def test_witnessed_lower_bounds_are_about_the_same_function(network, norm):
    model, shape = network
    replica = replica_of(model)
    upper = refused_or(lambda: lipschitz_bound(model, norm, "product", input_shape=shape))
    if upper is None:
        return
    found = lipschitz_lower_bound(model, sample_points(shape, 3), norm, restarts=1, steps=8)
    assert found.rigorous
    assert found.value <= upper.value
    distance = float(torch.linalg.vector_norm((found.x - found.y).flatten(), ord=norm))
    if distance == 0.0:  # no pair found: the witnessed value is 0
        assert found.value == 0.0
        return
    again = pair_ratios(replica, found.x[None], found.y[None], norm)[0]
    with torch.no_grad():
        size = float(replica(found.x[None]).abs().sum() + replica(found.y[None]).abs().sum())
    assert float(again) + 1e-13 * size / distance >= found.value * (1 - 1e-9)


@settings(max_examples=EXAMPLES)
@given(network=networks(max_depth=2), norm=NORMS, eps=st.sampled_from([1e-3, 0.1, 1.0]))
def test_pessimistic_reward_is_below_the_minimum_over_the_ball(network, norm, eps):
    model, shape = network
    assume(len(shape) == 1)
    replica = replica_of(model)
    with torch.no_grad():
        assume(replica(torch.zeros(1, *shape, dtype=torch.float64)).numel() == 1)
    oracle = refused_or(lambda: PessimisticReward(model, eps, norm, input_shape=shape))
    if oracle is None:
        return
    points = torch.randn(4, *shape, dtype=torch.float64)
    claimed = oracle(points)
    for point, value in zip(points, claimed, strict=True):
        directions = torch.rand(400, *shape, dtype=torch.float64) * 2 - 1
        if norm == 2.0:
            directions = directions / directions.norm(dim=1, keepdim=True)
            directions = directions * torch.rand(400, 1, dtype=torch.float64)
        with torch.no_grad():
            samples = replica(torch.cat([point[None], point + eps * directions])).flatten()
        minimum = float(samples.min())
        assert float(value) <= minimum + 1e-13 * (1 + float(samples.abs().max()))


@settings(max_examples=EXAMPLES)
@given(
    layer_type=st.sampled_from([SpectralLinear, OrthogonalLinear, SVDLinear]),
    dtype=st.sampled_from(DTYPES),
    target=st.sampled_from((*TARGETS, 6.1e-6, 1e-7)),
    scale=st.sampled_from(SCALES),
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    seed=st.integers(0, 1000),
)
def test_layer_guarantees_hold_in_every_dtype(layer_type, dtype, target, scale, shape, seed):
    torch.manual_seed(seed)
    layer = layer_type(*shape, lipschitz=target, dtype=dtype)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.mul_(scale)
        if isinstance(layer, SVDLinear):
            layer.singular_values.mul_(1e3)
    try:
        weight = layer.effective_weight().detach()
    except InvalidArgumentError:
        return  # a target below the dtype's resolution is refused, never broken
    sigma = float(torch.linalg.matrix_norm(weight.double(), 2))
    assert sigma <= target * (1 + 1e-12)
    assert sigma <= layer.certified_lipschitz().value * (1 + 1e-12)
    x = torch.randn(3, shape[0], dtype=dtype)
    with torch.no_grad():
        assert torch.equal(layer(x), nn.functional.linear(x, weight, layer.bias))
    model = LipschitzLinearModel(*shape, lipschitz=target, norm=2, dtype=dtype)
    try:
        rows = model.effective_weight().double().norm(dim=1)
    except InvalidArgumentError:
        return
    assert float(rows.detach().max()) <= target


@settings(max_examples=EXAMPLES)
@given(data=st.data(), norm=st.just(2.0))
def test_mlp_certificates_cover_whatever_the_mlp_holds(data, norm):
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    layer = data.draw(st.sampled_from(["spectral", "orthogonal", "svd"]))
    mlp = LipschitzMLP(
        3,
        1,
        hidden=(4, 4),
        lipschitz=data.draw(st.sampled_from(TARGETS)),
        activation="relu",
        layer=layer,
    )
    for index in (1, 3):
        if data.draw(st.booleans()):
            mlp[index] = data.draw(activations(4))
    if data.draw(st.booleans()):
        tail = nn.Linear(1, 1)
        with torch.no_grad():
            tail.weight.fill_(data.draw(st.sampled_from([-100.0, 0.5, 100.0])))
        mlp.append(tail)
    mlp = mlp.to(data.draw(st.sampled_from(DTYPES))).eval()
    bound = refused_or(mlp.certified_lipschitz)
    if bound is None:
        return
    replica = float64_replica(mlp)
    points = sample_points((3,))
    observed = observed_slope(replica, torch.cat([points, ascent(replica, points[:6], norm)]), norm)
    assert bound.value >= observed * (1 - RELATIVE) - ABSOLUTE * weight_scale(replica)


@pytest.mark.parametrize(
    "tamper",
    ["forward", "call_impl", "module_hook", "pre_hook", "global_hook", "compiled", "inplace"],
)
@settings(max_examples=max(EXAMPLES // 4, 3))
@given(network=networks(max_depth=2))
def test_tampered_networks_are_refused(tamper, network):
    model, shape = network
    target = next(
        m
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) or hasattr(m, "effective_weight")
    )
    handle = None
    if tamper == "forward":
        original = target.forward
        target.forward = lambda x: 7.0 * original(x)
    elif tamper == "call_impl":
        target._call_impl = lambda *args: 7.0 * type(target).forward(target, *args)
    elif tamper == "module_hook":
        target.register_forward_hook(lambda m, i, o: o * 7.0)
    elif tamper == "pre_hook":
        target.register_forward_pre_hook(lambda m, i: (i[0] * 7.0,))
    elif tamper == "global_hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    elif tamper == "compiled":
        target._compiled_call_impl = target._call_impl
    else:
        model = nn.Sequential(nn.ReLU(inplace=True), model)
    try:
        with pytest.raises(UnsupportedModuleError):
            lipschitz_bound(model, 2, "product", input_shape=shape)
    finally:
        if handle is not None:
            handle.remove()
