"""Vector norms by name: the input norm ``p`` of a Lipschitz bound and its dual ``q``."""

from __future__ import annotations

import math

from lipguard.errors import InvalidArgumentError

_NAMES = {"1": 1.0, "l1": 1.0, "2": 2.0, "l2": 2.0, "inf": math.inf, "linf": math.inf}


def parse_norm(norm: float | int | str) -> float:
    """Return the norm order as a float in ``{1.0, 2.0, inf}``; accepts 1, 2, inf and
    the strings ``"1"``, ``"2"``, ``"inf"``, ``"l1"``, ``"l2"``, ``"linf"``."""
    value = _NAMES.get(norm.lower()) if isinstance(norm, str) else norm
    if isinstance(value, bool) or value not in (1, 2, math.inf):
        raise InvalidArgumentError(f"norm must be 1, 2 or inf, got {norm!r}")
    return float(value)


def dual_norm(norm: float | int | str) -> float:
    """The dual order ``q`` with ``1/p + 1/q = 1``: 1 ↔ inf, 2 ↔ 2."""
    p = parse_norm(norm)
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]
