"""Deprecated spellings kept for one release: old names of objects and of keywords.

Each use warns with a :class:`DeprecationWarning` that names the replacement.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(old: str, new: str) -> None:
    """Warn the caller's caller that ``old`` is now spelled ``new``."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


def module_getattr(module: str, renamed: Mapping[str, tuple[str, object]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves ``renamed[old] = (new name, object)`` with a
    warning and raises ``AttributeError`` for anything else."""

    def __getattr__(name: str) -> Any:
        if name not in renamed:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, value = renamed[name]
        warn_renamed(f"{module}.{name}", new)
        return value

    return __getattr__


def renamed_keyword(old: str, new: str) -> Callable[[F], F]:
    """Let callers still pass keyword ``old`` for ``new`` (with a warning); both is an error."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{function.__name__}() got both {old!r} and {new!r}")
                warn_renamed(f"the keyword {old}=", f"{new}=")
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return cast(F, wrapper)  # functools.wraps keeps the signature, but types it _Wrapped

    return decorate
