"""Benchmark the runtime monitor: overhead, audit throughput, and cost against brute force.

1. **Overhead**: a reward model (MLP 64-w-w-1, w = 256, 1024, 2048) scores batches of
   64-dimensional states; the monitor (window 1024, drift detectors on) checks each batch.
   Reported: monitor time over the model's forward time, per width and batch size.
2. **Audit writes**: records per second appended to SQLite (WAL, synchronous=FULL) in batches
   of 10 000, and the time to verify the chain.
3. **Scaling**: every new batch of 8-dimensional observations checked against the whole history
   (window = stream length) by the monitor's pruned search and by brute force over all pairs
   (``lipguard.monitor.brute_force_violations``, the same arithmetic without pruning), as the
   history grows.

Medians of ``--repeats``. Writes ``monitor.json`` and ``monitor.md`` to ``--out``.

    python benchmarks/monitor.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from layers import machine
from lipguard.monitor import AuditStore, LipschitzMonitor, brute_force_violations


def _timed(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def overhead(repeats: int) -> list[dict]:
    """Monitor time over forward time, for reward models of growing width: the monitor's cost
    depends on the window and the batch, not on the model, so the ratio falls as models grow."""
    rows = []
    for width in (256, 1024, 2048):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
        ).eval()
        for batch in (256, 1024, 4096):
            rng = np.random.default_rng(0)
            monitor = LipschitzMonitor(50.0, window=1024)
            states = [
                torch.tensor(rng.normal(size=(batch, 64)), dtype=torch.float32)
                for _ in range(repeats + 4)
            ]
            with torch.inference_mode():
                rewards = [model(s)[:, 0] for s in states]  # also warms the model up
            for s, r in zip(states[:4], rewards[:4], strict=True):  # fill the window
                monitor.observe(s, r)
            forward, checking = [], []
            for s, r in zip(states[4:], rewards[4:], strict=True):
                with torch.inference_mode():
                    forward.append(_timed(lambda s=s, f=model: f(s), 1))
                checking.append(_timed(lambda s=s, r=r, m=monitor: m.observe(s, r), 1))
            f, c = statistics.median(forward), statistics.median(checking)
            rows.append(
                {
                    "width": width,
                    "batch": batch,
                    "forward_ms": 1e3 * f,
                    "monitor_ms": 1e3 * c,
                    "overhead": c / f,
                }
            )
            print(rows[-1])
    return rows


def audit(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        store = AuditStore(Path(folder) / "audit.db")
        batch = [("violation", {"step": i, "ratio": 1.5, "bound": 1.0}) for i in range(10_000)]
        store.append(batch)
        seconds = _timed(lambda: store.append(batch), repeats)
        verify = _timed(store.verify, 1)
        result = {
            "records_per_second": len(batch) / seconds,
            "records": store.count(),
            "verify_seconds": verify,
        }
    print(result)
    return result


def scaling(batches: int) -> list[dict]:
    rng = np.random.default_rng(1)
    w = rng.normal(size=8) / np.sqrt(8)
    monitor = LipschitzMonitor(2.0, window=10**9, drift=False)
    history_s, history_r, rows = np.zeros((0, 8)), np.zeros(0), []
    for index in range(batches):
        states = rng.normal(size=(512, 8))
        rewards = np.tanh(states @ w)
        started = time.perf_counter()
        monitor.observe(states, rewards)
        pruned = time.perf_counter() - started
        started = time.perf_counter()
        if len(history_s):
            brute_force_violations(states, rewards, history_s, history_r, 2.0)
        brute_force_violations(states, rewards, states, rewards, 2.0)
        brute = time.perf_counter() - started
        history_s, history_r = (
            np.concatenate([history_s, states]),
            np.concatenate([history_r, rewards]),
        )
        if index % max(1, batches // 8) == 0 or index == batches - 1:
            rows.append(
                {
                    "history": len(history_s),
                    "monitor_ms": 1e3 * pruned,
                    "brute_force_ms": 1e3 * brute,
                    "speedup": brute / pruned,
                }
            )
            print(rows[-1])
    return rows


def markdown(report) -> str:
    meta = report["meta"]
    lines = [
        "# Runtime monitor: overhead, audit throughput, scaling",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['threads']} "
        f"threads), torch {meta['machine']['torch']}; medians of {meta['repeats']} runs.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "## Overhead per batch (window 1024, 64-dim states, MLP 64-w-w-1, drift on)",
        "",
        "| width w | batch | model forward (ms) | monitor (ms) | overhead |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["overhead"]:
        lines.append(
            f"| {row['width']} | {row['batch']} | {row['forward_ms']:.2f} | "
            f"{row['monitor_ms']:.2f} | "
            f"{row['overhead']:.0%} |"
        )
    a = report["audit"]
    lines += [
        "",
        "## Audit store (SQLite, WAL, synchronous=FULL, batches of 10 000)",
        "",
        f"**{a['records_per_second']:,.0f} records/s** appended; verifying the chain of "
        f"{a['records']:,} records takes {a['verify_seconds']:.2f} s.",
        "",
        "## Checking each new batch against the whole history (8-dim states, 512 per batch)",
        "",
        "| history | monitor (ms) | brute force (ms) | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for row in report["scaling"]:
        lines.append(
            f"| {row['history']:,} | {row['monitor_ms']:.1f} | "
            f"{row['brute_force_ms']:.1f} | {row['speedup']:.1f}× |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    report = {
        "meta": {
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "repeats": args.repeats,
            "command": f"python benchmarks/monitor.py --repeats {args.repeats} "
            f"--batches {args.batches}",
        },
        "overhead": overhead(args.repeats),
        "audit": audit(args.repeats),
        "scaling": scaling(args.batches),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "monitor.json").write_text(json.dumps(report, indent=2))
    (args.out / "monitor.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
