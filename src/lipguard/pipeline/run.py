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
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch

import lipguard
from lipguard.errors import InvalidArgumentError
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


def run_pipeline(
    config: RunConfig, out: Path, track: Tracker = _silent, *, overwrite: bool = False
) -> dict:
    """Run every stage, write ``results.json``, ``report.html``, the certificates and the audit
    log into ``out``; returns the results dictionary.

    Nothing is lost: a non-empty ``out`` is refused unless ``overwrite``; the run writes into a
    fresh folder beside ``out`` and only a finished run replaces ``out`` (a run that fails or is
    killed half-way leaves the previous results as they were)."""
    with staged_folder(out, overwrite) as staging:
        results = _run(config, staging, track)
        results["monitor"]["audit_path"] = str(out / "audit.db")
        _write_results(results, staging, track)
    return results


@contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """A new folder beside ``out`` that replaces ``out`` when the block succeeds and is removed
    when it raises."""
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidArgumentError(
            f"{out} already holds results; pass --overwrite to replace them, or another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder the user made for the run
    if out.exists() and not overwrite:  # another run finished there meanwhile: keep both
        raise InvalidArgumentError(f"{out} filled during the run; this run's results: {staging}")
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(retired / out.name)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)


def _run(config: RunConfig, out: Path, track: Tracker) -> dict:
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
    results["meta"]["seconds"] = time.perf_counter() - started
    return results


def _write_results(results: dict, out: Path, track: Tracker) -> None:
    with track("report", 1) as advance:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        page = report.render({**results, "plots": report.plots(results)})
        (out / "report.html").write_text(page)
        advance()
