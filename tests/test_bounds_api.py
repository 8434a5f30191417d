"""The bound engine's API: supported modules, clear errors, residual and block bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipguard.bounds import activations as act
from lipguard.bounds import (
    block_lipschitz_bounds,
    lipschitz_bound,
    local_lipschitz_bound,
    register_module,
)
from lipguard.bounds.graph import Activation
from lipguard.errors import (
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    UnsupportedModuleError,
)
from lipguard.nn import LipschitzMLP, MaxMin, Residual
from tests.test_bounds_properties import sampled_steepness


def small_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double()


class TestErrors:
    def test_unsupported_module_is_named_and_never_assumed_one_lipschitz(self):
        model = nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 1))
        with pytest.raises(UnsupportedModuleError, match=r"model\.1 \(Softplus\).*threshold"):
            lipschitz_bound(model)
        model[1] = nn.Softplus(threshold=math.inf)  # smooth: slopes in (0, 1), bounded
        assert lipschitz_bound(model).value > 0

    def test_subclass_of_a_supported_type_is_traced_not_trusted(self):
        class Scaled(nn.Linear):
            def forward(self, x):
                return 100 * super().forward(x)

        model = nn.Sequential(Scaled(2, 2)).double()
        bound = lipschitz_bound(model, method="product").value
        true = 100 * float(torch.linalg.matrix_norm(model[0].weight.detach(), 2))
        assert bound == pytest.approx(true, rel=1e-6)

    def test_non_finite_weights(self):
        model = small_mlp()
        with torch.no_grad():
            model[0].weight[0, 0] = math.nan
        with pytest.raises(NonFiniteError, match=r"0\.weight"):
            lipschitz_bound(model)

    def test_wrong_input_shape(self):
        with pytest.raises(ShapeError, match="expects 3 features in the last dimension"):
            lipschitz_bound(small_mlp(), input_shape=(5,))

    def test_forward_hooks_are_refused(self):
        model = small_mlp()
        model[1].register_forward_hook(lambda module, args, output: output * 10)
        with pytest.raises(UnsupportedModuleError, match="hooks"):
            lipschitz_bound(model)

    def test_dropout_in_training_mode_is_refused(self):
        model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        with pytest.raises(UnsupportedModuleError, match="training mode"):
            lipschitz_bound(model.train())
        assert lipschitz_bound(model.eval()).sound

    def test_parametrised_modules_must_be_in_eval_mode(self):
        layer = nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4))
        with pytest.raises(UnsupportedModuleError, match=r"model\.eval"):
            lipschitz_bound(nn.Sequential(layer).train())
        bound = lipschitz_bound(nn.Sequential(layer).eval(), method="product").value
        assert bound == pytest.approx(
            float(torch.linalg.matrix_norm(layer.weight.detach(), 2)), rel=1e-5
        )

    def test_bad_arguments(self):
        with pytest.raises(InvalidArgumentError, match="method"):
            lipschitz_bound(small_mlp(), method="magic")
        with pytest.raises(InvalidArgumentError, match="ℓ2 and ℓ∞"):
            lipschitz_bound(small_mlp(), norm=1)
        with pytest.raises(InvalidArgumentError, match="norm=2"):
            lipschitz_bound(small_mlp(), norm="inf", method="lipsdp")
        with pytest.raises(InvalidArgumentError, match="input_shape"):
            lipschitz_bound(nn.Sequential(nn.ReLU()))

    def test_lipsdp_declines_sorting_networks_with_a_reason(self):
        model = nn.Sequential(nn.Linear(2, 4), MaxMin(), nn.Linear(4, 1))
        with pytest.raises(UnsupportedModuleError, match="GroupSort/MaxMin"):
            lipschitz_bound(model, method="lipsdp")
        assert lipschitz_bound(model, method="auto").sound  # auto uses the other methods


def test_register_module_extends_the_engine():
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    model = nn.Sequential(nn.Linear(2, 2), Doubler())
    linear = float(torch.linalg.matrix_norm(model[0].weight.detach().double(), 2))
    traced = lipschitz_bound(model, method="product").value  # unregistered: traced
    assert traced == pytest.approx(2 * linear, rel=1e-6)
    scale = act.ActivationSpec(
        "double", lambda x: 2 * x, lambda x: 2 * torch.ones_like(x), 2.0, 2.0
    )
    register_module(Doubler, lambda module, shape, path: ([Activation(scale, shape)], shape))
    assert lipschitz_bound(model, method="product").value == pytest.approx(2 * linear, rel=1e-6)


def test_convolutional_models_need_and_use_the_input_shape():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, stride=2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 1),
    ).double()
    with pytest.raises(InvalidArgumentError, match="input_shape"):
        lipschitz_bound(model)
    points = torch.randn(64, 1, 8, 8, dtype=torch.float64)
    observed = sampled_steepness(lambda x: model(x.reshape(-1, 1, 8, 8)), points.flatten(1), 2.0)
    product = lipschitz_bound(model, input_shape=(1, 8, 8), method="product")
    compositional = lipschitz_bound(model, input_shape=(1, 8, 8), method="compositional")
    assert observed <= compositional.value <= product.value


def test_large_convolutional_chains_get_a_compositional_bound_without_dense_matrices():
    # conv 3→8 on 48×48 has a 18432×6912 normal form (too large): the chain programme bounds
    # it, merging the classifier head with the convolutions, tighter than the product
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 24 * 24, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).eval()
    shape = (3, 48, 48)
    product = lipschitz_bound(model, 2, "product", input_shape=shape)
    compositional = lipschitz_bound(model, 2, "compositional", input_shape=shape)
    assert compositional.method == "compositional"
    assert compositional.sound
    assert compositional.value < 0.9 * product.value
    automatic = lipschitz_bound(model, 2, input_shape=shape)  # thread counts may differ: ulps
    assert automatic.method == "compositional"
    assert automatic.value == pytest.approx(compositional.value, rel=1e-12)
    points = torch.randn(32, *shape, dtype=torch.float64)
    replica = model.double()
    observed = sampled_steepness(lambda x: replica(x.reshape(-1, *shape)), points.flatten(1), 2.0)
    assert observed <= compositional.value
    with pytest.raises(UnsupportedModuleError, match="too large"):
        lipschitz_bound(model, 2, "lipsdp", input_shape=shape)


def test_residual_blocks_are_bounded_by_one_plus_the_body_and_tighter_as_a_graph():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model = nn.Sequential(Residual(body), nn.ReLU(), nn.Linear(4, 1)).double()
    body_bound = lipschitz_bound(body.double(), method="product").value
    head = float(torch.linalg.matrix_norm(model[2].weight.detach(), 2))
    product = lipschitz_bound(model, method="product")
    assert product.value == pytest.approx((1 + body_bound) * head, rel=1e-9)
    # the skip connection rides through the hidden layers as identity neurons
    compositional = lipschitz_bound(model, method="compositional")
    with pytest.raises(UnsupportedModuleError, match="identity neurons"):
        lipschitz_bound(model, method="lipsdp")
    assert lipschitz_bound(model).value == min(product.value, compositional.value)
    observed = sampled_steepness(model, torch.randn(256, 4, dtype=torch.float64), 2.0)
    assert observed <= compositional.value <= product.value


def test_lipguard_models_are_certified_within_their_target():
    model = LipschitzMLP(5, 1, (16, 16), lipschitz=3.0)
    for method in ("product", "compositional", "auto"):
        bound = lipschitz_bound(model, method=method)
        assert bound.value <= 3.0 * (1 + 1e-6)


def test_block_bounds_split_the_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    full = lipschitz_bound(model, method="compositional").value
    blocks = block_lipschitz_bounds(model, {"vision": slice(0, 4), "proprio": [4, 5]})
    assert set(blocks) == {"vision", "proprio"}
    points = torch.randn(256, 6, dtype=torch.float64)
    jacobian = torch.func.vmap(torch.func.jacrev(lambda x: model(x[None])[0]))(points).detach()
    for name, columns in (("vision", slice(0, 4)), ("proprio", [4, 5])):
        observed = float(torch.linalg.matrix_norm(jacobian[:, :, columns], 2).max())
        assert observed <= blocks[name].value <= full * (1 + 1e-9)
        assert blocks[name].scope == f"input block {name!r}"
    with pytest.raises(InvalidArgumentError, match="input coordinates"):
        block_lipschitz_bounds(model, {"bad": [6]})


def test_local_bounds_shrink_with_the_radius_and_check_shapes():
    model = small_mlp()
    point = torch.randn(1, 3, dtype=torch.float64)
    small, large = (local_lipschitz_bound(model, point, r)[0].value for r in (1e-4, 10.0))
    assert small <= large
    with pytest.raises(ShapeError):
        local_lipschitz_bound(model, torch.randn(1, 4, dtype=torch.float64), 0.1, input_shape=(3,))
