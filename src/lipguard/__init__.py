"""lipguard: smooth, provable reward and value models.

Build models whose Lipschitz constant is guaranteed (:mod:`lipguard.nn`), and get
typed, sound bounds for them (:mod:`lipguard.bounds`).
"""

#: the package version (also ``lipguard --version``)
__version__ = "0.1.0"

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lipguard import errors, linalg, nn
    from lipguard.results import LipschitzBound

__all__ = ["LipschitzBound", "__version__", "errors", "linalg", "nn"]

# a library stays silent unless the application configures logging (the monitor logs events)
logging.getLogger("lipguard").addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    """Import the core on first use, so that ``import lipguard.check`` (the independent
    checker) loads neither torch nor the rest of lipguard."""
    if name in ("errors", "linalg", "nn"):
        return importlib.import_module(f"lipguard.{name}")
    if name == "LipschitzBound":
        return importlib.import_module("lipguard.results").LipschitzBound
    raise AttributeError(f"module 'lipguard' has no attribute {name!r}")
