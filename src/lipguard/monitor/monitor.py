"""The runtime Lipschitz monitor (SPEC G1–G5).

:class:`LipschitzMonitor` watches a stream of (state, reward) observations from a deployed reward
or value model and raises alarms when the promised smoothness fails:

- **pair violations**: ``|r - r'| > L·d(s, s') + tolerance`` between each new observation and
  the sliding window of recent ones, the reference set (e.g. training states) and the rest of
  its batch, exactly (:mod:`lipguard.monitor.pairs`), ignoring pairs closer than the noise floor.
  The default ``tolerance="auto"`` is each pair's floating-point slack
  (:mod:`lipguard.monitor.rounding`): a model that computes a certified function in float32
  never raises a violation on its own rounding;
- **safety envelope**: a state further than ``envelope_radius`` from every reference state;
- **model checks** (when ``model`` is given): an input gradient above ``L`` at an observed state,
  and the model's weights changed since the certificate (sha256) — re-certification required;
- **drift**: Page–Hinkley and ADWIN on the violation indicator and on the observed ratio.

Every event goes to the audit store (if any), to the callbacks and to Python logging.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree
from torch import nn

from lipguard import _checks
from lipguard._gradients import input_gradient_norms
from lipguard._placement import placement
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.monitor.drift import ADWIN, PageHinkley
from lipguard.monitor.pairs import Columns, PairViolations, PoolIndex, find_violations
from lipguard.monitor.rounding import FloatingPointSlack, reward_dtype
from lipguard.monitor.store import AuditStore
from lipguard.monitor.window import Pool, SlidingWindow, all_finite
from lipguard.norm import L2, Norm, NormLike, parse_norm

logger = logging.getLogger("lipguard.monitor")

#: states, rewards, bounds ``L(s)``, ids (steps or reference indices) and slacks of a pool
_Pool = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
#: the violations found against one pool: its name, its ids and the pairs
_Found = tuple[str, np.ndarray, PairViolations]


#: what a monitor event is about
EventKind = Literal["violation", "out_of_envelope", "gradient", "weights_changed", "drift"]
#: every event kind, in a fixed order (the values of :data:`EventKind`)
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


@dataclass(frozen=True)
class Event:
    """One finding. ``kind``: ``violation``, ``out_of_envelope``, ``gradient``,
    ``weights_changed`` or ``drift``; ``step`` is the stream index of the observation."""

    kind: EventKind
    step: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """What one :meth:`LipschitzMonitor.observe` call found."""

    events: list[Event]

    @property
    def violations(self) -> list[Event]:
        return [e for e in self.events if e.kind == "violation"]

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


class LipschitzMonitor:
    """Check a reward stream against a Lipschitz bound.

    Args:
        lipschitz: the bound ``L``, or a function ``states (N, d) -> L(s) (N,)`` for
            state-dependent bounds (a pair uses the larger of its two bounds).
        norm: 2 or ``inf``, the state distance.
        window: how many recent observations new ones are compared with.
        reference: states and rewards to compare every observation with, e.g. training data
            ``(states, rewards)``; also defines the safety envelope.
        tolerance: ``"auto"`` (default): each observation's floating-point slack — the
            rounding of its reward in the reward's dtype and, with ``model``, a proven bound on
            the model's forward-pass rounding (:mod:`lipguard.monitor.rounding`); the gradient
            check allows a relative ``2·Σγ`` of the backward pass. A number: a fixed slack added
            to every bound (reward noise), with no floating-point allowance (``0`` is exact).
        noise_floor: pairs closer than this are ignored (sensor noise).
        envelope_radius: alarm when a state is further than this from every reference state.
        model: the reward model, for gradient checks at observed states and weight hashes.
        weights_sha256: the certificate's weight hash; a different hash of ``model`` is an alarm.
        store: an :class:`AuditStore` (or a path / URL to open one) for every event.
        callbacks: functions called with each :class:`Event`.
        drift: run Page–Hinkley and ADWIN on the violation indicator and the observed ratio.
        pairs: ``"all"`` reports every violating pair; ``"worst"`` one event per offending
            observation, its pair with the largest ratio, with the number of violating pairs
            (``details["pairs"]``) — a bounded audit log when a fault makes everything violate.
    """

    def __init__(
        self,
        lipschitz: float | Callable[[np.ndarray], np.ndarray],
        norm: NormLike = L2,
        *,
        window: int = 1024,
        reference: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor] | None = None,
        tolerance: float | str = "auto",
        noise_floor: float = 0.0,
        envelope_radius: float | None = None,
        model: nn.Module | None = None,
        weights_sha256: str | None = None,
        store: AuditStore | str | None = None,
        callbacks: Sequence[Callable[[Event], None]] = (),
        drift: bool = True,
        pairs: str = "all",
    ) -> None:
        if pairs not in ("all", "worst"):
            raise InvalidArgumentError(f"pairs must be 'all' or 'worst', got {pairs!r}")
        self.pairs = pairs
        #: ``L(s)``, or ``None`` for the constant bound ``_constant`` (checked once, here)
        self._bound_of = lipschitz if callable(lipschitz) else None
        self._constant = (
            0.0 if callable(lipschitz) else _checks.positive_float("lipschitz", lipschitz)
        )
        self.norm = parse_norm(norm)
        if self.norm not in (2.0, math.inf):
            raise InvalidArgumentError("the monitor measures distances in ℓ2 or ℓ∞")
        self.window = _checks.positive_int("window", window)
        self.automatic = isinstance(tolerance, str)
        if self.automatic and tolerance != "auto":
            raise InvalidArgumentError(f"tolerance must be 'auto' or a number, got {tolerance!r}")
        self.tolerance = 0.0 if self.automatic else float(tolerance)
        self.noise_floor = float(noise_floor)
        if not (self.tolerance >= 0 and self.noise_floor >= 0) or not math.isfinite(
            self.tolerance + self.noise_floor
        ):
            raise InvalidArgumentError("tolerance and noise_floor must be finite and >= 0")
        if envelope_radius is not None:
            envelope_radius = _checks.positive_float("envelope_radius", envelope_radius)
        self.envelope_radius = envelope_radius
        self.model = model
        self._slack = FloatingPointSlack(model, self.norm) if self.automatic else None
        self.weights_sha256 = weights_sha256
        self.store = AuditStore(store) if isinstance(store, (str, Path)) else store
        self.callbacks = list(callbacks)
        self.step = 0
        self._window = SlidingWindow(self.window)  # with L(s) and slacks, computed once
        self._reference: tuple[np.ndarray, np.ndarray, np.ndarray, PoolIndex, np.ndarray] | None
        self._reference = None
        self._envelope_tree: cKDTree | None = None
        if reference is not None:
            states, rewards = (np.asarray(_numpy(a), dtype=np.float64) for a in reference)
            if states.ndim != 2 or rewards.shape != (len(states),):
                raise ShapeError("reference must be (states (N, d), rewards (N,))")
            if not (np.isfinite(states).all() and np.isfinite(rewards).all()):
                raise InvalidArgumentError("reference states and rewards must be finite")
            bounds = self._bounds_at(states)
            slacks = self._slacks_of(states, rewards, reference[1], bounds)
            self._reference = (states, rewards, bounds, PoolIndex(states), slacks)
            self._envelope_tree = cKDTree(states) if envelope_radius is not None else None
        elif envelope_radius is not None:
            raise InvalidArgumentError("a safety envelope needs reference states")
        self._detectors: dict[str, PageHinkley | ADWIN] = (
            {
                "violations/page-hinkley": PageHinkley(delta=0.005, threshold=20.0),
                "violations/adwin": ADWIN(clock=128),  # window checks off the hot path
                "ratio/adwin": ADWIN(clock=128),
            }
            if drift
            else {}
        )
        if self.store is not None:
            self.store.append([("monitor_started", self._settings(lipschitz))])

    def _settings(self, lipschitz: float | Callable[[np.ndarray], np.ndarray]) -> dict[str, object]:
        """What the audit trail records about this monitor when it starts."""
        settings: dict[str, object] = {
            "lipschitz": "state-dependent" if callable(lipschitz) else float(lipschitz),
            "norm": Norm(self.norm).name,
            "window": self.window,
            "tolerance": "auto" if self.automatic else self.tolerance,
            "noise_floor": self.noise_floor,
            "envelope_radius": self.envelope_radius,
            "pairs": self.pairs,
            "weights_sha256": self.weights_sha256,
            "reference": None,
        }
        if self._reference is not None:
            states, rewards = self._reference[:2]
            digest = hashlib.sha256(states.tobytes() + rewards.tobytes()).hexdigest()
            settings["reference"] = {"count": len(states), "sha256": digest}
        return settings

    def _slacks_of(
        self, states: np.ndarray, rewards: np.ndarray, given: object, bounds: np.ndarray
    ) -> np.ndarray:
        if self._slack is None:
            return np.zeros(len(states))
        dtype = reward_dtype(given, self.model)
        return self._slack.observations(states, rewards, dtype, bounds)

    def observe(
        self, states: ArrayLike | torch.Tensor, rewards: ArrayLike | torch.Tensor
    ) -> Observation:
        """Check a batch of observations (states ``(N, d)``, rewards ``(N,)``) and remember them.

        Transactional: the batch's events and its summary record are appended to the audit
        store first, and only then does the monitor advance (step counter, window, drift
        detectors); if anything raises — the store included — its state is unchanged and the
        same batch can be observed again."""
        given = rewards
        rewards = np.asarray(_numpy(rewards), dtype=np.float64).reshape(-1)
        batch = np.asarray(_numpy(states))
        if batch.ndim != 2 or len(rewards) != len(batch):
            raise ShapeError("observe needs states (N, d) and one reward per state")
        if len(batch) == 0:
            return Observation([])
        if not all_finite(rewards):
            raise InvalidArgumentError("observations must be finite")
        states = self._window.stage(batch)  # float64, in the window's room, checked
        steps = self.step + np.arange(len(states))
        bounds = self._bounds_at(states)
        slacks = self._slacks_of(states, rewards, given, bounds)
        pool = self._window.pool(rewards, bounds, steps, slacks)
        worst_ratio = np.zeros(len(states))
        events = self._violations(
            self._pair_search(states, rewards, bounds, slacks, pool), steps, worst_ratio
        )
        events += self._envelope(states, steps)
        events += self._model_checks(states, steps, bounds)
        detectors = {name: detector.copy() for name, detector in self._detectors.items()}
        events += self._drift(detectors, steps, worst_ratio, bounds)
        if self.store is not None:
            summary = _summary(states, rewards, steps, worst_ratio, events)
            self.store.append(
                [(e.kind, {"step": e.step, **e.details}) for e in events] + [("batch", summary)]
            )
        self._detectors = detectors
        self._window.commit(pool)
        self.step += len(states)
        self._emit(events)
        return Observation(events)

    def _bounds_at(self, states: np.ndarray) -> np.ndarray:
        """``L(s)`` for every state, checked: finite and > 0 (a NaN bound would silence every
        pair it is in)."""
        if self._bound_of is None:
            return np.full(len(states), self._constant)
        bounds = np.asarray(self._bound_of(states), dtype=np.float64)
        if bounds.shape != (len(states),):
            raise ShapeError(f"L(s) must return one bound per state, got shape {bounds.shape}")
        if not (np.isfinite(bounds).all() and (bounds > 0).all()):
            raise InvalidArgumentError("L(s) returned a bound that is not finite and > 0")
        return bounds

    def _pair_search(
        self,
        states: np.ndarray,
        rewards: np.ndarray,
        bounds: np.ndarray,
        slacks: np.ndarray,
        recent: Pool,
    ) -> list[_Found]:
        """Violating pairs against the window and the batch itself (one search over ``recent``,
        the window followed by the batch: each pair within the batch checked once) and the
        reference set."""
        pools: list[tuple[_Pool, PoolIndex | Columns, bool]] = [
            (
                (recent.states, recent.rewards, recent.bounds, recent.steps, recent.slacks),
                recent.columns,
                True,
            )
        ]
        if self._reference is not None:
            ref_states, ref_rewards, ref_bounds, ref_index, ref_slacks = self._reference
            ids = np.arange(len(ref_states))
            pools.append(((ref_states, ref_rewards, ref_bounds, ids, ref_slacks), ref_index, False))
        remembered = len(recent.states) - len(states)
        constant = self._bound_of is None  # one L for every pair: no per-pair maximum
        found_by_pool: list[_Found] = []
        for pool, pool_index, within in pools:
            pool_states, pool_rewards, pool_bounds, pool_ids, pool_slacks = pool
            found = find_violations(
                states,
                rewards,
                pool_states,
                pool_rewards,
                self._constant if constant else bounds,
                pool_lipschitz=None if constant else pool_bounds,
                norm=self.norm,
                tolerance=self.tolerance,
                noise_floor=self.noise_floor,
                index=pool_index,
                exclude_self=within,
                self_offset=remembered,
                slack=slacks,
                pool_slack=pool_slacks,
                worst=self.pairs == "worst",
            )
            if within:  # reported as against the window or the batch, as before
                earlier = found.second < remembered
                found_by_pool.append(("window", pool_ids, found.select(earlier)))
                found_by_pool.append(("batch", pool_ids, found.select(~earlier)))
            else:
                found_by_pool.append(("reference", pool_ids, found))
        return found_by_pool

    def _violations(
        self, found_by_pool: list[_Found], steps: np.ndarray, worst_ratio: np.ndarray
    ) -> list[Event]:
        """Violation events (every pair, or each observation's worst) and, in place, each new
        observation's largest observed ratio."""
        # (pool name, pool ids, found, ratios, positions, pair counts or None)
        chosen: list[
            tuple[str, np.ndarray, PairViolations, np.ndarray, np.ndarray, np.ndarray | None]
        ] = []
        if not any(len(found.first) for _, _, found in found_by_pool):
            return []
        ratios = []
        for _, _, found in found_by_pool:
            safe = np.where(found.distance > 0, found.distance, 1.0)
            ratio = np.where(found.distance > 0, found.difference / safe, math.inf)
            np.maximum.at(worst_ratio, found.first, ratio)
            ratios.append(ratio)
        if self.pairs == "all":
            for (name, pool_ids, found), ratio in zip(found_by_pool, ratios, strict=True):
                chosen.append((name, pool_ids, found, ratio, np.arange(len(ratio)), None))
        elif found_by_pool:
            first = np.concatenate([found.first for _, _, found in found_by_pool])
            ratio = np.concatenate(ratios)
            pool = np.concatenate([np.full(len(r), k) for k, r in enumerate(ratios)])
            position = np.concatenate([np.arange(len(r)) for r in ratios])
            order = np.lexsort((-ratio, first))  # by observation, then the largest ratio first
            heads = (
                order[np.r_[True, first[order][1:] != first[order][:-1]]] if len(order) else order
            )
            counts = np.zeros(len(steps), dtype=np.int64)
            for _, _, found in found_by_pool:  # each pool reported its worst pair and count
                counts[found.first] += found.count
            for k, (name, pool_ids, found) in enumerate(found_by_pool):
                picked = heads[pool[heads] == k]
                chosen.append((name, pool_ids, found, ratio[picked], position[picked], counts))
        events = []
        for name, pool_ids, found, pair_ratios, positions, pair_counts in chosen:
            for r, p in zip(pair_ratios, positions, strict=True):
                i = found.first[p]
                details: dict[str, object] = {
                    "against": name,
                    "other": int(pool_ids[found.second[p]]),
                    "distance": float(found.distance[p]),
                    "reward_difference": float(found.difference[p]),
                    "bound": float(found.bound[p]),
                    "ratio": float(r),
                }
                if pair_counts is not None:
                    details["pairs"] = int(pair_counts[i])
                events.append(Event("violation", int(steps[i]), details))
        return sorted(events, key=lambda e: e.step) if self.pairs == "worst" else events

    def _envelope(self, states: np.ndarray, steps: np.ndarray) -> list[Event]:
        if self.envelope_radius is None or self._envelope_tree is None:
            return []
        distance, _ = self._envelope_tree.query(states, p=self.norm)
        outside = np.nonzero(distance > self.envelope_radius)[0]
        return [
            Event(
                "out_of_envelope",
                int(steps[i]),
                {"distance": float(distance[i]), "radius": self.envelope_radius},
            )
            for i in outside
        ]

    def _model_checks(
        self, states: np.ndarray, steps: np.ndarray, bounds: np.ndarray
    ) -> list[Event]:
        if self.model is None:
            return []
        events = []
        if self.weights_sha256 is not None:
            from lipguard.bounds import weights_sha256

            current = weights_sha256(self.model)
            if current != self.weights_sha256:
                events.append(
                    Event(
                        "weights_changed",
                        int(steps[0]),
                        {
                            "certified": self.weights_sha256,
                            "current": current,
                            "action": "re-certification required",
                        },
                    )
                )
        where = placement(self.model)
        points = torch.as_tensor(states, dtype=where.dtype, device=where.device)
        points.requires_grad_(True)
        with torch.enable_grad(), _checks.evaluating(self.model):
            outputs = self.model(points).reshape(len(states), -1)[:, 0]
            norms = input_gradient_norms(outputs, points, self.norm).cpu().numpy()
        factor = self._slack.gradient_factor() if self._slack is not None else 0.0
        for i in np.nonzero(norms > bounds * (1 + factor) + self.tolerance)[0]:
            events.append(
                Event(
                    "gradient",
                    int(steps[i]),
                    {"gradient_norm": float(norms[i]), "bound": float(bounds[i])},
                )
            )
        return events

    @staticmethod
    def _drift(
        detectors: dict[str, PageHinkley | ADWIN],
        steps: np.ndarray,
        worst_ratio: np.ndarray,
        bounds: np.ndarray,
    ) -> list[Event]:
        indicator = (worst_ratio > bounds).astype(np.float64)
        events = []
        for name, detector in detectors.items():
            values = indicator if name.startswith("violations") else worst_ratio / bounds
            for index in detector.update_many(values):
                events.append(Event("drift", int(steps[index]), {"detector": name}))
        return sorted(events, key=lambda e: e.step)

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            level = logging.INFO if event.kind == "violation" else logging.WARNING
            logger.log(level, "%s at step %d: %s", event.kind, event.step, event.details)
            for callback in self.callbacks:
                callback(event)


def _summary(
    states: np.ndarray,
    rewards: np.ndarray,
    steps: np.ndarray,
    worst_ratio: np.ndarray,
    events: list[Event],
) -> dict[str, object]:
    """The audit record of one checked batch: it shows the operation, not only the alarms."""
    digest = hashlib.sha256(states.tobytes() + rewards.tobytes()).hexdigest()
    worst = float(worst_ratio.max())
    return {
        "step": int(steps[0]),
        "count": len(steps),
        "sha256": digest,
        "worst_violation_ratio": worst if worst > 0 else None,
        "events": dict(Counter(event.kind for event in events)),
    }


def _numpy(values: ArrayLike | torch.Tensor) -> ArrayLike:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return values
