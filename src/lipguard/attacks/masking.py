"""A one-call gradient-masking check (Athalye et al., 2018; Carlini et al., 2019).

A defence that only *hides* gradients — quantised inputs, saturated softmax, randomness — makes
gradient attacks fail without making the model robust. :func:`masking_check` runs the standard
warning-sign checks and reports a verdict for each:

1. **one-step vs iterative** — FGSM must not beat PGD;
2. **transfer vs white-box** — PGD crafted on a surrogate must not beat PGD on the model;
3. **unbounded budget** — PGD with a budget covering the whole input box (or a huge one) must
   reach ~100% success;
4. **random search vs gradients** — Square / random noise must not succeed where PGD fails;
5. **monotone in ε** — success must not drop as ε grows;
6. **zero or NaN gradients** — the input gradient must be finite and non-zero;
7. **stochastic outputs** — the model in eval mode must be deterministic.

A "warn" is a reason to distrust a robustness number, not proof of masking; a clean report is
evidence, not proof, of honest gradients.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lipguard import _checks
from lipguard.attacks.base import loss_and_gradient
from lipguard.attacks.blackbox import RandomNoise, Square, Transfer
from lipguard.attacks.gradient import FGSM, PGD
from lipguard.attacks.objectives import CrossEntropy, Margin, Objective
from lipguard.attacks.threat import ThreatModel
from lipguard.norm import LINF, NormLike
from lipguard.results import Check, Report, Verdict


@dataclass(frozen=True)
class MaskingReport(Report):
    """The checks of :func:`masking_check`: verdicts ``pass``, ``warn`` or ``skipped``."""

    @property
    def suspicious(self) -> bool:
        """Whether any check warns."""
        return bool(self.warnings)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "suspicious": self.suspicious}


def _verdict(ok: bool) -> Verdict:
    return "pass" if ok else "warn"


def masking_check(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 0.1,
    norm: NormLike = LINF,
    bounds: tuple[float, float] | None = None,
    surrogate: nn.Module | None = None,
    objective: Objective | None = None,
    steps: int = 20,
    tolerance: float = 0.02,
    seed: int = 0,
) -> MaskingReport:
    """Run the warning-sign checks on a classifier (labels ``y``; or pass any ``objective``).

    ``tolerance`` is the success-rate slack allowed before a comparison warns.
    """
    objective = objective if objective is not None else CrossEntropy(y)
    _checks.positive_int("steps", steps)
    # score-based search needs a loss that rewards progress towards success: the margin
    margin_objective = Margin(y) if isinstance(objective, CrossEntropy) else objective
    threat = ThreatModel(eps, norm, bounds=bounds)
    threat.check_inputs(x)
    pgd = PGD(threat, steps=steps, seed=seed)(model, x, objective)
    checks: list[Check] = []

    fgsm = FGSM(threat, seed=seed)(model, x, objective)
    checks.append(
        Check(
            "one-step vs iterative",
            _verdict(fgsm.success_rate <= pgd.success_rate + tolerance),
            f"FGSM {fgsm.success_rate:.1%} vs PGD-{steps} {pgd.success_rate:.1%}",
        )
    )

    if surrogate is None:
        checks.append(Check("transfer vs white-box", "skipped", "no surrogate model given"))
    else:
        transfer = Transfer(PGD(threat, steps=steps, seed=seed), surrogate)(model, x, objective)
        checks.append(
            Check(
                "transfer vs white-box",
                _verdict(transfer.success_rate <= pgd.success_rate + tolerance),
                f"transfer {transfer.success_rate:.1%} vs white-box {pgd.success_rate:.1%}",
            )
        )

    if bounds is not None:
        huge = float(bounds[1] - bounds[0]) * (
            1.0 if threat.norm == math.inf else math.sqrt(x[0].numel())
        )
    else:
        huge = 1e3 * max(float(x.abs().max()), 1.0)
    unbounded = PGD(threat.with_eps(huge), steps=max(steps, 50), seed=seed)(model, x, objective)
    checks.append(
        Check(
            "unbounded budget",
            _verdict(unbounded.success_rate >= 0.95),
            f"PGD with ε = {huge:g} succeeds on {unbounded.success_rate:.1%} (expected ~100%)",
        )
    )

    black_box = (
        Square(threat, queries=500, seed=seed)
        if threat.norm == math.inf
        else RandomNoise(threat, 200, seed=seed)
    )
    searched = black_box(model, x, margin_objective)
    missed = float((searched.success & ~pgd.success).float().mean())
    checks.append(
        Check(
            "random search vs gradients",
            _verdict(missed <= tolerance),
            f"{type(black_box).__name__} succeeds where PGD fails on {missed:.1%} of inputs",
        )
    )

    rates = [
        PGD(threat.with_eps(eps * f), steps=steps, seed=seed)(model, x, objective).success_rate
        for f in (0.25, 0.5)
    ] + [
        pgd.success_rate,
        PGD(threat.with_eps(eps * 2), steps=steps, seed=seed)(model, x, objective).success_rate,
    ]
    drops = max(a - b for a, b in itertools.pairwise(rates))
    checks.append(
        Check(
            "monotone in ε",
            _verdict(drops <= tolerance),
            "success at ε × (¼, ½, 1, 2): " + ", ".join(f"{r:.1%}" for r in rates),
        )
    )

    with _checks.evaluating(model):
        clean = model(x.detach())
        bound = objective.bind(model, x, clean.detach())
        _, _, _, gradient = loss_and_gradient(model, bound, x)
        again = model(x.detach())
    flat = gradient.flatten(1)
    broken = float(((flat == 0).all(1) | ~torch.isfinite(flat).all(1)).float().mean())
    checks.append(
        Check(
            "zero or NaN gradients",
            _verdict(broken <= tolerance),
            f"{broken:.1%} of inputs have an all-zero or non-finite input gradient",
        )
    )
    deterministic = torch.equal(clean, again)
    checks.append(
        Check(
            "stochastic outputs",
            _verdict(deterministic),
            "eval-mode outputs are " + ("deterministic" if deterministic else "random: use EOT"),
        )
    )
    return MaskingReport(tuple(checks))
