"""``lipguard run``: the whole system of seed 000 on one environment, end to end.

1. collect transitions; train an unconstrained, a Lipschitz-constrained and (optionally) an
   AAJR-regularised reward model;
2. certify each (proven upper bound, witnessed lower bound, certificate files);
3. stress-test each: reward attacks (max |Δr| vs ε) and randomized-smoothing bounds;
4. train a policy on the true reward and on each learned reward; measure true return,
   reward-hacking gap, discontinuity rate and return under attacks;
5. deploy the constrained model under the monitor with noise and a planted fault; audit log;
6. write ``results.json`` and ``report.html`` to the output folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch

import lipguard
from lipguard.pipeline import report
from lipguard.pipeline.config import RunConfig
from lipguard.pipeline.fault import monitor_with_fault
from lipguard.pipeline.policies import train_and_report
from lipguard.pipeline.rewards import certify_rewards, collect, stress_rewards, train_rewards

#: a stage tracker: ``track(description, total)`` is a context manager yielding ``advance()``
Tracker = Callable[[str, int], AbstractContextManager[Callable[[], None]]]


@contextmanager
def _silent(description: str, total: int) -> Iterator[Callable[[], None]]:
    yield lambda: None


def checks(results: dict) -> dict[str, bool]:
    """The run's acceptance checks, as sentences with their outcome."""
    config, rewards = results["config"], results["rewards"]
    constrained = rewards["lipschitz"]
    policy = results["policies"]["lipschitz"]
    monitor = results["monitor"]
    return {
        f"constrained reward model certified L = {constrained['certified_lipschitz']:.4f} <= "
        f"target {config['lipschitz']:g}": constrained["certified_lipschitz"]
        <= config["lipschitz"],
        f"its largest gradient on the policy's states ({policy['max_reward_gradient']:.3f}) <= "
        "its certified L": policy["max_reward_gradient"] <= constrained["certified_lipschitz"],
        "no reward attack beat L·ε on the constrained model": all(
            shift <= constrained["certified_lipschitz"] * eps + 1e-5
            for eps, shift in zip(
                results["stress"]["lipschitz"]["epsilons"],
                results["stress"]["lipschitz"]["max_shift"],
                strict=True,
            )
        ),
        "no monitor alarm before the planted fault": monitor["false_alarms_before_fault"] == 0,
        "the monitor found the planted fault": monitor["fault_detected"],
        "the audit log verifies": monitor["audit_verified"],
    }


def run_pipeline(config: RunConfig, out: Path, track: Tracker = _silent) -> dict:
    """Run every stage, write ``results.json`` and ``report.html`` into ``out``; returns the
    results dictionary."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    timings = {}

    @contextmanager
    def stage(name: str, total: int = 1) -> Iterator[Callable[[], None]]:
        began = time.perf_counter()
        with track(name, total) as advance:
            yield advance
        timings[name] = time.perf_counter() - began

    with stage("collect transitions") as advance:
        data = collect(config)
        advance()
    with stage("train reward models") as advance:
        models = train_rewards(config, data)
        advance()
    with stage("certify") as advance:
        rewards = certify_rewards(config, models, data, out / "certificates")
        advance()
    with stage("stress tests") as advance:
        stress = stress_rewards(config, models, data)
        advance()
    with stage("train policies", len(models) + 1) as advance:
        policies, trained = train_and_report(config, models, advance)
    with stage("monitor + planted fault") as advance:
        monitor = monitor_with_fault(
            config,
            models["lipschitz"],
            rewards["lipschitz"]["certified_lipschitz"],
            trained["lipschitz"],
            data,
            out / "audit.db",
        )
        advance()
    results = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "lipguard": lipguard.__version__,
            "torch": torch.__version__,
            "seconds": 0.0,
            "stage_seconds": timings,
        },
        "config": dataclasses.asdict(config),
        "rewards": rewards,
        "stress": stress,
        "policies": policies,
        "monitor": monitor,
    }
    results["checks"] = checks(results)
    with stage("report") as advance:
        results["meta"]["seconds"] = time.perf_counter() - started
        (out / "results.json").write_text(json.dumps(results, indent=2))
        page = report.render({**results, "plots": report.plots(results)})
        (out / "report.html").write_text(page)
        advance()
    return results
