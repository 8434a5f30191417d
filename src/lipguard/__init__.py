"""lipguard: smooth, provable reward and value models.

Build models whose Lipschitz constant is guaranteed (:mod:`lipguard.nn`), and get
typed, sound bounds for them (:mod:`lipguard.bounds`).
"""

__version__ = "0.1.0"

import logging

from lipguard import errors, linalg, nn
from lipguard.results import LipschitzBound

__all__ = ["LipschitzBound", "__version__", "errors", "linalg", "nn"]

# a library stays silent unless the application configures logging (the monitor logs events)
logging.getLogger("lipguard").addHandler(logging.NullHandler())
