"""Scaling out with torchrun: throughput for 1 and 2 ranks (more where cores allow) and the
scaling efficiency, on the CPU (gloo).

Each measurement is a fresh ``torchrun --nproc_per_node=N`` run of this script in ``--child``
mode with one torch thread per rank, so N ranks use N cores; the single-rank run is the peer
the ratios refer to. Tasks:

- ``fit``: data-parallel training (``lipguard.train.fit`` under DDP) of an MLP on
  scikit-learn's digits with the AAJR regularizer; samples per second over the epochs.
- ``certify``: randomized-smoothing certification of a data set (``SmoothedClassifier.certify``,
  its inputs sharded over ranks); inputs per second.
- ``certify-one``: one input certified with n = 100,000 (fewer inputs than ranks: the noise
  sample blocks are sharded instead); noisy samples per second.

Writes ``distributed.json`` and ``distributed.md`` to ``--out``.

    python benchmarks/distributed.py                 # 1 and 2 ranks
    python benchmarks/distributed.py --ranks 1 2 4   # more, where cores allow
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TASKS = ("fit", "certify", "certify-one")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child(task: str, out: Path) -> None:
    """One measurement inside torchrun; rank 0 writes ``{"seconds", "items"}`` to ``out``."""
    from sklearn.datasets import load_digits
    from torch import nn

    from lipguard import distributed
    from lipguard.train import fit

    torch.set_num_threads(1)
    distributed.initialise()
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    if task == "fit":
        model = nn.Sequential(
            nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )
        epochs = 5
        distributed.barrier()
        started = time.perf_counter()
        fit(
            model,
            (x, y),
            regularizer="aajr",
            epochs=epochs,
            batch_size=256,
            progress=False,
            validation_fraction=0.1,
        )
        distributed.barrier()
        seconds = time.perf_counter() - started
        items = epochs * int(len(x) * 0.9)
    else:
        from lipguard.smoothing import SmoothedClassifier

        if task == "certify":
            model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
        else:  # one input: a model whose samples are worth sharding
            layers = [nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU()]
            model = nn.Sequential(*layers, nn.Linear(1024, 10)).eval()
        smoothed = SmoothedClassifier(model, num_classes=10, sigma=0.25, seed=0)
        inputs, n = (x[:256], 10_000) if task == "certify" else (x[:1], 100_000)
        distributed.barrier()
        started = time.perf_counter()
        smoothed.certify(inputs, n0=100, n=n, alpha=0.001, batch_size=2000)
        distributed.barrier()
        seconds = time.perf_counter() - started
        items = len(inputs) if task == "certify" else n
    if distributed.is_main():
        out.write_text(json.dumps({"seconds": seconds, "items": items}))


def measure(task: str, ranks: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={ranks}",
            "--master_port",
            str(_free_port()),
            __file__,
            "--child",
            task,
            "--child-out",
            str(out),
        ]
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(
            command,
            check=True,
            timeout=1800,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        result = json.loads(out.read_text())
    return {
        "task": task,
        "ranks": ranks,
        **result,
        "throughput": result["items"] / result["seconds"],
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Scaling out: throughput per world size (torchrun, gloo, CPU)",
        "",
        f"Measured {meta['date']} on {meta['cpu']} ({os.cpu_count()} cores), torch "
        f"{meta['torch']}; one torch thread per rank; median of {meta['repeats']} runs per "
        "cell, each a fresh `torchrun` process group.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "- **fit**: `lipguard.train.fit` under DDP, MLP 64-512-512-10 on digits with AAJR, "
        "5 epochs, global batch 256 (samples/s).",
        "- **certify**: `SmoothedClassifier.certify` on 256 digits, n0 = 100, "
        "n = 10,000, σ = 0.25 (inputs/s); results are bit-identical for every world size.",
        "- **certify-one**: one digit, n0 = 100, n = 100,000, MLP 64-1024-1024-10 (noisy "
        "samples/s; the sample blocks are sharded, since there are fewer inputs than ranks); "
        "bit-identical too.",
        "- **efficiency**: throughput / (ranks × single-rank throughput).",
        "",
        "| task | ranks | seconds | throughput | speed-up | efficiency |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        single = next(r for r in rows if r["task"] == row["task"] and r["ranks"] == 1)
        speedup = row["throughput"] / single["throughput"]
        lines.append(
            f"| {row['task']} | {row['ranks']} | {row['seconds']:.2f} | {row['throughput']:.1f} "
            f"| {speedup:.2f}× | {speedup / row['ranks']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--child", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.child_out)
        return
    rows = []
    for task in args.tasks:
        for ranks in sorted(set(args.ranks)):
            runs = [measure(task, ranks) for _ in range(args.repeats)]
            seconds = statistics.median(run["seconds"] for run in runs)
            rows.append(
                {
                    "task": task,
                    "ranks": ranks,
                    "seconds": seconds,
                    "items": runs[0]["items"],
                    "throughput": runs[0]["items"] / seconds,
                }
            )
            print(rows[-1], flush=True)
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    meta = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "command": "python benchmarks/distributed.py " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / "distributed.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
