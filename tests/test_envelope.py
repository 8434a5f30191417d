"""Guaranteed error envelopes (SPEC I1): closed forms first, properties second, the R_t example
on a tiny scale, refusals last."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipguard.bounds.envelope import ENVELOPE_METHODS, error_envelope, plot_envelope
from lipguard.errors import InvalidArgumentError, NonFiniteError, ShapeError
from lipguard.nn import LipschitzMLP

SINGLE = ("global", "local", "interval")


def _linear(inputs: int, outputs: int) -> nn.Linear:
    model = nn.Linear(inputs, outputs)
    with torch.no_grad():
        model.weight.copy_(torch.randn(outputs, inputs))
        model.bias.copy_(torch.randn(outputs))
    return model


def _exact_linear(model: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ model.weight.detach().double().T + model.bias.detach().double()


@pytest.mark.parametrize(("norm", "dual"), [(2, 2.0), ("inf", 1.0)])
def test_linear_model_envelope_is_exact(norm, dual):
    """f(x) = Wx + b over a ball: exactly f(x) ± ‖w_k‖_q·δ per output k."""
    model = _linear(6, 3)
    x = torch.randn(5, 6)
    delta = torch.tensor([0.0, 1e-3, 0.1, 1.0, 7.5])
    envelope = error_envelope(model, x, delta, norm=norm, bound_method="compositional")
    centre = _exact_linear(model, x)
    rows = torch.linalg.vector_norm(model.weight.detach().double(), ord=dual, dim=1)
    exact = rows[None, :] * delta.double()[:, None]
    for name, (low, high) in envelope.parts.items():
        assert bool((low <= centre - exact).all() and (high >= centre + exact).all()), name
    # the float32 evaluation over the ball (covered too) errs by ~1e-7 of |W|(|x| + δ) + |b|
    reach = x.double().abs() + delta.double()[:, None]
    magnitude = reach @ model.weight.detach().double().abs().T
    tolerance = 1e-6 * (exact + magnitude + model.bias.detach().double().abs())
    for low, high in [envelope.parts["global"], (envelope.lower, envelope.upper)]:
        assert bool(((high - centre - exact).abs() <= tolerance).all())
        assert bool(((centre - low - exact).abs() <= tolerance).all())
    assert set(envelope.method) <= {
        "global",
        "local",
        "interval",
        "global+local",
        "global+interval",
    }


def test_each_single_method_alone_matches_its_part_of_tightest():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    tight = error_envelope(model, x, 0.2, method="tightest", bound_method="product")
    for name in SINGLE:
        alone = error_envelope(model, x, 0.2, method=name, bound_method="product")
        assert set(alone.method) == {name}
        assert torch.equal(alone.lower, tight.parts[name][0])
        assert torch.equal(alone.upper, tight.parts[name][1])
    assert ("tightest", *SINGLE) == ENVELOPE_METHODS


def _project(point: torch.Tensor, centre: torch.Tensor, radius: float, norm: str) -> torch.Tensor:
    step = point - centre
    if norm == "inf":
        return centre + step.clamp(-radius, radius)
    length = torch.linalg.vector_norm(step, dim=-1, keepdim=True)
    return centre + step * torch.clamp(radius / length.clamp(min=1e-300), max=1.0)


def _ball_points(model, x, delta, norm, generator):
    """Random points of each ball and, per output and direction, 12 steps of projected
    gradient ascent/descent on that output; all float32, inside the ball in float64."""
    centre = x.double()
    target = delta * (1 - 1e-4)  # room for rounding the points to float32
    found = []
    for _ in range(8):
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1
        found.append(_project(centre + noise * target, centre, target, norm))
    outputs = model(x).shape[1]
    for k in range(outputs):
        for sign in (1.0, -1.0):
            point = centre.clone()
            for _ in range(12):
                point.requires_grad_(True)
                value = model(point.float())[:, k].sum() * sign
                (grad,) = torch.autograd.grad(value, point)
                direction = grad.sign() if norm == "inf" else nn.functional.normalize(grad, dim=-1)
                point = _project(point.detach() + 0.3 * target * direction, centre, target, norm)
            found.append(point)
    points = [p.float() for p in found]
    for p in points:
        order = math.inf if norm == "inf" else 2.0
        gap = torch.linalg.vector_norm(p.double() - centre, ord=order, dim=1)
        assert float(gap.max()) <= delta
    return points


@settings(max_examples=10)
@given(
    seed=st.integers(0, 10_000),
    activation=st.sampled_from([nn.ReLU, nn.Tanh]),
    width=st.integers(2, 12),
    norm=st.sampled_from(["2", "inf"]),
    delta=st.floats(1e-3, 1.5),
)
def test_sampled_and_attacked_points_stay_inside(seed, activation, width, norm, delta):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(3, width),
        activation(),
        nn.Linear(width, width),
        activation(),
        nn.Linear(width, 2),
    )
    x = torch.randn(2, 3)
    envelope = error_envelope(model, x, delta, norm=norm, bound_method="compositional")
    generator = torch.Generator().manual_seed(seed)
    reference = copy.deepcopy(model).double()
    for point in _ball_points(model, x, delta, norm, generator):
        with torch.no_grad():
            assert bool(envelope.contains(model(point)).all())  # the float32 evaluation
            assert bool(envelope.contains(reference(point.double())).all())  # ≈ exact f
    for low, high in envelope.parts.values():
        assert bool((envelope.lower >= low).all() and (envelope.upper <= high).all())
    assert bool((envelope.lower <= envelope.upper).all())


# --- the R_t example, tiny: a renewal epidemic, reporting errors within a factor 1.1 ---------

WINDOW = 14


def _gamma(mean: float, sd: float, length: int, first: int) -> np.ndarray:
    from scipy import stats

    shape, scale = (mean / sd) ** 2, sd**2 / mean
    edges = np.clip(np.arange(first, first + length + 1) - 0.5, 0, None)
    mass = np.diff(stats.gamma.cdf(edges, shape, scale=scale))
    return mass / mass.sum()


def _epidemic(rng: np.random.Generator, days: int = 90) -> tuple[np.ndarray, np.ndarray]:
    serial, delay = _gamma(5.0, 2.0, 20, 1), _gamma(3.0, 1.5, 12, 0)
    knots = rng.uniform(0.7, 1.4, days // 20 + 2)
    r = np.interp(np.arange(days), np.arange(len(knots)) * 20, knots)
    infections = np.zeros(days)
    infections[:20] = 200.0
    for t in range(20, days):
        infections[t] = rng.poisson(r[t] * (serial @ infections[t - 20 : t][::-1]))
    reported = rng.poisson(np.convolve(infections, delay)[:days]).astype(np.float64)
    return reported[20:], r[20:]


def test_rt_band_covers_every_in_bound_reporting_error():
    rng = np.random.default_rng(1)
    cases, r = _epidemic(rng)
    counts = torch.tensor(np.lib.stride_tricks.sliding_window_view(cases, WINDOW))
    x = torch.log1p(counts).float()
    y = torch.tensor(r[WINDOW // 2 : WINDOW // 2 + len(x)], dtype=torch.float32)
    model = nn.Sequential(nn.Linear(WINDOW, WINDOW, bias=False), LipschitzMLP(WINDOW, 1, (16,)))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(WINDOW) - 1.0 / WINDOW)
    optimizer = torch.optim.Adam(model[1].parameters(), lr=1e-2)
    for _ in range(60):
        loss = ((model(x)[:, 0] - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    bound = math.log(1.1)
    radius = bound + 1e-5  # the float32 rounding of the features
    envelope = error_envelope(model, x, radius, norm="inf", bound_method="product")
    perturbed = [torch.log1p(counts * torch.exp(bound * torch.randn_like(counts).sign())).float()]
    perturbed += [
        torch.log1p(counts * torch.exp((torch.rand_like(counts) * 2 - 1) * bound)).float()
    ]
    for sign in (1.0, -1.0):  # the worst factors found by projected sign steps
        u = torch.zeros_like(counts)
        for _ in range(6):
            u.requires_grad_(True)
            value = model(torch.log1p(counts * torch.exp(u)).float()).sum() * sign
            (grad,) = torch.autograd.grad(value, u)
            u = (u.detach() + bound * grad.sign()).clamp(-bound, bound)
        perturbed.append(torch.log1p(counts * torch.exp(u)).float())
    for features in perturbed:
        assert float((features.double() - x.double()).abs().max()) <= radius
        with torch.no_grad():
            assert bool(envelope.contains(model(features)).all())


def test_plot_envelope_draws_the_band(tmp_path):
    model = _linear(2, 1)
    envelope = error_envelope(model, torch.randn(30, 2), 0.1, bound_method="product")
    figure = plot_envelope(envelope, torch.arange(30) * 2.0, truth=torch.zeros(30))
    path = tmp_path / "band.png"
    figure.savefig(path)
    assert path.stat().st_size > 0
    assert len(figure.axes[0].collections) == 1  # the band
    with pytest.raises(InvalidArgumentError):
        plot_envelope(envelope, output=1)
    with pytest.raises(ShapeError):
        plot_envelope(envelope, torch.arange(3))


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"input_error": -0.1}, InvalidArgumentError),
        ({"input_error": float("nan")}, InvalidArgumentError),
        ({"input_error": torch.tensor([0.1, -0.1, 0.1])}, InvalidArgumentError),
        ({"input_error": torch.tensor([0.1, 0.1])}, ShapeError),
        ({"input_error": "0.1"}, InvalidArgumentError),
        ({"norm": 1}, InvalidArgumentError),
        ({"norm": "l3"}, InvalidArgumentError),
        ({"method": "exact"}, InvalidArgumentError),
        ({"x": torch.tensor([[0.0, math.nan, 0.0, 0.0]] * 3)}, NonFiniteError),
        ({"x": torch.zeros(3, 5)}, ShapeError),
        ({"x": torch.zeros(4)}, ShapeError),
        ({"x": torch.zeros(0, 4)}, ShapeError),
        ({"x": torch.zeros(3, 4, dtype=torch.float64)}, InvalidArgumentError),
    ],
)
def test_refusals(arguments, error):
    call = {"x": torch.zeros(3, 4), "input_error": 0.1, **arguments}
    with pytest.raises(error):
        error_envelope(_linear(4, 1), **call)
