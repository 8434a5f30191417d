# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Certify and attack a reward model
#
# This tutorial reproduces two results of the documentation:
#
# - [Bounds](../bounds.md) and the README: a certificate holds a **proven upper bound** and a
#   **witnessed lower bound** on the same function — "the true constant lies between them" —
#   bound to the weights, and "`verify` re-proves each one" (changed weights fail).
# - [Attacks](../attacks.md) and `examples/attack_reward_model.py`: APGD maximising the reward
#   shift `|r(s + δ) - r(s)|` over ℓ2 balls of radius ε "can never exceed L·ε" for the
#   certified model; the unconstrained model has no such line.
#
# The site runs this script at every build (`make docs`); an `assert` that fails fails the build.

# %%
import tempfile
from pathlib import Path

import torch
from torch import nn

from lipguard.attacks import APGD, RewardShift, ThreatModel, robustness_curve
from lipguard.bounds import Certificate, certify
from lipguard.nn import LipschitzMLP

torch.set_num_threads(1)
torch.manual_seed(0)

# %% [markdown]
# ## Two reward models for one reward
#
# A smooth reward of a 6-dimensional state, learned twice: by an unconstrained ReLU MLP, and by
# a `LipschitzMLP` whose every layer is proven to keep `|r(s) - r(s')| <= 2·‖s - s'‖₂`.

# %%
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


unconstrained = fit(nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 1)))
constrained = fit(LipschitzMLP(6, 1, hidden=(64,), lipschitz=2.0))
with torch.no_grad():
    for name, model in [("unconstrained", unconstrained), ("LipschitzMLP", constrained)]:
        mse = ((model(states).squeeze(-1) - rewards) ** 2).mean().item()
        print(f"{name:>14}: training MSE {mse:.4f}")

# %% [markdown]
# ## Certify
#
# `certify` proves an upper bound (every floating-point rounding accounted for), searches for a
# lower bound whose witness pair anyone can re-evaluate, and binds both to the weights' SHA-256
# and the architecture.

# %%
certificates = {}
for name, model in [("unconstrained", unconstrained), ("LipschitzMLP", constrained)]:
    certificate = certify(model, inputs=states[:256])
    certificates[name] = certificate
    print(f"{name:>14}: {certificate.upper}")
    print(
        f"{'':>14}  witnessed lower bound {certificate.lower.value:.4f}, gap {certificate.gap:.3f}"
    )
    assert certificate.upper.sound
    assert certificate.lower.value <= certificate.upper.value  # the constant lies between them

bound = certificates["LipschitzMLP"].upper.value
assert bound <= 2.0  # the layers' guarantee, re-proven from the stored weights

# %% [markdown]
# The certificate is a JSON file. Loaded back, it re-proves every claim against the model;
# after one weight changes, verification fails.

# %%
folder = Path(tempfile.mkdtemp())
path = certificates["LipschitzMLP"].save(folder / "reward.cert.json")
loaded = Certificate.load(path)
report = loaded.verify(constrained)
print(report)
assert report.ok

tampered = LipschitzMLP(6, 1, hidden=(64,), lipschitz=2.0).eval()
tampered.load_state_dict(constrained.state_dict())
with torch.no_grad():
    next(tampered.parameters()).mul_(1.01)
tampered_report = loaded.verify(tampered)
print(tampered_report)
assert not tampered_report.ok

# %% [markdown]
# ## Attack
#
# APGD (50 steps) maximises the reward shift over ℓ2 balls of growing radius around 64 states.
# For the certified model the largest shift found must stay below `L·ε`; for the unconstrained
# model, below its own (proven, but much larger) bound.

# %%
probe = states[:64]
epsilons = [0.05, 0.1, 0.2, 0.4]
attacks = {"APGD": lambda threat: APGD(threat, steps=50)}
print(f"{'model':>14} " + " ".join(f"ε={e:<7g}" for e in epsilons))
worst = {}
for name, model in [("unconstrained", unconstrained), ("LipschitzMLP", constrained)]:
    curve = robustness_curve(model, probe, RewardShift("abs"), epsilons, attacks, ThreatModel(0, 2))
    worst[name] = curve.max_loss["APGD"]
    upper = certificates[name].upper.value
    print(f"{name:>14} " + " ".join(f"{shift:<9.4f}" for shift in worst[name]))
    print(f"{'L·ε':>14} " + " ".join(f"{upper * e:<9.4f}" for e in epsilons))
    for eps, shift in zip(epsilons, worst[name], strict=True):
        assert shift <= upper * eps, "an attack beat the certificate"

# %% [markdown]
# What the attack finds on the certified model is about three quarters of `L·ε`: the true
# constant lies between the witnessed lower bound and the proven upper bound, and the attack's
# slope below both. The unconstrained model, fitted to the same data, moves further at every
# radius (`examples/attack_reward_model.py`: "the unconstrained one moves further").

# %%
for eps, ours, theirs in zip(epsilons, worst["LipschitzMLP"], worst["unconstrained"], strict=True):
    print(f"ε={eps}: found/certified {ours / (bound * eps):.2f}; unconstrained shift {theirs:.4f}")
    assert theirs > ours
