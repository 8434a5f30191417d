"""Reward hacking and stability of policies trained on true, unconstrained and Lipschitz rewards.

For each seed, on Pendulum-v1 (ships with Gymnasium):

1. collect ``--transitions`` transitions with uniformly random torques and learn the reward
   ``r(s, a)`` from the observed rewards twice: an unconstrained ReLU MLP and a
   :class:`lipguard.nn.LipschitzMLP` whose whole model (standardisation included) is certified
   ``<= --lipschitz`` (ℓ2);
2. train SB3 SAC for ``--timesteps`` on the true reward, on the unconstrained learned reward and
   on the Lipschitz learned reward (behind :class:`lipguard.rl.LearnedRewardVecEnv`);
3. evaluate each policy over ``--episodes`` seeded episodes: true return; return under its own
   reward and the gap (reward hacking); the largest reward gradient over the visited (s, a)
   (the true reward's own for the true-reward policy); the behavioral discontinuity rate
   (ℓ∞ ``--eps`` on observations moving the torque by more than ``--tau``); the true return under
   random noise, MAD (PGD maximising the action change) and a reward attack (PGD minimising the
   policy's reward model; the true reward, written in torch, for the true-reward policy), all
   ℓ∞ ``--eps``.

Also measures the learned-reward wrapper's overhead over a plain ``DummyVecEnv`` step for 1, 16
and 64 environments (batched reward calls) with the first seed's Lipschitz reward, as the machine
is and with one more process spinning. Medians over seeds; writes ``rl.json`` and ``rl.md``.

    python benchmarks/rl_reward_hacking.py
    python benchmarks/rl_reward_hacking.py --seeds 1 --timesteps 2000   # quick
    python benchmarks/rl_reward_hacking.py --only wrapper   # the overhead only, into the reports
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from layers import machine
from lipguard.rl import (
    LearnedRewardVecEnv,
    build_reward_model,
    collect_transitions,
    fit_reward,
    policy_report,
    reward_features,
    train_policy,
)

ENV = "Pendulum-v1"
#: the settings a full run records (and its command repeats)
SETTINGS = (
    "seeds",
    "timesteps",
    "transitions",
    "reward_epochs",
    "lipschitz",
    "episodes",
    "eps",
    "tau",
    "repeats",
)
SAC_SETTINGS = {"learning_rate": 1e-3, "policy_kwargs": {"net_arch": [64, 64]}}


class PendulumReward(nn.Module):
    """Pendulum-v1's reward on (cos θ, sin θ, θ̇, u): ``-(θ² + 0.1·θ̇² + 0.001·u²)``, u clipped."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cos, sin, velocity, torque = features.unbind(1)
        angle = torch.atan2(sin, cos)
        return -(angle**2 + 0.1 * velocity**2 + 0.001 * torque.clamp(-2, 2) ** 2)


def learn_rewards(seed: int, args) -> dict[str, nn.Module]:
    transitions = collect_transitions(ENV, args.transitions, seed=seed, progress=False)
    features = reward_features(transitions.observations, transitions.actions)
    rewards = torch.as_tensor(transitions.rewards, dtype=torch.float32)
    models = {}
    for kind in ("unconstrained", "lipschitz"):
        model = build_reward_model(
            features, rewards, kind=kind, lipschitz=args.lipschitz, hidden=(64, 64), seed=seed
        )
        fit_reward(model, features, rewards, epochs=args.reward_epochs, seed=seed, progress=False)
        models[kind] = model.eval()
    return models


def measure(name: str, reward: nn.Module | None, seed: int, args) -> dict:
    started = time.perf_counter()
    model = train_policy(
        ENV,
        algorithm="SAC",
        timesteps=args.timesteps,
        reward=reward,
        seed=seed,
        hyperparameters=SAC_SETTINGS,
        progress=False,
    )
    row = {
        "reward": name,
        "seed": seed,
        "training_seconds": time.perf_counter() - started,
        "certified_lipschitz": reward.certified_lipschitz().value if reward is not None else None,
    }
    row |= policy_report(
        model,
        ENV,
        critic=reward if reward is not None else PendulumReward(),
        own_reward=reward,
        eps=args.eps,
        tau=args.tau,
        episodes=args.episodes,
        seed=seed,
    )
    print(row, flush=True)
    return row


@contextlib.contextmanager
def busy_core(busy: bool) -> Iterator[None]:
    """With ``busy``, one more process spins on a core while the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def wrapper_overhead(reward: nn.Module, repeats: int) -> list[dict]:
    """Seconds per step of a plain ``DummyVecEnv`` and of the same environments behind
    :class:`LearnedRewardVecEnv`, as the machine is and with one more process spinning on a core;
    the two are timed in turns (256 steps each, ``repeats`` turns) and the medians compared, so
    drift hits both alike."""
    rows = []
    for busy in (False, True):
        for n_envs in (1, 16, 64):
            envs = {}
            for wrapped in (False, True):
                env = make_vec_env(ENV, n_envs=n_envs, seed=0)
                envs[wrapped] = LearnedRewardVecEnv(env, reward) if wrapped else env
                envs[wrapped].reset()
            actions = np.random.default_rng(0).uniform(-2, 2, size=(256, n_envs, 1))
            actions = actions.astype(np.float32)
            samples: dict[bool, list[float]] = {False: [], True: []}
            with busy_core(busy):
                for _ in range(repeats):
                    for wrapped, env in envs.items():
                        started = time.perf_counter()
                        for action in actions:
                            env.step(action)
                        samples[wrapped].append((time.perf_counter() - started) / len(actions))
            for env in envs.values():
                env.close()
            times = {wrapped: statistics.median(values) for wrapped, values in samples.items()}
            rows.append(
                {
                    "n_envs": n_envs,
                    "one_core_busy": busy,
                    "step_us": 1e6 * times[False],
                    "wrapped_step_us": 1e6 * times[True],
                    "overhead": times[True] / times[False] - 1.0,
                }
            )
            print(rows[-1], flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    summary = []
    for name in ("true", "unconstrained", "lipschitz"):
        group = [row for row in rows if row["reward"] == name]
        medians = {"reward": name, "seeds": len(group)}
        for key in group[0]:
            if key in ("reward", "seed"):
                continue
            values = [row[key] for row in group if row[key] is not None]
            medians[key] = statistics.median(values) if values else None
        summary.append(medians)
    return summary


def _cell(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    meta, args = report["meta"], report["meta"]["settings"]
    lines = [
        "# Reward hacking and stability on Pendulum-v1 (SAC)",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['threads']} "
        f"threads), torch {meta['machine']['torch']}; medians over {args['seeds']} seeds.",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Rewards learned from {args['transitions']} random-torque transitions; SAC "
        f"{args['timesteps']} steps; evaluation over {args['episodes']} episodes; attacks ℓ∞ "
        f"ε = {args['eps']} on observations; discontinuity: torque change > τ = {args['tau']}.",
        "",
        "| policy trained on | certified L | max ‖∇r‖ seen | true return | own-reward return | "
        "gap | discontinuity | return: random | MAD | reward attack |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["summary"]:
        lines.append(
            f"| {row['reward']} | {_cell(row['certified_lipschitz'], 2)} | "
            f"{_cell(row['max_reward_gradient'], 2)} | {_cell(row['true_return'])} | "
            f"{_cell(row['own_reward_return'])} | {_cell(row['reward_gap'])} | "
            f"{row['discontinuity_rate']:.1%} | {_cell(row['return_random'])} | "
            f"{_cell(row['return_mad'])} | {_cell(row['return_reward_attack'])} |"
        )
    overhead = report["wrapper_overhead"]
    wrapper_meta = overhead["meta"]
    lines += [
        "",
        "## Learned-reward wrapper overhead (one batched reward call per step)",
        "",
        f"Measured {wrapper_meta['date']} on {wrapper_meta['machine']['cpu']} "
        f"({wrapper_meta['machine']['threads']} threads), torch "
        f"{wrapper_meta['machine']['torch']}: `{wrapper_meta['command']}`. The first seed's "
        "Lipschitz reward on Pendulum-v1; plain and wrapped environments stepped in turns "
        f"({wrapper_meta['repeats']} turns of 256 steps), medians; extra load: another process "
        "spins on a core meanwhile; the machine's 1-minute load average before the run: "
        f"{wrapper_meta['load_average']:.1f}.",
        "",
        "| environments | extra load | plain step (µs) | with learned reward (µs) | overhead |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in overhead["rows"]:
        lines.append(
            f"| {row['n_envs']} | {'a spinning process' if row['one_core_busy'] else 'none'} | "
            f"{row['step_us']:.0f} | {row['wrapped_step_us']:.0f} | {row['overhead']:+.0%} |"
        )
    return "\n".join(lines) + "\n"


def command(args: argparse.Namespace, keys: tuple[str, ...]) -> str:
    """The command line that repeats a run with these settings."""
    settings = vars(args)
    return "python benchmarks/rl_reward_hacking.py " + " ".join(
        f"--{key.replace('_', '-')} {settings[key]}" for key in keys
    )


def overhead_section(args: argparse.Namespace, reward: nn.Module) -> dict:
    """The wrapper-overhead rows with the date, machine and command that produced them."""
    keys = ("only", "transitions", "reward_epochs", "lipschitz", "repeats")
    return {
        "meta": {
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "repeats": args.repeats,
            "load_average": os.getloadavg()[0],  # other work on the machine, before the run
            "command": command(args, keys if args.only else SETTINGS),
        },
        "rows": wrapper_overhead(reward, args.repeats),
    }


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rl.json").write_text(json.dumps(report, indent=2))
    (out / "rl.md").write_text(markdown(report))
    print(markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=8000)
    parser.add_argument("--transitions", type=int, default=4000)
    parser.add_argument("--reward-epochs", type=int, default=40)
    parser.add_argument("--lipschitz", type=float, default=8.0)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument(
        "--only",
        choices=("wrapper",),
        help="measure only the wrapper's overhead (seed 0's reward) and rewrite that section of "
        "rl.md and its key of rl.json, keeping the rest",
    )
    args = parser.parse_args()
    if args.only:
        path = args.out / "rl.json"
        if not path.is_file():
            print(f"error: --only wrapper updates {path}, which does not exist", file=sys.stderr)
            raise SystemExit(2)
        report = json.loads(path.read_text())
        report["wrapper_overhead"] = overhead_section(args, learn_rewards(0, args)["lipschitz"])
        write(report, args.out)
        return
    rows, overhead = [], None
    for seed in range(args.seeds):
        rewards = learn_rewards(seed, args)
        if overhead is None:
            overhead = overhead_section(args, rewards["lipschitz"])
        for name, reward in (("true", None), *rewards.items()):
            rows.append(measure(name, reward, seed, args))
    report = {
        "meta": {
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "settings": {key: vars(args)[key] for key in SETTINGS},
            "command": command(args, SETTINGS),
        },
        "runs": rows,
        "summary": summarise(rows),
        "wrapper_overhead": overhead,
    }
    write(report, args.out)


if __name__ == "__main__":
    main()
