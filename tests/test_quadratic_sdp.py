"""Quadratic networks over balls (SPEC B6): the S-lemma bound against an independent
trust-region solver, dense sampling, closed forms, exact rational arithmetic, and refusals."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lipguard.bounds.quadratic import (
    QuadraticForm,
    QuadraticNetwork,
    certify_decision,
    margin_form,
    quadratic_bounds,
    quadratic_forms,
    quadratic_minimum,
    verify_lower_bound,
)
from lipguard.errors import InvalidArgumentError, NonFiniteError, ShapeError

# --- an independent oracle: the trust-region subproblem ----------------------------------------


def trust_region_minimum(a: np.ndarray, g: np.ndarray, c: float, eps: float) -> float:
    """``min zᵀAz + gᵀz + c`` over ``||z|| <= eps``: eigendecomposition, the secular equation
    ``||z(μ)|| = eps`` with ``z(μ) = -(A + μI)⁻¹g/2`` solved by bisection, the interior minimum
    when ``A ≻ 0`` and the hard case (``g`` orthogonal to the bottom eigenspace)."""
    lam, q = np.linalg.eigh(a)
    gt = q.T @ g
    scale = max(np.abs(lam).max(), 1e-300)

    def value(zt: np.ndarray) -> float:
        return float(lam @ (zt * zt) + gt @ zt + c)

    def step(mu: float) -> np.ndarray:
        return -gt / (2.0 * (lam + mu))

    if lam[0] > 1e-12 * scale and np.linalg.norm(step(0.0)) <= eps:
        return value(step(0.0))
    low = max(0.0, -lam[0])
    bottom = lam <= lam[0] + 1e-9 * scale
    if np.all(np.abs(gt[bottom]) <= 1e-12 * (np.linalg.norm(g) + 1.0)):
        zt = np.zeros_like(gt)
        rest = ~bottom
        zt[rest] = -gt[rest] / (2.0 * (lam[rest] + low))
        if np.linalg.norm(zt) <= eps:  # the hard case: fill up along the bottom eigenvector
            zt[np.argmax(bottom)] = math.sqrt(eps**2 - float(zt @ zt))
            return value(zt)
    high = low + np.linalg.norm(g) / (2.0 * eps) + 1.0
    low_mu = low
    for _ in range(200):  # ||z(μ)|| decreases in μ on (low, ∞)
        mid = 0.5 * (low_mu + high)
        if np.linalg.norm(step(mid)) > eps:
            low_mu = mid
        else:
            high = mid
    return value(step(high))


def random_instance(seed: int, n: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, g, x0)``: ``A`` indefinite, PSD, negative definite or a hard case (``g`` orthogonal
    to the bottom eigenvector, centre 0 so that ``b = g`` exactly)."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    spectrum = {
        "indefinite": rng.uniform(-2, 2, n),
        "psd": rng.uniform(0, 2, n),
        "negative": rng.uniform(-2, -0.1, n),
        "hard": np.sort(rng.uniform(-2, 2, n)),
    }[kind]
    a = (q * spectrum) @ q.T
    a = (a + a.T) / 2
    g = rng.standard_normal(n)
    x0 = rng.standard_normal(n)
    if kind == "hard":
        bottom = q[:, 0]  # the spectrum is sorted: q's first column spans the bottom
        g = g - (bottom @ g) * bottom
        g *= 0.1
        x0 = np.zeros(n)
    return a, g, x0


def shifted_oracle(a: np.ndarray, b: np.ndarray, c: float, x0: np.ndarray, eps: float) -> float:
    return trust_region_minimum(a, b + 2.0 * a @ x0, float(x0 @ a @ x0 + b @ x0 + c), eps)


def form_of(a: np.ndarray, b: np.ndarray, c: float) -> QuadraticForm:
    return QuadraticForm(torch.from_numpy(a), torch.from_numpy(b), c)


class TestTrustRegionOracle:
    @settings(max_examples=25, deadline=None)
    @given(
        seed=st.integers(0, 2**32 - 1),
        n=st.integers(1, 6),
        kind=st.sampled_from(["indefinite", "psd", "negative", "hard"]),
        eps=st.floats(0.05, 3.0),
    )
    def test_l2_bound_matches_the_trust_region_minimum(self, seed, n, kind, eps):
        a, g, x0 = random_instance(seed, n, kind)
        b = g - 2.0 * a @ x0
        c = 0.3
        exact = shifted_oracle(a, b, c, x0, eps)
        result = quadratic_minimum(form_of(a, b, c), torch.from_numpy(x0), eps, 2)
        scale = max(1.0, abs(exact), np.abs(a).max() * eps**2, np.abs(g).max() * eps)
        assert result.bound <= exact + 1e-12 * scale
        assert result.bound >= exact - 1e-6 * scale
        assert result.witness_value >= result.bound
        assert torch.linalg.vector_norm(result.witness - torch.from_numpy(x0)) <= eps * (1 + 1e-12)

    def test_the_oracle_sees_interior_boundary_and_hard_cases(self):
        a = np.diag([1.0, 2.0])
        assert trust_region_minimum(a, np.array([-2.0, 0.0]), 0.0, 5.0) == pytest.approx(-1.0)
        assert trust_region_minimum(a, np.array([-2.0, 0.0]), 0.0, 0.5) == pytest.approx(-0.75)
        hard = np.diag([-1.0, 2.0])  # g ⟂ e1, ||z(1)|| = 1/3 < ε = 1: z = (√(8/9), -1/3)
        assert trust_region_minimum(hard, np.array([0.0, 2.0]), 0.0, 1.0) == pytest.approx(
            -8 / 9 + 2 / 9 - 2 / 3
        )


# --- closed forms ------------------------------------------------------------------------------


def unit_form() -> QuadraticForm:
    """``f(x) = ||x||² - 2·x₁`` on R³."""
    return QuadraticForm(
        torch.eye(3, dtype=torch.float64), torch.tensor([-2.0, 0.0, 0.0], dtype=torch.float64), 0.0
    )


@pytest.mark.parametrize(
    ("center", "eps", "norm", "low", "high"),
    [
        ((0, 0, 0), 0.5, 2, -0.75, 1.25),  # boundary minimum at x₁ = 0.5
        ((0, 0, 0), 2.0, 2, -1.0, 8.0),  # interior minimum at e₁, maximum at -2e₁
        ((0, 0, 0), 0.5, math.inf, -0.75, 1.75),  # max at (-0.5, ±0.5, ±0.5)
        ((0, 0, 0), 2.0, math.inf, -1.0, 16.0),  # max at (-2, ±2, ±2): 12 + 4
        ((1, 0, 0), 1.0, 2, -1.0, 0.0),  # f = ||x - e₁||² - 1 around e₁
    ],
)
def test_closed_form_extremes(center, eps, norm, low, high):
    x0 = torch.tensor(center, dtype=torch.float64)
    result = quadratic_bounds(unit_form(), x0, eps, norm)
    assert low - 1e-7 * max(1, abs(low)) <= result.lower <= low
    assert high <= result.upper <= high + 1e-6 * max(1, abs(high))
    assert result.minimum.witness_value == pytest.approx(low, abs=1e-9)
    assert result.maximum.witness_value == pytest.approx(high, abs=1e-9)
    assert result.sound


def test_hard_case_by_hand():
    """``-z₁² + 2z₂² + 2z₂`` on the unit disc: b ⟂ the bottom eigenvector, the minimum
    ``-8/9 + 2/9 - 2/3 = -4/3`` at ``(±√(8/9), -1/3)``, not where the secular equation points."""
    form = QuadraticForm(
        torch.diag(torch.tensor([-1.0, 2.0], dtype=torch.float64)),
        torch.tensor([0.0, 2.0], dtype=torch.float64),
        0.0,
    )
    result = quadratic_minimum(form, torch.zeros(2, dtype=torch.float64), 1.0)
    assert -4 / 3 - 1e-7 <= result.bound <= -4 / 3
    assert result.witness_value == pytest.approx(-4 / 3, abs=1e-9)


def test_zero_radius_gives_the_value_at_the_centre():
    x0 = torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64)
    result = quadratic_bounds(unit_form(), x0, 0.0)
    exact = 0.25 + 0.0625 - 1.0
    assert result.lower <= exact <= result.upper
    assert result.upper - result.lower <= 1e-14


def test_scs_gives_a_sound_bound_too():
    result = quadratic_bounds(unit_form(), torch.zeros(3, dtype=torch.float64), 0.5, solver="scs")
    assert -0.75 - 1e-6 <= result.lower <= -0.75
    assert 1.25 <= result.upper <= 1.25 + 1e-6


# --- networks: dense sampling and exact rational arithmetic -----------------------------------


def sample_ball(center: torch.Tensor, eps: float, norm: float, count: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    n = center.numel()
    if norm == math.inf:
        uniform = 2 * torch.rand(count, n, generator=generator, dtype=torch.float64) - 1
        corners = torch.sign(torch.randn(count, n, generator=generator, dtype=torch.float64))
        z = torch.cat([uniform, corners])
    else:
        z = torch.randn(count, n, generator=generator, dtype=torch.float64)
        sphere = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)
        radii = torch.rand(count, 1, generator=generator, dtype=torch.float64) ** (1 / n)
        z = torch.cat([sphere, sphere * radii])
    return center + eps * z


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("norm", [2, math.inf])
def test_network_bounds_contain_every_sample(seed, norm):
    torch.manual_seed(seed)
    network = QuadraticNetwork(4, 6, 2)
    exact = copy.deepcopy(network).double()
    center = torch.randn(4, dtype=torch.float64)
    points = sample_ball(center, 0.7, norm, 4000, seed)
    with torch.no_grad():
        values = exact(points)
    for output in range(2):
        result = quadratic_bounds(network, center, 0.7, norm, output=output)
        low, high = float(values[:, output].min()), float(values[:, output].max())
        assert result.lower <= low
        assert result.upper >= high
        assert result.lower <= result.minimum.witness_value <= low + 1e-9
        assert high - 1e-9 <= result.maximum.witness_value <= result.upper


def exact_form(network: QuadraticNetwork, row: list[Fraction], skip: list[Fraction], offset):
    """``A, b, c`` of ``Σ_j v_j (w_jᵀx + a_j)² + uᵀx + d`` in rational arithmetic."""
    w = [[Fraction(float(x)) for x in r] for r in network.hidden.weight.detach()]
    a = [Fraction(float(x)) for x in network.hidden.bias.detach()]
    n, h = len(w[0]), len(w)
    big_a = [
        [sum(row[j] * w[j][p] * w[j][q] for j in range(h)) for q in range(n)] for p in range(n)
    ]
    b = [2 * sum(row[j] * a[j] * w[j][p] for j in range(h)) + skip[p] for p in range(n)]
    c = sum(row[j] * a[j] * a[j] for j in range(h)) + offset
    return big_a, b, c


def assert_encloses(form: QuadraticForm, exact) -> None:
    big_a, b, c = exact
    n = form.size
    for p in range(n):
        assert abs(Fraction(float(form.b[p])) - b[p]) <= Fraction(float(form.b_error[p]))
        for q in range(n):
            distance = abs(Fraction(float(form.A[p, q])) - big_a[p][q])
            assert distance <= Fraction(float(form.A_error[p, q]))
    assert abs(Fraction(form.c) - c) <= Fraction(form.c_error)


def test_expansion_error_bounds_hold_in_exact_arithmetic():
    torch.manual_seed(3)
    network = QuadraticNetwork(3, 5, 3)
    v = [[Fraction(float(x)) for x in r] for r in network.output.weight.detach()]
    u = [[Fraction(float(x)) for x in r] for r in network.skip.weight.detach()]
    d = [Fraction(float(x)) for x in network.output.bias.detach()]
    forms = quadratic_forms(network)
    for k in range(3):
        assert_encloses(forms[k], exact_form(network, v[k], u[k], d[k]))
    difference = [x - y for x, y in zip(v[0], v[2], strict=True)]
    skip = [x - y for x, y in zip(u[0], u[2], strict=True)]
    assert_encloses(margin_form(network, 0, 2), exact_form(network, difference, skip, d[0] - d[2]))
    assert float(forms[0].A_error.max()) > 0  # float32 weights, float64 products: rounding
    assert float(forms[0].A_error.max()) < 1e-13


def test_forms_agree_with_the_forward_pass():
    torch.manual_seed(4)
    network = QuadraticNetwork(5, 7, 2, skip=False).double()
    x = torch.randn(10, 5, dtype=torch.float64)
    forms = quadratic_forms(network)
    with torch.no_grad():
        y = network(x)
    for k, form in enumerate(forms):
        torch.testing.assert_close(form(x), y[:, k], rtol=1e-12, atol=1e-12)


# --- the rigorous check refuses ----------------------------------------------------------------


def test_the_check_refuses_a_bound_above_the_minimum():
    form, x0 = unit_form(), torch.zeros(3, dtype=torch.float64)
    result = quadratic_minimum(form, x0, 0.5, 2)
    assert verify_lower_bound(form, x0, 0.5, 2, result.bound, result.multipliers)
    for lam in (result.multipliers, 2 * result.multipliers, result.multipliers / 2):
        assert not verify_lower_bound(form, x0, 0.5, 2, -0.75 + 1e-6, lam)
    # the exact optimum needs λ = 1 (A + λI = 2I, t = -0.75); half of it proves nothing
    assert not verify_lower_bound(form, x0, 0.5, 2, result.bound, result.multipliers / 4)
    assert not verify_lower_bound(form, x0, 0.5, 2, result.bound, -result.multipliers)
    assert not verify_lower_bound(form, x0, 0.5, 2, math.nan, result.multipliers)


def test_the_check_refuses_above_the_box_relaxation():
    torch.manual_seed(5)
    form = quadratic_forms(QuadraticNetwork(3, 4, 1))[0]
    x0 = torch.zeros(3, dtype=torch.float64)
    result = quadratic_minimum(form, x0, 1.0, math.inf)
    assert verify_lower_bound(form, x0, 1.0, "inf", result.bound, result.multipliers)
    raised = result.bound + 1e-4 * max(1.0, abs(result.bound))
    assert not verify_lower_bound(form, x0, 1.0, "inf", raised, result.multipliers)


# --- decisions ---------------------------------------------------------------------------------


def test_decision_certified_in_a_small_ball_and_attacked_in_a_large_one():
    torch.manual_seed(0)
    network = QuadraticNetwork(4, 8, 3)
    x0 = torch.randn(4)
    small = certify_decision(network, x0, 0.01, 2)
    assert small.certified
    assert small.counterexample is None
    assert len(small.margins) == 2
    assert all(m.bound <= m.witness_value for m in small.margins)
    exact = copy.deepcopy(network).double()
    inside = sample_ball(x0.double(), 0.01, 2, 2000, 0)
    with torch.no_grad():
        assert bool((exact(inside).argmax(-1) == small.label).all())
    large = certify_decision(network, x0, 0.5, 2)
    assert not large.certified
    attack = large.counterexample
    assert attack is not None
    assert float(torch.linalg.vector_norm(attack - x0.double())) <= 0.5
    with torch.no_grad():
        assert int(exact(attack[None]).argmax(-1)[0]) != large.label


def test_threshold_decision_on_a_scalar_score():
    form, x0 = unit_form(), torch.zeros(3, dtype=torch.float64)  # min over ε = 0.5 is -0.75
    assert certify_decision(form, x0, 0.5, threshold=-0.8).certified
    refused = certify_decision(form, x0, 0.5, threshold=-0.7)
    assert not refused.certified
    assert refused.counterexample is not None
    assert certify_decision(form, x0, 0.5, threshold=1.3, above=False).certified  # max 1.25
    assert not certify_decision(form, x0, 0.5, threshold=1.2, above=False).certified


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused():
    form, x0 = unit_form(), torch.zeros(3, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="eps"):
        quadratic_bounds(form, x0, -0.1)
    with pytest.raises(InvalidArgumentError, match="symmetric"):
        QuadraticForm(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.zeros(2), 0.0)
    with pytest.raises(ShapeError, match="square"):
        QuadraticForm(torch.zeros(2, 3), torch.zeros(2), 0.0)
    with pytest.raises(ShapeError, match="b must"):
        QuadraticForm(torch.eye(2), torch.zeros(3), 0.0)
    with pytest.raises(ShapeError, match="center"):
        quadratic_bounds(form, torch.zeros(4), 0.1)
    with pytest.raises(NonFiniteError):
        QuadraticForm(torch.tensor([[math.nan]]), torch.zeros(1), 0.0)
    with pytest.raises(NonFiniteError):
        quadratic_bounds(form, torch.tensor([math.nan, 0.0, 0.0]), 0.1)
    with pytest.raises(InvalidArgumentError, match="c must"):
        QuadraticForm(torch.eye(1), torch.zeros(1), math.inf)
    with pytest.raises(InvalidArgumentError, match="norm"):
        quadratic_bounds(form, x0, 0.1, norm=1)
    with pytest.raises(InvalidArgumentError, match="solver"):
        quadratic_bounds(form, x0, 0.1, solver="mosek")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="multipliers"):
        verify_lower_bound(form, x0, 0.1, math.inf, -1.0, torch.ones(1))
    with pytest.raises(InvalidArgumentError, match="network"):
        certify_decision(form, x0, 0.1)
    network = QuadraticNetwork(3, 2, 2)
    with pytest.raises(InvalidArgumentError, match="output"):
        quadratic_bounds(network, x0, 0.1)
    with torch.no_grad():
        network.hidden.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteError):
        quadratic_forms(network)
