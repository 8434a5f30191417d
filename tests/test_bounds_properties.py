"""Soundness properties of the bound engine on many random networks (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from lipguard.bounds import (
    exact_lipschitz,
    lipschitz_bound,
    lipschitz_lower_bound,
    local_lipschitz_bound,
)
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.graph import to_operators
from lipguard.bounds.norms import operator_norm
from lipguard.convolution import conv_spectral_norm
from lipguard.linalg import prove_psd
from lipguard.nn import MaxMin

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "maxmin": MaxMin,
}
PIECEWISE_LINEAR = ("relu", "leaky", "maxmin")


@st.composite
def networks(draw, activations=tuple(ACTIVATIONS), max_depth=3, inputs=(2, 4)):
    torch.manual_seed(draw(st.integers(0, 2**16)))
    width_in = draw(st.integers(*inputs))
    depth = draw(st.integers(1, max_depth))
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    layers: list[nn.Module] = []
    fan_in = width_in
    for _ in range(depth):
        width = draw(st.sampled_from([2, 4, 6]))
        layers.append(nn.Linear(fan_in, width))
        layers.append(ACTIVATIONS[draw(st.sampled_from(activations))]())
        fan_in = width
    layers.append(nn.Linear(fan_in, draw(st.integers(1, 3))))
    model = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model, width_in


def lipsdp_applies(model: nn.Module) -> bool:
    """LipSDP covers elementwise activations; sorting nets use the other methods."""
    return not any(isinstance(module, MaxMin) for module in model.modules())


def sampled_steepness(model: nn.Module, points: torch.Tensor, norm: float) -> float:
    """Largest Jacobian operator norm over sample points (float64, exact derivatives)."""
    jacobian = torch.func.vmap(torch.func.jacrev(lambda x: model(x[None])[0]))(points)
    if norm == math.inf:
        return float(jacobian.detach().abs().sum(-1).amax())
    return float(torch.linalg.matrix_norm(jacobian.detach(), 2).max())


@given(network=networks(), norm=st.sampled_from([2.0, math.inf]))
def test_every_sound_bound_is_above_the_witnessed_lower_bound(network, norm):
    model, width = network
    points = torch.randn(128, width, dtype=torch.float64) * 3
    witnessed = lipschitz_lower_bound(model, points[:4], norm, restarts=1, steps=20).value
    observed = max(witnessed, sampled_steepness(model, points, norm))
    methods = ["product", "compositional", "auto"]
    methods += ["lipsdp"] if norm == 2.0 and lipsdp_applies(model) else []
    for method in methods:
        bound = lipschitz_bound(model, norm, method, seconds=0.01)
        assert bound.sound
        assert bound.value >= observed * (1 - 1e-9), (method, bound.value, observed)


@given(network=networks(activations=PIECEWISE_LINEAR, max_depth=2, inputs=(2, 2)))
def test_exact_oracle_matches_brute_force_and_bounds_exceed_it(network):
    model, _ = network
    exact = exact_lipschitz(model, 2)
    grid = torch.linspace(-8, 8, 161, dtype=torch.float64)
    brute = sampled_steepness(model, torch.cartesian_prod(grid, grid), 2.0)
    at_witness = sampled_steepness(model, exact.witness[None], 2.0)
    assert exact.value >= brute * (1 - 1e-9)  # no region the grid saw is steeper
    assert at_witness == pytest.approx(exact.value, rel=1e-9, abs=1e-12)  # realised, not invented
    methods = ("product", "compositional") + (("lipsdp",) if lipsdp_applies(model) else ())
    for method in methods:
        assert lipschitz_bound(model, 2, method, seconds=0.01).value >= exact.value * (1 - 1e-9)


@given(
    network=networks(),
    norm=st.sampled_from([2.0, math.inf]),
    radius=st.sampled_from([1e-3, 0.1, 1.0]),
)
def test_local_bounds_hold_inside_their_ball(network, norm, radius):
    model, width = network
    center = torch.randn(1, width, dtype=torch.float64)
    bound = local_lipschitz_bound(model, center, radius, norm)[0]
    directions = torch.randn(512, width, dtype=torch.float64)
    if norm == math.inf:
        inside = center + radius * (torch.rand_like(directions) * 2 - 1)
    else:
        directions /= directions.norm(dim=1, keepdim=True)
        inside = center + radius * torch.rand(512, 1, dtype=torch.float64) * directions
    assert sampled_steepness(model, inside, norm) <= bound.value * (1 + 1e-9)
    with torch.no_grad():
        change = torch.linalg.vector_norm(model(inside[::2]) - model(inside[1::2]), ord=norm, dim=1)
    distance = torch.linalg.vector_norm(inside[::2] - inside[1::2], ord=norm, dim=1)
    assert bool((change <= bound.value * distance * (1 + 1e-9) + 1e-15).all())
    assert bound.value <= lipschitz_bound(model, norm, "compositional", seconds=0.01).value * (
        1 + 1e-9
    )


@given(
    channels=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    groups=st.sampled_from([1, 2]),
    kernel=st.integers(1, 4),
    size=st.integers(3, 7),
    stride=st.integers(1, 2),
    padding=st.one_of(st.integers(0, 6), st.sampled_from(["same", "valid"])),
    dilation=st.integers(1, 2),
    one_dimensional=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_convolution_norms_are_sound(
    channels, groups, kernel, size, stride, padding, dilation, one_dimensional, seed
):
    """Both the frequency-domain bound alone (over-padding, string padding, groups, a single
    tap included) and the operator norm dominate the dense matrix's exact norm."""
    torch.manual_seed(seed)
    left = (kernel - 1) * dilation // 2 if padding == "same" else 0
    pad = padding if isinstance(padding, int) else left
    assume((kernel - 1) * dilation + 1 <= size + 2 * pad)
    assume(padding != "same" or stride == 1)
    channels = (channels[0] * groups, channels[1] * groups)
    cls, shape = (
        (nn.Conv1d, (channels[0], size))
        if one_dimensional
        else (nn.Conv2d, (channels[0], size, size + 1))
    )
    conv = cls(
        *channels, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups
    ).double()
    operator = to_operators(conv, shape)[0]
    dense = operator.dense().matrix.value
    exact = float(torch.linalg.matrix_norm(dense, 2))
    assert conv_spectral_norm(operator) >= exact * (1 - 1e-12)
    assert operator_norm(operator, 2.0) >= exact * (1 - 1e-12)
    assert operator_norm(operator, math.inf) >= float(dense.abs().sum(1).max()) * (1 - 1e-12)
    reference = operator.apply(torch.eye(dense.shape[1], dtype=torch.float64), with_bias=False).T
    assert torch.allclose(reference, dense)


@given(seed=st.integers(0, 10_000), depth=st.integers(1, 4), magnitude=st.floats(1e-3, 1e3))
def test_enclosure_products_contain_the_exact_product(seed, depth, magnitude):
    generator = np.random.default_rng(seed)
    matrices = [generator.standard_normal((6, 6)) * magnitude for _ in range(depth + 1)]
    reference = np.asarray(matrices[0], dtype=np.longdouble)
    product = Enclosure.exact(torch.tensor(matrices[0]))
    for matrix in matrices[1:]:
        reference = np.asarray(matrix, dtype=np.longdouble) @ reference
        product = Enclosure.exact(torch.tensor(matrix)).matmul(product)
    deviation = np.abs(product.value.numpy().astype(np.longdouble) - reference)
    assert (deviation <= product.abs_error().numpy().astype(np.longdouble) * 1.0001).all()


@given(seed=st.integers(0, 10_000), size=st.integers(2, 40), smallest=st.floats(-1.0, 1.0))
def test_prove_psd_never_proves_an_indefinite_matrix(seed, size, smallest):
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64)).Q
    values = torch.rand(size, generator=generator, dtype=torch.float64) + 1.0
    values[0] = smallest
    matrix = (basis * values) @ basis.T
    proven = prove_psd(matrix)
    if smallest < 0:
        assert not proven
    if smallest > 1e-6:
        assert proven
    assert not prove_psd(matrix, perturbation=max(smallest, 0.0) + 1e-3)
