"""Lipschitz-aware exploration: safety violations of TD3 on Pendulum-v1 with a torque limit.

For each seed:

1. collect ``--transitions`` transitions with uniformly random torques and label them with the
   true reward minus a penalty on large torques, ``--penalty · max(0, |u| - --soft-limit)``
   (the learned reward is steep near the unsafe region); fit an ensemble of three
   :class:`lipguard.nn.LipschitzMLP` reward models (certified ``<= --lipschitz``, ℓ2) on it;
2. train TD3 for ``--timesteps`` on the ensemble's mean reward (behind
   :class:`lipguard.rl.LearnedRewardVecEnv`) twice, same seed: constant Gaussian action noise
   ``σ₀ = --sigma`` (baseline) and :class:`lipguard.rl.exploration.LipschitzAwareNoise`
   (``σ(s) = clip(σ₀ / (1 + α·L(s) + β·u(s)), σ_min, σ₀)``, sampled gradient estimate), and a
   control: constant noise at the Lipschitz-aware run's mean σ after warm-up (same seed), which
   separates *where* the noise is shrunk from *how much* it is shrunk on average;
3. count safety violations during learning (``|torque| > --limit``, of max 2:
   :class:`lipguard.rl.exploration.ConstraintViolations`), in all and after ``--learning-starts``
   (the warm-up acts uniformly at random in both variants), and evaluate the final deterministic
   policy over ``--episodes`` episodes on the true reward (return and violations).

Medians over seeds; writes ``exploration.json`` and ``exploration.md``.

    python benchmarks/exploration.py
    python benchmarks/exploration.py --seeds 1 --timesteps 2000   # quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise

sys.path.insert(0, str(Path(__file__).parent))
from layers import machine
from lipguard.rl import (
    EnsembleReward,
    LearnedRewardVecEnv,
    build_reward_model,
    collect_transitions,
    fit_reward,
    reward_features,
)
from lipguard.rl.exploration import (
    ConstraintViolations,
    LipschitzAwareExploration,
    LipschitzAwareNoise,
    torque_limit,
)

ENV = "Pendulum-v1"
VARIANTS = ("constant", "lipschitz_aware", "constant_matched")


class ViolationSplit(BaseCallback):
    """Counts ``info["violation"]`` during the warm-up and after it."""

    def __init__(self, learning_starts: int) -> None:
        super().__init__()
        self.learning_starts = learning_starts
        self.warmup = 0
        self.learning = 0

    def _on_step(self) -> bool:
        count = sum(bool(info.get("violation", False)) for info in self.locals["infos"])
        if self.num_timesteps <= self.learning_starts:
            self.warmup += count
        else:
            self.learning += count
        return True


def learn_reward(seed: int, args) -> EnsembleReward:
    transitions = collect_transitions(ENV, args.transitions, seed=seed, progress=False)
    features = reward_features(transitions.observations, transitions.actions)
    torque = np.abs(transitions.actions[:, 0])
    penalty = args.penalty * np.maximum(0.0, torque - args.soft_limit)
    rewards = torch.as_tensor(transitions.rewards - penalty, dtype=torch.float32)
    members = []
    for member in range(3):
        model = build_reward_model(
            features, rewards, lipschitz=args.lipschitz, hidden=(64, 64), seed=100 * seed + member
        )
        fit_reward(
            model,
            features,
            rewards,
            epochs=args.reward_epochs,
            seed=100 * seed + member,
            progress=False,
        )
        members.append(model.eval())
    return EnsembleReward(members, k=0.0)  # the mean: pessimism would change both variants


def evaluate_true(model: TD3, seed: int, args) -> tuple[float, float]:
    env = ConstraintViolations(gym.make(ENV), torque_limit(args.limit))
    returns = []
    for episode in range(args.episodes):
        observation, _ = env.reset(seed=10_000 + 100 * seed + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(observation, deterministic=True)
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), env.violations / env.steps


def run(variant: str, reward: EnsembleReward, seed: int, args, sigma: float) -> dict:
    env = make_vec_env(
        ENV,
        n_envs=1,
        seed=seed,
        wrapper_class=ConstraintViolations,
        wrapper_kwargs={"violates": torque_limit(args.limit)},
    )
    venv = LearnedRewardVecEnv(env, reward)
    box = venv.action_space
    assert isinstance(box, gym.spaces.Box)
    noise: ActionNoise
    callbacks: list[BaseCallback] = [ViolationSplit(args.learning_starts)]
    if variant != "lipschitz_aware":
        noise = NormalActionNoise(np.zeros(1), np.full(1, sigma))
    else:
        noise = LipschitzAwareNoise(
            reward,
            box.low,
            box.high,
            sigma=args.sigma,
            sigma_min=args.sigma_min,
            alpha=args.alpha,
            beta=args.beta,
            radius=args.radius,
            probes=args.probes,
            seed=seed,
        )
        callbacks.append(LipschitzAwareExploration(noise))
    model = TD3(
        "MlpPolicy",
        venv,
        action_noise=noise,
        learning_rate=1e-3,
        learning_starts=args.learning_starts,
        gamma=0.98,
        policy_kwargs={"net_arch": [64, 64]},
        seed=seed,
    )
    started = time.perf_counter()
    model.learn(args.timesteps, callback=callbacks)
    seconds = time.perf_counter() - started
    split = callbacks[0]
    assert isinstance(split, ViolationSplit)
    total = int(sum(env.get_attr("violations")))
    true_return, eval_rate = evaluate_true(model, seed, args)
    row = {
        "variant": variant,
        "seed": seed,
        "sigma": sigma,
        "violations": total,
        "violations_warmup": split.warmup,
        "violations_after_warmup": split.learning,
        "true_return": true_return,
        "eval_violation_rate": eval_rate,
        "training_seconds": seconds,
    }
    if len(callbacks) == 2:
        history = callbacks[1].history  # type: ignore[attr-defined]
        learning = [row for row in history if row["timesteps"] > args.learning_starts]
        row["mean_sigma"] = float(np.mean([h["sigma"] for h in learning]))
        row["median_lipschitz"] = float(np.median([h["lipschitz"] for h in learning]))
        row["median_uncertainty"] = float(np.median([h["uncertainty"] for h in learning]))
        row["share_at_sigma_min"] = float(
            np.mean([h["sigma"] <= args.sigma_min + 1e-9 for h in learning])
        )
    print(row, flush=True)
    return row


def summarise(rows: list[dict]) -> list[dict]:
    summary = []
    for variant in VARIANTS:
        group = [row for row in rows if row["variant"] == variant]
        if not group:
            continue
        medians: dict = {"variant": variant, "seeds": len(group)}
        for key in group[0]:
            if key not in ("variant", "seed"):
                medians[key] = statistics.median(row[key] for row in group)
        summary.append(medians)
    return summary


def ratios(rows: list[dict], against: str) -> dict:
    """Per seed: Lipschitz-aware / ``against`` (violations), and the true-return difference."""
    by_seed = {(row["variant"], row["seed"]): row for row in rows}
    per_seed = []
    for seed in sorted({row["seed"] for row in rows}):
        base, aware = by_seed[(against, seed)], by_seed[("lipschitz_aware", seed)]
        per_seed.append(
            {
                "seed": seed,
                "violations_after_warmup": aware["violations_after_warmup"]
                / max(base["violations_after_warmup"], 1),
                "violations": aware["violations"] / max(base["violations"], 1),
                "return_difference": aware["true_return"] - base["true_return"],
            }
        )
    return {
        "against": against,
        "per_seed": per_seed,
        "median_violations_after_warmup": statistics.median(
            r["violations_after_warmup"] for r in per_seed
        ),
        "median_violations": statistics.median(r["violations"] for r in per_seed),
        "median_return_difference": statistics.median(r["return_difference"] for r in per_seed),
    }


def _sigma(row: dict) -> float:
    return row.get("mean_sigma", row["sigma"])


def markdown(report: dict) -> str:
    meta, args = report["meta"], report["meta"]["settings"]
    lines = [
        "# Lipschitz-aware exploration on Pendulum-v1 (TD3, torque limit)",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['threads']} "
        f"thread), torch {meta['machine']['torch']}; {args['seeds']} seeds; total "
        f"{meta['seconds']:.0f} s.",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Reward: ensemble mean of 3 LipschitzMLP reward models (certified ≤ {args['lipschitz']}) "
        f"fitted for {args['reward_epochs']} epochs on {args['transitions']} random-torque "
        f"transitions labelled `r - {args['penalty']}·max(0, |u| - {args['soft_limit']})`. "
        f"Violation: |u| > {args['limit']} (max 2). TD3 {args['timesteps']} steps (first "
        f"{args['learning_starts']} uniformly random torques, plus the noise), σ₀ = "
        f"{args['sigma']} (SB3 scaled units, ×2 in torque); Lipschitz-aware: σ_min = "
        f"{args['sigma_min']}, α = {args['alpha']}, β = {args['beta']}, {args['probes']} probes "
        f"within {args['radius']} of π(s) (sampled gradient estimate, heuristic). "
        "`constant_matched`: constant noise at the Lipschitz-aware run's mean σ after warm-up "
        f"(same seed). True return: deterministic policy, {args['episodes']} episodes, true "
        "reward.",
        "",
        "## Medians over seeds",
        "",
        "| noise | violations (all) | after warm-up | true return | eval violation rate | "
        "mean σ | training s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["summary"]:
        lines.append(
            f"| {row['variant']} | {row['violations']:.0f} | {row['violations_after_warmup']:.0f}"
            f" | {row['true_return']:.1f} | {row['eval_violation_rate']:.1%} | "
            f"{_sigma(row):.3f} | {row['training_seconds']:.0f} |"
        )
    lines.append("")
    for ratio in report["ratios"]:
        lines.append(
            f"Lipschitz-aware / {ratio['against']}, median over seeds of the per-seed ratio: "
            f"violations after warm-up {ratio['median_violations_after_warmup']:.2f}, all "
            f"violations {ratio['median_violations']:.2f}; true-return difference "
            f"{ratio['median_return_difference']:+.1f}."
        )
        lines.append("")
    lines += [
        "## Per seed",
        "",
        "| seed | noise | violations (all) | after warm-up | true return | mean σ | "
        "median L(s) | median u(s) | share at σ_min |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["runs"]:
        aware = "mean_sigma" in row
        extra = (
            f"{row['median_lipschitz']:.2f} | {row['median_uncertainty']:.3f} | "
            f"{row['share_at_sigma_min']:.0%} |"
            if aware
            else "— | — | — |"
        )
        lines.append(
            f"| {row['seed']} | {row['variant']} | {row['violations']} | "
            f"{row['violations_after_warmup']} | {row['true_return']:.1f} | "
            f"{_sigma(row):.3f} | {extra}"
        )
    return "\n".join(lines) + "\n"


def _flag(item: tuple[str, object]) -> str:
    name, value = item[0].replace("_", "-"), item[1]
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=7000)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--transitions", type=int, default=3000)
    parser.add_argument("--reward-epochs", type=int, default=30)
    parser.add_argument("--lipschitz", type=float, default=25.0)
    parser.add_argument("--penalty", type=float, default=10.0)
    parser.add_argument("--soft-limit", type=float, default=1.25)
    parser.add_argument("--limit", type=float, default=1.5)
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--sigma-min", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--radius", type=float, default=0.25)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--matched", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        reward = learn_reward(seed, args)
        rows.append(run("constant", reward, seed, args, args.sigma))
        rows.append(run("lipschitz_aware", reward, seed, args, args.sigma))
        if args.matched:
            rows.append(run("constant_matched", reward, seed, args, rows[-1]["mean_sigma"]))
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    report = {
        "meta": {
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "settings": settings,
            "seconds": time.perf_counter() - started,
            "command": "python benchmarks/exploration.py " + " ".join(map(_flag, settings.items())),
        },
        "runs": rows,
        "summary": summarise(rows),
        "ratios": [
            ratios(rows, against)
            for against in ("constant", "constant_matched")
            if any(row["variant"] == against for row in rows)
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "exploration.json").write_text(json.dumps(report, indent=2))
    (args.out / "exploration.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
