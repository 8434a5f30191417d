"""Attacks: closed-form optima, success where they must succeed, and the threat model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipguard.attacks import (
    APGD,
    DLR,
    FGSM,
    PGD,
    ActionChange,
    CrossEntropy,
    CustomObjective,
    Margin,
    MinimalNorm,
    PreferenceFlip,
    RandomNoise,
    RewardShift,
    Square,
    ThreatModel,
    Transfer,
    feature_ranking,
    masking_check,
    plot_robustness_curve,
    robustness_curve,
    single_feature_flip,
    substitution_scan,
)
from lipguard.errors import InvalidArgumentError


def linear_classifier(seed: int = 0, features: int = 8) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(features, 2)


def test_minimal_norm_finds_the_exact_distance_to_a_linear_boundary():
    model = linear_classifier()
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(1)
        w = model.weight[1] - model.weight[0]
        distance = (x @ w + model.bias[1] - model.bias[0]).abs() / w.norm()
    attack = MinimalNorm(ThreatModel(eps=100.0, norm=2), steps=100, search_steps=8)
    result = attack(model, x, Margin(labels))
    assert bool(result.success.all())
    assert result.norm.numpy() == pytest.approx(distance.numpy(), rel=0.01)


def test_pgd_linf_reaches_the_closed_form_optimum_of_a_linear_reward():
    torch.manual_seed(0)
    reward = nn.Linear(10, 1)
    x = torch.randn(4, 10)
    eps = 0.1
    result = PGD(ThreatModel(eps=eps, norm="inf"), steps=5)(
        model=reward, x=x, objective=RewardShift("up")
    )
    optimum = eps * reward.weight.detach().abs().sum()
    assert result.loss.numpy() == pytest.approx([float(optimum)] * 4, rel=1e-5)


def test_pgd_l2_reaches_the_closed_form_optimum_of_a_linear_reward():
    torch.manual_seed(0)
    reward = nn.Linear(10, 1)
    x = torch.randn(4, 10)
    attack = PGD(ThreatModel(eps=0.5, norm=2), steps=10, random_start=False)
    result = attack(reward, x, RewardShift("down"))
    assert result.loss.numpy() == pytest.approx(
        [0.5 * float(reward.weight.detach().norm())] * 4, rel=1e-4
    )


ATTACKS = {
    "fgsm": lambda threat: FGSM(threat),
    "pgd": lambda threat: PGD(threat, steps=5, restarts=2),
    "apgd": lambda threat: APGD(threat, steps=10),
    "random": lambda threat: RandomNoise(threat, samples=5),
    "square": lambda threat: (
        Square(threat, queries=20) if threat.norm == math.inf else FGSM(threat)
    ),
    "minimal": lambda threat: (
        MinimalNorm(threat, steps=5, search_steps=2) if threat.norm == 2 else PGD(threat, steps=3)
    ),
}


@given(
    name=st.sampled_from(sorted(ATTACKS)),
    eps=st.floats(0.0, 2.0),
    norm=st.sampled_from(["inf", 2]),
    boxed=st.booleans(),
    masked=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_every_attack_respects_the_threat_model(name, eps, norm, boxed, masked, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.rand(5, 6, generator=generator)
    mask = torch.rand(6, generator=generator) > 0.5 if masked else None
    threat = ThreatModel(eps, norm, bounds=(0.0, 1.0) if boxed else None, mask=mask)
    labels = torch.randint(0, 3, (5,), generator=generator)
    result = ATTACKS[name](threat)(model, x, Margin(labels))
    assert threat.contains(x, result.x_adv)
    assert bool((result.norm <= eps * (1 + 1e-6) + 1e-6).all())
    if mask is not None:
        assert bool((result.x_adv[:, ~mask] == x[:, ~mask]).all())


@pytest.fixture(scope="module")
def digits(shuffled_digits):
    x, y = shuffled_digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        for batch in torch.randperm(1400).split(100):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test_x, test_y = x[1400:1600], y[1400:1600]
    assert float((model(test_x).argmax(1) == test_y).float().mean()) > 0.9
    return model.eval(), test_x, test_y


def _accuracy(result, labels) -> float:
    return float((result.outputs.argmax(1) == labels).float().mean())


def test_pgd20_breaks_an_undefended_digits_mlp(digits):
    model, x, y = digits
    threat = ThreatModel(eps=0.3, norm="inf", bounds=(0.0, 1.0))
    result = PGD(threat, steps=20)(model, x, CrossEntropy(y))
    assert _accuracy(result, y) < 0.10
    assert threat.contains(x, result.x_adv)


def test_apgd_is_at_least_as_strong_as_pgd(digits):
    model, x, y = digits
    threat = ThreatModel(eps=0.1, norm="inf", bounds=(0.0, 1.0))
    pgd = _accuracy(PGD(threat, steps=20)(model, x, CrossEntropy(y)), y)
    apgd = _accuracy(APGD(threat, steps=20)(model, x, CrossEntropy(y)), y)
    apgd_dlr = _accuracy(APGD(threat, steps=20)(model, x, DLR(y)), y)
    assert apgd <= pgd + 0.01
    assert apgd_dlr <= pgd + 0.05


def test_black_box_and_transfer_attacks_succeed(digits):
    model, x, y = digits
    threat = ThreatModel(eps=0.3, norm="inf", bounds=(0.0, 1.0))
    square = Square(threat, queries=300)(model, x[:50], Margin(y[:50]))
    noise = RandomNoise(threat, samples=20)(model, x[:50], Margin(y[:50]))
    assert square.success_rate > 0.7
    assert square.success_rate > noise.success_rate
    torch.manual_seed(1)
    surrogate = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    surrogate.load_state_dict(model.state_dict())
    with torch.no_grad():
        for parameter in surrogate.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    transfer = Transfer(PGD(threat, steps=10), surrogate)(model, x[:50], CrossEntropy(y[:50]))
    assert transfer.success_rate > 0.5


def test_preference_flip_and_action_change_objectives():
    torch.manual_seed(0)
    reward = nn.Linear(4, 1, bias=False)
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    with torch.no_grad():
        gap = (reward(a) - reward(b)).abs()[:, 0]
        needed = gap / reward.weight.norm()  # ℓ2 distance that flips each preference
    threat = ThreatModel(eps=float(needed.max()) * 1.05, norm=2)
    result = PGD(threat, steps=30)(reward, a, PreferenceFlip(b))
    assert bool(result.success.all())
    small = PGD(ThreatModel(eps=float(needed.min()) * 0.9, norm=2), steps=30)(
        reward, a, PreferenceFlip(b)
    )
    assert not bool(small.success.any())  # below the exact distance nothing can flip

    policy = nn.Linear(4, 3)
    kl = PGD(ThreatModel(eps=0.5, norm="inf"), steps=10)(policy, a, ActionChange("categorical"))
    assert bool((kl.loss > 0).all())
    big_steps = PGD(ThreatModel(eps=0.2, norm=2), steps=30, step_size=0.2)
    moved = big_steps(policy, a, ActionChange("continuous"))
    optimum = 0.2 * float(torch.linalg.matrix_norm(policy.weight.detach(), 2))
    assert bool((moved.loss <= optimum * (1 + 1e-5)).all())  # ||W δ|| <= σ_max·ε
    assert bool((moved.loss >= 0.95 * optimum).all())  # and PGD gets there (power iteration)


def test_custom_objective_and_mode_restoration():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    objective = CustomObjective(lambda out, clean: (out - clean).pow(2).sum(1))
    result = PGD(ThreatModel(eps=0.1), steps=3)(model, torch.randn(4, 3), objective)
    assert model.training
    assert model[1].training
    assert bool((result.loss >= 0).all())
    assert not bool(result.success.any())


def test_invalid_inputs_are_refused():
    model = nn.Linear(3, 2)
    with pytest.raises(InvalidArgumentError):
        ThreatModel(eps=-1.0)
    with pytest.raises(InvalidArgumentError):
        ThreatModel(eps=0.1, norm=1)
    with pytest.raises(InvalidArgumentError, match="outside"):
        PGD(ThreatModel(0.1, bounds=(0.0, 1.0)))(
            model, torch.full((2, 3), 2.0), Margin(torch.zeros(2))
        )
    with pytest.raises(ValueError, match="NaN"):
        PGD(ThreatModel(0.1))(model, torch.full((2, 3), math.nan), Margin(torch.zeros(2)))
    with pytest.raises(InvalidArgumentError):
        MinimalNorm(ThreatModel(1.0, norm="inf"))


class Quantise(nn.Module):
    """A gradient-masking 'defence': rounding kills every input gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def test_masking_check_flags_a_masked_model_and_passes_a_clean_one(digits):
    model, x, y = digits
    x, y = x[:100], y[:100]
    clean = masking_check(model, x, y, eps=0.1, bounds=(0.0, 1.0))
    assert not clean.suspicious, str(clean)
    masked = nn.Sequential(Quantise(), model)
    report = masking_check(masked, x, y, eps=0.1, bounds=(0.0, 1.0), surrogate=model)
    assert report.suspicious
    assert report.verdict("zero or NaN gradients") == "warn"
    assert report.verdict("random search vs gradients") == "warn"
    assert report.verdict("transfer vs white-box") == "warn"
    assert "WARN" in str(report)


def test_robustness_curve_and_plot(digits, tmp_path):
    model, x, y = digits
    attacks = {"FGSM": FGSM, "PGD-10": lambda threat: PGD(threat, steps=10)}
    curve = robustness_curve(
        model,
        x[:100],
        CrossEntropy(y[:100]),
        [0.0, 0.05, 0.1, 0.2],
        attacks,
        ThreatModel(0.0, "inf", bounds=(0.0, 1.0)),
    )
    clean_error = float((model(x[:100]).argmax(1) != y[:100]).float().mean())
    for name in attacks:
        rates = curve.success_rate[name]
        assert rates[0] == pytest.approx(clean_error)
        assert rates[-1] > rates[0]
    assert bool((curve.success_rate["PGD-10"] >= curve.success_rate["FGSM"] - 0.02).all())
    plot_robustness_curve(curve, path=tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_substitution_scan_finds_a_planted_motif():
    class Motif(nn.Module):  # the output jumps when position 7 holds symbol 2
        def forward(self, x):
            return 3.0 * x[:, 7, 2] + 0.01 * x[:, :, 0].sum(1)

    generator = torch.Generator().manual_seed(0)
    symbols = torch.randint(0, 4, (5, 12), generator=generator)
    symbols[:, 7] = 0
    sequences = nn.functional.one_hot(symbols, 4).float()
    scan = substitution_scan(Motif(), sequences)
    assert scan.change.shape == (5, 12, 4)
    assert all(top[0][:2] == (7, 2) for top in scan.top(1))
    assert scan.change[0, 7, 2] == pytest.approx(3.0 - 0.01)


def test_feature_ranking_and_single_feature_flip():
    torch.manual_seed(0)
    reward = nn.Linear(6, 1)
    x = torch.randn(10, 6)
    order = reward.weight.detach().abs()[0].argsort(descending=True)
    for method in ("gradient", "attack"):
        scores = feature_ranking(reward, x, RewardShift("up"), method=method, eps=0.1)
        assert scores.argsort(descending=True).tolist() == order.tolist()

    classifier = linear_classifier(features=6)
    with torch.no_grad():
        labels = classifier(x).argmax(1)
        w = classifier.weight[1] - classifier.weight[0]
        margin = x @ w + classifier.bias[1] - classifier.bias[0]
    flip = single_feature_flip(classifier, x, Margin(labels), max_change=100.0)
    best = w.abs().argmax()
    assert bool((flip.feature == best).all())
    assert flip.change.numpy() == pytest.approx((-margin / w[best]).numpy(), rel=1e-3)


def test_gaussian_policy_kl_reaches_the_sa_ppo_oracle():
    """1-D linear Gaussian policy μ = w·s, fixed σ: max KL over the ℓ∞ ball is (ε||w||₁)²/(2σ²)."""

    class GaussianPolicy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mean = nn.Linear(5, 1, bias=False)
            self.log_std = nn.Parameter(torch.tensor([-0.5]))

        def forward(self, s):
            return torch.stack([self.mean(s), self.log_std.expand(len(s), 1)], dim=1)

    torch.manual_seed(0)
    policy = GaussianPolicy()
    eps, sigma = 0.1, math.exp(-0.5)
    result = PGD(ThreatModel(eps, "inf"), steps=10)(
        policy, torch.randn(6, 5), ActionChange("gaussian")
    )
    optimum = (eps * float(policy.mean.weight.detach().abs().sum())) ** 2 / (2 * sigma**2)
    assert result.loss.numpy() == pytest.approx([optimum] * 6, rel=1e-4)


class Recorder(nn.Module):
    """Wraps a model and keeps a copy of every batch it is called with, and its outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.inputs.append(x.detach().clone())
        self.outputs.append(out.detach().clone())
        return out


def _small_classifier(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(24, 6, generator=generator)
    with torch.no_grad():
        labels = model(x).argmax(1)
    return model, x, labels


@pytest.mark.parametrize(
    ("make", "norm"),
    [
        (lambda threat: PGD(threat, steps=7), "inf"),
        (lambda threat: PGD(threat, steps=4, restarts=3), "inf"),
        (lambda threat: PGD(threat, steps=6), 2),
        (lambda threat: APGD(threat, steps=12, restarts=2), "inf"),
        (lambda threat: APGD(threat, steps=9), 2),
    ],
)
@pytest.mark.parametrize("objective", [CrossEntropy, DLR, Margin])
def test_gradient_attacks_return_the_best_iterate_they_scored(make, norm, objective):
    """Every forward pass scores an iterate; the returned point is each sample's best of them
    (successful over failed, then the highest loss, the first one on ties), with the loss and
    success of that pass, and the model is called exactly once per iterate: no extra passes.
    (ℓ2: the template's final projection may move a point by a rounding, and then evaluates
    the returned points once more.)"""
    model, x, labels = _small_classifier(3)
    recorder = Recorder(model)
    threat = ThreatModel(0.15, norm, bounds=(0.0, 1.0))
    attack = make(threat)
    result = attack(recorder, x, objective(labels))
    iterates = attack.restarts * (attack.steps + 1)
    if norm == "inf":
        assert len(recorder.inputs) == iterates
    else:
        assert len(recorder.inputs) in (iterates, iterates + 1)
        if len(recorder.inputs) > iterates:
            assert torch.equal(recorder.inputs[-1], result.x_adv)
            assert torch.equal(recorder.outputs[-1], result.outputs)
            del recorder.inputs[-1], recorder.outputs[-1]
    bound = objective(labels).bind(model, x, None)
    points = torch.stack(recorder.inputs)
    losses = torch.stack([bound.loss(out) for out in recorder.outputs])
    success = torch.stack([bound.success(out) for out in recorder.outputs])
    assert bool((result.success == success.any(0)).all())
    for i in range(len(x)):
        eligible = success[:, i] == result.success[i]
        best = losses[eligible, i].max()
        if norm == "inf":
            assert float(result.loss[i]) == float(best)
        else:
            assert float(result.loss[i]) == pytest.approx(float(best), abs=1e-5)
        first = int(torch.nonzero(eligible & (losses[:, i] == best))[0])
        if norm == "inf":
            assert torch.equal(result.x_adv[i], points[first, i])
        else:  # within a rounding of the final projection
            assert torch.allclose(result.x_adv[i], points[first, i], atol=1e-6)
    assert threat.contains(x, result.x_adv)


def test_the_returned_point_beats_every_iterate_of_a_reward_attack():
    """No notion of success: the returned point has the highest loss of all scored iterates."""
    torch.manual_seed(0)
    reward = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    recorder = Recorder(reward)
    x = torch.randn(10, 5)
    result = PGD(ThreatModel(0.3, "inf"), steps=15, step_size=0.2)(recorder, x, RewardShift("abs"))
    clean, scored = recorder.outputs[0], recorder.outputs[1:]  # the clean pass comes first
    assert len(scored) == 16
    shifts = torch.stack([(out - clean).abs()[:, 0] for out in scored])
    assert torch.equal(result.loss, shifts.max(0).values)
    assert bool((result.loss >= shifts[-1]).all())  # never worse than the last iterate


@given(
    eps=st.floats(0.0, 0.5),
    masked=st.booleans(),
    boxed=st.sampled_from(["none", "floats", "tensors"]),
    seed=st.integers(0, 1000),
)
def test_linf_projection_is_one_exact_idempotent_clamp(eps, masked, boxed, seed):
    """ℓ∞ ∩ box ∩ mask is a box per coordinate; projecting onto it is clamping to
    [max(x - eps, low), min(x + eps, high)] (x itself outside the mask), points of the set
    come back bit for bit, and ``projector`` (in place) agrees with ``project``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(7, 5, generator=generator)
    z = 3 * torch.randn(7, 5, generator=generator)
    mask = torch.rand(5, generator=generator) > 0.4 if masked else None
    low, high = torch.zeros(5), torch.full((5,), 1.0)
    low[0], high[1] = -0.05, 0.95
    high[1] = torch.maximum(high[1], x[:, 1].max())
    bounds = {"none": None, "floats": (0.0, 1.0), "tensors": (low, high)}[boxed]
    threat = ThreatModel(eps, "inf", bounds=bounds, mask=mask)
    p = threat.project(x, z)
    lo, hi = x - eps, x + eps
    if bounds is not None:
        lo = torch.maximum(lo, torch.as_tensor(bounds[0]))
        hi = torch.minimum(hi, torch.as_tensor(bounds[1]))
    if mask is not None:
        lo, hi = torch.where(mask, lo, x), torch.where(mask, hi, x)
    assert torch.equal(p, torch.minimum(torch.maximum(z, lo), hi))  # the nearest point
    assert threat.contains(x, p)
    assert torch.equal(threat.project(x, p), p)  # idempotent, exactly
    inside = lo + (hi - lo) * torch.rand(7, 5, generator=generator)
    assert torch.equal(threat.project(x, inside), inside)
    in_place = z.clone()
    assert threat.projector(x)(in_place) is in_place
    assert torch.equal(in_place, p)


def test_trajectory_fold_equals_updating_best_every_step(monkeypatch):
    """Folding batches of iterates (forced small: capacity 3) picks what per-step updates pick,
    ties and -inf included; a NaN loss ranks below every number."""
    from lipguard.attacks import base

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, generator=generator)
    model = nn.Linear(3, 3)
    labels = torch.randint(0, 3, (40,), generator=generator)
    bound = Margin(labels).bind(model, x, None)
    monkeypatch.setattr(base, "TRAJECTORY_BYTES", x.numel() * x.element_size())
    trajectory = base.Trajectory(x, bound, steps=11)
    assert trajectory.capacity == 3
    folded, stepped = base.Best(x), base.Best(x)
    levels = torch.tensor([-torch.inf, -1.0, 0.0, 0.5, 2.0])
    for _ in range(11):
        point = trajectory.point
        point.copy_(torch.rand(x.shape, generator=generator))
        outputs = torch.randint(-1, 2, (40, 3), generator=generator).float()  # ties of logits
        loss = levels[torch.randint(0, 5, (40,), generator=generator)]
        trajectory.record(outputs, loss)
        stepped.update(point.clone(), outputs, loss, bound.success(outputs))
        if trajectory.full:
            trajectory.fold(folded)
    trajectory.fold(folded)
    assert torch.equal(folded.x, stepped.x)
    assert torch.equal(folded.outputs, stepped.outputs)
    assert torch.equal(folded.loss, stepped.loss)
    assert torch.equal(folded.success, stepped.success)

    nan_first = base.Best(x)
    trajectory.point.copy_(x)
    trajectory.record(torch.zeros(40, 3), torch.full((40,), torch.nan))
    trajectory.point.copy_(x + 1)
    trajectory.record(torch.zeros(40, 3), torch.full((40,), -5.0))
    trajectory.fold(nan_first)
    assert torch.equal(nan_first.x, x + 1)


@pytest.mark.parametrize("objective", [CrossEntropy, Margin, DLR])
@pytest.mark.parametrize("targeted", [False, True])
def test_stacked_success_equals_one_test_per_batch(objective, targeted):
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (30,), generator=generator)
    target = (labels + 1) % 5 if targeted else None
    bound = objective(labels, target).bind(nn.Identity(), torch.zeros(30, 5), None)
    assert bound.stacks
    stacked = torch.randint(-2, 3, (6, 30, 5), generator=generator).float()  # many ties
    stacked[0, 0, 0] = torch.nan
    expected = torch.stack([bound.success(batch) for batch in stacked])
    assert torch.equal(bound.successes(stacked), expected)
    other = CustomObjective(lambda out, clean: out.sum(1), lambda out, clean: out[:, 0] > 0)
    custom = other.bind(nn.Identity(), torch.zeros(30, 5), torch.zeros(30, 5))
    assert not custom.stacks
    assert torch.equal(custom.successes(stacked), stacked[..., 0] > 0)


@pytest.mark.parametrize(
    "make", [lambda t: PGD(t, steps=9, restarts=2), lambda t: APGD(t, steps=14)]
)
def test_a_small_trajectory_budget_changes_nothing(make, monkeypatch):
    """With room for only 3 iterates the buffer is folded and reused mid-run (and across APGD's
    checkpoints): the result is bit for bit the same."""
    from lipguard.attacks import base

    model, x, labels = _small_classifier(5)
    threat = ThreatModel(0.2, "inf", bounds=(0.0, 1.0))
    roomy = make(threat)(model, x, CrossEntropy(labels))
    monkeypatch.setattr(base, "TRAJECTORY_BYTES", 3 * x.numel() * x.element_size())
    tight = make(threat)(model, x, CrossEntropy(labels))
    assert torch.equal(roomy.x_adv, tight.x_adv)
    assert torch.equal(roomy.loss, tight.loss)
    assert torch.equal(roomy.success, tight.success)


def test_projection_stays_in_the_box_for_a_clean_point_outside_it():
    threat = ThreatModel(eps=0.1, norm="inf", bounds=(0.0, 1.0))
    x = torch.tensor([[-0.5, 1.5, 0.5]])
    projected = threat.project(x, torch.tensor([[-0.45, 1.45, 0.7]]))
    assert projected.min() >= 0.0
    assert projected.max() <= 1.0
    assert projected[0, 2] == pytest.approx(0.6)


def test_pgd_on_a_model_that_ignores_its_input():
    """Autograd's gradient is then a broadcast zero view; the step must not write into it."""

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=1, keepdim=True) * 0 + 1

    x = torch.randn(8, 3)
    result = PGD(ThreatModel(eps=0.1, norm="inf"), steps=3)(Constant(), x, RewardShift("abs"))
    assert (result.x_adv - x).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize("norm", ["inf", 2])
@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("objective", [CrossEntropy, DLR, Margin])
def test_stopping_on_success_breaks_the_samples_the_full_run_breaks(norm, restarts, objective):
    """Each sample's iterates are the full run's until its first success (float64: the rounding
    of smaller batches does not move them), which is where it stops: same successes, the first
    successful iterate returned, and fewer rows through the model."""
    model, x, labels = _small_classifier(3)
    model, x = model.double(), x.double()
    threat = ThreatModel(0.2, norm, bounds=(0.0, 1.0))
    full_recorder, stop_recorder = Recorder(model), Recorder(model)
    full = PGD(threat, steps=8, restarts=restarts, seed=2)(full_recorder, x, objective(labels))
    attack = PGD(threat, steps=8, restarts=restarts, seed=2, stop_on_success=True)
    stopped = attack(stop_recorder, x, objective(labels))
    assert 0 < int(full.success.sum()) < len(x)  # some broken, some not: a real test
    assert torch.equal(stopped.success, full.success)
    assert threat.contains(x, stopped.x_adv)
    bound = objective(labels).bind(model, x, None)
    with torch.no_grad():
        assert torch.equal(bound.success(model(stopped.x_adv)), stopped.success)
    rows = sum(len(batch) for batch in stop_recorder.inputs)
    assert rows < sum(len(batch) for batch in full_recorder.inputs)
    # a broken sample's point is the first iterate of the full run that broke it
    first_restart = full_recorder.inputs[: attack.steps + 1]
    outputs = full_recorder.outputs[: attack.steps + 1]
    for i in torch.nonzero(full.success).view(-1).tolist():
        hits = [k for k, out in enumerate(outputs) if bool(bound.success(out)[i])]
        if hits:  # broken in the first restart
            assert torch.allclose(stopped.x_adv[i], first_restart[hits[0]][i], atol=1e-12)


def test_stopping_on_success_changes_nothing_without_a_notion_of_success():
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    x = torch.rand(16, 5)
    threat = ThreatModel(0.1, "inf")
    objective = CustomObjective(lambda outputs, clean: -outputs[:, 0])  # no success test
    full = PGD(threat, steps=5, seed=1)(model, x, objective)
    stopped = PGD(threat, steps=5, seed=1, stop_on_success=True)(model, x, objective)
    assert torch.equal(full.x_adv, stopped.x_adv)
    assert torch.equal(full.loss, stopped.loss)


def test_stopping_on_success_stops_when_every_sample_is_broken(digits):
    model, x, y = digits
    recorder = Recorder(model)
    threat = ThreatModel(eps=0.3, norm="inf", bounds=(0.0, 1.0))
    result = PGD(threat, steps=40, restarts=2, stop_on_success=True)(recorder, x, CrossEntropy(y))
    assert _accuracy(result, y) < 0.10  # the attack succeeds
    assert len(recorder.inputs) < 41  # and stops early: no second restart, no full 40 steps


@pytest.mark.parametrize("norm", ["inf", 2])
@pytest.mark.parametrize("stop_on_success", [False, True])
def test_an_empty_batch_gives_an_empty_result(norm, stop_on_success):
    model, x, labels = _small_classifier(0)
    attack = PGD(ThreatModel(0.1, norm), steps=3, stop_on_success=stop_on_success)
    result = attack(model, x[:0], CrossEntropy(labels[:0]))
    assert result.x_adv.shape == (0, x.shape[1])
    assert result.success.shape == (0,)
