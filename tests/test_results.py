"""The shared result types: Norm, LipschitzBound's JSON form, Check/Report, deprecated names."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lipguard.errors import InvalidArgumentError
from lipguard.norm import L1, L2, LINF, Norm, dual_norm, parse_norm
from lipguard.results import Check, LipschitzBound, Report


@pytest.mark.parametrize(
    ("spelling", "p"),
    [
        (1, 1.0),
        (2, 2.0),
        (2.0, 2.0),
        (math.inf, math.inf),
        ("inf", math.inf),
        ("L2", 2.0),
        ("linf", math.inf),
        ("l1", 1.0),
        (np.float64(2.0), 2.0),
        (L2, 2.0),
    ],
)
def test_norm_parses_every_spelling(spelling, p):
    assert Norm.parse(spelling).p == p == parse_norm(spelling)


@pytest.mark.parametrize("bad", [True, False, 0, 3, 0.5, -math.inf, math.nan, "l3", "", None, [2]])
def test_norm_refuses_by_value(bad):
    with pytest.raises(InvalidArgumentError, match="norm must be 1, 2 or inf"):
        Norm.parse(bad)


def test_norm_dual_name_label_and_per_sample_norms():
    assert (L1.dual, L2.dual, LINF.dual) == (LINF, L2, L1)
    assert [n.name for n in (L1, L2, LINF)] == ["1", "2", "inf"]
    assert [n.label for n in (L1, L2, LINF)] == ["ℓ1", "ℓ2", "ℓ∞"]
    assert dual_norm("inf") == 1.0
    assert float(LINF) == math.inf
    assert str(L2) == "ℓ2"
    x = torch.tensor([[[3.0, -4.0]], [[1.0, 0.0]]])
    assert L2.of(x).tolist() == [5.0, 1.0]
    assert L1.of(x).tolist() == [7.0, 1.0]
    assert LINF.of(x).tolist() == [4.0, 1.0]
    assert Norm.parse(Norm.parse("inf").name) == LINF


def test_bound_round_trips_through_json():
    bound = LipschitzBound(1.25, "inf", "product", "global", True, 1e-12, {"rho": [1.0]})
    again = LipschitzBound.from_dict(json.loads(json.dumps(bound.to_dict())))
    assert again == bound
    assert again.details == {"rho": [1.0]}
    assert again.norm == math.inf
    assert "ℓ∞" in str(bound)
    # older certificates wrote the ℓ2 norm as the number 2.0
    assert LipschitzBound.from_dict({**bound.to_dict(), "norm": 2.0}).norm == 2.0


@pytest.mark.parametrize(
    "edit",
    [
        {"value": "1.0"},
        {"value": True},
        {"value": math.inf},
        {"value": -1.0},
        {"margin": -0.1},
        {"norm": 3},
        {"norm": "ℓ2"},
        {"sound": 1},
        {"method": None},
        {"details": [1, 2]},
    ],
)
def test_bound_from_dict_refuses_edits(edit):
    data = {**LipschitzBound(1.0, 2, "product").to_dict(), **edit}
    with pytest.raises(InvalidArgumentError):
        LipschitzBound.from_dict(data)


def test_report_is_ok_unless_a_check_fails():
    passing = Report.of([Check.of("a", True, "x"), Check("b", "warn"), Check("c", "skipped")])
    assert passing.ok
    assert bool(passing)
    assert passing.warnings == (Check("b", "warn"),)
    failing = Report.of([*passing.checks, Check.of("d", False, "broke")])
    assert not failing.ok
    assert not failing
    assert [c.name for c in failing.failures] == ["d"]
    assert failing.verdict("d") == "fail"
    with pytest.raises(KeyError):
        failing.verdict("missing")
    assert "FAIL    d  broke" in str(failing)
    assert str(Check("d", "fail", "broke")) == "fail: d (broke)"
    assert Report.from_dict(json.loads(json.dumps(failing.to_dict()))) == failing
    assert Report().ok
    assert str(Report()) == "(no checks)"


@pytest.mark.parametrize(
    "data",
    [None, {}, {"checks": [{"name": "a", "verdict": "maybe"}]}, {"checks": [{"verdict": "pass"}]}],
)
def test_report_from_dict_refuses_malformed(data):
    with pytest.raises(InvalidArgumentError):
        Report.from_dict(data)


def test_check_refuses_an_unknown_verdict():
    with pytest.raises(InvalidArgumentError, match="verdict"):
        Check("a", "ok")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("lipguard.bounds", "Verification", "Report"),
        ("lipguard.monitor", "VerifyReport", "AuditVerification"),
        ("lipguard.attacks", "masking_audit", "masking_check"),
    ],
)
def test_renamed_names_still_work_with_a_warning(module, old, new):
    import importlib

    package = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=new):
        value = getattr(package, old)
    assert value.__name__ == new
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_renamed_keyword_still_works_with_a_warning():
    from torch import nn

    from lipguard.bounds import local_lipschitz_bound

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    center = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="eps="):
        old = local_lipschitz_bound(model, center, radius=0.5)
    assert old == local_lipschitz_bound(model, center, eps=0.5)
    assert "eps=0.5" in old[0].scope
    with pytest.raises(TypeError, match="both"):
        local_lipschitz_bound(model, center, radius=0.5, eps=0.5)


def test_lower_bound_round_trips_and_refuses_mis_sized_witnesses():
    from lipguard.bounds import LipschitzLowerBound

    x, y = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    bound = LipschitzLowerBound(1.5, 2.0, "ascent", x, y, 1.4, True, None)
    again = LipschitzLowerBound.from_dict(json.loads(json.dumps(bound.to_dict())), 2, ((2, 3),))
    assert torch.equal(again.y, y)
    assert again.value == 1.5
    assert again.norm == 2.0
    joint = LipschitzLowerBound.from_dict(bound.to_dict(), "inf", ((2,), (4,)))
    assert joint.x.shape == (6,)
    assert joint.shapes == ((2,), (4,))
    assert joint.norm == math.inf
    for edit in ({"x": [0.0] * 5}, {"y": ["0"] * 6}, {"rigorous": "yes"}, {"value": math.nan}):
        with pytest.raises(InvalidArgumentError):
            LipschitzLowerBound.from_dict({**bound.to_dict(), **edit}, 2, ((2, 3),))


def test_describe_is_now_to_dict_with_a_warning():
    from lipguard.smoothing import IsotropicNoise
    from lipguard.train.regularizers import GradientPenalty

    for value in (IsotropicNoise(0.5), GradientPenalty(1.0, norm="inf")):
        with pytest.warns(DeprecationWarning, match=r"to_dict\(\)"):
            old = value.describe()
        assert old == value.to_dict()
    assert IsotropicNoise(0.5).to_dict()["sigma"] == 0.5
