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
from lipguard._threads import small_network_threads
from lipguard.errors import InvalidArgumentError
from lipguard.pipeline import report
from lipguard.pipeline.config import Reward, RunConfig
from lipguard.pipeline.fault import monitor_with_fault
from lipguard.pipeline.policies import train_and_report
from lipguard.pipeline.results import RunMeta, RunResults
from lipguard.pipeline.rewards import certify_rewards, collect, stress_rewards, train_rewards
from lipguard.results import Check, Report

#: a stage tracker: ``track(description, total)`` is a context manager yielding ``advance()``
Tracker = Callable[[str, int], AbstractContextManager[Callable[[], None]]]

#: slack of the attack check: PGD's float32 arithmetic may overshoot ``L·ε`` by rounding
_ATTACK_SLACK = 1e-5


@contextmanager
def _silent(description: str, total: int) -> Iterator[Callable[[], None]]:
    yield lambda: None


def checks(results: RunResults) -> Report:
    """The run's acceptance checks on the constrained model, its policy and the monitor
    (``results.checks`` is not read)."""
    target = results.config.lipschitz
    bound = results.rewards[Reward.LIPSCHITZ].certified_lipschitz
    gradient = results.policies[Reward.LIPSCHITZ].max_reward_gradient
    stress = results.stress[Reward.LIPSCHITZ]
    curve = list(zip(stress.epsilons, stress.max_shift, strict=True))
    ratios = [(shift / (bound * eps), eps) for eps, shift in curve if bound * eps > 0]
    worst = f"max |Δr| / (L·ε) = {max(ratios)[0]:.3g} at ε = {max(ratios)[1]:g}" if ratios else ""
    monitor = results.monitor
    hashed = (
        "the weight hash unchanged"
        if monitor.first_hash_alarm_after_fault is None
        else f"a weight-hash alarm at step {monitor.first_hash_alarm_after_fault}"
    )
    found = (
        f"first pair or gradient alarm at step {monitor.first_alarm_after_fault}, "
        f"{monitor.detection_delay} steps after the fault; {hashed}"
        if monitor.fault_detected
        else f"no pair or gradient alarm after step {monitor.fault_step}; {hashed}"
    )
    return Report.of(
        [
            Check.of(
                "the constrained reward model's certified L is within its target",
                bound <= target,
                f"L = {bound:.4f}, target {target:g}",
            ),
            Check.of(
                "its largest gradient on the policy's states is within its certified L",
                gradient <= bound,
                f"{gradient:.3f} vs L = {bound:.4f}",
            ),
            Check.of(
                "no reward attack beat L·ε on the constrained model",
                all(shift <= bound * eps + _ATTACK_SLACK for eps, shift in curve),
                worst,
            ),
            Check.of(
                "no monitor alarm before the planted fault",
                monitor.false_alarms_before_fault == 0,
                f"{monitor.false_alarms_before_fault} alarms before step {monitor.fault_step}",
            ),
            Check.of(
                "the monitor found the planted fault from what it observed",
                monitor.fault_detected,
                found,
            ),
            Check.of(
                "the audit log verifies",
                monitor.audit_verified,
                f"{monitor.audit_records} records, head {monitor.audit_head}",
            ),
        ]
    )


def run_pipeline(
    config: RunConfig, out: Path, track: Tracker = _silent, *, overwrite: bool = False
) -> RunResults:
    """Run every stage, write ``results.json``, ``report.html``, the certificates and the audit
    log into ``out``; returns the run's :class:`RunResults` (checks included).

    Nothing is lost: a non-empty ``out`` is refused unless ``overwrite``; the run writes into a
    fresh folder beside ``out`` and only a finished run replaces ``out`` (a run that fails or is
    killed half-way leaves the previous results as they were).

    The stages run on one torch thread (``LIPGUARD_THREADS=n`` for n): their networks are small,
    and on a 2-core machine torch's default threads made SB3 several times slower."""
    with staged_folder(out, overwrite) as staging, small_network_threads():
        results = _run(config, staging, track)
        monitor = dataclasses.replace(results.monitor, audit_path=str(out / "audit.db"))
        results = dataclasses.replace(results, monitor=monitor)
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


def _run(config: RunConfig, out: Path, track: Tracker) -> RunResults:
    """Every stage in order, timed; the results with their checks."""
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    timings: dict[str, float] = {}

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
            models[Reward.LIPSCHITZ],
            rewards[Reward.LIPSCHITZ].certified_lipschitz,
            trained[Reward.LIPSCHITZ],
            data,
            out / "audit.db",
        )
        advance()
    meta = RunMeta(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        lipguard=lipguard.__version__,
        torch=torch.__version__,
        seconds=0.0,
        stage_seconds=timings,
    )
    results = RunResults(meta, config, data.summary(), rewards, stress, policies, monitor)
    meta = dataclasses.replace(meta, seconds=time.perf_counter() - started)
    return dataclasses.replace(results, meta=meta, checks=checks(results))


def _write_results(results: RunResults, out: Path, track: Tracker) -> None:
    """``results.json`` and ``report.html`` in ``out``."""
    with track("report", 1) as advance:
        (out / "results.json").write_text(json.dumps(results.to_dict(), indent=2))
        (out / "report.html").write_text(report.render(results))
        advance()
