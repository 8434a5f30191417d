"""Learn Pendulum's reward with a certified Lipschitz bound, train a policy on it, attack it.

1. 3000 random-torque transitions of Pendulum-v1; a reward model r(s, a) whose whole map
   (standardisation included) is certified 8-Lipschitz, fitted to the observed rewards;
2. a short PPO run on the learned reward (the true reward stays in ``info``), with lipguard's
   metrics logged by a callback;
3. the policy's true and learned returns, its behavioral discontinuity rate, and its true return
   under random noise and under MAD (PGD on the policy's action), ℓ∞ ε = 0.1.

    python examples/lipschitz_reward_policy.py
"""

from __future__ import annotations

import torch

from lipguard.rl import (
    RewardMetricsCallback,
    action_network,
    build_reward_model,
    collect_transitions,
    discontinuity_rate,
    evaluate,
    fit_reward,
    max_reward_gradient,
    policy_attack,
    random_perturbation,
    reward_features,
    train_policy,
)

ENV, EPS = "Pendulum-v1", 0.1
torch.manual_seed(0)

transitions = collect_transitions(ENV, 3000, seed=0, progress=False)
features = reward_features(transitions.observations, transitions.actions)
rewards = torch.as_tensor(transitions.rewards, dtype=torch.float32)
reward = build_reward_model(features, rewards, kind="lipschitz", lipschitz=8.0)
fit = fit_reward(reward, features, rewards, epochs=20, progress=False)
certified = reward.certified_lipschitz()
print(f"reward model: validation MSE {fit.history[-1].validation_loss:.4f}, {certified}")
assert certified.value <= 8.0

metrics = RewardMetricsCallback(reward)
model = train_policy(
    ENV,
    algorithm="PPO",
    timesteps=4096,
    reward=reward,
    n_envs=4,
    hyperparameters={"n_steps": 256, "batch_size": 256, "gamma": 0.9},
    callbacks=[metrics],
    progress=False,
)
print("logged during training:", metrics.history[-1])

clean = evaluate(model, ENV, episodes=4, reward=reward)
policy = action_network(model)
visited = torch.as_tensor(clean.states[::10])
observed = max_reward_gradient(reward, reward_features(clean.states, clean.actions))
print(
    f"true return {clean.true_return:.1f}, learned {clean.learned_return:.1f}, "
    f"gap {clean.reward_gap:.1f}; max reward gradient {observed:.2f} <= {certified.value:.2f}"
)
assert observed <= certified.value
rate = discontinuity_rate(policy, visited, EPS, tau=0.2)
noisy = evaluate(model, ENV, episodes=4, perturb=random_perturbation(EPS))
mad = evaluate(model, ENV, episodes=4, perturb=policy_attack(policy, "continuous", EPS))
print(
    f"discontinuity rate {rate:.1%}; true return under noise {noisy.true_return:.1f}, "
    f"under MAD {mad.true_return:.1f}"
)
