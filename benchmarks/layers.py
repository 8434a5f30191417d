"""Benchmark lipguard's Lipschitz layers against torch and deel-torchlip (CPU).

For each layer type and width it measures, in one process, with the peers taking turns in
blocks of steps (so machine noise falls on every peer alike):

1. ``fwd+bwd``: forward and backward of a batch with frozen weights (the figure REFERENCES.md
   quotes for nn.Linear, torch spectral_norm, deel-torchlip and torch orthogonal);
2. ``train step``: forward, backward and an Adam step, so the weights change every step;
3. ``max σ/L``: the largest ``σ_max`` of the weight each layer actually applies, divided by the
   bound it promises, over an Adam run (lr 1e-2) that pulls the weights toward a large-norm
   target. Above 1 means the promise was broken.

Times are medians over ``--repeats`` steps, reported with their ratio to ``nn.Linear`` from
the same run. Writes ``layers.json`` and ``layers.md`` to ``--out``.

    python benchmarks/layers.py                      # widths 256 and 1024, batch 256
    python benchmarks/layers.py --widths 64 --repeats 5 --soundness-steps 20   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import lipguard
from lipguard.nn import OrthogonalLinear, SpectralLinear, SVDLinear

LIPSCHITZ = 1.0


@dataclass(frozen=True)
class Peer:
    """A layer implementation under test: how to build it and read the weight it applies."""

    name: str
    sound: str  # what the implementation promises about σ_max <= L
    build: Callable[[int], nn.Module]
    applied_weight: Callable[[nn.Module], torch.Tensor]


def _torch_spectral(width: int) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(nn.Linear(width, width))


def _torch_orthogonal(width: int) -> nn.Module:
    return nn.utils.parametrizations.orthogonal(nn.Linear(width, width))


def _plain_weight(module: nn.Module) -> torch.Tensor:
    return module.weight


def _effective_weight(module: nn.Module) -> torch.Tensor:
    return module.effective_weight()


def peers() -> list[Peer]:
    found = [
        Peer("nn.Linear", "no bound", lambda w: nn.Linear(w, w), _plain_weight),
        Peer("torch spectral_norm", "estimate", _torch_spectral, _plain_weight),
        Peer("torch orthogonal", "by construction", _torch_orthogonal, _plain_weight),
    ]
    try:
        from deel.torchlip import SpectralLinear as DeelSpectralLinear
    except ImportError:  # the benchmark extra is optional
        pass
    else:
        found.append(
            Peer(
                "deel-torchlip SpectralLinear",
                "estimate",
                lambda w: DeelSpectralLinear(w, w, k_coef_lip=LIPSCHITZ),
                _plain_weight,
            )
        )
    found += [
        Peer(
            "lipguard SpectralLinear",
            "proven",
            lambda w: SpectralLinear(w, w, lipschitz=LIPSCHITZ),
            _effective_weight,
        ),
        Peer(
            "lipguard OrthogonalLinear",
            "proven",
            lambda w: OrthogonalLinear(w, w, lipschitz=LIPSCHITZ),
            _effective_weight,
        ),
        Peer(
            "lipguard SVDLinear",
            "proven",
            lambda w: SVDLinear(w, w, lipschitz=LIPSCHITZ),
            _effective_weight,
        ),
    ]
    return found


@dataclass
class Row:
    layer: str
    width: int
    promise: str
    fwd_bwd_ms: float
    fwd_bwd_ratio: float
    train_step_ms: float
    train_step_ratio: float
    max_sigma_over_bound: float | None


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    return step


def _train_step(module: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        ((module(x) - target) ** 2).mean().backward()
        optimizer.step()

    return step


def time_interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, block: int = 5
) -> dict[str, float]:
    """Median milliseconds per call. Peers take turns in blocks of ``block`` calls, so machine
    noise falls on all of them alike while each block runs with warm caches."""
    for step in steps.values():  # warm-up: caches, certificates, allocator
        for _ in range(3):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(max(1, repeats // block)):
        for name, step in steps.items():
            for _ in range(block):
                started = time.perf_counter()
                step()
                samples[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def max_sigma_over_bound(peer: Peer, width: int, steps: int, seed: int) -> float:
    """Largest σ_max(applied weight)/L over an Adam run toward a target of norm ~30·L."""
    torch.manual_seed(seed)
    module = peer.build(width)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, width, generator=generator)
    target = x @ (torch.randn(width, width, generator=generator) * 30 / width**0.5).T
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    worst = 0.0
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        ((module(x) - target) ** 2).mean().backward()
        optimizer.step()
        weight = peer.applied_weight(module).detach().double()
        worst = max(worst, float(torch.linalg.matrix_norm(weight, ord=2)) / LIPSCHITZ)
    return worst


def run(widths: list[int], batch: int, repeats: int, soundness_steps: int, seed: int) -> list[Row]:
    rows: list[Row] = []
    for width in widths:
        torch.manual_seed(seed)
        x = torch.randn(batch, width)
        target = torch.randn(batch, width)
        modules = {peer.name: peer.build(width) for peer in peers()}
        fwd_bwd = time_interleaved(
            {name: _fwd_bwd(module, x) for name, module in modules.items()}, repeats
        )
        train = time_interleaved(
            {name: _train_step(module, x, target) for name, module in modules.items()}, repeats
        )
        for peer in peers():
            soundness = (
                max_sigma_over_bound(peer, width, soundness_steps, seed)
                if peer.name != "nn.Linear" and width == min(widths)
                else None
            )
            rows.append(
                Row(
                    layer=peer.name,
                    width=width,
                    promise=peer.sound,
                    fwd_bwd_ms=fwd_bwd[peer.name],
                    fwd_bwd_ratio=fwd_bwd[peer.name] / fwd_bwd["nn.Linear"],
                    train_step_ms=train[peer.name],
                    train_step_ratio=train[peer.name] / train["nn.Linear"],
                    max_sigma_over_bound=soundness,
                )
            )
            print(rows[-1])
    return rows


def machine() -> dict[str, str | int]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lipguard": lipguard.__version__,
    }


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        "# Lipschitz layers: step time and soundness",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} "
        f"({meta['machine']['threads']} threads), torch {meta['machine']['torch']}, "
        f"batch {meta['batch']}, median of {meta['repeats']} steps per cell, peers taking turns "
        "in blocks of 5 steps in one process. Ratios are to `nn.Linear` in the same run.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "- **fwd+bwd**: forward + backward, weights frozen between steps.",
        "- **train step**: forward + backward + Adam (lr 1e-3); the weights change every step.",
        f"- **max σ/L**: largest spectral norm of the weight the layer applies, over "
        f"{meta['soundness_steps']} Adam steps (lr 1e-2) toward a large-norm target, divided "
        "by the promised bound L = 1 (width "
        f"{min(row.width for row in rows)}). Above 1 breaks the promise.",
        "",
        "| layer | width | promise | fwd+bwd ms | ×nn.Linear | train step ms | ×nn.Linear "
        "| max σ/L |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        sigma = "—" if row.max_sigma_over_bound is None else f"{row.max_sigma_over_bound:.7f}"
        lines.append(
            f"| {row.layer} | {row.width} | {row.promise} | {row.fwd_bwd_ms:.2f} | "
            f"{row.fwd_bwd_ratio:.2f} | {row.train_step_ms:.2f} | {row.train_step_ratio:.2f} "
            f"| {sigma} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--soundness-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()

    rows = run(args.widths, args.batch, args.repeats, args.soundness_steps, args.seed)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "batch": args.batch,
        "repeats": args.repeats,
        "soundness_steps": args.soundness_steps,
        "command": (
            f"python benchmarks/layers.py --widths {' '.join(map(str, args.widths))} "
            f"--batch {args.batch} --repeats {args.repeats} "
            f"--soundness-steps {args.soundness_steps}"
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layers.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(row) for row in rows]}, indent=2)
    )
    (args.out / "layers.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
