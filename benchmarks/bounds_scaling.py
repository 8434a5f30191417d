"""How the bound methods scale: time and upper/lower ratio against width, depth and channels.

Networks (random PyTorch initialisation, ReLU, seeded):

- MLPs 64-w×3-1 for widths w in ``--widths`` (the width sweep) and 64-256×k-1 for depths k in
  ``--depths`` (the depth sweep);
- CNNs shaped like the standard "4C3F" CIFAR net (conv c-c-2c-2c with two stride-2 layers,
  FC 512-512-10) for channels c in ``--channels`` (their compositional bound is the chain
  programme of ``lipguard.bounds.chain``: no convolution is densified), and a ResNet-18-shaped
  CIFAR net (product bound only: its residual branches are not a chain, and its normal form is
  far too large to materialise).

For each: lipguard's product, compositional and (where the matrix inequality has at most
``--lipsdp-rows`` rows) LipSDP bounds; lipguard's witnessed lower bound, the ratio's
denominator (100 ascent steps, 30 for CNNs, none for the ResNet); and cvxpy + Clarabel
LipSDP-Neuron as the peer on plain chains of at most ``--cvxpy-neurons`` hidden neurons. Each
lipguard time is also measured with another process keeping one core busy. Writes
``bounds_scaling.json``, ``bounds_scaling.md`` and ``bounds_scaling.png`` to ``--out``.

    python benchmarks/bounds_scaling.py
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from bounds import LIPSDP_ROWS, _lipsdp_rows, chain_weights, cvxpy_row
from layers import machine
from lipguard.bounds import lipschitz_bound, lipschitz_lower_bound
from lipguard.errors import LipguardError


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def four_c_three_f(c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c, c, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2 * c, 2 * c, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * c * 8 * 8, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


class Block(nn.Module):
    """ResNet-18's basic block: two 3×3 convs with batch norm, a projection when the shape
    changes."""

    def __init__(self, a: int, b: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(a, b, 3, stride, 1, bias=False),
            nn.BatchNorm2d(b),
            nn.ReLU(),
            nn.Conv2d(b, b, 3, 1, 1, bias=False),
            nn.BatchNorm2d(b),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(a, b, 1, stride, bias=False), nn.BatchNorm2d(b))
            if stride != 1 or a != b
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet18() -> nn.Module:
    stages, blocks, channels = [], [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)], 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages += [Block(channels, width, stride), Block(width, width, 1)]
        channels = width
    return nn.Sequential(
        *blocks, nn.ReLU(), *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)
    ).eval()


def _timed(function: Callable[[], object]) -> tuple[object | None, float, str]:
    started = time.perf_counter()
    try:
        result = function()
    except LipguardError as error:
        return None, time.perf_counter() - started, str(error).splitlines()[0][:90]
    return result, time.perf_counter() - started, ""


def measure(sweep: str, size: int, name: str, model: nn.Module, shape, args) -> list[dict]:
    torch.manual_seed(0)
    inputs = torch.randn(8, *shape)
    rows = []
    lower = None
    if not args.no_lower and not name.startswith("ResNet"):  # ResNet-18: hours of Jacobians
        steps = 100 if len(shape) == 1 else 30
        found, seconds, note = _timed(lambda: lipschitz_lower_bound(model, inputs, 2, steps=steps))
        lower = found.value if found is not None else None
        rows.append(_row(sweep, size, name, "lower bound (witnessed)", lower, lower, seconds, note))
    methods = ["product"] if name.startswith("ResNet") else ["product", "compositional"]
    rows_of_lmi = _lipsdp_rows(model, shape)
    if rows_of_lmi <= args.lipsdp_rows and not name.startswith(("4C3F", "ResNet")):
        methods.append("lipsdp")
    for method in methods:
        bound, seconds, note = _timed(
            lambda m=method: lipschitz_bound(model, 2, m, input_shape=shape)
        )
        value = bound.value if bound is not None else None
        busy = _with_busy_core(lambda m=method: lipschitz_bound(model, 2, m, input_shape=shape))
        rows.append(_row(sweep, size, name, method, value, lower, seconds, note, busy))
    neurons = (
        sum(m.out_features for m in model if isinstance(m, nn.Linear))
        if isinstance(model, nn.Sequential)
        else 0
    )
    is_chain = isinstance(model, nn.Sequential) and all(
        isinstance(m, nn.Linear | nn.ReLU) for m in model
    )
    if is_chain and neurons <= args.cvxpy_neurons and lower:
        peer = cvxpy_row(name, chain_weights(model), lower, args.cvxpy_limit)
        rows.append(
            _row(
                sweep, size, name, "cvxpy LipSDP (peer)", peer.value, lower, peer.seconds, peer.note
            )
        )
    for row in rows:
        print(row)
    return rows


def _with_busy_core(function: Callable[[], object]) -> float | None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        _, seconds, note = _timed(function)
    finally:
        busy.kill()
        busy.wait()
    return None if note else seconds


def _row(sweep, size, name, method, value, lower, seconds, note, busy=None) -> dict:
    return {
        "sweep": sweep,
        "size": size,
        "network": name,
        "method": method,
        "value": value,
        "ratio": value / lower if value and lower else None,
        "seconds": seconds,
        "busy_seconds": busy,
        "note": note,
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# How the bounds scale: width, depth, channels",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['threads']} "
        f"threads), torch {meta['machine']['torch']}. ℓ2 constants of randomly initialised ReLU "
        "networks. *ratio*: the value over lipguard's witnessed lower bound on the same network. "
        "*busy*: the same call while another process keeps one core busy.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| sweep | network | method | value | ratio | time (s) | busy (s) | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        value = "—" if r["value"] is None else f"{r['value']:.5g}"
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        seconds = "—" if r["seconds"] is None else f"{r['seconds']:.2f}"
        busy = "—" if r["busy_seconds"] is None else f"{r['busy_seconds']:.2f}"
        lines.append(
            f"| {r['sweep']} | {r['network']} | {r['method']} | {value} | {ratio} | {seconds} | "
            f"{busy} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, sweep in zip(axes, ("width", "depth", "channels"), strict=True):
        for method in ("product", "compositional", "lipsdp", "lower bound (witnessed)"):
            points = [
                (r["size"], r["seconds"])
                for r in rows
                if r["sweep"] == sweep and r["method"] == method and r["value"] is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(
            {"width": "MLP width", "depth": "MLP depth", "channels": "4C3F channels"}[sweep]
        )
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("lipguard bound methods: time against size (2 CPU cores)")
    figure.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 2048, 4096])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 12])
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--cvxpy-neurons", type=int, default=200)
    parser.add_argument(
        "--lipsdp-rows", type=int, default=800, help=f"at most {LIPSDP_ROWS}: LipSDP's size limit"
    )
    parser.add_argument("--cvxpy-limit", type=float, default=300.0)
    parser.add_argument("--no-lower", action="store_true", help="skip the witnessed lower bounds")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for width in args.widths:
        model = mlp([64, width, width, width, 1]).eval()
        rows += measure("width", width, f"MLP 64-{width}×3-1", model, (64,), args)
    for depth in args.depths:
        model = mlp([64, *[256] * depth, 1]).eval()
        rows += measure("depth", depth, f"MLP 64-256×{depth}-1", model, (64,), args)
    for c in args.channels:
        rows += measure("channels", c, f"4C3F c={c}", four_c_three_f(c).eval(), (3, 32, 32), args)
    rows += measure("channels", 64, "ResNet-18 (CIFAR)", resnet18(), (3, 32, 32), args)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": "python benchmarks/bounds_scaling.py " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bounds_scaling.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    (args.out / "bounds_scaling.md").write_text(markdown(rows, meta))
    plot(rows, args.out / "bounds_scaling.png")
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
