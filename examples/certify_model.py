"""Certify an ordinary PyTorch reward model: proven upper bound, witnessed lower bound, file.

Trains a plain ``nn.Sequential`` (no lipguard layers) on Pendulum-like rewards, then:
proves global ℓ2 bounds with each method, bounds the constant locally around a few states,
writes a certificate next to a safetensors checkpoint and verifies it — and shows that the
certificate refuses the model once one weight has changed.

    python examples/certify_model.py
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from lipguard.bounds import Certificate, certify, lipschitz_bound, local_lipschitz_bound
from lipguard.io import load_checkpoint, save_checkpoint

torch.manual_seed(0)
# states (cos θ, sin θ, θ̇) and the Pendulum-v1 reward without its action term
theta, speed = torch.rand(2048) * 2 * math.pi - math.pi, torch.rand(2048) * 16 - 8
states = torch.stack([theta.cos(), theta.sin(), speed], dim=1)
rewards = -(theta**2 + 0.1 * speed**2)

model = nn.Sequential(nn.Linear(3, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(300):
    loss = ((model(states).squeeze(-1) - rewards) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()
print(f"training MSE {loss.item():.3f}")

for method in ("product", "compositional", "lipsdp"):
    print(f"{method:>13}: {lipschitz_bound(model, 2, method)}")

local = local_lipschitz_bound(model, states[:3], radius=0.05)
print("local, radius 0.05:", ", ".join(f"{bound.value:.3f}" for bound in local))

certificate = certify(model, inputs=states[:64])
print(
    f"certificate: {certificate.lower.value:.3f} <= L <= {certificate.upper.value:.3f} "
    f"(gap {certificate.gap:.3f})"
)
assert certificate.lower.value <= certificate.upper.value
assert all(bound.value <= certificate.upper.value for bound in local)

with tempfile.TemporaryDirectory() as folder:
    checkpoint, saved = Path(folder) / "reward.safetensors", Path(folder) / "reward.cert.json"
    save_checkpoint(model, checkpoint, input_shape=(3,))
    certificate.save(saved)
    restored, _ = load_checkpoint(checkpoint)
    verification = Certificate.load(saved).verify(restored)
    print("verify restored model:", "ok" if verification.ok else verification.checks)
    assert verification.ok
    with torch.no_grad():
        restored[0].weight[0, 0] += 1e-3  # any edit, however small
    tampered = Certificate.load(saved).verify(restored)
    print("verify edited model:", "ok" if tampered.ok else "refused")
    assert not tampered.ok
