"""The torch.export front end: models with their own forward, several inputs, and every operator
the tracer knows are bounded soundly; what it cannot bound is refused by name."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipguard.bounds import (
    block_lipschitz_bounds,
    certify,
    lipschitz_bound,
    local_lipschitz_bound,
)
from lipguard.bounds.aten_pointwise import pool_windows
from lipguard.bounds.frontend import to_graph
from lipguard.errors import UnsupportedModuleError
from lipguard.nn import GroupSort, SpectralLinear
from tests.soundness.oracles import gradient_norms


class TwoInputReward(nn.Module):
    """A reward model with its own forward: an image and a state vector, a residual block with a
    1×1-conv shortcut, batch norm in eval mode, max- and average-pooling, concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.shortcut = nn.Conv2d(3, 4, 1)
        self.pool = nn.MaxPool2d(2)
        self.average = nn.AvgPool2d(2)
        self.image_head = SpectralLinear(16, 6, lipschitz=2.0)
        self.state = nn.Linear(5, 6)
        self.act = nn.PReLU(12)
        self.sort = GroupSort(2)
        self.out = nn.Linear(12, 1)

    def forward(self, image: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.conv(image))) + self.shortcut(image)
        h = self.average(self.pool(h)).flatten(1)
        z = torch.cat([self.image_head(h), torch.tanh(self.state(state))], dim=1)
        return self.out(self.sort(self.act(z))).squeeze(-1)


def two_input_model() -> TwoInputReward:
    torch.manual_seed(0)
    model = TwoInputReward()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
        model.act.weight.uniform_(-0.5, 0.5)
    return model.eval()


SHAPES = [(3, 8, 8), (5,)]


def joint_gradients(model, shapes, count=64):
    """Gradient norms of the model itself over the joint input (float64 copy)."""
    replica = _float64(model)
    sizes = [math.prod(shape) for shape in shapes]

    def joint(x):
        parts = torch.split(x, sizes, dim=1)
        return replica(*[p.reshape(len(x), *s) for p, s in zip(parts, shapes, strict=True)])

    points = torch.randn(count, sum(sizes), dtype=torch.float64) * 2
    return gradient_norms(joint, points, 2.0)


def _float64(model):
    import copy

    from lipguard.bounds.trace import _lowered

    return copy.deepcopy(_lowered(model)).double()


def test_a_custom_forward_reward_model_is_bounded_soundly():
    model = two_input_model()
    observed = float(joint_gradients(model, SHAPES).max())
    for method in ("product", "compositional", "auto"):
        bound = lipschitz_bound(model, 2, method, input_shape=SHAPES)
        assert bound.sound
        assert bound.value >= observed
    blocks = block_lipschitz_bounds(model, input_shape=SHAPES)
    assert set(blocks) == {"input0", "input1"}
    joint = lipschitz_bound(model, 2, "compositional", input_shape=SHAPES).value
    for bound in blocks.values():
        assert bound.value <= joint * (1 + 1e-9)


def test_its_certificate_sandwiches_one_function_and_verifies(tmp_path):
    from lipguard.bounds import Certificate

    model = two_input_model()
    certificate = certify(model, input_shape=SHAPES)
    assert certificate.lower is not None
    assert certificate.lower.rigorous
    assert 0 < certificate.lower.value <= certificate.upper.value
    path = certificate.save(tmp_path / "cert.json")
    assert Certificate.load(path).verify(model).ok
    with torch.no_grad():
        model.norm.running_var.mul_(0.5)  # a buffer changes the function
    assert not Certificate.load(path).verify(model).ok


def test_local_bounds_over_several_inputs():
    model = two_input_model()
    image, state = torch.randn(2, 3, 8, 8), torch.randn(2, 5)
    bounds = local_lipschitz_bound(model, (image, state), 1e-3, input_shape=SHAPES)
    global_bound = lipschitz_bound(model, 2, "compositional", input_shape=SHAPES).value
    assert all(bound.value <= global_bound * (1 + 1e-9) for bound in bounds)


OPERATORS = {
    "prelu": lambda: nn.PReLU(4, init=-0.3),
    "selu": nn.SELU,
    "celu": lambda: nn.CELU(0.7),
    "hardtanh": lambda: nn.Hardtanh(-0.5, 2.0),
    "relu6": nn.ReLU6,
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=math.inf),
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "elu": lambda: nn.ELU(1.5),
}


class Wrapped(nn.Module):
    """``Linear → op → Linear`` with a forward of its own (so it is traced)."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.first, self.op, self.last = nn.Linear(3, 4), op, nn.Linear(4, 2)

    def forward(self, x):
        return self.last(self.op(self.first(x)))


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_traced_activation_is_bounded_soundly(name):
    torch.manual_seed(0)
    model = Wrapped(OPERATORS[name]()).eval()
    with torch.no_grad():
        model.first.weight.mul_(4)
    observed = float(
        gradient_norms(model.double(), torch.randn(256, 3, dtype=torch.float64) * 3, 2.0).max()
    )
    model = model.float()
    for method in ("product", "compositional"):
        assert lipschitz_bound(model, 2, method, input_shape=(3,)).value >= observed * (1 - 1e-6)
    local = local_lipschitz_bound(model, torch.zeros(1, 3), 0.5)[0]
    assert local.value > 0


class Functional(nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.function(x).reshape(len(x), -1)[:, :8])


FUNCTIONS = {
    "abs": lambda x: torch.abs(x),
    "clamp": lambda x: torch.clamp(x, -0.3, 0.8),
    "sort inner dim": lambda x: torch.sort(x, dim=1).values,
    "pad": lambda x: F.pad(x, (1, 2), value=0.25),
    "permute": lambda x: x.permute(0, 2, 1),
    "broadcast add": lambda x: x + x[:, :1, :],
    "mean": lambda x: x.mean(dim=-1, keepdim=True).expand(-1, -1, 4) - x,
    "sum": lambda x: x.sum(dim=1).repeat(1, 2),
    "scale shift": lambda x: (x - 0.5) / 3.0 * 2.0,
    "cat and slice": lambda x: torch.cat([x, -x], dim=2)[:, :, 1:5],
    "max pool": lambda x: F.max_pool1d(x, 3, 1, padding=1),
    "avg pool 3": lambda x: F.avg_pool1d(x, 3, 1, padding=1),
    "adaptive avg": lambda x: F.adaptive_avg_pool1d(x, 2).repeat(1, 1, 2),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_traced_reindexing_and_linear_op_is_sound(name):
    torch.manual_seed(0)
    model = Functional(FUNCTIONS[name]).eval()
    points = torch.randn(128, 3, 4, dtype=torch.float64) * 2
    observed = float(gradient_norms(model.double(), points, 2.0).max())
    model = model.float()
    for norm in (2.0, math.inf):
        bound = lipschitz_bound(model, norm, "auto", input_shape=(3, 4)).value
        reference = (
            observed if norm == 2.0 else float(gradient_norms(model.double(), points, norm).max())
        )
        assert bound >= reference * (1 - 1e-6)
        model = model.float()


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (nn.LayerNorm(4), "LayerNorm"),
        (nn.Softmax(dim=-1), "softmax"),
        (nn.Softplus(), "threshold"),
        (nn.GELU(approximate="tanh"), "approximate"),
    ],
)
def test_operators_without_a_useful_constant_are_refused_with_the_reason(module, reason):
    model = Wrapped(module).eval()
    with pytest.raises(UnsupportedModuleError, match=reason):
        lipschitz_bound(model, input_shape=(3,))


class Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x) * self.b(x)


class MixesTheBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x) - self.a(x).mean(dim=0, keepdim=True)


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.a(x)
        return -self.a(x)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (Product(), "product of two input-dependent"),
        (MixesTheBatch(), "batch"),
        (Branches(), "torch.export cannot trace"),
        (nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3).train()), "training mode"),
    ],
)
def test_what_cannot_be_bounded_is_refused_by_name(model, reason):
    with pytest.raises(UnsupportedModuleError, match=reason):
        lipschitz_bound(model, input_shape=(3,))


def test_refusals_say_where_the_operation_sits():
    model = Wrapped(nn.LayerNorm(4)).eval()
    with pytest.raises(UnsupportedModuleError, match=r"model\.op \(LayerNorm\)"):
        lipschitz_bound(model, input_shape=(3,))


def test_hooks_are_refused_before_tracing():
    model = Wrapped(nn.ReLU()).eval()
    model.op.register_forward_hook(lambda m, i, o: o * 5)
    with pytest.raises(UnsupportedModuleError, match="hook"):
        lipschitz_bound(model, input_shape=(3,))


def test_traced_graphs_are_cached_until_the_model_changes():
    model = two_input_model()
    shapes = tuple(tuple(s) for s in SHAPES)
    first = to_graph(model, shapes)
    assert to_graph(model, shapes) is first
    with torch.no_grad():
        model.state.weight.data.mul_(2)  # a .data edit
    assert to_graph(model, shapes) is not first
    second = to_graph(model, shapes)
    model.act.init = 0.5  # a setting (no effect on the function, still a change)
    assert to_graph(model, shapes) is not second


@settings(max_examples=60, deadline=None)
@given(
    size=st.tuples(st.integers(2, 7), st.integers(2, 7)),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 1),
    dilation=st.integers(1, 2),
    ceil_mode=st.booleans(),
    seed=st.integers(0, 100),
)
def test_pool_windows_are_exactly_the_entries_max_pooling_compares(
    size, kernel, stride, padding, dilation, ceil_mode, seed
):
    if padding * 2 > kernel or (kernel - 1) * dilation + 1 > size[0] + 2 * padding:
        return
    if (kernel - 1) * dilation + 1 > size[1] + 2 * padding:
        return
    shape = (2, *size)
    args = ((kernel,) * 2, (stride,) * 2, (padding,) * 2, (dilation,) * 2, ceil_mode)
    windows = pool_windows(shape, *args)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = F.max_pool2d(x, *args).reshape(-1)
    flat = x.reshape(-1)
    values = torch.where(windows >= 0, flat[windows.clamp(min=0)], -math.inf).amax(-1)
    assert torch.equal(values, expected)
