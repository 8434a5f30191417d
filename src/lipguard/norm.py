"""Vector norms: :class:`Norm`, the one spelling of an input norm ``p`` and its dual ``q``.

Every public function that takes a norm accepts a :class:`Norm` or the plain spellings
``1``, ``2``, ``math.inf`` and the strings ``"1"``, ``"2"``, ``"inf"``, ``"l1"``, ``"l2"``,
``"linf"``; :meth:`Norm.parse` turns any of them into a :class:`Norm`.
"""

from __future__ import annotations

import math
import numbers
from typing import Union

import torch

from lipguard.errors import InvalidArgumentError

_NAMES = {"1": 1.0, "l1": 1.0, "2": 2.0, "l2": 2.0, "inf": math.inf, "linf": math.inf}
_DUALS = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}


class Norm(float):
    """The vector norm ``ℓp`` for ``p`` in ``{1, 2, ∞}``: a float equal to ``p``.

    Being the number ``p`` itself, a :class:`Norm` goes wherever a norm order did
    (``norm == math.inf``, arithmetic, JSON) and adds ``dual`` (the norm ``q`` with
    ``1/p + 1/q = 1``), ``name`` (its spelling in files and on the command line: ``"1"``,
    ``"2"``, ``"inf"``) and ``label`` (its spelling for people: ``"ℓ1"``, ``"ℓ2"``, ``"ℓ∞"``,
    also its ``str``).
    """

    __slots__ = ()

    def __new__(cls, p: float) -> Norm:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or float(p) not in _DUALS:
            raise InvalidArgumentError(f"norm must be 1, 2 or inf, got {p!r}")
        return super().__new__(cls, float(p))

    @classmethod
    def parse(cls, value: NormLike) -> Norm:
        """The :class:`Norm` a user's spelling names; refuses anything but 1, 2 and inf."""
        if isinstance(value, Norm):
            return value
        if isinstance(value, str):
            if value.lower() not in _NAMES:
                raise InvalidArgumentError(f"norm must be 1, 2 or inf, got {value!r}")
            return cls(_NAMES[value.lower()])
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidArgumentError(f"norm must be 1, 2 or inf, got {value!r}")
        return cls(value)

    @property
    def p(self) -> float:
        """The order ``p`` as a plain float."""
        return float(self)

    @property
    def dual(self) -> Norm:
        """The dual norm: ℓ1 ↔ ℓ∞, ℓ2 ↔ ℓ2."""
        return Norm(_DUALS[float(self)])

    @property
    def name(self) -> str:
        """``"1"``, ``"2"`` or ``"inf"``: the spelling in JSON files and CLI options."""
        return "inf" if self == math.inf else f"{float(self):g}"

    @property
    def label(self) -> str:
        """``"ℓ1"``, ``"ℓ2"`` or ``"ℓ∞"``: the spelling in tables and reports."""
        return "ℓ∞" if self == math.inf else f"ℓ{float(self):g}"

    def of(self, x: torch.Tensor) -> torch.Tensor:
        """The norm of each sample of a batch (every dimension after the first)."""
        return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), ord=float(self), dim=1)

    def __repr__(self) -> str:
        return f"Norm({self.name!r})"

    def __str__(self) -> str:
        return self.label


#: anything :meth:`Norm.parse` accepts
NormLike = Union[Norm, float, int, str]  # noqa: UP007 (a runtime alias, evaluated on import)

L1 = Norm(1.0)
L2 = Norm(2.0)
LINF = Norm(math.inf)


def parse_norm(norm: NormLike) -> float:
    """The order ``p`` of a norm as a float in ``{1.0, 2.0, inf}`` (for arithmetic)."""
    return Norm.parse(norm).p


def dual_norm(norm: NormLike) -> float:
    """The dual order ``q`` with ``1/p + 1/q = 1``: 1 ↔ inf, 2 ↔ 2."""
    return Norm.parse(norm).dual.p
