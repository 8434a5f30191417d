"""Lipschitz reward models and policies that cannot hack them (SPEC F1–F5).

Learn a reward from a Gymnasium environment (observed rewards or segment preferences), with a
guaranteed Lipschitz bound or without; train SB3 policies on it behind a learned-reward
``VecEnv`` (optionally pessimistic: ``r - L_local·ε``, or an ensemble's ``mean - k·std``); attack
the policy's observations (random, MAD, reward attack); measure the maximum reward gradient,
the behavioral discontinuity rate, the reward-hacking gap and the return under attack.
"""

from lipguard.rl.data import Transitions, collect_transitions, preference_pairs, reward_features
from lipguard.rl.exploration import (
    ConstraintViolations,
    ExplorationScale,
    LipschitzAwareExploration,
    LipschitzAwareNoise,
    exploration_scale,
    torque_limit,
)
from lipguard.rl.metrics import (
    EvaluationResult,
    action_range,
    discontinuity_curve,
    discontinuity_rate,
    evaluate,
    policy_report,
)
from lipguard.rl.oracle import AdaptiveLipschitz, EnsembleReward, PessimisticReward
from lipguard.rl.pixels import PixelRewardModel, build_pixel_reward_model
from lipguard.rl.policy import (
    ActionNetwork,
    RewardMetricsCallback,
    action_network,
    max_reward_gradient,
    train_policy,
)
from lipguard.rl.reward import (
    RewardModel,
    SegmentReturn,
    build_reward_model,
    fit_preferences,
    fit_reward,
)
from lipguard.rl.wrappers import (
    LearnedRewardVecEnv,
    ObservationPerturbation,
    policy_attack,
    random_perturbation,
    reward_attack,
)

__all__ = [
    "ActionNetwork",
    "AdaptiveLipschitz",
    "ConstraintViolations",
    "EnsembleReward",
    "EvaluationResult",
    "ExplorationScale",
    "LearnedRewardVecEnv",
    "LipschitzAwareExploration",
    "LipschitzAwareNoise",
    "ObservationPerturbation",
    "PessimisticReward",
    "PixelRewardModel",
    "RewardMetricsCallback",
    "RewardModel",
    "SegmentReturn",
    "Transitions",
    "action_network",
    "action_range",
    "build_pixel_reward_model",
    "build_reward_model",
    "collect_transitions",
    "discontinuity_curve",
    "discontinuity_rate",
    "evaluate",
    "exploration_scale",
    "fit_preferences",
    "fit_reward",
    "max_reward_gradient",
    "policy_attack",
    "policy_report",
    "preference_pairs",
    "random_perturbation",
    "reward_attack",
    "reward_features",
    "torque_limit",
    "train_policy",
]
