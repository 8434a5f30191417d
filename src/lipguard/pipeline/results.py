"""What each stage of ``lipguard run`` returns, and the whole run's :class:`RunResults`.

Every record is a frozen dataclass; ``to_dict()`` gives its part of ``results.json`` (JSON-ready:
tuples as lists) and ``from_dict()`` reads it back, so a report can be rendered again from a
saved ``results.json``. Per-model sections are keyed by :class:`~lipguard.pipeline.config.Reward`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self, TypeVar

from lipguard.errors import InvalidArgumentError
from lipguard.pipeline.config import Reward, RunConfig
from lipguard.results import Report

_T = TypeVar("_T")


def _json(value: Any) -> Any:
    """``value`` with every tuple a list (what ``json.loads`` gives back)."""
    if isinstance(value, tuple | list):
        return [_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    return value


def _tuples(value: Any) -> Any:
    """``value`` with every list a tuple (how the records hold sequences)."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(f"results: {what} must be an object")
    return data


@dataclass(frozen=True)
class _Record:
    """A flat record: its ``results.json`` form is its fields by name."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field by name, tuples as lists."""
        return {item.name: _json(getattr(self, item.name)) for item in fields(self)}

    @classmethod
    def from_dict(cls, data: object) -> Self:
        """The record :meth:`to_dict` wrote; a missing field is refused by name."""
        data = _object(data, cls.__name__)
        missing = [item.name for item in fields(cls) if item.name not in data]
        if missing:
            raise InvalidArgumentError(f"results: {cls.__name__} lacks {', '.join(missing)}")
        return cls(**{item.name: _tuples(data[item.name]) for item in fields(cls)})


@dataclass(frozen=True)
class DataSummary(_Record):
    """Stage 1's data (``results.json``: ``data``): transitions collected with random actions,
    split into training and held-out rows of ``features`` reward inputs ``(s, a)``; the observed
    reward range of the training rows (smoothing clips to it)."""

    transitions: int
    train_rows: int
    test_rows: int
    features: int
    reward_range: tuple[float, float]


@dataclass(frozen=True)
class RewardCertification(_Record):
    """Stage 2, one learned reward model (``rewards.<name>``): held-out MSE, the proven upper
    bound on its ℓ2 Lipschitz constant and the method that proved it, the witnessed lower bound
    (``None`` when no witness was found), the largest gradient on held-out data, and its
    certificate file with the hash of the weights it certifies."""

    test_mse: float
    certified_lipschitz: float
    certificate_method: str
    lower_bound: float | None
    max_gradient_on_data: float
    certificate: str
    weights_sha256: str


@dataclass(frozen=True)
class StressResult(_Record):
    """Stage 3, one learned reward model (``stress.<name>``): the largest and mean ``|Δr|`` PGD
    found at each ℓ2 budget in ``epsilons``, and randomized smoothing's certified interval width
    at ``smoothing_radius`` with the smoothed estimate's mean error on held-out rewards."""

    epsilons: tuple[float, ...]
    max_shift: tuple[float, ...]
    mean_shift: tuple[float, ...]
    smoothing_radius: float
    smoothed_interval_width: float
    smoothed_estimate_error: float


@dataclass(frozen=True)
class PolicyResult(_Record):
    """Stage 4, the policy trained on one reward (``policies.<name>``, ``true`` included): its
    true return, own-reward return and their gap (``None`` on the true reward), the largest
    reward gradient on the states it visited, the action change ``tau`` that counts as a
    discontinuity, its discontinuity rate at ``policy_eps`` and at each ``discontinuity_eps``
    (the curve), and its true return under random noise, MAD and a reward attack (``None`` for
    discrete actions)."""

    true_return: float
    own_reward_return: float | None
    reward_gap: float | None
    max_reward_gradient: float
    tau: float
    discontinuity_rate: float
    discontinuity_curve: tuple[float, ...]
    return_random: float
    return_mad: float
    return_reward_attack: float | None


@dataclass(frozen=True)
class TimelineRow:
    """The monitor's events of each kind in the batch ending at ``step``."""

    step: int
    events: Mapping[str, int]

    def count(self, kind: str) -> int:
        return self.events.get(kind, 0)

    def to_dict(self) -> dict[str, int]:
        """The JSON form: ``{"step": …, <kind>: <count>, …}``."""
        return {"step": self.step, **self.events}

    @classmethod
    def from_dict(cls, data: object) -> TimelineRow:
        row = dict(_object(data, "a timeline row"))
        return cls(int(row.pop("step")), row)


@dataclass(frozen=True)
class MonitorResult(_Record):
    """Stage 5 (``monitor``): alarms before the planted fault at ``fault_step`` (any kind); after
    it, the alarms raised by what the monitor observed (pair violations, input gradients), the
    first one and its delay (``None`` if the fault was missed: ``fault_detected`` counts these
    only), and apart from them the first weight-hash alarm (``None`` while the weights are
    unchanged, as the planted fault leaves them); event totals by kind and per batch; and the
    audit log: its path, record count, whether its chain verifies, and its head ``SEQ:HASH``."""

    fault_step: int
    false_alarms_before_fault: int
    alarms_after_fault: int
    first_alarm_after_fault: int | None
    detection_delay: int | None
    fault_detected: bool
    first_hash_alarm_after_fault: int | None
    events: Mapping[str, int]
    timeline: tuple[TimelineRow, ...]
    audit_path: str
    audit_records: int
    audit_verified: bool
    audit_head: str

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "timeline": [row.to_dict() for row in self.timeline]}

    @classmethod
    def from_dict(cls, data: object) -> Self:
        record = super().from_dict(data)
        timeline = tuple(TimelineRow.from_dict(row) for row in record.timeline)
        return dataclasses.replace(record, events=dict(record.events), timeline=timeline)


@dataclass(frozen=True)
class RunMeta(_Record):
    """When and with what the run ran (``meta``): UTC date, lipguard and torch versions, total
    and per-stage seconds."""

    date: str
    lipguard: str
    torch: str
    seconds: float
    stage_seconds: Mapping[str, float]


def _by_reward(data: object, read: Callable[[object], _T], what: str) -> dict[Reward, _T]:
    """A per-model section of ``results.json``, keyed by :class:`Reward`."""
    section = _object(data, what)
    unknown = sorted(set(section) - set(Reward))
    if unknown:
        raise InvalidArgumentError(f"results: unknown reward models in {what}: {unknown}")
    return {Reward(name): read(value) for name, value in section.items()}


@dataclass(frozen=True)
class RunResults:
    """Everything one run found, as ``results.json`` holds it: ``meta``, ``config``, ``data``
    (stage 1), ``rewards`` (2), ``stress`` (3), ``policies`` (4), ``monitor`` (5) and ``checks``
    (the run's acceptance checks, a :class:`~lipguard.results.Report`)."""

    meta: RunMeta
    config: RunConfig
    data: DataSummary
    rewards: Mapping[Reward, RewardCertification]
    stress: Mapping[Reward, StressResult]
    policies: Mapping[Reward, PolicyResult]
    monitor: MonitorResult
    checks: Report = field(default_factory=Report)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return self.checks.ok

    def to_dict(self) -> dict[str, Any]:
        """``results.json``."""
        return {
            "meta": self.meta.to_dict(),
            "config": self.config.to_dict(),
            "data": self.data.to_dict(),
            "rewards": {name: item.to_dict() for name, item in self.rewards.items()},
            "stress": {name: item.to_dict() for name, item in self.stress.items()},
            "policies": {name: item.to_dict() for name, item in self.policies.items()},
            "monitor": self.monitor.to_dict(),
            "checks": self.checks.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: object) -> RunResults:
        """The results :meth:`to_dict` wrote (a loaded ``results.json``)."""
        data = _object(data, "results.json")
        missing = [item.name for item in fields(cls) if item.name not in data]
        if missing:
            raise InvalidArgumentError(f"results: results.json lacks {', '.join(missing)}")
        return cls(
            meta=RunMeta.from_dict(data["meta"]),
            config=RunConfig.from_dict(_object(data["config"], "config"), "results.json"),
            data=DataSummary.from_dict(data["data"]),
            rewards=_by_reward(data["rewards"], RewardCertification.from_dict, "rewards"),
            stress=_by_reward(data["stress"], StressResult.from_dict, "stress"),
            policies=_by_reward(data["policies"], PolicyResult.from_dict, "policies"),
            monitor=MonitorResult.from_dict(data["monitor"]),
            checks=Report.from_dict(data["checks"]),
        )
