"""Errors raised by lipguard.

Every error is a :class:`LipguardError` and also a subclass of the built-in exception a caller
would expect (``ValueError`` for bad values, ``TypeError`` for unsupported types), so both
``except lipguard.errors.LipguardError`` and ``except ValueError`` work.
"""

from __future__ import annotations


class LipguardError(Exception):
    """Base class of all lipguard errors."""


class InvalidArgumentError(LipguardError, ValueError):
    """An argument has a value outside the accepted range (e.g. a Lipschitz target <= 0)."""


class NonFiniteError(LipguardError, ValueError):
    """A tensor that a guarantee depends on holds NaN or infinity."""


class ShapeError(LipguardError, ValueError):
    """A tensor has a shape the operation cannot accept."""


class UnsupportedModuleError(LipguardError, TypeError):
    """A module type lipguard cannot handle; it is never silently treated as 1-Lipschitz."""
