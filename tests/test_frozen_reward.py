"""FrozenReward's compiled NumPy program against the model it snapshots, and ModuleWatch against
every kind of edit an adversary can make between two calls."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipguard.bounds.graph import infer_input_shape
from lipguard.errors import InvalidArgumentError, ShapeError, UnsupportedModuleError
from lipguard.nn import DiagonalAffine, GroupSort, SpectralLinear
from lipguard.rl.frozen import FrozenReward
from lipguard.rl.watch import ModuleWatch


def _net(*layers: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


ARCHITECTURES = {
    "maxmin": lambda: _net(
        nn.Linear(5, 8), GroupSort(2), nn.Linear(8, 8), GroupSort(2), nn.Linear(8, 3)
    ),
    "groups of 4, descending": lambda: _net(
        nn.Linear(5, 8), GroupSort(4, descending=True), nn.Linear(8, 1)
    ),
    "maxmin descending twice in a row": lambda: _net(
        nn.Linear(5, 8),
        GroupSort(2, descending=True),
        GroupSort(2, descending=True),
        nn.Linear(8, 2),
    ),
    "sort straight on the input": lambda: _net(
        DiagonalAffine(torch.ones(5), torch.zeros(5)), GroupSort(5), nn.Linear(5, 2)
    ),
    "maxmin on the input, then tanh": lambda: _net(
        DiagonalAffine(torch.arange(1.0, 7.0), torch.zeros(6)),
        GroupSort(2),
        nn.Tanh(),
        nn.Linear(6, 1),
    ),
    "relu, a scaling between layers": lambda: _net(
        nn.Linear(5, 6),
        nn.ReLU(),
        DiagonalAffine(torch.linspace(-2, 2, 6), torch.ones(6)),
        nn.Linear(6, 1),
    ),
    "affine maps folded": lambda: _net(
        DiagonalAffine(torch.full((5,), 3.0), torch.ones(5)),
        nn.Linear(5, 7),
        nn.Linear(7, 4),
        GroupSort(2),
        nn.Linear(4, 1),
    ),
    "spectral layers": lambda: _net(
        SpectralLinear(5, 16, lipschitz=2.0), GroupSort(2), SpectralLinear(16, 1)
    ),
    "output after a sort": lambda: _net(nn.Linear(5, 4), GroupSort(4, descending=True)),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("rows", [0, 1, 3, 64])
def test_the_compiled_program_computes_output_zero_of_the_model(name, rows):
    model = ARCHITECTURES[name]()
    (width,) = infer_input_shape(model)
    features = torch.randn(rows, width, generator=torch.Generator().manual_seed(rows)) * 3
    frozen = FrozenReward(model)
    with torch.no_grad():
        expected = model(features)[:, 0].double().numpy()
    for _ in range(2):  # the second call reuses the batch size's buffers
        got = frozen(features).numpy()
        assert got.shape == (rows,)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_results_are_fresh_arrays_and_inputs_are_left_alone():
    model = ARCHITECTURES["maxmin"]()
    frozen = FrozenReward(model)
    features = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    kept = features.copy()
    first = frozen.numpy(features)
    second = frozen.numpy(features * 2)
    assert not np.shares_memory(first, second)
    assert np.array_equal(features, kept)
    assert not np.array_equal(first, second)


def test_features_of_the_wrong_width_are_refused():
    frozen = FrozenReward(ARCHITECTURES["maxmin"]())
    with pytest.raises(ShapeError, match=r"\(N, 5\)"):
        frozen.numpy(np.zeros((3, 1)))  # would broadcast into the buffer
    with pytest.raises(ShapeError):
        frozen.numpy(np.zeros((3, 6)))


def test_threads_get_their_own_buffers():
    model = ARCHITECTURES["spectral layers"]()
    frozen = FrozenReward(model)
    batches = [np.random.default_rng(seed).normal(size=(8, 5)) for seed in range(4)]
    expected = [frozen.numpy(batch) for batch in batches]
    failures: list[int] = []

    def work(index: int) -> None:
        for _ in range(300):
            if not np.array_equal(frozen.numpy(batches[index]), expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


class Scaled(nn.Module):
    """A module with a list setting (read by nobody: the watch must still see it change)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.factors = [1.0, 2.0]
        self.mask = torch.ones(1)
        self.config = {"k": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.factors[0]


def _edits() -> dict[str, object]:
    def data_in_place(m):
        m.linear.weight.data.add_(1.0)

    def numpy_write(m):
        m.linear.weight.detach().numpy()[0, 0] += 1.0

    def optimiser_step(m):
        with torch.no_grad():
            m.linear.bias.sub_(0.1)

    def storage_swap(m):
        m.linear.weight.data = m.linear.weight.data * 2

    def transposed_view(m):  # same storage and values, another layout: W becomes Wᵀ
        m.linear.weight.data = m.linear.weight.data.t()

    def transposed_in_place(m):
        with torch.no_grad():
            m.linear.weight.t_()

    def narrowed_view(m):
        m.linear.bias.data = m.linear.bias.data[:2]

    def new_parameter(m):
        m.linear.bias = nn.Parameter(m.linear.bias.detach().clone())  # equal values, new object

    def new_scalar_parameter(m):
        m.extra = nn.Parameter(torch.ones(()))

    def replaced_scalar_buffer(m):
        m.linear.register_buffer("count", torch.ones(1))

    def new_module(m):
        m.linear = nn.Linear(4, 4)

    def setting(m):
        m.linear.in_features = 5

    def list_setting_in_place(m):
        m.factors.append(3.0)

    def train_mode(m):
        m.train()

    def class_swap(m):
        class Other(nn.Linear):
            pass

        m.linear.__class__ = Other

    def instance_forward(m):
        m.linear.forward = lambda x: 2 * x

    def deleted_attribute(m):
        del m.factors

    def forward_hook(m):
        m.linear.register_forward_hook(lambda module, inputs, output: 2 * output)

    def forward_pre_hook(m):
        m.register_forward_pre_hook(lambda module, inputs: None)

    def dict_setting_in_place(m):
        m.config["k"] = 2

    def class_attribute(m):  # the fresh subclass each test makes
        type(m).k = 2

    def holder_replaced(m):  # followed: then edited
        m.linear._parameters = dict(m.linear._parameters)
        m.linear._parameters["bias"] = nn.Parameter(torch.zeros(4))

    def instance_dictionary_replaced(m):  # followed: then edited
        object.__setattr__(m.linear, "__dict__", dict(vars(m.linear)))
        m.linear.in_features = 7

    def plain_tensor_in_place(m):  # an attribute a registered handler may read
        m.mask.mul_(2)

    def plain_tensor_replaced_by_an_equal_one(m):
        m.mask = m.mask.clone()

    return dict(locals())


EDITS = _edits()
assert len(EDITS) == 25  # every function above


@pytest.mark.parametrize("edit", EDITS)
def test_the_watch_sees_every_kind_of_edit(edit):
    model = type("Fresh", (Scaled,), {})().eval()  # a class of its own to edit
    watch = ModuleWatch(model)
    assert not watch.changed()
    EDITS[edit](model)
    assert watch.changed()


def test_the_watch_sees_a_flipped_sign_of_zero_and_a_global_hook():
    model = Scaled().eval()
    with torch.no_grad():
        model.linear.bias.zero_()
    watch = ModuleWatch(model)
    with torch.no_grad():
        model.linear.bias.neg_()  # -0.0: equal by ==, not by bytes
    assert watch.changed()
    watch = ModuleWatch(model)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert watch.changed()
    finally:
        handle.remove()
    assert not watch.changed()


def test_the_watch_ignores_calls_and_reads():
    model = Scaled().eval()
    watch = ModuleWatch(model)
    with torch.no_grad():
        model(torch.randn(3, 4))
    model.state_dict()
    list(model.parameters())
    assert not watch.changed()


def test_a_class_forward_replaced_after_the_snapshot_is_refused(monkeypatch):
    model = ARCHITECTURES["relu, a scaling between layers"]()
    frozen = FrozenReward(model)
    frozen(torch.zeros(1, 5))
    monkeypatch.setattr(nn.ReLU, "forward", lambda self, x: 2 * x)
    with pytest.raises(UnsupportedModuleError, match="forward"):
        frozen(torch.zeros(1, 5))


@pytest.mark.parametrize("edit", ["transposed view", "numpy write", "instance forward"])
def test_frozen_reward_follows_or_refuses_the_edits_others_miss(edit):
    model = _net(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    features = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    frozen = FrozenReward(model)
    before = frozen(features).numpy()
    if edit == "transposed view":
        model[0].weight.data = model[0].weight.data.t()
    elif edit == "numpy write":
        model[2].weight.detach().numpy()[0] *= -1
    else:
        model[1].forward = lambda x: x
        with pytest.raises(UnsupportedModuleError, match="instance attribute"):
            frozen(features)
        return
    after = frozen(features).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(after, model(features)[:, 0].numpy(), atol=1e-6)
    assert np.abs(after - before).max() > 1e-3


def test_a_certificate_cache_restored_weights_cannot_hide():
    """SpectralLinear's effective weight depends on its cached certificate as well as on its
    weight: restoring the weight after the certificate moved on changes the model's output."""
    features = torch.randn(9, 4, generator=torch.Generator().manual_seed(0)) * 2
    torch.manual_seed(0)
    model = nn.Sequential(SpectralLinear(4, 6), GroupSort(2), nn.Linear(6, 1)).eval()
    model(features)
    weight = model[0].weight
    step = torch.randn_like(weight)
    step *= 0.008 * torch.linalg.matrix_norm(weight.detach(), 2) / step.norm()
    with torch.no_grad():
        weight.add_(step)  # a small step: an amortised certificate
    frozen = FrozenReward(model)
    frozen(features)
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.add_(step)  # past the tolerance: a new full certificate
    model(features).sum().backward()
    with torch.no_grad():
        weight.copy_(kept)  # the snapshot's weights again
    model(features)
    with torch.no_grad():
        np.testing.assert_allclose(frozen(features).numpy(), model(features)[:, 0], atol=1e-6)


@pytest.mark.parametrize("where", ["F.linear", "torch.tanh", "a torch function mode"])
def test_global_overrides_after_the_snapshot_are_refused(where, monkeypatch):
    model = _net(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    features = torch.randn(3, 4)
    frozen = FrozenReward(model)
    frozen(features)
    if where == "F.linear":
        linear = torch.nn.functional.linear
        monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: linear(x, 2 * w, b))
    elif where == "torch.tanh":
        monkeypatch.setattr(torch, "tanh", lambda x: x)
    if where == "a torch function mode":

        class Passing(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        with Passing(), pytest.raises(UnsupportedModuleError, match="Mode"):
            frozen(features)
    else:
        with pytest.raises(UnsupportedModuleError, match="replaced"):
            frozen(features)


def test_a_method_patched_on_a_class_is_followed(monkeypatch):
    model = ARCHITECTURES["spectral layers"]()
    features = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
    frozen = FrozenReward(model)
    before = frozen(features).numpy()
    effective = SpectralLinear.effective_weight
    monkeypatch.setattr(SpectralLinear, "effective_weight", lambda self: 0.5 * effective(self))
    after = frozen(features).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(after, model(features)[:, 0].numpy(), atol=1e-6)
    assert np.abs(after - before).max() > 1e-3


@pytest.mark.parametrize("descending", [False, True])
def test_nan_features_sort_as_torch_sorts_them(descending):
    model = _net(DiagonalAffine(torch.ones(4), torch.zeros(4)), GroupSort(2, descending=descending))
    features = torch.tensor([[math.nan, 1.0, 2.0, math.nan], [math.nan, math.nan, 0.0, 3.0]])
    with torch.no_grad():
        expected = model(features)[:, 0].double().numpy()
    np.testing.assert_array_equal(FrozenReward(model)(features).numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_models_are_left_to_themselves(dtype):
    model = _net(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)).to(dtype)
    with pytest.raises(UnsupportedModuleError, match="float32 and float64"):
        FrozenReward(model)


def test_odd_features_get_one_clear_error():
    model = _net(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    frozen = FrozenReward(model)
    with pytest.raises(ShapeError):
        frozen.numpy(np.float64(3.0))
    with pytest.raises(InvalidArgumentError):
        frozen.numpy(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(InvalidArgumentError):
        frozen.numpy(np.ones((2, 4), dtype=complex))
    features = torch.randn(2, 4, requires_grad=True)  # a tensor in a graph is read, not kept
    with torch.no_grad():
        np.testing.assert_allclose(frozen(features).numpy(), model(features)[:, 0], atol=1e-6)
    np.testing.assert_allclose(
        frozen.numpy(np.arange(8).reshape(2, 4)), frozen.numpy(np.arange(8.0).reshape(2, 4))
    )


def test_a_new_input_width_is_followed():
    model = _net(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    frozen = FrozenReward(model)
    frozen(torch.zeros(1, 4))
    model[0] = nn.Linear(5, 6)
    features = torch.randn(3, 5)
    with torch.no_grad():
        np.testing.assert_allclose(frozen(features).numpy(), model(features)[:, 0], atol=1e-6)


@st.composite
def _chains(draw: st.DrawFn) -> tuple[nn.Sequential, int]:
    """Random chains of the layers FrozenReward compiles, with widths that fit their groups."""
    width = draw(st.integers(1, 6))
    layers: list[nn.Module] = []
    current = width
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["linear", "scale", "relu", "tanh", "sort"]))
        if kind == "linear" or (kind == "sort" and current < 2):
            group = draw(st.integers(1, 3))
            out = group * draw(st.integers(1, 3))
            layers.append(nn.Linear(current, out, bias=draw(st.booleans())))
            current = out
        elif kind == "scale":
            scale = torch.tensor(
                draw(st.lists(st.floats(-3, 3), min_size=current, max_size=current))
            )
            layers.append(DiagonalAffine(scale, torch.randn(current)))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "tanh":
            layers.append(nn.Tanh())
        else:
            groups = [g for g in range(2, current + 1) if current % g == 0]
            layers.append(GroupSort(draw(st.sampled_from(groups)), descending=draw(st.booleans())))
    if not isinstance(layers[0], nn.Linear | DiagonalAffine):  # the input width must be known
        layers.insert(0, DiagonalAffine(torch.ones(width), torch.zeros(width)))
    return nn.Sequential(*layers).eval(), width


@settings(max_examples=60, deadline=None)
@given(chain=_chains(), seed=st.integers(0, 2**16), rows=st.integers(0, 9))
def test_the_compiled_program_equals_the_model_on_random_chains(chain, seed, rows):
    model, width = chain
    model.double()
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, width, generator=generator, dtype=torch.float64) * 3
    with torch.no_grad():
        expected = model(features)[:, 0].numpy()
    np.testing.assert_allclose(
        FrozenReward(model)(features).numpy(), expected, rtol=1e-9, atol=1e-9
    )
