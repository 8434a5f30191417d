"""Red-team tests of the proven convolutions: SpectralConv2d, AOLConv2d, SLLConv2d.

Every guarantee is checked against the *true* operator norm of the stored kernel, measured in
float64: small convolutions are materialised as dense matrices (F.conv2d on the identity basis)
and their spectral norm taken; circular cases use the exact DFT value; exact rational
arithmetic (``fractions``) where a single tap makes the operator a scaled identity.
"""

from __future__ import annotations

import copy
import io
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipguard.bounds import lipschitz_bound
from lipguard.convolution import _polyphase
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.nn import OrthogonalLinear, SpectralLinear, vanilla
from lipguard.nn._kernel_proofs import absolute_bound, schur_bound
from lipguard.nn.conv import AOLConv2d, SLLConv2d, SpectralConv2d

SUBNORMAL = 2.0**-1074
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
FAST = settings(max_examples=25, deadline=None)


def dense(kernel: torch.Tensor, size: tuple[int, int], stride, padding) -> torch.Tensor:
    """The zero-padded convolution on ``(C, *size)`` inputs as a float64 matrix."""
    k = kernel.detach().double()
    n = k.shape[1] * size[0] * size[1]
    eye = torch.eye(n, dtype=torch.float64).reshape(n, k.shape[1], *size)
    return F.conv2d(eye, k, None, stride, padding).reshape(n, -1).T


def true_norm(kernel: torch.Tensor, size, stride=1, padding=0) -> float:
    size = (size, size) if isinstance(size, int) else size
    return float(torch.linalg.matrix_norm(dense(kernel, size, stride, padding), ord=2))


def circular_norm(kernel: torch.Tensor, grid: int) -> float:
    """Exact ``||circular conv||₂`` on a ``grid × grid`` torus: max σ of the DFT symbol."""
    k = kernel.detach().double()
    padded = torch.zeros(*k.shape[:2], grid, grid, dtype=torch.float64)
    padded[..., : k.shape[2], : k.shape[3]] = k
    symbol = torch.fft.fft2(padded).permute(2, 3, 0, 1)  # (grid, grid, out, in)
    return float(torch.linalg.matrix_norm(symbol, ord=2).max())


def sll_linear_norm(block: SLLConv2d, size: int) -> float:
    """Exact norm of the block's linear part ``I - 2·Aᵀ T⁻¹ A`` (Λ = I) on ``size²`` inputs."""
    k, inv = block.weight.detach().double(), block.inverse_t().detach().double()
    n = block.channels * size * size
    eye = torch.eye(n, dtype=torch.float64).reshape(n, block.channels, size, size)
    hidden = F.conv2d(eye, k, None, padding=block.padding) * inv[:, None, None]
    out = eye - 2 * F.conv_transpose2d(hidden, k, padding=block.padding)
    return float(torch.linalg.matrix_norm(out.reshape(n, -1), ord=2))


def slack(dtype: torch.dtype) -> float:
    """Relative error of the float64 SVD oracle itself."""
    return 1e-12


def make(kind: str, dtype=torch.float32, lipschitz=1.0, **geometry):
    kernel = geometry.pop("kernel", 3)
    channels = geometry.pop("channels", (2, 3))
    if kind == "spectral":
        size = geometry.pop("size", 7)
        return SpectralConv2d(*channels, kernel, size, lipschitz=lipschitz, dtype=dtype, **geometry)
    geometry.pop("size", None)
    return AOLConv2d(*channels, kernel, lipschitz=lipschitz, dtype=dtype, **geometry)


def check_layer(layer, size: int) -> float:
    """Asserts true ≤ certified ≤ lipschitz for the stored kernel; returns the true norm."""
    kernel = layer.effective_weight().detach()
    assert bool(torch.isfinite(kernel).all())
    true = true_norm(kernel, size, layer.stride, layer.padding)
    certified = layer.certified_lipschitz().value
    assert true <= certified * (1 + slack(kernel.dtype))
    assert true <= layer.lipschitz * (1 + slack(kernel.dtype))
    if isinstance(layer, AOLConv2d):  # AOL's proof is the certificate itself
        assert certified <= layer.lipschitz
    return true


# --- closed-form oracles -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["spectral", "aol"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_single_tap_is_a_scaled_identity(kind, dtype):
    layer = make(kind, dtype, lipschitz=2.5, channels=(1, 1), padding=1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, 1, 1] = -3.0
    tap = float(layer.effective_weight().detach()[0, 0, 1, 1])
    assert abs(tap) <= 2.5
    assert abs(tap) >= 2.5 * (1 - 2e-2)  # a single tap: both proofs are exact up to rounding
    assert true_norm(layer.effective_weight(), 5, 1, 1) == pytest.approx(abs(tap), rel=1e-12)


@pytest.mark.parametrize("kind", ["spectral", "aol"])
def test_one_by_one_kernel_is_its_matrix(kind):
    layer = make(kind, torch.float64, lipschitz=1.0, channels=(3, 4), kernel=1, size=4)
    matrix = layer.effective_weight().detach()[:, :, 0, 0]
    sigma = float(torch.linalg.matrix_norm(matrix, ord=2))
    assert sigma <= 1.0
    assert true_norm(layer.effective_weight(), 4) == pytest.approx(sigma, rel=1e-12)
    if kind == "spectral":  # normalised to the target: tight
        assert sigma == pytest.approx(1.0, abs=1e-5)


def test_spectral_bound_is_tight_on_the_circular_value():
    layer = SpectralConv2d(2, 3, 3, input_size=12, padding=1, bias=False, dtype=torch.float64)
    kernel = layer.effective_weight().detach()
    # the proof is the circular norm on the smallest exact grid (13 here): tight on it
    grid = _polyphase(layer_geometry(layer)).grid
    assert grid == (13, 13)
    assert 1.0 - 1e-5 <= circular_norm(kernel, 13) <= 1.0
    # the zero-padded operator is a restriction of it, and close on a 12×12 input
    assert 1.0 - 5e-2 <= true_norm(kernel, 12, 1, 1) <= 1.0


def layer_geometry(layer: SpectralConv2d):
    from lipguard.nn.conv import _Geometry

    return _Geometry(
        layer.weight.detach().double(),
        layer.stride,
        layer.padding,
        (1, 1),
        1,
        (layer.in_channels, *layer.input_size),
        (layer.out_channels, *layer.out_size),
    )


def test_aol_is_exact_for_orthogonal_kernels():
    layer = AOLConv2d(3, 3, 1, bias=False, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    with torch.no_grad():
        layer.weight.copy_(q[:, :, None, None])
    assert true_norm(layer.effective_weight(), 3) == pytest.approx(1.0, abs=1e-5)


# --- property tests: adversarial training for every dtype ----------------------------------

GEOMETRIES = st.sampled_from(
    [
        dict(kernel=3, padding=1, stride=1),
        dict(kernel=3, padding=0, stride=2),
        dict(kernel=3, padding=2, stride=3),
        dict(kernel=(1, 3), padding=(0, 1)),
        dict(kernel=(5, 1), padding=2, stride=2),
        dict(kernel=2, padding="same"),
        dict(kernel=4, padding="valid", stride=2),
        dict(kernel=1, padding=0),
        dict(kernel=(2, 3), padding=1, stride=(1, 2)),
    ]
)


@FAST
@given(
    kind=st.sampled_from(["spectral", "aol"]),
    geometry=GEOMETRIES,
    dtype=st.sampled_from(DTYPES),
    lipschitz=st.sampled_from([1.0, 1e-3, 37.0]),
    channels=st.sampled_from([(1, 1), (2, 3), (5, 2)]),
    seed=st.integers(0, 2**16),
)
def test_adversarial_adam_never_exceeds_the_bound(kind, geometry, dtype, lipschitz, channels, seed):
    torch.manual_seed(seed)
    size = 6
    layer = make(kind, dtype, lipschitz, channels=channels, size=size, **geometry)
    # eps 1e-3: Adam's default 1e-8 underflows in half precision and diverges to inf
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.5, eps=1e-3)
    for step in range(3):
        layer.train(step % 2 == 0)
        x = torch.randn(2, channels[0], size, size, dtype=dtype)
        loss = -(layer(x).float() ** 2).mean() / lipschitz**2  # push the output norm up
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if not bool(torch.isfinite(layer.weight).all()):  # a half-precision step overflowed
            with pytest.raises(InvalidArgumentError, match="NaN or infinity"):
                layer(x)
            return
        check_layer(layer, size)
        if kind == "aol":  # every input size
            check_layer(layer, size + 3)


@FAST
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.sampled_from([(2, 3, 3), (3, 1, 1), (1, 4, 5), (4, 4, 3)]),
    seed=st.integers(0, 2**16),
)
def test_sll_is_one_lipschitz_under_adversarial_training(dtype, shape, seed):
    torch.manual_seed(seed)
    channels, inner, kernel = shape
    block = SLLConv2d(channels, inner, kernel, dtype=dtype)
    optimiser = torch.optim.Adam(block.parameters(), lr=0.3, eps=1e-3)
    for _ in range(3):
        x = torch.randn(2, channels, 5, 5, dtype=dtype)
        loss = -((block(x) - x).float() ** 2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        assert sll_linear_norm(block, 4) <= 1 + 1e-12
        assert block.certified_lipschitz().value == 1.0
    exact = copy.deepcopy(block).double()  # same stored values, exact-ish arithmetic
    with torch.no_grad():
        a = torch.randn(32, channels, 5, 5, dtype=torch.float64)
        b = a + 0.1 * torch.randn_like(a)
        quotient = (exact(a) - exact(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(quotient.max()) <= 1 + 1e-9


# --- direct edits -------------------------------------------------------------------------

EDITS = {
    "scale_1e6": lambda w: w.mul_(1e6),
    "subnormal": lambda w: w.copy_(torch.full_like(w, torch.finfo(w.dtype).tiny / 4)),
    "zeros": lambda w: w.zero_(),
    "one_huge": lambda w: (w.zero_(), w.view(-1).__setitem__(3, 1e4)),
    "rank_one": lambda w: w.copy_(
        torch.einsum("o,i,h,v->oihv", *[torch.randn(n) for n in w.shape]).to(w.dtype)
    ),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("kind", ["spectral", "aol"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_data_edits_between_calls(edit, kind, dtype):
    layer = make(kind, dtype, lipschitz=1.0, padding=1)
    layer(torch.randn(1, 2, 7, 7, dtype=dtype))
    with torch.no_grad():
        EDITS[edit](layer.weight.data)
    if kind == "spectral" and dtype == torch.float64 and edit == "subnormal":
        with pytest.raises(InvalidArgumentError, match="2\\^±400"):  # a clear refusal
            layer(torch.randn(1, 2, 7, 7, dtype=dtype))
        return
    if not bool(torch.isfinite(layer.weight).all()):  # x1e6 overflows float16: refused
        with pytest.raises(InvalidArgumentError, match="NaN or infinity"):
            layer(torch.randn(1, 2, 7, 7, dtype=dtype))
        return
    for mode in (True, False):
        layer.train(mode)
        out = layer(torch.randn(1, 2, 7, 7, dtype=dtype))
        assert bool(torch.isfinite(out).all())
        check_layer(layer, 7)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("kind", ["spectral", "aol", "sll"])
def test_non_finite_parameters_are_refused_clearly(value, kind):
    layer = SLLConv2d(2) if kind == "sll" else make(kind, padding=1)
    with torch.no_grad():
        layer.weight.view(-1)[0] = value
    for mode in (True, False):
        layer.train(mode)
        with pytest.raises(InvalidArgumentError, match="NaN or infinity"):
            layer(torch.randn(1, 2, 7, 7))


def test_changing_lipschitz_applies_at_the_next_call():
    layer = AOLConv2d(2, 3, 3, padding=1)
    for lipschitz in (1.0, 1e-4, 300.0, 0.5):
        layer.lipschitz = lipschitz
        check_layer(layer, 6)
    with pytest.raises(InvalidArgumentError):
        layer.lipschitz = 0.0


def test_spectral_refuses_larger_inputs_and_accepts_smaller():
    layer = SpectralConv2d(2, 3, 3, input_size=(6, 8), padding=1)
    layer(torch.randn(1, 2, 3, 5))
    assert true_norm(layer.effective_weight(), (3, 5), 1, 1) <= 1.0
    with pytest.raises(ShapeError):
        layer(torch.randn(1, 2, 7, 8))
    with pytest.raises(ShapeError):
        lipschitz_bound(nn.Sequential(layer), 2, "product", input_shape=(2, 6, 9))


def test_spectral_input_size_change_is_reproven():
    """Regression: a kernel fitted for a small input_size was reused after the attribute was
    enlarged (1×5 kernel, input 2 → 12: true norm 1.14 for lipschitz 1)."""
    torch.manual_seed(0)
    for trial in range(20):
        layer = SpectralConv2d(1, 1, (1, 5), input_size=(1, 5), padding=(0, 2), bias=False)
        with torch.no_grad():
            layer.weight.normal_()
        layer.effective_weight()
        layer.input_size = (12, 12)
        layer.padding = (trial % 3, 2)
        layer(torch.randn(1, 1, 12, 12))
        assert true_norm(layer.effective_weight(), 12, 1, layer.padding) <= 1.0


def test_state_dict_round_trip_and_deepcopy():
    for layer in (make("spectral", padding=1), make("aol", stride=2), SLLConv2d(2, 3)):
        x = torch.randn(2, 2, 7, 7)
        other = copy.deepcopy(layer)
        with torch.no_grad():
            other.weight.mul_(50.0)
        buffer = io.BytesIO()
        torch.save(other.state_dict(), buffer)
        buffer.seek(0)
        layer.load_state_dict(torch.load(buffer))
        layer.eval()
        with torch.no_grad():
            assert torch.equal(layer(x), other.eval()(x))
        if isinstance(layer, SLLConv2d):
            assert sll_linear_norm(layer, 4) <= 1 + 1e-12
        else:
            check_layer(layer, 7)


# --- subnormal and extreme ranges (regressions) --------------------------------------------


def test_schur_and_absolute_bounds_do_not_underflow():
    """Regression: the float64 Gram of a kernel near 1e-160 underflowed and the proven norm
    came out 0 (AOLConv2d.certified_lipschitz() returned 5e-324 for a 1e-157 kernel)."""
    for scale in (1e-150, 1e-160, 1e-200, 1e-310):
        kernel = torch.randn(3, 2, 3, 3, dtype=torch.float64) * scale
        true = true_norm(kernel, 6, 1, 1)
        assert schur_bound(kernel) >= true
        assert absolute_bound(kernel) >= true


@pytest.mark.parametrize(
    ("lipschitz", "value"),
    [(5 * SUBNORMAL, 3.0), (1e-320, 3.0), (1e-310, 2.0), (1e-170, 0.7)],
)
def test_aol_with_subnormal_lipschitz(lipschitz, value):
    """Regression: lipschitz = 5·2⁻¹⁰⁷⁴ stored the tap 6·2⁻¹⁰⁷⁴ (certified 0)."""
    layer = AOLConv2d(1, 1, 1, bias=False, lipschitz=lipschitz, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.fill_(value)
    try:
        tap = Fraction(abs(float(layer.effective_weight().detach())))
    except InvalidArgumentError:
        return  # refusing is fine; a false guarantee is not
    assert tap <= Fraction(lipschitz)
    assert Fraction(layer.certified_lipschitz().value) >= tap


def test_spectral_with_subnormal_lipschitz():
    """Regression: 100 taps of 3·2⁻¹⁰⁷⁴ (norm 30 ulps) were stored for lipschitz 29 ulps: the
    rounding of a subnormal product was not measured."""
    for ulps in range(20, 40):
        layer = SpectralConv2d(
            1, 100, 1, input_size=2, bias=False, lipschitz=ulps * SUBNORMAL, dtype=torch.float64
        )
        with torch.no_grad():
            layer.weight.fill_(0.85)
        try:
            kernel = layer.effective_weight().detach()
        except InvalidArgumentError:
            continue
        squares = sum(Fraction(float(v)) ** 2 for v in kernel.flatten())
        assert squares <= Fraction(ulps * SUBNORMAL) ** 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("log_q", [-735.0, -738.0, -740.0, -742.0, -744.0, -1e4])
def test_sll_with_subnormal_schur_weights(dtype, log_q):
    """Regression: exp(log_q) in float64's subnormal range made t = fl(Σ|H|q)/q too small;
    log_q = -742 gave a 1.32-Lipschitz block that certified_lipschitz() called 1."""
    for value in (0.3, 0.325, 0.35, 0.7, 1.3):
        block = SLLConv2d(1, 1, 1, dtype=dtype)
        with torch.no_grad():
            block.weight.fill_(value)
            block.log_q.fill_(log_q)
        inverse = Fraction(float(block.inverse_t().detach()))
        weight = Fraction(float(block.weight.detach()))
        assert abs(1 - 2 * inverse * weight**2) <= 1  # the exact linear part
        assert block.certified_lipschitz().value == 1.0
    two = SLLConv2d(2, 3, 3, dtype=dtype)
    with torch.no_grad():
        two.log_q.copy_(torch.tensor([0.0, log_q, 700.0], dtype=dtype))
    assert sll_linear_norm(two, 4) <= 1 + 1e-12
    two.certified_lipschitz()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sll_zero_inner_channel_stays_finite(dtype):
    block = SLLConv2d(2, 3, 3, dtype=dtype)
    with torch.no_grad():
        block.weight[0].zero_()
        block.bias.fill_(2.0)
    for mode in (True, False):
        block.train(mode)
        assert bool(torch.isfinite(block(torch.randn(1, 2, 5, 5, dtype=dtype))).all())


def test_extreme_float64_kernels_are_refused_clearly():
    for layer in (make("spectral", torch.float64), make("aol", torch.float64)):
        with torch.no_grad():
            layer.weight.mul_(1e200)
        with pytest.raises(InvalidArgumentError):
            layer(torch.randn(1, 2, 7, 7, dtype=torch.float64))


# --- export and the bound engine ---------------------------------------------------------


def conv_model(dtype=torch.float32) -> nn.Sequential:
    from lipguard.nn import GroupSort

    return nn.Sequential(
        SpectralConv2d(2, 4, 3, input_size=8, padding=1, lipschitz=1.5),
        GroupSort(2, dim=1),
        SLLConv2d(4, 6, 3),
        AOLConv2d(4, 4, (1, 3), stride=2, padding=(0, 1), lipschitz=0.8),
        nn.ReLU(),
        nn.PixelUnshuffle(2),
        AOLConv2d(16, 2, 1),
    ).to(dtype)


def test_vanilla_export_matches():
    model = conv_model().eval()
    exported = vanilla(model)
    lipguard_layers = (SpectralConv2d, AOLConv2d, SLLConv2d)
    assert not any(isinstance(m, lipguard_layers) for m in exported.modules())
    x = torch.randn(5, 2, 8, 8)
    with torch.no_grad():
        assert float((exported(x) - model(x)).abs().max()) <= 1e-5


@pytest.mark.parametrize("method", ["product", "auto"])
def test_bound_engine_accepts_conv_models(method):
    model = conv_model(torch.float64).eval()
    bound = lipschitz_bound(model, 2, method, input_shape=(2, 8, 8)).value
    assert bound <= 1.5 * 3 * 0.8 * 1.0 * (1 + 1e-6)  # SLL read as x + body: <= 3
    # empirical lower bound: the bound engine must be above every difference quotient
    torch.manual_seed(1)
    with torch.no_grad():
        a = torch.randn(256, 2, 8, 8, dtype=torch.float64)
        b = a + 1e-3 * torch.randn_like(a)
        quotient = (model(a) - model(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(quotient.max()) <= bound
    # the linear layers alone: the engine's bound is >= their true norm
    for layer in (model[0], model[3]):
        single = lipschitz_bound(
            nn.Sequential(layer), 2, method, input_shape=(layer.in_channels, 8, 8)
        )
        stride, padding = layer.stride, layer.padding
        assert single.value >= true_norm(layer.effective_weight(), 8, stride, padding)


@pytest.mark.parametrize(
    "build",
    [
        lambda: SpectralLinear(6, 5),
        lambda: OrthogonalLinear(6, 5),
        lambda: SpectralConv2d(2, 3, 3, input_size=5, padding=1),
        lambda: AOLConv2d(2, 3, 3, padding=1),
    ],
    ids=["spectral-linear", "orthogonal-linear", "spectral-conv", "aol-conv"],
)
def test_editing_the_weight_handed_out_does_not_change_what_the_layer_applies(build):
    """``effective_weight()`` returns the cached tensor: an in-place edit of it must not reach
    the next forward call (the cache checks the tensor's version counter)."""
    torch.manual_seed(0)
    layer = build().eval()
    with torch.no_grad():
        before = layer.effective_weight().clone()
        layer.effective_weight().mul_(10.0)
        assert torch.equal(layer.effective_weight(), before)
