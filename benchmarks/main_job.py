"""How long the main job takes: `lipguard run --quick` and the full default run, wall time and
peak memory, on an idle machine and while another process keeps one core busy.

The peer is the same run on torch's default thread count (as many threads as cores): the main
job runs its small networks (SB3 policies, 64×64 reward models) on one thread
(``lipguard._threads.small_network_threads``), and this measures what that choice buys, in one
run, as a ratio. Each configuration runs as a fresh ``lipguard run`` process (its peak resident
memory from ``wait4``); ``--repeats`` runs of each, medians reported. Writes ``main_job.json``
and ``main_job.md`` to ``--out``.

    python benchmarks/main_job.py                       # quick and full, idle and busy
    python benchmarks/main_job.py --runs quick --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

LIPGUARD = [sys.executable, "-m", "lipguard", "run"]
#: thread settings compared: lipguard's choice for the main job, and torch's default
THREADS = {"lipguard (1 thread)": "1", "torch default": str(os.cpu_count() or 1)}


def run_once(quick: bool, threads: str, busy: bool) -> dict[str, float | bool]:
    """One `lipguard run` in a fresh folder: wall seconds, peak RSS (MiB), whether it passed."""
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            command = [*LIPGUARD, "--out", str(Path(folder) / "run")] + (
                ["--quick"] if quick else []
            )
            environment = {**os.environ, "LIPGUARD_THREADS": threads}
            started = time.perf_counter()
            child = subprocess.Popen(
                command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.perf_counter() - started
            child.returncode = os.waitstatus_to_exitcode(status)
            errors = child.stderr.read().decode() if child.stderr else ""
    finally:
        if load is not None:
            load.kill()
            load.wait()
    if child.returncode not in (0, 1):  # 1: a check failed, the run itself finished
        raise RuntimeError(f"lipguard run failed ({child.returncode}): {errors[-2000:]}")
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "passed": child.returncode == 0}


def measure(
    runs: list[str], loads: list[str], repeats: int, peer_on: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        for load in loads:
            for name, threads in THREADS.items():
                if name == "torch default" and run not in peer_on:
                    continue
                samples = []
                for repeat in range(repeats):
                    sample = run_once(run == "quick", threads, load == "busy")
                    print(f"{run:5} {load:4} {name:20} #{repeat + 1}: {sample}", flush=True)
                    samples.append(sample)
                rows.append(
                    {
                        "run": run,
                        "load": load,
                        "threads": name,
                        "seconds": statistics.median(s["seconds"] for s in samples),
                        "peak_mib": statistics.median(s["peak_mib"] for s in samples),
                        "passed": all(s["passed"] for s in samples),
                        "samples": samples,
                    }
                )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | machine | threads | wall (s) | peak memory (MiB) | checks | vs torch default |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        peer = next(
            (
                other
                for other in rows
                if other["run"] == row["run"]
                and other["load"] == row["load"]
                and other["threads"] == "torch default"
            ),
            None,
        )
        ratio = (
            f"{float(peer['seconds']) / float(row['seconds']):.2f}× faster"
            if peer is not None and peer is not row
            else "—"
        )
        load = "idle" if row["load"] == "idle" else "one core busy"
        lines.append(
            f"| {row['run']} | {load} | {row['threads']} | {float(row['seconds']):.0f} | "
            f"{float(row['peak_mib']):.0f} | {'pass' if row['passed'] else 'FAIL'} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="quick,full", help="quick, full or both")
    parser.add_argument("--loads", default="idle,busy", help="idle, busy or both")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--peer-on", default="quick,full", help="runs also measured on torch's default threads"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    rows = measure(
        args.runs.split(","), args.loads.split(","), args.repeats, args.peer_on.split(",")
    )
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    (args.out / "main_job.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = (
        "# The main job: wall time and memory\n\n"
        f"{meta['date']}, {meta['machine']}, Python {meta['python']}, torch {meta['torch']}; "
        f"`{meta['command']}` (median of {args.repeats} run(s) each). *one core busy*: another "
        "process spins on one core throughout. *torch default*: the same run with "
        "`LIPGUARD_THREADS` set to the core count (torch's own default), the peer of lipguard's "
        "one-thread choice for the main job's small networks.\n\n" + table(rows) + "\n"
    )
    (args.out / "main_job.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
