"""lipguard.rl: reward learning, wrappers, oracles, metrics and SB3 training."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from lipguard.attacks import PGD, RewardShift, ThreatModel
from lipguard.errors import InvalidArgumentError, UnsupportedModuleError
from lipguard.rl import (
    AdaptiveLipschitz,
    EnsembleReward,
    LearnedRewardVecEnv,
    ObservationPerturbation,
    PessimisticReward,
    RewardMetricsCallback,
    RewardModel,
    action_network,
    build_reward_model,
    collect_transitions,
    discontinuity_rate,
    evaluate,
    fit_preferences,
    fit_reward,
    max_reward_gradient,
    policy_attack,
    preference_pairs,
    random_perturbation,
    reward_attack,
    reward_features,
    train_policy,
)
from lipguard.rl.frozen import FrozenReward
from lipguard.train import GradientPenalty, Regression


class Counter(gym.Env):
    """obs = [t, 10·t]; the episode ends after 3 steps; the true reward is t + action."""

    observation_space = gym.spaces.Box(-100, 100, shape=(2,))
    action_space = gym.spaces.Box(-1, 1, shape=(1,))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return np.array([self.t, 10 * self.t], dtype=np.float32)

    def step(self, action):
        reward = float(self.t + action[0])
        self.t += 1
        return self._obs(), reward, self.t == 3, False, {}


class Linear(nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.w = torch.tensor(weights, dtype=torch.float32)

    def forward(self, x):
        return x @ self.w


@pytest.mark.parametrize("inputs", ["state", "state_action", "next_state"])
def test_learned_reward_wrapper_matches_a_hand_computed_episode(inputs):
    weights = {"state": [1.0, 0.5], "state_action": [1.0, 0.5, 100.0], "next_state": [1.0, 0.5]}
    env = LearnedRewardVecEnv(DummyVecEnv([Counter]), Linear(weights[inputs]), inputs)
    env.reset()
    action = np.array([[0.25]], dtype=np.float32)
    learned, true, infos = [], [], []
    for _ in range(3):
        _, reward, _done, info = env.step(action)
        learned.append(float(reward[0]))
        true.append(info[0]["true_reward"])
        infos.append(info[0])
    # states before each step: t = 0, 1, 2 -> [t, 10t]; after: t = 1, 2, 3 (the last is terminal)
    expected = {
        "state": [0.0, 6.0, 12.0],
        "state_action": [25.0, 31.0, 37.0],
        "next_state": [6.0, 12.0, 18.0],  # the terminal [3, 30], not the reset observation
    }[inputs]
    assert learned == pytest.approx(expected)
    assert true == pytest.approx([0.25, 1.25, 2.25])
    assert infos[-1]["learned_return"] == pytest.approx(sum(expected))
    assert infos[-1]["true_return"] == pytest.approx(3.75)
    assert "learned_return" not in infos[0]
    # the next episode starts from the reset state again
    _, reward, _, _ = env.step(action)
    assert float(reward[0]) == pytest.approx(expected[0])


def test_observation_perturbation_changes_what_the_policy_sees_only():
    base = LearnedRewardVecEnv(DummyVecEnv([Counter]), Linear([1.0, 0.0]), "state")
    env = ObservationPerturbation(base, lambda obs: obs + 1000.0)
    seen = env.reset()
    assert seen[0, 0] == 1000.0
    seen, reward, _, _ = env.step(np.zeros((1, 1), dtype=np.float32))
    assert seen[0, 0] == 1001.0
    assert env.true_observations[0, 0] == 1.0
    assert float(reward[0]) == 0.0  # the reward scored the true state t = 0


def test_random_perturbation_stays_in_the_ball():
    obs = np.zeros((500, 3), dtype=np.float32)
    box = random_perturbation(0.1, "inf", seed=1)(obs)
    assert np.abs(box).max() <= 0.1 + 1e-7
    assert np.abs(box).max() > 0.09
    sphere = random_perturbation(0.1, 2, seed=1)(obs)
    assert np.linalg.norm(sphere, axis=1) == pytest.approx(np.full(500, 0.1), rel=1e-5)


def _constant_policy():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 1) + 0.0 * x.sum(1, keepdim=True)

    return Constant()


def test_discontinuity_rate_is_zero_for_a_constant_and_one_for_a_steep_policy():
    states = torch.randn(64, 3)
    assert discontinuity_rate(_constant_policy(), states, 0.05, tau=1e-6) == 0.0
    steep = nn.Linear(3, 1)
    with torch.no_grad():
        steep.weight.fill_(1e6)
    assert discontinuity_rate(steep, states, 0.05, tau=0.1) == 1.0


def test_discontinuity_rate_counts_flips_of_discrete_actions():
    class Boundary(nn.Module):  # action 0 iff x0 > 0: states on the boundary flip under any push
        def forward(self, x):
            return torch.stack([x[:, 0], -x[:, 0]], dim=1)

    on_boundary = torch.cat([torch.full((20, 1), 1e-4), torch.randn(20, 2)], dim=1)
    far = torch.cat([torch.full((20, 1), 5.0), torch.randn(20, 2)], dim=1)
    policy = Boundary()
    assert discontinuity_rate(policy, on_boundary, 0.01, kind="categorical") == 1.0
    assert discontinuity_rate(policy, far, 0.01, kind="categorical") == 0.0


def test_pessimistic_reward_lower_bounds_the_minimum_over_the_ball():
    torch.manual_seed(0)
    features = torch.randn(400, 3)
    rewards = torch.sin(features @ torch.tensor([1.5, -2.0, 0.5]))
    model = build_reward_model(features, rewards, kind="unconstrained", hidden=(16, 16))
    fit_reward(model, features, rewards, epochs=5, progress=False)
    points = torch.randn(6, 3)
    for norm in (2, "inf"):
        for local in (True, False):
            oracle = PessimisticReward(model, 0.2, norm, local=local)
            lower = oracle(points)
            for i, point in enumerate(points):  # brute force: dense samples of the ball + PGD
                directions = torch.randn(20000, 3)
                if norm == 2:
                    directions = directions / directions.norm(dim=1, keepdim=True)
                    directions *= torch.rand(20000, 1) ** (1 / 3)
                else:
                    directions = torch.rand(20000, 3) * 2 - 1
                candidates = (point + 0.2 * directions).double()
                with torch.no_grad():  # the same real function: plain layers convert exactly
                    minimum = copy.deepcopy(oracle.model).double()(candidates).min()
                assert float(lower[i]) <= float(minimum)
    local_bound = PessimisticReward(model, 0.2).lipschitz(points)
    assert bool((local_bound <= PessimisticReward(model, 0.2, local=False).global_bound).all())


def test_constrained_reward_model_meets_its_target_after_standardisation():
    torch.manual_seed(0)
    features = torch.randn(500, 4) * torch.tensor([0.01, 1.0, 5.0, 0.1])  # very unequal scales
    rewards = 50.0 * features[:, 1]
    model = build_reward_model(features, rewards, lipschitz=3.0, hidden=(16, 16))
    fit_reward(model, features, rewards, epochs=3, progress=False)
    certified = model.certified_lipschitz()
    assert certified.sound
    assert certified.value <= 3.0
    assert max_reward_gradient(model, torch.randn(256, 4)) <= certified.value
    from lipguard.bounds import lipschitz_bound

    assert lipschitz_bound(model, method="compositional").value <= 3.0 * (1 + 1e-9)


def test_preference_learning_recovers_the_ordering_of_a_linear_reward():
    rng = np.random.default_rng(0)
    w = np.array([1.0, -2.0, 0.5])
    states = rng.normal(size=(3000, 3))

    class Log:  # transitions in 30 episodes of 100 steps
        observations, actions = states, np.zeros((3000, 0))
        rewards = states @ w
        episodes = np.repeat(np.arange(30), 100)

        def __len__(self):
            return 3000

    features = reward_features(states, inputs="state")
    pairs, labels = preference_pairs(Log(), features, segment_length=5, pairs=2000, seed=0)
    assert pairs.shape[1:] == (2, 5, 3)
    assert len(labels) == len(pairs)
    model = build_reward_model(features, kind="unconstrained", hidden=(32,))
    fit_preferences(model, pairs, labels, epochs=30, progress=False)
    test = torch.as_tensor(rng.normal(size=(500, 3)), dtype=torch.float32)
    with torch.no_grad():
        predicted = model(test).numpy()
    true = test.numpy() @ w
    i, j = rng.integers(0, 500, size=(2, 5000))
    agreement = np.mean((predicted[i] > predicted[j]) == (true[i] > true[j]))
    assert agreement > 0.95


def test_preference_pairs_stay_inside_episodes():
    class Log:
        rewards = np.arange(10.0)
        episodes = np.array([0] * 5 + [1] * 5)

        def __len__(self):
            return 10

    features = torch.arange(10.0)[:, None]
    pairs, labels = preference_pairs(Log(), features, segment_length=5, pairs=50)
    for segment in pairs.reshape(-1, 5, 1):
        assert segment[:, 0].tolist() in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert bool((labels == (pairs[:, 0].sum((1, 2)) > pairs[:, 1].sum((1, 2))).float()).all())
    with pytest.raises(InvalidArgumentError):
        preference_pairs(Log(), features, segment_length=6)


def test_ensemble_reward_is_mean_minus_k_std():
    members = [Linear([1.0]), Linear([3.0])]
    x = torch.tensor([[1.0], [2.0]])
    expected = torch.tensor([2.0, 4.0]) - 0.5 * torch.tensor([2.0, 4.0]).mul(2**0.5 / 2)
    assert torch.allclose(EnsembleReward(members, k=0.5)(x), expected)
    with pytest.raises(InvalidArgumentError):
        EnsembleReward(members[:1])


def test_adaptive_lipschitz_drives_a_state_dependent_penalty_and_the_monitor():
    adaptive = AdaptiveLipschitz(lambda s: (s[:, 0] > 0).float(), relaxed=4.0, tight=1.0)
    states = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert adaptive(states).tolist() == [1.0, 4.0]
    assert adaptive.numpy(states.numpy()).tolist() == [1.0, 4.0]
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0]]))  # ||∇f|| = 2: above 1, below 4
    penalty = GradientPenalty(weight=1.0, lipschitz=adaptive)
    loss = penalty(model, Regression(), states, torch.zeros(2))
    assert loss.penalty == pytest.approx(((2.0 - 1.0) ** 2 + 0.0) / 2)
    from lipguard.monitor import LipschitzMonitor

    monitor = LipschitzMonitor(adaptive.numpy, drift=False)
    found = monitor.observe(np.array([[1.0, 0.0], [1.5, 0.0]]), np.array([0.0, 1.0]))
    assert len(found.violations) == 1  # slope 2 > L = 1 in the risky region
    assert not monitor.observe(np.array([[-1.0, 0.0], [-1.5, 0.0]]), np.array([0, 1.0])).violations


@pytest.fixture(scope="module")
def pendulum_policy():
    torch.manual_seed(0)
    transitions = collect_transitions("Pendulum-v1", 2000, seed=0, progress=False)
    features = reward_features(transitions.observations, transitions.actions)
    rewards = torch.as_tensor(transitions.rewards, dtype=torch.float32)
    reward = build_reward_model(features, rewards, lipschitz=10.0, hidden=(32, 32))
    fit_reward(reward, features, rewards, epochs=10, progress=False)
    callback = RewardMetricsCallback(reward)
    model = train_policy(
        "Pendulum-v1",
        algorithm="PPO",
        timesteps=512,
        reward=reward,
        n_envs=2,
        hyperparameters={"n_steps": 128, "batch_size": 64, "n_epochs": 1},
        callbacks=[callback],
        progress=False,
    )
    return model, reward, callback


def test_policy_training_on_a_learned_reward_logs_lipguard_metrics(pendulum_policy):
    _model, reward, callback = pendulum_policy
    assert callback.history
    assert "max_reward_gradient" in callback.history[0]
    rows = [row for row in callback.history if "reward_gap" in row]
    assert rows, "Pendulum episodes (200 steps) end within 512 steps of 2 environments"
    assert callback.history[0]["max_reward_gradient"] <= reward.certified_lipschitz().value


class PendulumReward(nn.Module):
    """Pendulum-v1's own reward of ``(cos θ, sin θ, θ', u)`` plus a constant ``offset``."""

    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, features):
        cos, sin, speed, torque = features.double().unbind(1)
        cost = torch.atan2(sin, cos) ** 2 + 0.1 * speed**2 + 0.001 * torque.clamp(-2, 2) ** 2
        return self.offset - cost


def test_a_reward_offset_by_a_constant_overstates_each_episode_by_its_length_times_that_constant():
    # learned = true + 0.5 at every step, so each 200-step episode's gap is 100 whatever the
    # policy does: a wrapper or evaluation that scored the wrong state (the next one, the reset
    # one), missed or double-counted a step, or flipped the sign would be off by far more
    reward = PendulumReward(0.5)
    callback = RewardMetricsCallback(reward)
    model = train_policy(
        "Pendulum-v1",
        algorithm="PPO",
        timesteps=400,
        reward=reward,
        n_envs=2,
        hyperparameters={"n_steps": 200, "batch_size": 100, "n_epochs": 1},
        callbacks=[callback],
        progress=False,
    )
    rows = [row for row in callback.history if "reward_gap" in row]
    assert len(rows) == 1  # one rollout of 200 steps per environment: one episode each
    assert rows[0]["reward_gap"] == pytest.approx(100.0, abs=1e-2)
    assert rows[0]["true_return"] < 0  # Pendulum's rewards are costs
    result = evaluate(model, "Pendulum-v1", episodes=2, reward=reward)
    assert result.reward_gap == pytest.approx(100.0, abs=1e-2)
    assert result.learned_return == pytest.approx(result.true_return + 100.0, abs=1e-2)


def test_attacks_on_a_trained_policy_do_what_they_promise(pendulum_policy):
    model, reward, _ = pendulum_policy
    policy = action_network(model)
    result = evaluate(model, "Pendulum-v1", episodes=2, reward=reward)
    assert result.states.shape == (400, 3)
    assert result.learned_return is not None
    states = torch.as_tensor(result.states[:64], dtype=torch.float32)
    clean = policy(states).detach()
    mad = torch.as_tensor(policy_attack(policy, "continuous", 0.1, steps=10)(result.states[:64]))
    noise = torch.as_tensor(random_perturbation(0.1, seed=0)(result.states[:64]))
    assert np.abs(mad.numpy() - result.states[:64]).max() <= 0.1 + 1e-6
    with torch.no_grad():
        mad_change = (policy(mad) - clean).norm(dim=1).mean()
        noise_change = (policy(noise) - clean).norm(dim=1).mean()
    assert mad_change >= noise_change
    attacked = torch.as_tensor(reward_attack(policy, reward, 0.1)(result.states[:64]))
    with torch.no_grad():
        clean_reward = reward(torch.cat([states, clean], 1))
        attacked_reward = reward(torch.cat([states, policy(attacked)], 1))
    assert attacked_reward.mean() <= clean_reward.mean()
    under_attack = evaluate(
        model, "Pendulum-v1", episodes=2, perturb=random_perturbation(0.1, seed=0)
    )
    assert np.isfinite(under_attack.true_return)


@pytest.mark.parametrize("algorithm", ["PPO", "SAC"])
def test_action_network_is_the_policy_sb3_executes(algorithm, pendulum_policy):
    if algorithm == "PPO":
        model = pendulum_policy[0]
    else:
        model = train_policy(
            "Pendulum-v1",
            algorithm="SAC",
            timesteps=150,
            hyperparameters={"learning_starts": 100, "batch_size": 32},
            progress=False,
        )
    observations = np.random.default_rng(0).uniform(-1, 1, size=(32, 3)).astype(np.float32)
    executed, _ = model.predict(observations, deterministic=True)
    with torch.no_grad():
        ours = action_network(model)(torch.as_tensor(observations)).numpy()
    assert ours == pytest.approx(executed, abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.01, 1.0), norm=st.sampled_from([2, "inf"]))
def test_pessimistic_reward_is_never_above_an_attacked_reward(seed, eps, norm):
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    model = RewardModel(network, torch.zeros(3), torch.ones(3)).double()
    points = torch.randn(8, 3, dtype=torch.float64)
    lower = PessimisticReward(model, eps, norm)(points)
    attack = PGD(ThreatModel(eps, norm), steps=30, restarts=3, seed=seed)
    found = attack(model, points, RewardShift("down"))
    assert bool((lower <= found.outputs + 1e-12).all())


@pytest.mark.parametrize("kind", ["lipschitz", "unconstrained"])
def test_frozen_reward_matches_the_model_and_follows_weight_updates(kind):
    torch.manual_seed(0)
    features = torch.randn(300, 4)
    rewards = features[:, 0] - features[:, 1] ** 2
    model = build_reward_model(features, rewards, kind=kind, hidden=(16, 16))
    frozen = FrozenReward(model)
    with torch.no_grad():
        assert frozen(features).numpy() == pytest.approx(model(features).numpy(), abs=1e-5)
    fit_reward(model, features, rewards, epochs=2, progress=False)  # optimiser steps in place
    with torch.no_grad():
        assert frozen(features).numpy() == pytest.approx(model(features).numpy(), abs=1e-5)


def _edit_reward_model(model: RewardModel, edit: str) -> None:
    """One way of changing what ``model`` computes without an optimiser step."""
    network = model.network
    with torch.no_grad():
        if edit == "data in place":  # `.data` has its own version counter
            model[0].offset.data.add_(0.5)
        elif edit == "storage swap":  # same Parameter object, new storage
            network[0].weight.data = network[0].weight.data * 2
        elif edit == "new parameter":
            network[0].bias = nn.Parameter(network[0].bias + 1)
        elif edit == "new module":
            network[2] = nn.Linear(8, 8)
        elif edit == "new weightless module":
            network[1] = nn.Tanh()
        elif edit == "setting":  # a constrained layer's bound scales its effective weight
            network[0].lipschitz = network[0].lipschitz / 2


@pytest.mark.parametrize(
    ("kind", "edit"),
    [
        ("unconstrained", "data in place"),
        ("unconstrained", "storage swap"),
        ("unconstrained", "new parameter"),
        ("unconstrained", "new module"),
        ("unconstrained", "new weightless module"),
        ("lipschitz", "setting"),
    ],
)
def test_frozen_reward_follows_every_kind_of_model_edit(kind, edit):
    torch.manual_seed(0)
    features = torch.randn(50, 4)
    model = build_reward_model(features, features.sum(1), kind=kind, hidden=(8, 8)).eval()
    frozen = FrozenReward(model)
    before = frozen(features).numpy()
    _edit_reward_model(model, edit)
    after = frozen(features).numpy()
    with torch.no_grad():
        assert after == pytest.approx(model(features).numpy(), abs=1e-5)
    assert np.abs(after - before).max() > 1e-3  # the edit mattered
    assert np.array_equal(frozen(features).numpy(), after)  # and the snapshot is reused


def test_frozen_reward_refuses_layers_numpy_cannot_evaluate():
    model = RewardModel(
        nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 1)), *torch.ones(2, 2)
    )
    with pytest.raises(UnsupportedModuleError):
        FrozenReward(model)
    env = LearnedRewardVecEnv(DummyVecEnv([Counter]), model, "state")  # falls back to the module
    env.reset()
    _, reward, _, _ = env.step(np.zeros((1, 1), dtype=np.float32))
    with torch.no_grad():
        assert float(reward[0]) == pytest.approx(float(model(torch.zeros(1, 2))[0]), abs=1e-6)


def test_discrete_actions_on_another_classic_control_environment():
    transitions = collect_transitions("CartPole-v1", 600, seed=0, progress=False)
    features = reward_features(transitions.observations, inputs="state")
    rewards = torch.as_tensor(transitions.rewards, dtype=torch.float32)
    reward = build_reward_model(features, rewards, lipschitz=2.0, hidden=(16, 16))
    fit_reward(reward, features, rewards, epochs=2, progress=False)
    model = train_policy(
        "CartPole-v1",
        algorithm="PPO",
        timesteps=256,
        reward=reward,
        reward_inputs="state",
        hyperparameters={
            "n_steps": 128,
            "batch_size": 64,
            "n_epochs": 1,
            "policy_kwargs": {"net_arch": []},  # logits = W·obs + b
        },
        progress=False,
    )
    policy = action_network(model)
    assert policy.kind == "categorical"
    result = evaluate(model, "CartPole-v1", episodes=3, reward=reward, reward_inputs="state")
    states = torch.as_tensor(result.states[:50])
    executed, _ = model.predict(result.states[:50], deterministic=True)
    with torch.no_grad():
        assert (policy(states).argmax(-1).numpy() == executed).all()

    def set_logits(weight, bias):
        with torch.no_grad():
            model.policy.action_net.weight.copy_(torch.tensor(weight))
            model.policy.action_net.bias.copy_(torch.tensor(bias))

    # push right iff θ + θ' > 0: balances the pole for the whole 500-step episode, where always
    # pushing left drops it within a dozen steps
    set_logits([[0.0, 0.0, -1.0, -1.0], [0.0, 0.0, 1.0, 1.0]], [0.0, 0.0])
    balanced = evaluate(model, "CartPole-v1", episodes=3)
    assert balanced.true_return == 500.0
    # the greedy action flips under an ℓ∞ push of eps iff |θ + θ'| < eps·||(1, 1)||₁
    states = torch.as_tensor(balanced.states[:200])
    margin = (states[:, 2] + states[:, 3]).abs()
    eps = 0.01
    rate = discontinuity_rate(policy, states, eps, kind="categorical")
    assert float((margin < 2 * eps - 1e-5).float().mean()) <= rate
    assert rate <= float((margin < 2 * eps + 1e-5).float().mean())
    assert 0.1 < rate < 0.9  # the case is not trivial
    attacked = evaluate(
        model, "CartPole-v1", episodes=3, perturb=policy_attack(policy, "categorical", 0.2)
    )
    assert attacked.true_return < 100
    set_logits([[0.0] * 4, [0.0] * 4], [1.0, 0.0])
    assert evaluate(model, "CartPole-v1", episodes=3).true_return < 20


def test_discontinuity_curve_of_a_linear_policy_is_its_closed_form_step():
    from lipguard.rl import discontinuity_curve

    # a = w·s moves by at most ε·||w||₁ = 4ε under an ℓ∞ push of ε, and PGD reaches it exactly
    policy = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        policy.weight.copy_(torch.tensor([[1.0, 2.0, -1.0]]))
    states = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    curve = discontinuity_curve(policy, states, (0.01, 0.024, 0.026, 0.1), tau=0.1)
    assert curve == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("where", ["module", "global"])
def test_frozen_reward_refuses_a_forward_hook_added_after_the_snapshot(where):
    features = torch.randn(5, 4)
    model = build_reward_model(features.repeat(4, 1), kind="unconstrained", hidden=(8, 8))
    frozen = FrozenReward(model)
    frozen(features)

    def double(module, inputs, output):
        return 2 * output

    if where == "module":
        handle = model.network[0].register_forward_hook(double)
    else:
        handle = torch.nn.modules.module.register_module_forward_hook(double)
    try:
        with pytest.raises(UnsupportedModuleError, match="hook"):
            frozen(features)
    finally:
        handle.remove()
    frozen(features)  # served again once the hook is gone


def test_frozen_reward_rereads_after_a_refused_read():
    features = torch.randn(5, 4)
    model = build_reward_model(features.repeat(4, 1), kind="unconstrained", hidden=(8, 8))
    frozen = FrozenReward(model)
    frozen(features)
    handle = model.network[0].register_forward_hook(lambda module, inputs, output: output)
    with torch.no_grad():
        model.network[0].weight.mul_(3)  # changed while the hook makes re-reading fail
    with pytest.raises(UnsupportedModuleError):
        frozen(features)
    handle.remove()
    with torch.no_grad():
        assert frozen(features).numpy() == pytest.approx(model(features).numpy(), abs=1e-5)
