"""Typed results: a sound bound is a type, never a bare float; a list of checks is a
:class:`Report` of :class:`Check` values, never a dict of booleans or a list of strings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from lipguard.errors import InvalidArgumentError
from lipguard.norm import Norm

#: the outcome of one check: ``"fail"`` makes a report fail, ``"warn"`` flags it
Verdict = Literal["pass", "fail", "warn", "skipped"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)


def json_field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``data[key]`` of a JSON object if it has type ``kind`` (a bool is not a number here);
    otherwise an :class:`InvalidArgumentError` naming ``what`` and the field."""
    value = data.get(key)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise InvalidArgumentError(f"{what}: field {key!r} is missing or of the wrong type")
    return value


def finite_field(data: Mapping[str, Any], key: str, what: str) -> float:
    """``data[key]`` as a float if it is a finite JSON number."""
    value = json_field(data, key, (int, float), what)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{what}: field {key!r} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LipschitzBound:
    """An upper bound on a Lipschitz constant, with what it means.

    Attributes:
        value: the bound ``L`` in ``|f(x) - f(y)| <= L·||x - y||``.
        norm: the input norm ``p`` (2 or ``math.inf``); the output norm is ℓ2 for vector outputs
            unless ``method`` says otherwise.
        method: how the bound was obtained (e.g. ``"spectral-certificate"``, ``"product"``).
        scope: ``"global"`` or a description of the region where it holds.
        sound: True when the bound is proven for every input, floating-point rounding included.
        margin: relative floating-point margin already included in ``value``.
        details: method-specific data that lets the bound be re-checked (e.g. LipSDP's ``ρ`` and
            multipliers); not part of equality.
    """

    value: float
    norm: float
    method: str
    scope: str = "global"
    sound: bool = True
    margin: float = 0.0
    details: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.value >= 0.0):
            raise InvalidArgumentError(f"a Lipschitz bound must be >= 0, got {self.value}")
        object.__setattr__(self, "norm", Norm.parse(self.norm).p)

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        kind = "sound" if self.sound else "heuristic"
        label = Norm(self.norm).label
        return f"L <= {self.value:.9g} ({label}, {self.method}, {self.scope}, {kind})"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``details`` as they are (JSON-ready for every method
        :func:`~lipguard.bounds.certify` uses)."""
        return {
            "value": self.value,
            "norm": Norm(self.norm).name,
            "method": self.method,
            "scope": self.scope,
            "sound": self.sound,
            "margin": self.margin,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: object, what: str = "bound") -> LipschitzBound:
        """The bound :meth:`to_dict` wrote; a missing or mistyped field is refused by name."""
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"{what}: expected an object")
        value = finite_field(data, "value", what)
        margin = finite_field(data, "margin", what)
        if margin < 0:
            raise InvalidArgumentError(f"{what}: margin must be >= 0")
        details = data.get("details")
        if details is not None and not isinstance(details, dict):
            raise InvalidArgumentError(f"{what}: field 'details' must be an object or null")
        return cls(
            value=float(value),
            norm=Norm.parse(data.get("norm", "")).p,
            method=json_field(data, "method", str, what),
            scope=json_field(data, "scope", str, what),
            sound=json_field(data, "sound", bool, what),
            margin=float(margin),
            details=details,
        )


@dataclass(frozen=True)
class Check:
    """One named check and its outcome; ``detail`` says what was measured or what failed."""

    name: str
    verdict: Verdict
    detail: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise InvalidArgumentError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @classmethod
    def of(cls, name: str, ok: bool, detail: str = "") -> Check:
        """``pass`` when ``ok``, else ``fail``."""
        return cls(name, "pass" if ok else "fail", detail)

    @property
    def passed(self) -> bool:
        """True unless the verdict is ``fail``."""
        return self.verdict != "fail"

    def __str__(self) -> str:
        return f"{self.verdict}: {self.name}" + (f" ({self.detail})" if self.detail else "")

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "verdict": self.verdict, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: object) -> Check:
        if not isinstance(data, Mapping):
            raise InvalidArgumentError("check: expected an object")
        verdict = json_field(data, "verdict", str, "check")
        if verdict not in VERDICTS:
            raise InvalidArgumentError(f"check: verdict must be one of {VERDICTS}")
        detail = data.get("detail", "")
        if not isinstance(detail, str):
            raise InvalidArgumentError("check: field 'detail' must be a string")
        return cls(json_field(data, "name", str, "check"), cast(Verdict, verdict), detail)


@dataclass(frozen=True)
class Report:
    """What was checked, in order. ``ok`` (and ``bool(report)``) is True when no check failed;
    ``warn`` verdicts flag without failing."""

    checks: tuple[Check, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple(self.checks))

    @classmethod
    def of(cls, checks: Iterable[Check]) -> Report:
        return cls(tuple(checks))

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)

    @property
    def warnings(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.verdict == "warn")

    def __bool__(self) -> bool:
        return self.ok

    def verdict(self, name: str) -> Verdict:
        """The verdict of the check called ``name``."""
        for check in self.checks:
            if check.name == name:
                return check.verdict
        raise KeyError(name)

    def __str__(self) -> str:
        if not self.checks:
            return "(no checks)"
        width = max(len(check.name) for check in self.checks)
        return "\n".join(
            f"{check.verdict.upper():7} {check.name:<{width}}  {check.detail}".rstrip()
            for check in self.checks
        )

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [check.to_dict() for check in self.checks]}

    @classmethod
    def from_dict(cls, data: object) -> Report:
        if not isinstance(data, Mapping) or not isinstance(data.get("checks"), list):
            raise InvalidArgumentError("report: expected an object with a 'checks' list")
        return cls(tuple(Check.from_dict(item) for item in data["checks"]))
