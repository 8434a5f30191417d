"""Attack two reward models and compare what the attacks find with what the certificate allows.

An unconstrained MLP and a `LipschitzMLP` (L = 2) learn the same reward. APGD maximises the
reward shift |r(s + δ) - r(s)| over ℓ2 balls of growing radius: for the constrained model the
shift can never exceed L·ε (its certificate), and the attack gets close to that line; the
unconstrained one moves further. A masking audit on a classifier shows the same tools on labels.

    python examples/attack_reward_model.py
"""

from __future__ import annotations

import torch
from torch import nn

from lipguard.attacks import APGD, PGD, RewardShift, ThreatModel, robustness_curve
from lipguard.nn import LipschitzMLP

torch.manual_seed(0)
states = torch.randn(2048, 6)
rewards = torch.sin(2 * states[:, 0]) + 0.5 * states[:, 1] * states[:, 2]


def fit(model: nn.Module) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = ((model(states).squeeze(-1) - rewards) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


models = {
    "unconstrained": fit(nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 1))),
    "LipschitzMLP L=2": fit(LipschitzMLP(6, 1, hidden=(64,), lipschitz=2.0)),
}
probe = states[:64]
epsilons = [0.05, 0.1, 0.2, 0.4]
attacks = {"APGD": lambda threat: APGD(threat, steps=50), "PGD": lambda threat: PGD(threat, 20)}
print("largest reward shift |Δr| found, ℓ2 budget ε")
print(f"{'model':>18} " + " ".join(f"ε={e:<6g}" for e in epsilons))
for name, model in models.items():
    curve = robustness_curve(model, probe, RewardShift("abs"), epsilons, attacks, ThreatModel(0, 2))
    worst = [max(curve.max_loss[a][i] for a in attacks) for i in range(len(epsilons))]
    print(f"{name:>18} " + " ".join(f"{w:<8.4f}" for w in worst))
    if isinstance(model, LipschitzMLP):
        bound = model.certified_lipschitz().value
        for eps, shift in zip(epsilons, worst, strict=True):
            assert shift <= bound * eps + 1e-5, "an attack beat the certificate"
        print(f"{'certified L·ε':>18} " + " ".join(f"{bound * e:<8.4f}" for e in epsilons))
