"""An independent checker of lipguard certificates (dense ℓ2 networks; milestones 1 and 2).

It re-proves a certificate's Lipschitz upper bound and its witnessed lower bound from the weights
file (safetensors) and the certificate's ``checkable`` section, with numpy, :mod:`fractions` and
mpmath only: no torch, no solver, no other lipguard module. See ``docs/checker.md``.

    >>> result = check("model.safetensors", "certificate.json")  # doctest: +SKIP
    >>> result.accepted, result.reasons

Command line: ``python -m lipguard.check WEIGHTS CERTIFICATE`` (exit 0 accepted, 1 rejected,
2 bad input).
"""

from lipguard.check.checker import FORMAT, CheckInputError, CheckResult, check, claims_sha256

__all__ = ["FORMAT", "CheckInputError", "CheckResult", "check", "claims_sha256"]
