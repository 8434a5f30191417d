"""Lipschitz bounds: sound upper bounds, witnessed lower bounds, certificates (SPEC B1–B5).

Upper bounds are :class:`LipschitzBound` values with ``sound=True``: they hold for every pair
of inputs, floating-point rounding included. Lower bounds carry the witness inputs that realise
them. See ``docs/bounds.md``.
"""

from lipguard._deprecation import module_getattr
from lipguard.bounds.api import (
    METHODS,
    BlockMethod,
    Method,
    block_lipschitz_bounds,
    exact_lipschitz,
    lipschitz_bound,
    local_lipschitz_bound,
)
from lipguard.bounds.certificate import (
    Certificate,
    architecture_sha256,
    certify,
    weights_sha256,
)
from lipguard.bounds.graph import register_module
from lipguard.bounds.lower import LipschitzLowerBound, lipschitz_lower_bound
from lipguard.errors import CertificateError, CertificationError, SolverError
from lipguard.results import LipschitzBound, Report

__all__ = [
    "METHODS",
    "BlockMethod",
    "Certificate",
    "CertificateError",
    "CertificationError",
    "LipschitzBound",
    "LipschitzLowerBound",
    "Method",
    "SolverError",
    "architecture_sha256",
    "block_lipschitz_bounds",
    "certify",
    "exact_lipschitz",
    "lipschitz_bound",
    "lipschitz_lower_bound",
    "local_lipschitz_bound",
    "register_module",
    "weights_sha256",
]

__getattr__ = module_getattr(__name__, {"Verification": ("lipguard.results.Report", Report)})
