"""Dataset-level certified accuracy: the fraction of test points classified correctly with a
certified radius of at least ``r``, as a function of ``r``, with a confidence interval.

Two sources of error are separated. Each certificate is wrong with probability at most ``α``
(the Monte-Carlo level of :meth:`SmoothedClassifier.certify`), so the *expected* fraction of
wrong certificates is at most ``α``. The test set is a sample of the data distribution, so the
empirical fraction estimates the population's certified accuracy; :func:`certified_accuracy`
gives an exact two-sided Clopper–Pearson interval for it at level ``confidence``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lipguard import _checks
from lipguard.errors import ShapeError
from lipguard.smoothing import stats as confidence
from lipguard.smoothing.classifier import ClassifierCertificates

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass(frozen=True)
class CertifiedAccuracyCurve:
    """Certified accuracy at each radius of ``radii`` (:func:`certified_accuracy`): the fraction
    of the ``count`` test points predicted correctly with a certified radius at least that
    large, and a two-sided Clopper–Pearson interval ``[lower, upper]`` at level ``confidence``
    over the test points; ``alpha`` is the smoothing certificates' own error probability."""

    radii: np.ndarray
    accuracy: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    count: int
    confidence: float
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "radii": self.radii.tolist(),
            "accuracy": self.accuracy.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "count": self.count,
            "confidence": self.confidence,
            "alpha": self.alpha,
        }


def certified_accuracy(
    certificates: ClassifierCertificates,
    labels: torch.Tensor,
    radii: Sequence[float] | np.ndarray,
    *,
    confidence_level: float = 0.95,
    equal_volume: bool = False,
) -> CertifiedAccuracyCurve:
    """Certified accuracy at each radius (ℓ2 inscribed radius, or the equal-volume radius for
    anisotropic noise) with a two-sided Clopper–Pearson interval over the test points."""
    level = _checks.probability("confidence_level", confidence_level)
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != certificates.prediction.shape:
        raise ShapeError(f"need one label per certificate ({certificates.prediction.shape[0]})")
    radius = (certificates.equal_volume_radius if equal_volume else certificates.radius).numpy()
    correct = (certificates.prediction == labels).numpy()
    grid = np.asarray(radii, dtype=np.float64)
    hits = np.array([(correct & (radius >= r)).sum() for r in grid])
    count = len(labels)
    tail = (1.0 - level) / 2
    return CertifiedAccuracyCurve(
        grid,
        hits / count,
        confidence.clopper_pearson_lower(hits, count, tail),
        confidence.clopper_pearson_upper(hits, count, tail),
        count,
        level,
        certificates.alpha,
    )


def plot_certified_accuracy(
    curves: Mapping[str, CertifiedAccuracyCurve],
    path: str | Path | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Plot certified-accuracy curves with their confidence bands; save to ``path`` if given.
    Returns the matplotlib axes."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        (line,) = ax.plot(curve.radii, curve.accuracy, label=name)
        ax.fill_between(curve.radii, curve.lower, curve.upper, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("ℓ2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        # the root figure (a SubFigure, which ``ax.figure`` may be, cannot be saved on its own)
        ax.figure.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax
