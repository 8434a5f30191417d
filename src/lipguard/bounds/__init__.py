"""Lipschitz bounds: typed results that say whether they are sound."""

from lipguard.bounds.result import LipschitzBound

__all__ = ["LipschitzBound"]
