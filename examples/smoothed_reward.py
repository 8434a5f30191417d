"""Certified bounds on a reward model's output, and on a preference, by randomized smoothing.

A small reward model is trained on Pendulum-like states. Smoothing it with Gaussian noise gives
a reward ĥ(s) whose value at every state within ε of s is *certified* to lie in an interval
(holding with probability >= 1 - α over the sampling), without any assumption on the network:

- bounded smoothing (rewards clipped to a known range, Salman et al.'s lemma);
- median smoothing (no range needed);
- a preference certificate: how far two states can move before the smoothed model could
  change which one it prefers.

    python examples/smoothed_reward.py
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipguard.smoothing import SmoothedQuantile, SmoothedRegressor, certify_preference

torch.manual_seed(0)
theta, speed = torch.rand(2048) * 2 * math.pi - math.pi, torch.rand(2048) * 16 - 8
states = torch.stack([theta.cos(), theta.sin(), speed / 8], dim=1)
rewards = -(theta**2 + 0.1 * speed**2) / 16.3  # Pendulum's reward, scaled into [-1, 0]

model = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(400):
    loss = ((model(states + 0.1 * torch.randn_like(states)).squeeze(-1) - rewards) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

probe = states[:4]
epsilon, sigma = 0.05, 0.1
bounded = SmoothedRegressor(model, sigma, output_range=(-1.0, 0.0)).certify(probe, n=20_000)
low, high = bounded.bounds(epsilon)
median = SmoothedQuantile(model, sigma).certify(probe, n=20_000)
median_low, median_high = median.bounds(epsilon)
print(f"certified reward intervals for every state within ε = {epsilon} (σ = {sigma}, α = 0.001)")
for i in range(len(probe)):
    print(
        f"  state {i}: ĥ = {bounded.mean[i]:+.3f} ∈ [{low[i]:+.3f}, {high[i]:+.3f}]   "
        f"median {median.estimate[i]:+.3f} ∈ [{median_low[i]:+.3f}, {median_high[i]:+.3f}]"
    )
    assert low[i] <= bounded.mean[i] <= high[i]
    assert median_low[i] <= median.estimate[i] <= median_high[i]

upright, falling = states[rewards.argmax()][None], states[rewards.argmin()][None]
preference = certify_preference(model, upright, falling, sigma, n=20_000)
print(
    f"preference for the upright state over the falling one: "
    f"{'kept' if preference.prediction[0] == 1 else 'not certified'} for joint perturbations "
    f"up to ℓ2 radius {preference.radius[0]:.3f}"
)
assert preference.prediction[0] == 1
