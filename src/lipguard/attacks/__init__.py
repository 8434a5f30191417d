"""Attacks on any model output: classifiers, rewards, preferences, policies (SPEC C1–C4).

Every attack is called as ``attack(model, x, objective)`` and returns an
:class:`AttackResult`; the template (:class:`Attack`) validates the inputs, runs the model in
eval mode, and projects the result into the :class:`ThreatModel` (norm ball, box, mask), so no
attack can return an out-of-budget point. See ``docs/attacks.md``.
"""

from lipguard._deprecation import module_getattr
from lipguard.attacks.base import Attack, AttackResult
from lipguard.attacks.blackbox import RandomNoise, Square, Transfer
from lipguard.attacks.curves import RobustnessCurve, plot_robustness_curve, robustness_curve
from lipguard.attacks.gradient import APGD, FGSM, PGD
from lipguard.attacks.masking import MaskingReport, masking_check
from lipguard.attacks.minimal import MinimalNorm
from lipguard.attacks.objectives import (
    DLR,
    ActionChange,
    BoundObjective,
    CrossEntropy,
    CustomObjective,
    Margin,
    Objective,
    PreferenceFlip,
    RewardShift,
)
from lipguard.attacks.sensitivity import (
    FeatureFlip,
    SubstitutionScan,
    feature_ranking,
    single_feature_flip,
    substitution_scan,
)
from lipguard.attacks.threat import ThreatModel
from lipguard.results import Check

__all__ = [
    "APGD",
    "DLR",
    "FGSM",
    "PGD",
    "ActionChange",
    "Attack",
    "AttackResult",
    "BoundObjective",
    "Check",
    "CrossEntropy",
    "CustomObjective",
    "FeatureFlip",
    "Margin",
    "MaskingReport",
    "MinimalNorm",
    "Objective",
    "PreferenceFlip",
    "RandomNoise",
    "RewardShift",
    "RobustnessCurve",
    "Square",
    "SubstitutionScan",
    "ThreatModel",
    "Transfer",
    "feature_ranking",
    "masking_check",
    "plot_robustness_curve",
    "robustness_curve",
    "single_feature_flip",
    "substitution_scan",
]

__getattr__ = module_getattr(
    __name__, {"masking_audit": ("lipguard.attacks.masking_check", masking_check)}
)
