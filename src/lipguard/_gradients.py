"""Input gradients of per-sample scalars, measured in the dual norm.

For a scalar function ``f`` and an input norm ``||·||_p``, the local Lipschitz constant at ``x``
is ``||∇f(x)||_q`` with ``q`` the dual of ``p`` (1 ↔ ∞, 2 ↔ 2). Penalties, training statistics,
the runtime monitor and the RL metrics all measure it the same way, here.
"""

from __future__ import annotations

import torch

from lipguard.norm import L2, Norm, NormLike


def input_gradient_norms(
    outputs: torch.Tensor,
    inputs: torch.Tensor,
    norm: NormLike = L2,
    *,
    create_graph: bool = False,
) -> torch.Tensor:
    """``||∇_x outputs_i||_q`` for each sample ``i`` of a batch, ``q`` dual to the input ``norm``.

    Args:
        outputs: one scalar per sample (any shape with ``N`` entries), computed from ``inputs``.
        inputs: the batch ``(N, ...)`` the outputs were computed from; it requires a gradient.
        norm: the input norm ``p`` (1, 2 or inf; any spelling :meth:`Norm.parse` accepts).
        create_graph: keep the graph of the gradient, so that the result can be differentiated
            (penalties to minimise).

    Returns:
        A tensor of shape ``(N,)``. Each entry is the sample's own gradient as long as the model
        treats samples independently (the gradient of the sum is taken; a layer that mixes
        samples, such as batch normalisation in training mode, couples them).
    """
    dual = Norm.parse(norm).dual
    (gradient,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=create_graph)
    return dual.of(gradient)
