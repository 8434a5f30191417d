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


class PerInputNoiseError(LipguardError, ValueError):
    """A noise covariance chosen per input: unsound without memory-based certification."""


class SolverError(LipguardError, RuntimeError):
    """The SDP solver failed to return a usable solution."""


class CertificateError(LipguardError, ValueError):
    """A certificate file is malformed or was edited after it was made."""


class CertificationError(LipguardError, RuntimeError):
    """A requested method could not prove a bound (e.g. the SDP solution failed verification)."""


class UnregisteredModuleError(UnsupportedModuleError):
    """The registry has no handler for a module type (the tracing front end may read it)."""


class DivergenceError(LipguardError, RuntimeError):
    """Training diverged (NaN or exploding loss); the model holds the last good weights."""


class AuditError(LipguardError, RuntimeError):
    """The audit store cannot be opened or written (bad URL, unreachable server, unwritable
    file, not an audit log, wrong or missing key, lock contention that did not clear)."""
