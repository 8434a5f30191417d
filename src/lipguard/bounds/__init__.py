"""Lipschitz bounds: sound upper bounds, witnessed lower bounds, certificates (SPEC B1–B6).

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
from lipguard.bounds.envelope import (
    ENVELOPE_METHODS,
    EnvelopeMethod,
    ErrorEnvelope,
    error_envelope,
    plot_envelope,
)
from lipguard.bounds.graph import register_module
from lipguard.bounds.lower import LipschitzLowerBound, lipschitz_lower_bound
from lipguard.bounds.quadratic import (
    DecisionCertificate,
    ExtremeBound,
    QuadraticBounds,
    QuadraticForm,
    QuadraticNetwork,
    certify_decision,
    margin_form,
    quadratic_bounds,
    quadratic_forms,
    quadratic_minimum,
    verify_lower_bound,
)
from lipguard.errors import CertificateError, CertificationError, SolverError
from lipguard.results import LipschitzBound, Report

__all__ = [
    "ENVELOPE_METHODS",
    "METHODS",
    "BlockMethod",
    "Certificate",
    "CertificateError",
    "CertificationError",
    "DecisionCertificate",
    "EnvelopeMethod",
    "ErrorEnvelope",
    "ExtremeBound",
    "LipschitzBound",
    "LipschitzLowerBound",
    "Method",
    "QuadraticBounds",
    "QuadraticForm",
    "QuadraticNetwork",
    "SolverError",
    "architecture_sha256",
    "block_lipschitz_bounds",
    "certify",
    "certify_decision",
    "error_envelope",
    "exact_lipschitz",
    "lipschitz_bound",
    "lipschitz_lower_bound",
    "local_lipschitz_bound",
    "margin_form",
    "plot_envelope",
    "quadratic_bounds",
    "quadratic_forms",
    "quadratic_minimum",
    "register_module",
    "verify_lower_bound",
    "weights_sha256",
]

__getattr__ = module_getattr(__name__, {"Verification": ("lipguard.results.Report", Report)})
