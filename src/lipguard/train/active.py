"""Active learning with ensemble uncertainty (SPEC D4, seed 003's ML-potential workflow).

An expensive oracle (a simulator, a human labeller, the true reward) is queried only where the
ensemble disagrees: members trained on bootstrap resamples of the labelled data predict every
pool point, and their standard deviation — the predicted error — decides. Points below
``tolerance`` are trusted to the ensemble; up to ``per_round`` of those above it are labelled
per round, drawn in proportion to their uncertainty; the loop ends when no pool point exceeds
the tolerance or the budget is spent. :func:`random_sampling` is the baseline with the same budget.

Members are any ``fit(x, y) -> predict`` callables; :class:`RandomFeatureRidge` (random Fourier
features + ridge regression, closed form) is a fast default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import torch

from lipguard import _checks

Predictor = Callable[[torch.Tensor], torch.Tensor]
Learner = Callable[[torch.Tensor, torch.Tensor, torch.Generator], Predictor]


class RandomFeatureRidge:
    """``f(x) = φ(x)ᵀβ`` with ``φ(x) = sqrt(2/m)·cos(Ωx + c)``, ``Ω ~ N(0, 1/ℓ²)``: a random
    approximation of an RBF kernel of length scale ``ℓ``, fitted by ridge regression."""

    def __init__(self, features: int = 200, length_scale: float = 0.2, ridge: float = 1e-3) -> None:
        self.features = _checks.positive_int("features", features)
        self.length_scale = _checks.positive_float("length_scale", length_scale)
        self.ridge = _checks.positive_float("ridge", ridge)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Predictor:
        x, y = x.double().flatten(1), y.double()
        omega = torch.randn(x.shape[1], self.features, generator=generator, dtype=torch.float64)
        omega = omega / self.length_scale
        phase = 2 * math.pi * torch.rand(self.features, generator=generator, dtype=torch.float64)

        def features(points: torch.Tensor) -> torch.Tensor:
            return math.sqrt(2.0 / self.features) * torch.cos(
                points.double().flatten(1) @ omega + phase
            )

        design = features(x)
        gram = design.T @ design + self.ridge * torch.eye(self.features, dtype=torch.float64)
        beta = torch.linalg.solve(gram, design.T @ y)
        return lambda points: features(points) @ beta


class Ensemble:
    """``members`` learners, each fitted on a bootstrap resample; ``predict`` returns the mean
    and the standard deviation across members (the predicted error)."""

    def __init__(self, learner: Learner, members: int = 5, seed: int = 0) -> None:
        self.learner = learner
        self.members = _checks.positive_int("members", members)
        self.generator = torch.Generator().manual_seed(seed)
        self.predictors: list[Predictor] = []

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> Ensemble:
        self.predictors = []
        for _ in range(self.members):
            sample = torch.randint(x.shape[0], (x.shape[0],), generator=self.generator)
            self.predictors.append(self.learner(x[sample], y[sample], self.generator))
        return self

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        predictions = torch.stack([predict(x) for predict in self.predictors])
        return predictions.mean(0), predictions.std(0)


@dataclass
class LearningCurve:
    """Oracle calls so far and the test RMSE after each round."""

    calls: list[int] = field(default_factory=list)
    rmse: list[float] = field(default_factory=list)
    stopped_confident: bool = False

    def calls_to_reach(self, target: float) -> int | None:
        """Oracle calls when the RMSE first reached ``target`` (``None`` if never)."""
        return next((c for c, e in zip(self.calls, self.rmse, strict=True) if e <= target), None)


def _record(
    curve: LearningCurve,
    ensemble: Ensemble,
    labelled: int,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
) -> None:
    mean, _ = ensemble.predict(x_test)
    curve.calls.append(labelled)
    curve.rmse.append(float(((mean - y_test.double()) ** 2).mean().sqrt()))


Chooser = Callable[
    [Ensemble, torch.Tensor, torch.Tensor, int, torch.Generator], torch.Tensor | None
]


class QueryOptions(TypedDict, total=False):
    """The options :func:`active_learning` and :func:`random_sampling` share.

    - ``learner``: fits one ensemble member (default: :class:`RandomFeatureRidge`);
    - ``members``: ensemble size (5);
    - ``initial``: random pool points labelled first (10);
    - ``per_round``: most points labelled per round (10);
    - ``budget``: most oracle calls in all (200);
    - ``seed``: seeds the initial draw, the bootstraps and the per-round draws (0).
    """

    learner: Learner | None
    members: int
    initial: int
    per_round: int
    budget: int
    seed: int


def _query_loop(
    oracle: Predictor,
    pool: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    choose: Chooser,
    *,
    learner: Learner | None = None,
    members: int = 5,
    initial: int = 10,
    per_round: int = 10,
    budget: int = 200,
    seed: int = 0,
) -> LearningCurve:
    """Label ``initial`` random pool points, then per round the points ``choose`` picks among
    the unlabelled ones (``None``: nothing worth querying), until the budget is spent."""
    generator = torch.Generator().manual_seed(seed)
    ensemble = Ensemble(learner or RandomFeatureRidge(), members, seed)
    chosen = torch.randperm(pool.shape[0], generator=generator)[:initial]
    remaining = torch.ones(pool.shape[0], dtype=torch.bool)
    remaining[chosen] = False
    x, y = pool[chosen], oracle(pool[chosen])
    curve = LearningCurve()
    while True:
        ensemble.fit(x, y)
        _record(curve, ensemble, x.shape[0], x_test, y_test)
        if x.shape[0] >= budget or not bool(remaining.any()):
            break
        picked = choose(ensemble, pool, remaining, min(per_round, budget - x.shape[0]), generator)
        if picked is None:
            curve.stopped_confident = True
            break
        remaining[picked] = False
        x, y = torch.cat([x, pool[picked]]), torch.cat([y, oracle(pool[picked])])
    return curve


def active_learning(
    oracle: Predictor,
    pool: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    tolerance: float = 0.05,
    **options: Unpack[QueryOptions],
) -> LearningCurve:
    """Label ``initial`` random pool points, then per round the (at most ``per_round``) most
    uncertain points whose ensemble standard deviation exceeds ``tolerance`` (drawn with
    probability proportional to it, which spreads a round's queries instead of stacking them on
    one uncertain spot). The other options: :class:`QueryOptions`."""

    def uncertain(
        ensemble: Ensemble,
        pool: torch.Tensor,
        remaining: torch.Tensor,
        count: int,
        generator: torch.Generator,
    ) -> torch.Tensor | None:
        _, spread = ensemble.predict(pool[remaining])
        above = spread > tolerance
        candidates = remaining.nonzero().squeeze(1)[above]
        if candidates.numel() == 0:
            return None
        draws = torch.multinomial(
            spread[above].double(), min(count, candidates.numel()), generator=generator
        )
        return candidates[draws]

    return _query_loop(oracle, pool, x_test, y_test, uncertain, **options)


def random_sampling(
    oracle: Predictor,
    pool: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    **options: Unpack[QueryOptions],
) -> LearningCurve:
    """The baseline: the same rounds, labelling random pool points (options:
    :class:`QueryOptions`)."""

    def anywhere(
        ensemble: Ensemble,
        pool: torch.Tensor,
        remaining: torch.Tensor,
        count: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        candidates = remaining.nonzero().squeeze(1)
        return candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]

    return _query_loop(oracle, pool, x_test, y_test, anywhere, **options)
