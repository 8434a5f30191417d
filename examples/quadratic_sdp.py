"""Certified radii of a quadratic network classifier by the S-lemma SDP (SPEC B6).

For a few inputs, bisection on ε finds the largest ball (ℓ2 and ℓ∞) in which
``certify_decision`` proves that the predicted class cannot change, and the smallest ball in
which its attack (the witness search) finds an input of another class. Every proven radius
must lie below every attacked one; over ℓ2 balls the S-lemma is exact for each margin, so the
two meet.

    python examples/quadratic_sdp.py
"""

from __future__ import annotations

import math

import torch

from lipguard.bounds.quadratic import QuadraticNetwork, certify_decision

torch.manual_seed(0)
network = QuadraticNetwork(6, 16, 3)
points = torch.randn(5, 6)


def radii(x: torch.Tensor, norm: float, tolerance: float = 4e-6) -> tuple[float, float]:
    """(largest certified ε, smallest attacked ε), each bracketed to ``tolerance``. Every call
    answers both questions, so one bisection narrows both brackets."""
    proven, unproven = 0.0, 4.0  # certified at `proven`, not at `unproven`
    safe, attacked = 0.0, 4.0  # no counterexample found at `safe`, one at `attacked`
    assert certify_decision(network, x, attacked, norm).counterexample is not None
    while unproven - proven > tolerance or attacked - safe > tolerance:
        low, high = (proven, unproven) if unproven - proven > tolerance else (safe, attacked)
        mid = (low + high) / 2
        result = certify_decision(network, x, mid, norm)
        if result.certified:
            proven = mid
        else:
            unproven = min(unproven, mid)
        if result.counterexample is None:
            safe = max(safe, mid)
        else:
            attacked = min(attacked, mid)
    return proven, attacked


print(f"{'point':>5} {'norm':>4} {'certified ε':>12} {'attacked ε':>12} {'ratio':>7}")
for index, x in enumerate(points):
    for norm in (2.0, math.inf):
        proven, attacked = radii(x, norm)
        assert proven <= attacked  # a proof can never cover a counterexample
        if norm == 2.0:  # the S-lemma is exact: nothing lies between proof and attack
            assert proven >= attacked * (1 - 1e-4)
        label = "ℓ2" if norm == 2.0 else "ℓ∞"
        print(f"{index:>5} {label:>4} {proven:>12.6f} {attacked:>12.6f} {proven / attacked:>7.4f}")
