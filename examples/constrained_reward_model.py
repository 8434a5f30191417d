"""Train a reward model whose Lipschitz constant is guaranteed, then prove it and export it.

Reproduces the README's claim: the certified bound holds, the steepest slope found by gradient
ascent stays below it, and the exported plain-PyTorch model computes the same function.

    python examples/constrained_reward_model.py
"""

from __future__ import annotations

import torch

from lipguard.nn import LipschitzMLP, vanilla

torch.manual_seed(0)

# A reward over 8-D states with a sharp ridge: an unconstrained model could fit it with an
# arbitrarily steep slope; this one may not exceed L = 2.
states = torch.randn(2048, 8)
rewards = torch.tanh(4 * states[:, 0]) + 0.1 * states[:, 1:].sum(dim=1)

model = LipschitzMLP(8, 1, hidden=(64, 64), lipschitz=2.0, layer="spectral")
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(200):
    loss = ((model(states).squeeze(-1) - rewards) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

bound = model.certified_lipschitz()  # proven from the stored weights, rounding included
print(f"training MSE {loss.item():.4f}")
print(bound)

# Look for the steepest point by gradient ascent on ||∇r(s)||: a witnessed lower bound.
probe = torch.randn(256, 8, requires_grad=True)
ascent = torch.optim.Adam([probe], lr=0.05)
steepest = 0.0
for _ in range(100):
    (gradient,) = torch.autograd.grad(model(probe).sum(), probe, create_graph=True)
    norms = gradient.norm(dim=1)
    steepest = max(steepest, norms.max().item())
    ascent.zero_grad()
    (-norms.sum()).backward()
    ascent.step()
print(f"steepest slope found {steepest:.4f} <= certified {bound.value:.6f}")
assert steepest <= bound.value <= 2.0

# Export to torch.nn only (Linear + ReLU sorting networks): runs without lipguard. Compared in
# float64 (converting recertifies the model in float64 first).
model = model.double()
exported = vanilla(model)
x = torch.randn(1000, 8, dtype=torch.float64)
with torch.no_grad():
    difference = (model(x) - exported(x)).abs().max().item()
print(f"exported model: max |difference| {difference:.2e} in float64")
assert difference <= 1e-6
