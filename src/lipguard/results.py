"""Typed results: a sound bound is a type, never a bare float."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


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
            raise ValueError(f"a Lipschitz bound must be >= 0, got {self.value}")
        if self.norm not in (1.0, 2.0, math.inf):
            raise ValueError(f"norm must be 1, 2 or inf, got {self.norm}")

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        kind = "sound" if self.sound else "heuristic"
        norm = "inf" if self.norm == math.inf else f"{self.norm:g}"
        return f"L <= {self.value:.9g} (ℓ{norm}, {self.method}, {self.scope}, {kind})"
