"""What the policy is optimised against: smooth, pessimistic rewards and adaptive constants.

- :class:`PessimisticReward` (SPEC F3): ``r̃(x) = r(x) - L(x)·ε`` with ``L(x)`` a *sound* bound on
  the Lipschitz constant of ``r`` over the ball ``B(x, ε)`` — lipguard's local bound
  (``local=True``) or the global one. Guarantee: ``r̃(x) <= min_{x' ∈ B(x, ε)} r(x')`` for the
  real-valued function of the model's stored weights (the bound engine's, the same function its
  bounds are about): ``r(x)`` is the lower end of a rigorous enclosure of that function and the
  subtraction is rounded down. The float32 rounding of the deployed model's own forward pass is
  not covered. A policy that maximises ``r̃`` gains nothing from states where a small
  perturbation could lower the reward a lot.
- :class:`EnsembleReward`: ``mean - k·std`` over independently trained reward models (pessimism
  where they disagree, i.e. away from the data).
- :class:`AdaptiveLipschitz` (SPEC F4): ``L(s) = relaxed + risk(s)·(tight - relaxed)`` with a
  risk in ``[0, 1]``: tighter constants where the risk is high. Use it as the target of a
  state-dependent gradient penalty (``GradientPenalty(lipschitz=adaptive)``) and as the
  monitor's state-dependent bound (``LipschitzMonitor(adaptive.numpy)``). It is a training target
  and a runtime check, not a certificate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from lipguard import _checks
from lipguard._placement import to_model, to_numpy
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.linalg import down, up
from lipguard.norm import L2, NormLike, parse_norm


class PessimisticReward:
    """``r(x) - L(x)·eps``, a lower bound of ``r`` over ``B(x, eps)`` (ℓ2 or ℓ∞).

    The reward function is read from ``model`` when the oracle is built (a snapshot: build a new
    oracle after training further).

    Args:
        model: the reward model, features ``(N, d) -> (N,)`` or ``(N, 1)`` (any model the bound
            engine knows).
        eps: the radius of the ball around each feature vector.
        norm: 2 or ``inf``.
        local: per-point local bounds (tighter, one interval propagation per point) instead of
            the global bound (computed once).
        input_shape: the per-sample input shape, when the first layer does not tell it.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: NormLike = L2,
        *,
        local: bool = True,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        from lipguard.bounds import lipschitz_bound
        from lipguard.bounds.frontend import input_shapes, to_graph

        self.eps = _checks.positive_float("eps", eps)
        self.norm = parse_norm(norm)
        self.local = local
        self.model = copy.deepcopy(model).eval()  # the snapshot the operators are read from
        self.input_shape = input_shapes(self.model, input_shape)[0]
        self._graph = to_graph(self.model, (self.input_shape,))
        self.global_bound = min(
            lipschitz_bound(self.model, self.norm, method, input_shape=self.input_shape).value
            for method in ("product", "compositional")
        )

    def lipschitz(self, features: torch.Tensor) -> torch.Tensor:
        """The bound used at each point: local (never above the global one) or global."""
        if not self.local:
            return torch.full((len(features),), self.global_bound, dtype=torch.float64)
        from lipguard.bounds import local_lipschitz_bound

        bounds = local_lipschitz_bound(
            self.model,
            features.detach().double(),
            self.eps,
            self.norm,
            input_shape=self.input_shape,
        )
        return torch.tensor([min(b.value, self.global_bound) for b in bounds], dtype=torch.float64)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        from lipguard.bounds.evaluate import enclose

        low, _ = enclose(self._graph, features.detach())
        if low.shape[1] != 1:
            raise ShapeError(f"a reward model has one output, this one has {low.shape[1]}")
        drop = up(self.lipschitz(features) * self.eps)
        return down(low[:, 0] - drop)


class EnsembleReward(nn.Module):
    """``mean - k·std`` of the members' rewards (sample standard deviation)."""

    def __init__(self, models: Sequence[nn.Module], k: float = 1.0) -> None:
        super().__init__()
        if len(models) < 2:
            raise InvalidArgumentError("an ensemble needs at least two reward models")
        self.members = nn.ModuleList(models)
        self.k = float(k)
        if not (self.k >= 0 and math.isfinite(self.k)):
            raise InvalidArgumentError("k must be finite and >= 0")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rewards = torch.stack([member(features) for member in self.members])
        return rewards.mean(0) - self.k * rewards.std(0)


class AdaptiveLipschitz:
    """``L(s) = relaxed + risk(s)·(tight - relaxed)``, ``risk`` clipped to ``[0, 1]``.

    Args:
        risk: states ``(N, d)`` (a tensor) -> risk ``(N,)``.
        relaxed: the constant in safe states.
        tight: the (smaller) constant in the riskiest states.
    """

    def __init__(
        self, risk: Callable[[torch.Tensor], torch.Tensor], relaxed: float, tight: float
    ) -> None:
        self.risk = risk
        self.relaxed = _checks.positive_float("relaxed", relaxed)
        self.tight = _checks.positive_float("tight", tight)
        if self.tight > self.relaxed:
            raise InvalidArgumentError("tight must not exceed relaxed")

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        risk = self.risk(states).reshape(len(states)).clamp(0.0, 1.0)
        return self.relaxed + risk * (self.tight - self.relaxed)

    def numpy(self, states: np.ndarray) -> np.ndarray:
        """The same on NumPy arrays (what :class:`~lipguard.monitor.LipschitzMonitor` calls)."""
        with torch.no_grad():
            values = self(to_model(self, states))
        return to_numpy(values)
