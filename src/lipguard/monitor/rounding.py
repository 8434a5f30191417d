"""The monitor's default tolerance: what floating-point execution alone can do to a reward.

A certified bound is about the real-valued function ``f`` of the stored weights; the monitor sees
rewards computed in floating point. Two float32 states one ulp apart can give rewards whose
difference is many times ``L·d``: rounding, not a Lipschitz violation. With
``tolerance="auto"`` each observation ``(s, r)`` gets a slack ``σ`` with ``|r - f(s)| <= σ``, and
a pair is a violation only when ``|r - r'| > L·d(s, s') + σ + σ'`` — which a model computing
``f`` in floating point can never produce:

- ``4·u·|r| + 4·η`` for the reported reward's own rounding (two ulps; ``u`` the unit roundoff
  and ``η`` half the smallest subnormal of the reward's dtype);
- with ``model``: :func:`lipguard.bounds.rounding.forward_error` of the model's forward pass in
  its dtype at ``s`` rounded to that dtype, plus ``L(s)·||fl(s) - s||`` for that input rounding.

A model the bound engine cannot read gets the first term only (and a warning in the log).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from lipguard._placement import placement
from lipguard.errors import LipguardError
from lipguard.linalg import gamma, underflow_unit, unit_roundoff

logger = logging.getLogger("lipguard.monitor")


def reward_dtype(values: object, model: nn.Module | None) -> torch.dtype:
    """The dtype rewards were computed in: their own when narrower than float64, else the
    model's, else float64."""
    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, np.dtype) and dtype in (np.float16, np.float32):
        return torch.float16 if dtype == np.float16 else torch.float32
    return placement(model).dtype if model is not None else torch.float64


class FloatingPointSlack:
    """Per-observation slacks ``σ`` (see the module docstring) and the gradient check's."""

    def __init__(self, model: nn.Module | None, norm: float) -> None:
        self.model, self.norm = model, norm
        self._warned = False

    def observations(
        self, states: np.ndarray, rewards: np.ndarray, dtype: torch.dtype, bounds: np.ndarray
    ) -> np.ndarray:
        """``σ`` for each observation (float64 states and rewards; ``dtype`` of the rewards)."""
        u, eta = unit_roundoff(dtype), underflow_unit(dtype)
        slack = 4 * u * np.abs(rewards) + 4 * eta
        if self.model is not None:
            slack = slack + self._model_error(states, bounds)
        return slack * (1 + 1e-9)

    def _model_error(self, states: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        from lipguard.bounds.frontend import to_graph
        from lipguard.bounds.rounding import forward_error

        model = self.model
        if model is None:  # observations() asks only when there is a model
            return np.zeros(len(states))
        dtype = placement(model).dtype
        exact = torch.from_numpy(np.ascontiguousarray(states, dtype=np.float64))
        rounded = exact.to(dtype).to(torch.float64)
        try:
            with torch.no_grad():
                graph = to_graph(model, (tuple(exact.shape[1:]),))
        except LipguardError as error:
            if not self._warned:
                logger.warning("tolerance='auto' cannot bound the model's rounding: %s", error)
                self._warned = True
            return np.zeros(len(states))
        forward = forward_error(graph, rounded, dtype)[:, 0].numpy()
        moved = torch.linalg.vector_norm(rounded - exact, ord=self.norm, dim=1).numpy()
        return forward + bounds * moved

    def gradient_factor(self) -> float:
        """Relative slack of a computed input gradient: ``2·Σ γ_{k+1}`` over the model's affine
        operators (``k`` their widest sum) in its dtype, at least ``64·u``."""
        from lipguard.bounds.frontend import input_shapes, to_graph
        from lipguard.bounds.ops import Conv, Dense

        assert self.model is not None
        dtype = placement(self.model).dtype
        u = unit_roundoff(dtype if dtype == torch.float64 else torch.float32)
        total = 64 * unit_roundoff(dtype)
        try:
            operators = to_graph(self.model, input_shapes(self.model, None)).operators()
        except LipguardError:
            return total
        for operator in operators:
            if isinstance(operator, Dense):
                terms = operator.matrix.value.shape[1] + 1
            elif isinstance(operator, Conv):
                terms = math.prod(operator.weight.shape[1:]) + 1
            else:
                continue
            total += 2 * gamma(terms, u) if terms * u < 0.5 else math.inf
        return total
