"""vanilla(): plain torch.nn modules computing the same function."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from lipguard.errors import UnsupportedModuleError
from lipguard.nn import (
    GroupSort,
    LipschitzLinearModel,
    LipschitzMLP,
    MaxMin,
    SpectralLinear,
    vanilla,
)
from tests.conftest import true_sigma
from tests.test_mlp import COMBINATIONS


def only_torch_modules(model: nn.Module) -> bool:
    return all(type(module).__module__.startswith("torch.nn") for module in model.modules())


@pytest.mark.parametrize(("layer", "activation"), COMBINATIONS)
def test_round_trip_in_float64(layer, activation):
    model = LipschitzMLP(
        6, 3, (12, 12), lipschitz=5.0, layer=layer, activation=activation, group_size=4
    ).double()
    exported = vanilla(model)
    x = torch.randn(200, 6, dtype=torch.float64) * 4
    with torch.no_grad():
        assert float((model(x) - exported(x)).abs().max()) <= 1e-6
    assert only_torch_modules(exported)
    restored = pickle.loads(pickle.dumps(exported))
    assert torch.equal(restored(x), exported(x))


@pytest.mark.parametrize("group_size", [2, 3, 4, 8])
@pytest.mark.parametrize("descending", [False, True])
def test_sorting_networks_are_exact(group_size, descending):
    activation = GroupSort(group_size, descending=descending)
    model = nn.Sequential(nn.Linear(5, 24), activation).double()
    exported = vanilla(model)
    x = torch.randn(300, 5, dtype=torch.float64) * 10
    with torch.no_grad():
        assert float((model(x) - exported(x)).abs().max()) <= 1e-12
    assert only_torch_modules(exported)


def test_exported_weights_keep_the_guarantee():
    model = LipschitzMLP(10, 1, (16,), lipschitz=2.0)
    exported = vanilla(model, expand_activations=False)  # only the constrained layers are Linear
    linears = [module for module in exported.modules() if isinstance(module, nn.Linear)]
    assert len(linears) == 2
    assert true_sigma(linears[0].weight) * true_sigma(linears[1].weight) <= 2.0 * (1 + 1e-6)


def test_standalone_group_sort_needs_its_width():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = SpectralLinear(4, 6)
            self.act = MaxMin()

        def forward(self, x):
            return self.act(self.layer(x))

    net = Net()
    with pytest.raises(UnsupportedModuleError, match="example_input"):
        vanilla(net)
    x = torch.randn(7, 4)
    exported = vanilla(net, example_input=x)
    assert torch.allclose(net(x), exported(x), atol=1e-6)
    assert isinstance(exported.layer, nn.Linear)
    assert isinstance(exported.act, nn.Sequential)
    assert isinstance(net.layer, SpectralLinear)  # the original is untouched


def test_group_sort_on_other_dimensions_is_kept_or_refused():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), GroupSort(2, dim=1))
    with pytest.raises(UnsupportedModuleError, match="dim=1"):
        vanilla(model)
    kept = vanilla(model, expand_activations=False)
    assert isinstance(kept[1], GroupSort)


def test_linear_model_exports_its_projected_weight():
    model = LipschitzLinearModel(4, 2, lipschitz=1.0, norm=1)
    with torch.no_grad():
        model.weight.mul_(10)
    exported = vanilla(model)
    assert isinstance(exported, nn.Linear)
    assert float(exported.weight.detach().abs().amax(dim=1).max()) <= 1.0
    x = torch.randn(5, 4)
    assert torch.allclose(model(x), exported(x))
