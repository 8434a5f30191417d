"""A linear model trained by projection: each output is L-Lipschitz in the ℓ∞ norm (SPEC A4).

With inputs perturbed in ℓ∞ by at most δ, each prediction moves by at most L·δ (Hölder:
|wᵀ(x - y)| <= ||w||₁·||x - y||∞), a guaranteed error envelope.

    python examples/projected_linear_model.py
"""

from __future__ import annotations

import torch

from lipguard.nn import LipschitzLinearModel

torch.manual_seed(0)
x = torch.randn(500, 10)
y = x @ torch.linspace(-2, 2, 10) + 0.1 * torch.randn(500)

model = LipschitzLinearModel(10, 1, lipschitz=3.0, norm="inf")
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for _ in range(500):
    loss = ((model(x).squeeze(-1) - y) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.project_()  # projected gradient descent onto ||w||₁ <= 3

bound = model.certified_lipschitz()
print(f"training MSE {loss.item():.3f}; {bound}")

delta = 0.05
noise = (torch.rand_like(x) * 2 - 1) * delta  # any perturbation with ||noise||∞ <= δ
with torch.no_grad():
    moved = (model(x + noise) - model(x)).abs().max().item()
print(f"largest change under ℓ∞ noise {delta}: {moved:.4f} <= envelope {bound.value * delta:.4f}")
assert moved <= bound.value * delta * (1 + 1e-5)
