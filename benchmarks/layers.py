"""Benchmark lipguard's Lipschitz layers against torch, deel-torchlip and orthogonium (CPU).

For each layer type and width it measures, in one process, with the peers taking turns in
blocks of steps (so machine noise falls on every peer alike):

1. ``fwd+bwd``: forward and backward of a batch with frozen weights (the figure REFERENCES.md
   quotes for nn.Linear, torch spectral_norm, deel-torchlip and torch orthogonal);
2. ``train step``: forward, backward and an Adam step, so the weights change every step;
3. ``max σ/L`` and ``mean σ/L``: the largest and the mean ``σ_max`` of the weight each layer
   actually applies, divided by the bound it promises, over an Adam run (lr 1e-2) that pulls the
   weights toward a large-norm target. Above 1 means the promise was broken; the mean shows how
   tight the normalisation is (1 is tight);
4. ``full certs/100``: for layers that count their full certificates (lipguard
   SpectralLinear's amortised guard), how many the train-step run computed per 100 steps.

Layers come in families (a list of :class:`Peer` per :class:`Family`, with the family's
reference for the ratios and its input shape); a new family only needs its own entry in
:data:`FAMILIES`.

Times are medians over ``--repeats`` steps, reported with their ratio to the family's reference
(``nn.Linear``, ``nn.Conv2d``) from the same run. The conv family runs 32 → 64 channels, 3×3,
zero padding 1, on 32×32 images at batch 128 (``width`` is its input channels); its σ is the
operator norm of the whole convolution by float64 power iteration (a lower estimate, so above 1
is a proven violation), measured every 10 steps. Writes ``layers.json`` and ``layers.md`` to
``--out``.

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
from lipguard.nn import AOLConv2d, OrthogonalLinear, SpectralConv2d, SpectralLinear, SVDLinear

LIPSCHITZ = 1.0


@dataclass(frozen=True)
class Peer:
    """A layer implementation under test: how to build it and read the weight it applies."""

    name: str
    sound: str  # what the implementation promises about σ_max <= L
    build: Callable[[int], nn.Module]
    #: the ℓ2 operator norm of the map the module applies (exact, or a power-iteration value)
    applied_norm: Callable[[nn.Module], float]
    #: how many full certificates the module has computed so far (None: not counted)
    full_certificates: Callable[[nn.Module], int] | None = None


@dataclass(frozen=True)
class Family:
    """Layers compared with each other: the peers, the one the ratios refer to, and the input
    batch for a width."""

    name: str
    reference: str
    peers: Callable[[], list[Peer]]
    #: (batch, width, generator) -> a batch of inputs
    inputs: Callable[[int, int, torch.Generator], torch.Tensor]
    #: (inputs, generator) -> a target that pulls the weights toward a norm of ~30·L
    large_target: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    #: the sizes this family runs at (None: the command's --widths) and its batch (None: --batch)
    sizes: tuple[int, ...] | None = None
    batch: int | None = None
    #: batch of the σ/L run, and every how many of its steps σ is measured
    soundness_batch: int = 256
    measure_every: int = 1


def _torch_spectral(width: int) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(nn.Linear(width, width))


def _torch_orthogonal(width: int) -> nn.Module:
    return nn.utils.parametrizations.orthogonal(nn.Linear(width, width))


def _matrix_norm(weight: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))


def _plain_weight(module: nn.Module) -> float:
    return _matrix_norm(module.weight)


def _effective_weight(module: nn.Module) -> float:
    return _matrix_norm(module.effective_weight())


def _guard_full_certificates(module: nn.Module) -> int:
    return int(module._guard.full_certificates)  # type: ignore[union-attr]


def dense_peers() -> list[Peer]:
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
            _guard_full_certificates,
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


def _dense_inputs(batch: int, width: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, width, generator=generator)


def _dense_large_target(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    width = x.shape[-1]
    return x @ (torch.randn(width, width, generator=generator) * 30 / width**0.5).T


# --- convolutions: 32 → 64 channels, 3×3, zero padding 1, 32×32 images ---------------------

CONV_OUT = 64
IMAGE = 32


class _ConvNorm:
    """The ℓ2 norm of the convolution a module applies on ``IMAGE×IMAGE`` inputs, by power
    iteration in float64 on the exact zero-padded operator (warm-started per module): a lower
    estimate of the true norm, so a value above 1 is a proven violation."""

    def __init__(self, kernel: Callable[[nn.Module], torch.Tensor], iterations: int = 30):
        self.kernel = kernel
        self.iterations = iterations
        self.vectors: dict[int, torch.Tensor] = {}

    def __call__(self, module: nn.Module) -> float:
        with torch.no_grad():
            kernel = self.kernel(module).detach().double()
        stride, padding = module.stride, module.padding

        def forward(v: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.conv2d(v, kernel, None, stride, padding)

        vector = self.vectors.get(id(module))
        if vector is None:
            generator = torch.Generator().manual_seed(0)
            shape = (1, kernel.shape[1], IMAGE, IMAGE)
            vector = torch.randn(shape, generator=generator, dtype=torch.float64)
        for _ in range(self.iterations):
            out, pull_back = torch.func.vjp(forward, vector)
            (vector,) = pull_back(out)
            vector = vector / vector.norm()
        self.vectors[id(module)] = vector
        return float(forward(vector).norm())


def _conv_weight(module: nn.Module) -> torch.Tensor:
    return module.weight


def _conv_effective(module: nn.Module) -> torch.Tensor:
    return module.effective_weight()


def conv_peers() -> list[Peer]:
    def conv(channels: int) -> nn.Module:
        return nn.Conv2d(channels, CONV_OUT, 3, padding=1)

    def torch_spectral(channels: int) -> nn.Module:
        return nn.utils.parametrizations.spectral_norm(conv(channels))

    found = [
        Peer("nn.Conv2d", "no bound", conv, _ConvNorm(_conv_weight)),
        Peer(
            "torch spectral_norm",
            "estimate (reshaped kernel)",
            torch_spectral,
            _ConvNorm(_conv_weight),
        ),
    ]
    try:
        from deel.torchlip import SpectralConv2d as DeelSpectralConv2d
    except ImportError:  # the benchmark extra is optional
        pass
    else:
        found.append(
            Peer(
                "deel-torchlip SpectralConv2d",
                "estimate",
                lambda c: DeelSpectralConv2d(c, CONV_OUT, 3, padding=1, k_coef_lip=LIPSCHITZ),
                _ConvNorm(_conv_weight),
            )
        )
    try:
        from orthogonium.layers.conv.AOC.ortho_conv import AdaptiveOrthoConv2d
        from orthogonium.layers.conv.AOL.aol import AOLConv2D
    except ImportError:
        pass
    else:
        found += [
            Peer(
                "orthogonium AdaptiveOrthoConv2d",
                "by construction",
                lambda c: AdaptiveOrthoConv2d(c, CONV_OUT, 3, padding=1, padding_mode="zeros"),
                _ConvNorm(_conv_weight),
            ),
            Peer(
                "orthogonium AOLConv2D",
                "by construction",
                lambda c: AOLConv2D(c, CONV_OUT, 3, padding=1),
                _ConvNorm(_conv_weight),
            ),
        ]
    found += [
        Peer(
            "lipguard SpectralConv2d",
            "proven",
            lambda c: SpectralConv2d(c, CONV_OUT, 3, input_size=IMAGE, padding=1),
            _ConvNorm(_conv_effective),
        ),
        Peer(
            "lipguard AOLConv2d",
            "proven",
            lambda c: AOLConv2d(c, CONV_OUT, 3, padding=1),
            _ConvNorm(_conv_effective),
        ),
    ]
    return found


def _conv_inputs(batch: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, channels, IMAGE, IMAGE, generator=generator)


def _conv_large_target(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    channels = x.shape[1]
    kernel = torch.randn(CONV_OUT, channels, 3, 3, generator=generator) * 30 / (9 * channels) ** 0.5
    return torch.nn.functional.conv2d(x, kernel, padding=1)


FAMILIES = [
    Family("dense", "nn.Linear", dense_peers, _dense_inputs, _dense_large_target),
    Family(
        "conv 3×3, 32×32 images",
        "nn.Conv2d",
        conv_peers,
        _conv_inputs,
        _conv_large_target,
        sizes=(32,),
        batch=128,
        soundness_batch=16,
        measure_every=10,
    ),
]


@dataclass
class Row:
    family: str
    layer: str
    width: int
    batch: int
    promise: str
    fwd_bwd_ms: float
    fwd_bwd_ratio: float
    train_step_ms: float
    train_step_ratio: float
    max_sigma_over_bound: float | None
    mean_sigma_over_bound: float | None
    full_certificates_per_100_steps: float | None


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


def calls_per_step(repeats: int, block: int = 5) -> int:
    """How many times :func:`time_interleaved` calls each step (warm-up included)."""
    return 3 + max(1, repeats // block) * block


def sigma_over_bound(
    peer: Peer, family: Family, width: int, steps: int, seed: int
) -> tuple[float, float]:
    """Largest and mean σ_max(applied weight)/L over an Adam run toward a target of norm ~30·L."""
    torch.manual_seed(seed)
    module = peer.build(width)
    generator = torch.Generator().manual_seed(seed)
    x = family.inputs(family.soundness_batch, width, generator)
    target = family.large_target(x, generator)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    ratios: list[float] = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        ((module(x) - target) ** 2).mean().backward()
        optimizer.step()
        if len(ratios) < (step + 1) // family.measure_every:
            ratios.append(peer.applied_norm(module) / LIPSCHITZ)
    return max(ratios), statistics.mean(ratios)


def run(widths: list[int], batch: int, repeats: int, soundness_steps: int, seed: int) -> list[Row]:
    rows: list[Row] = []
    for family in FAMILIES:
        sizes = list(family.sizes or widths)
        for width in sizes:
            rows += run_family(
                family, width, family.batch or batch, repeats, soundness_steps, seed, min(sizes)
            )
    return rows


def run_family(
    family: Family,
    width: int,
    batch: int,
    repeats: int,
    soundness_steps: int,
    seed: int,
    soundness_width: int,
) -> list[Row]:
    torch.manual_seed(seed)
    peers = family.peers()
    x = family.inputs(batch, width, torch.Generator().manual_seed(seed))
    modules = {peer.name: peer.build(width) for peer in peers}
    with torch.no_grad():
        target = torch.randn_like(modules[family.reference](x))
    fwd_bwd = time_interleaved(
        {name: _fwd_bwd(module, x) for name, module in modules.items()}, repeats
    )
    certified_before = {
        peer.name: peer.full_certificates(modules[peer.name])
        for peer in peers
        if peer.full_certificates is not None
    }
    train = time_interleaved(
        {name: _train_step(module, x, target) for name, module in modules.items()}, repeats
    )
    rows: list[Row] = []
    for peer in peers:
        worst = mean = None
        if peer.name != family.reference and width == soundness_width:
            worst, mean = sigma_over_bound(peer, family, width, soundness_steps, seed)
        per_100 = None
        if peer.full_certificates is not None:
            certified = peer.full_certificates(modules[peer.name]) - certified_before[peer.name]
            per_100 = 100.0 * certified / calls_per_step(repeats)
        rows.append(
            Row(
                family=family.name,
                layer=peer.name,
                width=width,
                batch=batch,
                promise=peer.sound,
                fwd_bwd_ms=fwd_bwd[peer.name],
                fwd_bwd_ratio=fwd_bwd[peer.name] / fwd_bwd[family.reference],
                train_step_ms=train[peer.name],
                train_step_ratio=train[peer.name] / train[family.reference],
                max_sigma_over_bound=worst,
                mean_sigma_over_bound=mean,
                full_certificates_per_100_steps=per_100,
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


def _cell(value: float | None, digits: str) -> str:
    return "—" if value is None else format(value, digits)


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        "# Lipschitz layers: step time and soundness",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} "
        f"({meta['machine']['threads']} threads), torch {meta['machine']['torch']}, "
        f"median of {meta['repeats']} steps per cell, peers taking turns "
        "in blocks of 5 steps in one process. Ratios are to the family's reference "
        "(`nn.Linear`, `nn.Conv2d`) in the same run.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "- **fwd+bwd**: forward + backward, weights frozen between steps.",
        "- **train step**: forward + backward + Adam (lr 1e-3); the weights change every step.",
        "- **max σ/L**, **mean σ/L**: largest and mean spectral norm of the map the layer "
        f"applies, over {meta['soundness_steps']} Adam steps (lr 1e-2) toward a large-norm "
        "target, divided by the promised bound L = 1 (dense: exact, at the smallest width; "
        "conv: the whole zero-padded convolution on 32×32 images by float64 power iteration, a "
        "lower estimate, every 10 steps). Above 1 breaks the promise; the mean shows how tight "
        "the normalisation is.",
        "- **full certs/100**: full spectral-norm certificates per 100 train steps (lr 1e-3), "
        "for layers that count them (lipguard SpectralLinear certifies small changes by the "
        "amortised bound instead).",
    ]
    for family in dict.fromkeys(row.family for row in rows):
        reference = next(f.reference for f in FAMILIES if f.name == family)
        lines += [
            "",
            f"## {family} (batch {next(r.batch for r in rows if r.family == family)})",
            "",
            f"| layer | width | promise | fwd+bwd ms | ×{reference} | train step ms "
            f"| ×{reference} | max σ/L | mean σ/L | full certs/100 |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            if row.family != family:
                continue
            lines.append(
                f"| {row.layer} | {row.width} | {row.promise} | {row.fwd_bwd_ms:.2f} | "
                f"{row.fwd_bwd_ratio:.2f} | {row.train_step_ms:.2f} | {row.train_step_ratio:.2f} "
                f"| {_cell(row.max_sigma_over_bound, '.7f')} "
                f"| {_cell(row.mean_sigma_over_bound, '.7f')} "
                f"| {_cell(row.full_certificates_per_100_steps, '.0f')} |"
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
