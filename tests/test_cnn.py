"""LipschitzCNN and the pixel reward model: closed-form checks, then bound properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipguard.bounds import lipschitz_bound
from lipguard.errors import InvalidArgumentError, ShapeError, UnsupportedModuleError
from lipguard.nn import (
    AOLConv2d,
    GroupSort,
    LipschitzCNN,
    LipschitzMLP,
    MaxMin,
    SLLConv2d,
    SpectralConv2d,
    SpectralLinear,
    split_lipschitz,
    vanilla,
)
from lipguard.rl import PixelRewardModel, build_pixel_reward_model, fit_reward


def jacobian_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``||J(x)||₂`` at every point of ``x`` (weights frozen: SpectralConv2d's power-iteration
    step in training calls is not a functorch-transformable function)."""
    model.requires_grad_(False)
    jacobian = torch.func.vmap(torch.func.jacrev(lambda v: model(v[None]).reshape(-1)))(x)
    return torch.linalg.matrix_norm(jacobian.flatten(2), ord=2).detach()


def lower_bound(model: nn.Module, shape: tuple[int, ...], points: int = 24) -> float:
    """An empirical lower bound on the ℓ2 Lipschitz constant: the largest Jacobian norm over
    random points and the largest difference quotient over random close pairs."""
    torch.manual_seed(1)
    x = torch.rand(points, *shape, dtype=torch.float64) * 2 - 1
    best = float(jacobian_norms(model, x).max())
    delta = torch.randn_like(x) * 1e-3
    with torch.no_grad():
        out = model(x + delta) - model(x)
    ratios = out.flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)
    return max(best, float(ratios.max()))


def scramble(model: nn.Module, steps: int = 8) -> None:
    """Adam steps with a large learning rate towards large outputs (weights far from init)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    torch.manual_seed(2)
    x = torch.rand(16, *model.input_shape)
    for _ in range(steps):
        optimizer.zero_grad()
        (-model(x).pow(2).sum()).backward()
        optimizer.step()


pytestmark = pytest.mark.usefixtures("one_thread")


# --- closed forms ----------------------------------------------------------------------------


def test_factors_split_the_bound_over_convolutions_and_head():
    model = LipschitzCNN((1, 8, 8), 10, (4, 8, 8), lipschitz=8.0, downsample="stride")
    convs = [m for m in model if isinstance(m, AOLConv2d)]
    head = model[-1]
    assert isinstance(head, SpectralLinear)
    assert [c.lipschitz for c in convs] + [head.lipschitz] == split_lipschitz(8.0, 4)
    assert math.prod([c.lipschitz for c in convs] + [head.lipschitz]) <= 8.0
    assert [c.stride for c in convs] == [(2, 2)] * 3


def test_spectral_stages_are_proven_for_their_input_size():
    model = LipschitzCNN((3, 16, 12), 2, (4, 8), layer="spectral")
    convs = [m for m in model if isinstance(m, SpectralConv2d)]
    assert [c.input_size for c in convs] == [(16, 12), (8, 6)]  # PixelUnshuffle halves
    assert convs[1].in_channels == 16  # 4 channels × 4 after PixelUnshuffle(2)
    assert model[-1].in_features == 4 * 8 * 4 * 3


def test_spectral_model_layer_product_is_tight_closed_form():
    # spectral normalisation scales each convolution to its factor exactly (up to 1e-5), and the
    # head's spectral norm is its factor: the layer product is L
    model = LipschitzCNN((1, 4, 4), 3, (2,), layer="spectral", lipschitz=2.0)
    bound = model.certified_lipschitz("layers").value
    assert 2.0 * (1 - 1e-4) <= bound <= 2.0


def test_one_pixel_linear_head_is_exact():
    # a 1×1 image, a 1×1 kernel: conv = a vector u (norm L1), MaxMin sorts two entries and the
    # head is a row v; with u, v chosen along (1, 1) the Jacobian is exactly v·u = ||v||·||u||
    model = LipschitzCNN((1, 1, 1), 1, (2,), kernel_size=1, downsample="none", layer="spectral")
    with torch.no_grad():
        conv, head = model[0], model[-1]
        conv.weight.copy_(torch.ones_like(conv.weight))
        head.weight.copy_(torch.ones_like(head.weight))
    expected = conv.lipschitz * head.lipschitz
    x = torch.tensor([[[[0.3]]]], requires_grad=True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert float(grad.abs()) == pytest.approx(expected, rel=1e-5)
    assert model.certified_lipschitz().value >= float(grad.abs()) * (1 - 1e-7)


# --- properties ------------------------------------------------------------------------------

CONFIGS = {
    "aol": {},
    "spectral": {"layer": "spectral"},
    "sll+groupsort": {"sll_blocks": 1, "activation": "groupsort", "group_size": 4},
    "stride+mlp-head": {"downsample": "stride", "head_hidden": (8,), "lipschitz": 3.0},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lower_bound_below_certified_below_requested(name):
    options = dict(CONFIGS[name])
    target = float(options.get("lipschitz", 1.0))
    torch.manual_seed(0)
    model = LipschitzCNN((2, 8, 8), 3, (4, 8), **options)
    scramble(model)
    model = model.double().eval()
    certified = model.certified_lipschitz()
    assert certified.sound
    assert certified.norm == 2.0
    assert certified.value <= target
    assert model.layer_product().value <= target
    assert lower_bound(model, (2, 8, 8)) <= certified.value


def test_certified_is_the_smaller_of_layers_and_engine():
    torch.manual_seed(0)
    model = LipschitzCNN((1, 8, 8), 4, (4, 8), sll_blocks=1)
    layers = model.certified_lipschitz("layers")
    engine = model.certified_lipschitz("engine")
    assert layers.method == "layer-product"
    assert model.certified_lipschitz().value == min(layers.value, engine.value)


def test_a_layer_placed_twice_counts_twice():
    # nn.Sequential calls a module once per place; named_children lists it once, and a product
    # over named_children would leave a factor out (a bound that is too small)
    torch.manual_seed(0)
    model = LipschitzCNN((4, 8, 8), 3, (4,), lipschitz=8.0)
    conv = model[0]
    once = model.certified_lipschitz("layers").value
    places = list(model._modules.items())
    model._modules.clear()
    for name, child in [places[0], ("again", conv), *places[1:]]:
        model._modules[name] = child
    twice = model.certified_lipschitz("layers").value
    factor = conv.certified_lipschitz().value
    assert twice >= once * factor * (1 - 1e-9)
    engine = model.certified_lipschitz("engine").value
    assert lower_bound(model.double(), (4, 8, 8), points=16) <= min(twice, engine)
    act = nn.ReLU()
    chain = nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 1))
    assert lipschitz_bound(chain, 2, "product", input_shape=(4,)).sound  # was refused


def test_vanilla_export_matches_and_engine_reads_both():
    torch.manual_seed(0)
    model = LipschitzCNN((1, 8, 8), 5, (4, 8), sll_blocks=1, head_hidden=(8,)).eval()
    exported = vanilla(model)
    assert not any(
        isinstance(m, AOLConv2d | SLLConv2d | MaxMin | GroupSort | LipschitzMLP)
        for m in exported.modules()
    )
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-5, rtol=0)
    direct = lipschitz_bound(model, 2, "product", input_shape=(1, 8, 8))
    plain = lipschitz_bound(exported, 2, "product", input_shape=(1, 8, 8))
    assert direct.sound
    assert plain.sound
    assert lower_bound(model.double(), (1, 8, 8), points=16) <= min(direct.value, plain.value)


def test_swapped_head_is_bounded_for_what_it_is():
    torch.manual_seed(0)
    model = LipschitzCNN((1, 4, 4), 2, (2,))
    features = model[-1].in_features
    model[-1] = nn.Linear(features, 2)
    with torch.no_grad():
        model[-1].weight.mul_(100.0)
    with pytest.raises(UnsupportedModuleError, match="no proven bound"):
        model.layer_product()
    with pytest.raises(UnsupportedModuleError):
        model.certified_lipschitz("layers")
    bound = model.certified_lipschitz()
    assert bound.value > 1.0  # the engine sees the unconstrained head
    assert lower_bound(model.double(), (1, 4, 4), points=16) <= bound.value


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_shape": (8, 8)}, ShapeError, "input_shape"),
        ({"input_shape": (1, 0, 8)}, InvalidArgumentError, "input_shape"),
        ({"channels": ()}, InvalidArgumentError, "at least one"),
        ({"channels": (3,)}, InvalidArgumentError, "divide"),
        ({"lipschitz": 0.0}, InvalidArgumentError, "lipschitz"),
        ({"lipschitz": math.inf}, InvalidArgumentError, "lipschitz"),
        ({"layer": "bjorck"}, InvalidArgumentError, "layer"),
        ({"activation": "relu"}, InvalidArgumentError, "activation"),
        ({"downsample": "maxpool"}, InvalidArgumentError, "downsample"),
        ({"kernel_size": 2}, InvalidArgumentError, "odd"),
        ({"sll_blocks": -1}, InvalidArgumentError, "sll_blocks"),
        ({"out_features": 0}, InvalidArgumentError, "out_features"),
        ({"input_shape": (1, 6, 6), "channels": (2, 2)}, ShapeError, "even"),
        ({"activation": "groupsort", "group_size": 1}, InvalidArgumentError, "group_size"),
        (
            {"activation": "groupsort", "group_size": 3, "channels": (4,)},
            InvalidArgumentError,
            "divide",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    arguments = {"input_shape": (1, 8, 8), "out_features": 2, "channels": (4,)} | kwargs
    with pytest.raises(error, match=match):
        LipschitzCNN(**arguments)


def test_bad_inputs_and_methods():
    model = LipschitzCNN((1, 8, 8), 2, (4,))
    with pytest.raises(ShapeError, match=r"\(N, 1, 8, 8\)"):
        model(torch.rand(2, 1, 9, 9))
    with pytest.raises(ShapeError):
        model(torch.rand(1, 8, 8))
    with pytest.raises(InvalidArgumentError, match="method"):
        model.certified_lipschitz("lipsdp")  # type: ignore[arg-type]


# --- pixel reward model ----------------------------------------------------------------------


def brightness_task(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations with a constant border (its pixel-wise std is 0) and reward = 3 × the mean
    brightness of the top-left 3×3 region (gradient norm exactly 3/9·√9 = 1)."""
    torch.manual_seed(0)
    obs = torch.full((n, 1, 8, 8), 0.5)
    obs[:, :, 1:7, 1:7] = torch.rand(n, 1, 6, 6)
    return obs, 3 * obs[:, 0, 1:4, 1:4].mean(dim=(1, 2))


def test_pixel_reward_model_fits_and_its_bound_holds():
    obs, rewards = brightness_task()
    model = build_pixel_reward_model(obs, rewards, lipschitz=4.0, channels=(8,))
    assert isinstance(model, PixelRewardModel)
    assert model(obs).shape == (len(obs),)
    fit_reward(model, obs, rewards, epochs=10, batch_size=32, learning_rate=1e-2, progress=False)
    model.eval()
    with torch.no_grad():
        mse = float((model(obs) - rewards).pow(2).mean())
    assert mse < 0.25 * float(rewards.var())  # it learned the region's brightness
    bound = model.certified_lipschitz()
    assert bound.sound
    assert bound.value <= 4.0
    # the bound holds on raw pixels: gradients and an attack stay within it
    double = model.double()
    x = obs[:32].double()
    assert float(jacobian_norms(double, x).max()) <= bound.value
    eps = 0.1
    delta = (1e-3 * torch.randn_like(x)).requires_grad_(True)
    for _ in range(20):  # ℓ2 PGD maximising the reward change
        change = (double(x + delta) - double(x)).abs().sum()
        (grad,) = torch.autograd.grad(change, delta)
        with torch.no_grad():
            delta += 0.05 * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta *= (eps / norms).clamp(max=1.0)[:, None, None, None]
    with torch.no_grad():
        change = (double(x + delta) - double(x)).abs()
    assert float(change.max()) <= bound.value * eps * (1 + 1e-9)
    assert float(change.max()) > 0.5 * eps  # the attack found the region (true slope 1)


def test_pixel_standardisation_is_scalar():
    obs, rewards = brightness_task(64)
    model = build_pixel_reward_model(obs, rewards, lipschitz=2.0, channels=(4,))
    scale = model[0].scale
    assert torch.all(scale == scale[0])  # the constant border does not shrink the std
    assert float(scale[0]) == pytest.approx(1 / float(obs.double().std()), rel=1e-6)
    assert model.cnn.lipschitz <= 2.0 * float(obs.double().std()) / float(rewards.std())
    assert lipschitz_bound(model, 2, "product", input_shape=(1, 8, 8)).value <= 2.0


def test_pixel_reward_bad_arguments():
    obs, rewards = brightness_task(8)
    with pytest.raises(ShapeError):
        build_pixel_reward_model(obs[:, 0])
    with pytest.raises(ShapeError):
        build_pixel_reward_model(obs, rewards[:-1])
    with pytest.raises(InvalidArgumentError):
        build_pixel_reward_model(obs, lipschitz=-1.0)
    model = build_pixel_reward_model(obs, channels=(4,))
    with pytest.raises(ShapeError):
        model(obs[:, :, :4])
    with pytest.raises(ShapeError):
        PixelRewardModel(LipschitzCNN((1, 8, 8), 2, (4,)), 0.0, 1.0)


def test_layer_product_refuses_a_subclass_that_computes_something_else():
    """A MaxMin subclass that scales by 10 must not be multiplied in as 1-Lipschitz: the layer
    product refuses it by name, and the model's bound is either refused too or covers the
    gradient the model really has."""

    class Louder(MaxMin):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 10 * super().forward(x)

    torch.manual_seed(0)
    model = LipschitzCNN((1, 8, 8), 3, channels=(4,), lipschitz=1.0).eval()
    index = next(i for i, child in enumerate(model) if type(child) is MaxMin)
    model[index] = Louder(dim=1)
    with pytest.raises(UnsupportedModuleError):
        model.layer_product()
    x = torch.randn(16, 1, 8, 8, requires_grad=True)
    jacobian_norm = torch.autograd.grad(model(x)[:, 0].sum(), x)[0].flatten(1).norm(dim=1).max()
    try:
        bound = model.certified_lipschitz().value
    except UnsupportedModuleError:
        return  # refused: the engine cannot read the subclass either
    assert bound >= float(jacobian_norm)


def test_layer_product_refuses_hooks():
    model = LipschitzCNN((1, 8, 8), 3, channels=(4,), lipschitz=1.0).eval()
    model[0].register_forward_hook(lambda module, args, out: out * 100)
    with pytest.raises(UnsupportedModuleError, match="hook"):
        model.layer_product()
