"""Guaranteed R_t bands under a stated bound on reporting error (SPEC I1).

A renewal-equation epidemic (infections ``I_t = R_t Σ_s w_s I_{t-s}``, Poisson; gamma serial
interval, mean 5 d, sd 2 d) is reported with a gamma delay (mean 3 d, sd 1.5 d), bounded
log-normal reporting noise and Poisson counting. A Lipschitz MLP estimates ``R`` at the middle
day of a 14-day window of ``log(1 + reported cases)`` (the model centres the window itself, so
its input is the raw log counts).

Stated bound on reporting error: every reported count is within a factor 1.1 of the count the
model would otherwise see. Then each feature moves by at most ``log 1.1``
(``|log(1 + m c) - log(1 + c)| <= |log m|``): an ℓ∞ ball, radius ``log 1.1`` plus the float32
rounding of the features. :func:`~lipguard.bounds.envelope.error_envelope` turns it into a
guaranteed band around each estimate; on held-out simulations every estimate under in-bound
reporting errors (random, and adversarial: PGD on each day's factor) must fall inside it. The
script also measures how often ±30% errors (out of bound) leave the band.

    python examples/rt_envelope.py [--out PATH] [--force]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

from lipguard.bounds.envelope import error_envelope, plot_envelope
from lipguard.nn import LipschitzMLP
from lipguard.train import fit

WINDOW = 14  # days of reported cases per estimate
LAG = WINDOW // 2  # the estimate is R at the window's middle day
DAYS = 160  # simulated days after the burn-in
BURN_IN = 40
REPORTING = math.log(1.1)  # the stated bound: counts within a factor 1.1
OUT_OF_BOUND = math.log(1.3)  # ±30%: outside the stated bound
FEATURE_ROUNDING = 1e-5  # |fl32(a) - fl32(b)| <= |a - b| + 2^-24 (|a| + |b|) < that, for a, b < 20
TRAIN_SERIES, TEST_SERIES, DRAWS = 32, 3, 20


def discretised_gamma(mean: float, sd: float, length: int, first: int) -> np.ndarray:
    """``P(s - 1/2 < X <= s + 1/2)`` for ``s = first .. first + length - 1``, normalised."""
    shape, scale = (mean / sd) ** 2, sd**2 / mean
    edges = np.arange(first, first + length + 1) - 0.5
    mass = np.diff(stats.gamma.cdf(np.clip(edges, 0, None), shape, scale=scale))
    return mass / mass.sum()


SERIAL = discretised_gamma(5.0, 2.0, 20, 1)  # w_1 .. w_20
DELAY = discretised_gamma(3.0, 1.5, 12, 0)  # reporting delay 0 .. 11 days


def simulate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reported cases and the true R_t of one epidemic (after the burn-in). R_t is piecewise
    linear between knots 12-30 days apart, drawn in [0.6, 1.6] and steered to keep incidence
    between about 100 and 20 000 a day."""
    total = BURN_IN + DAYS
    r = np.empty(total)
    infections = np.zeros(total)
    infections[: len(SERIAL)] = rng.poisson(300, len(SERIAL))
    start, level = len(SERIAL), rng.uniform(0.8, 1.3)
    r[:start] = level
    while start < total:
        span = int(rng.integers(12, 31))
        recent = infections[start - 7 : start].mean()
        low, high = (0.6, 0.95) if recent > 2e4 else (1.05, 1.6) if recent < 100 else (0.6, 1.6)
        target = rng.uniform(low, high)
        stop = min(start + span, total)
        r[start:stop] = np.linspace(level, target, span + 1)[1 : stop - start + 1]
        for t in range(start, stop):
            pressure = SERIAL @ infections[t - len(SERIAL) : t][::-1]
            infections[t] = rng.poisson(r[t] * pressure)
        start, level = stop, target
    expected = np.convolve(infections, DELAY)[:total]
    noise = np.exp(np.clip(rng.normal(0.0, 0.05, total), -0.15, 0.15))
    reported = rng.poisson(expected * noise).astype(np.float64)
    return reported[BURN_IN:], r[BURN_IN:]


def windows(cases: np.ndarray, r: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``log(1 + c)`` of every 14-day window (float32) and R at its middle day."""
    logs = np.log1p(np.lib.stride_tricks.sliding_window_view(cases, WINDOW))
    return torch.tensor(logs, dtype=torch.float32), torch.tensor(r[LAG : LAG + len(logs)])


def estimator() -> nn.Sequential:
    """Centre the window (a fixed linear map), then a LipschitzMLP (ℓ2 constant <= 0.5)."""
    centre = nn.Linear(WINDOW, WINDOW, bias=False)
    with torch.no_grad():
        centre.weight.copy_(torch.eye(WINDOW) - 1.0 / WINDOW)
    centre.weight.requires_grad_(False)
    mlp = LipschitzMLP(WINDOW, 1, (32, 32), lipschitz=0.5, activation="groupsort")
    return nn.Sequential(centre, mlp)


def in_features(windows_of_counts: torch.Tensor, log_factors: torch.Tensor) -> torch.Tensor:
    """float32 features of the counts multiplied by ``exp(log_factors)`` (float64 in)."""
    return torch.log1p(windows_of_counts * torch.exp(log_factors)).float()


def adversarial(model: nn.Module, counts: torch.Tensor, bound: float) -> list[torch.Tensor]:
    """For each window, reporting factors within ``exp(±bound)`` that push the estimate up,
    and others that push it down: PGD on the log factors (sign steps, 8 of them)."""
    found = []
    for sign in (1.0, -1.0):
        u = torch.zeros_like(counts)
        step = bound
        for _ in range(8):
            u.requires_grad_(True)
            estimate = model(in_features(counts, u)).sum() * sign
            (grad,) = torch.autograd.grad(estimate, u)
            u = (u.detach() + step * grad.sign()).clamp(-bound, bound)
            step = bound / 4
        found.append(in_features(counts, u))
    return found


def perturbed_series(cases: np.ndarray, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Counts with a random reporting factor per day within ``exp(±bound)``: log-uniform on half
    of the draws, at the extremes ``exp(±bound)`` on the other half."""
    if rng.random() < 0.5:
        return cases * np.exp(rng.uniform(-bound, bound, len(cases)))
    return cases * np.exp(bound * rng.choice([-1.0, 1.0], len(cases)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()) / "rt_envelope.png")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train = [windows(*simulate(rng)) for _ in range(TRAIN_SERIES)]
    x_train = torch.cat([x for x, _ in train])
    y_train = torch.cat([y for _, y in train]).float()
    model = estimator()
    fit(
        model,
        (x_train, y_train),
        "regression",
        epochs=20,
        batch_size=128,
        learning_rate=3e-3,
        seed=args.seed,
        progress=False,
    )
    model.eval()

    held_out = [simulate(rng) for _ in range(TEST_SERIES)]
    x = torch.cat([windows(c, r)[0] for c, r in held_out])
    truth = torch.cat([windows(c, r)[1] for c, r in held_out])
    counts = torch.cat(
        [torch.tensor(np.lib.stride_tricks.sliding_window_view(c, WINDOW)) for c, _ in held_out]
    )
    radius = REPORTING + FEATURE_ROUNDING
    envelope = error_envelope(model, x, radius, norm="inf", method="tightest")
    with torch.no_grad():
        estimate = model(x)[:, 0].double()
    mae = float((estimate - truth).abs().mean())

    def perturbations(bound: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        random = []
        for _ in range(DRAWS):
            moved = [perturbed_series(c, bound, rng) for c, _ in held_out]
            random.append(
                torch.cat([windows(m, r)[0] for m, (_, r) in zip(moved, held_out, strict=True)])
            )
        return random, adversarial(model, counts, bound)

    rows = {}
    for label, bound in (("in", REPORTING), ("out", OUT_OF_BOUND)):
        random, attacked = perturbations(bound)
        if label == "in":  # the premise of the guarantee, checked on the float32 features
            distance = max(float((f.double() - x.double()).abs().max()) for f in random + attacked)
            assert distance <= radius, distance
        for kind, features in (("random", random), ("adversarial", attacked)):
            with torch.no_grad():
                outputs = [model(f) for f in features]
            for name, (low, high) in {
                **envelope.parts,
                "tightest": (envelope.lower, envelope.upper),
            }.items():
                inside = [
                    ((o.double() >= low) & (o.double() <= high)).float().mean() for o in outputs
                ]
                rows[(name, label, kind)] = float(torch.stack(inside).mean())

    print(
        f"R_t estimator: {len(x_train)} training windows, held-out MAE {mae:.3f} "
        f"on {len(x)} windows ({TEST_SERIES} series)"
    )
    print(f"stated reporting error: counts within a factor 1.1 -> ℓ∞ ball of radius {radius:.6f}")
    print(
        f"{'method':<10} {'mean width':>10} {'max width':>10} {'in-bound covered':>17} "
        f"{'±30% outside (random / adversarial)':>37}"
    )
    widths = {
        **{n: high - low for n, (low, high) in envelope.parts.items()},
        "tightest": envelope.width,
    }
    for name, width in widths.items():
        covered = min(rows[(name, "in", "random")], rows[(name, "in", "adversarial")])
        outside = (1 - rows[(name, "out", "random")], 1 - rows[(name, "out", "adversarial")])
        print(
            f"{name:<10} {float(width.mean()):>10.4f} {float(width.max()):>10.4f} "
            f"{covered:>16.1%} {outside[0]:>18.1%} / {outside[1]:.1%}"
        )
        assert covered == 1.0, f"{name}: an in-bound perturbation left the guaranteed band"
    sides = {name: sum(m.count(name) for m in envelope.method) for name in envelope.parts}
    print(f"method giving the tightest band, per window: {sides}")

    first = len(held_out[0][0]) - WINDOW + 1
    days = torch.arange(LAG, LAG + first)
    part = type(envelope)(
        prediction=envelope.prediction[:first],
        lower=envelope.lower[:first],
        upper=envelope.upper[:first],
        lower_method=envelope.lower_method[:first],
        upper_method=envelope.upper_method[:first],
        input_error=envelope.input_error[:first],
        norm=envelope.norm,
        dtype=envelope.dtype,
    )
    figure = plot_envelope(part, days, truth=truth[:first], label="estimated R_t")
    figure.axes[0].set_xlabel("day")
    figure.axes[0].set_ylabel("R_t")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"plot: {args.out}  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
