"""Benchmark the independent checker: certifying time (lipguard) vs checking time (lipguard.check).

For each network — the two LipSDP fixtures (random 2-10-30-20-2, MNIST 784-50-10) and random
dense ReLU nets ``w-w-w-w-10`` of increasing width ``w`` (Kaiming-uniform weights, seed 0) —
and each checkable method, it measures

1. ``certify``: :func:`lipguard.bounds.certify` with ``checkable=True`` and no lower bound (the
   bound, the checkable section and lipguard's own run of the checker's proof before writing);
2. ``check``: :func:`lipguard.check.check` on the saved weights and certificate (reading and
   hashing the files included);

medians over ``--repeats`` runs, their ratio, the certified value and whether the checker
accepted. The four VNN-COMP ONNX fixtures (ACAS Xu, MNIST 256x2, the CIFAR-10 CNN, the
two-block ResNet; ``--onnx``) are certified from the model :func:`lipguard.io.load_onnx` reads
and checked against the ONNX file itself, with ``product`` and ``auto`` in ℓ2 and ℓ∞.
Methods: ``product``, ``lipsdp`` (LipSDP-Neuron), ``lipsdp-layer``, ``compositional``
as lipguard runs it (its fast LipSDP-style certificate wins on these nets), and
``compositional (dp)``: the same with the fast certificate switched off
(``FAST_LMI_ROWS = 0``), so the certificate carries the cut/merge programme's block norms. The
LipSDP methods are skipped above ``--lipsdp-rows`` rows of the matrix inequality (the SDP solve
alone takes minutes there). One thread. Writes ``checker.json`` and ``checker.md`` to ``--out``.

    python benchmarks/checker.py                           # widths 32, 128, 512, 3 repeats
    python benchmarks/checker.py --widths 16 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import lipguard.bounds.compositional as compositional
from layers import machine
from lipguard.bounds import certify
from lipguard.check import check
from lipguard.io import load_onnx

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures" / "lipsdp"
ONNX = Path(__file__).parent.parent / "tests" / "fixtures" / "onnx"
ONNX_NETWORKS = {
    "ACASXU_run2a_1_1_batch_2000": "ACAS Xu 5-50×6-5 (ONNX)",
    "mnist-net_256x2": "MNIST 784-256-256-10 (ONNX)",
    "cifar10_small": "CIFAR-10 CNN, 2 conv (ONNX)",
    "resnet_2b": "CIFAR-10 ResNet, 2 blocks (ONNX)",
}
METHODS = ("product", "lipsdp", "lipsdp-layer", "compositional", "compositional (dp)")


@dataclass(frozen=True)
class Row:
    network: str
    norm: str
    method: str  # as requested; "compositional (dp)" forces the DP
    stated_method: str  # the certificate's upper.method
    proof: str  # which checkable data the certificate carries
    value: float
    accepted: bool
    certify_s: float
    check_s: float
    ratio: float  # check / certify


def fixture(name: str) -> nn.Sequential:
    """A LipSDP example network (weights (out, in), no biases, ReLU between layers)."""
    import scipy.io

    matrices = scipy.io.loadmat(FIXTURES / f"{name}.mat")["weights"].ravel()
    layers: list[nn.Module] = []
    for index, matrix in enumerate(matrices):
        layer = nn.Linear(matrix.shape[1], matrix.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(matrix, dtype=torch.float32))
        layers += [layer] if index == len(matrices) - 1 else [layer, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def random_net(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    ).eval()


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure(name: str, model: nn.Sequential, method: str, repeats: int, folder: Path) -> Row:
    weights = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    saved = compositional.FAST_LMI_ROWS
    if method == "compositional (dp)":
        compositional.FAST_LMI_ROWS = 0
    try:
        requested = method.split(" ")[0]
        return timed(
            name,
            "2",
            method,
            lambda: certify(model, method=requested, checkable=True, lower_bound=False),  # type: ignore[arg-type]
            weights,
            repeats,
            folder,
        )
    finally:
        compositional.FAST_LMI_ROWS = saved


def measure_onnx(file: str, method: str, norm: str, repeats: int, folder: Path) -> Row:
    path = ONNX / f"{file}.onnx"
    model, shape = load_onnx(path)
    return timed(
        ONNX_NETWORKS[file],
        norm,
        method,
        lambda: certify(  # type: ignore[arg-type]
            model, norm, method, input_shape=shape, checkable=True, lower_bound=False
        ),
        path,
        repeats,
        folder,
    )


def timed(
    name: str,
    norm: str,
    method: str,
    run: Callable[[], object],
    weights: Path,
    repeats: int,
    folder: Path,
) -> Row:
    path = folder / "certificate.json"
    seconds, made = median_seconds(run, repeats)
    certificate = made.save(path)  # type: ignore[attr-defined]
    data = json.loads(certificate.read_text())
    checking, result = median_seconds(lambda: check(weights, path), repeats)
    proof = "block norms (DP)" if "block_norms" in data["checkable"] else "ρ, multipliers"
    proof = "σ_i" if "sigmas" in data["checkable"] else proof
    return Row(
        name,
        norm,
        method,
        data["upper"]["method"],
        proof,
        data["upper"]["value"],
        bool(result.accepted),  # type: ignore[attr-defined]
        seconds,
        checking,
        checking / seconds,
    )


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        "# The independent checker: certifying vs checking time",
        "",
        f"{meta['date']}, {meta['machine']['cpu']}, {meta['machine']['threads']} thread(s), "
        f"torch {meta['machine']['torch']}, lipguard {meta['machine']['lipguard']}. "
        f"Medians of {meta['repeats']} runs.",
        "",
        f"    {meta['command']}",
        "",
        "`certify`: `lipguard.bounds.certify(model, method=…, checkable=True, "
        "lower_bound=False)` (the bound, the checkable section, and lipguard's own run of the "
        "checker's proof before writing). `check`: `lipguard.check.check(weights, certificate)` "
        "(files read and hashed, every claim re-proven). `compositional (dp)`: lipguard's fast "
        "LipSDP-style certificate switched off, so the certificate carries the cut/merge "
        "programme's block norms. Skipped methods: " + (meta["skipped"] or "none") + ".",
        "",
        "| network | norm | method | stated method | proof data | bound | accepted | certify (s) "
        "| check (s) | check / certify |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.network} | ℓ{'∞' if row.norm == 'inf' else row.norm} | {row.method} "
            f"| {row.stated_method} | {row.proof} "
            f"| {row.value:.6g} | {'yes' if row.accepted else '**no**'} | {row.certify_s:.3f} "
            f"| {row.check_s:.3f} | {row.ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lipsdp-rows", type=int, default=1000)
    parser.add_argument("--onnx", nargs="*", default=list(ONNX_NETWORKS), help="ONNX fixtures")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    networks = [
        ("random 2-10-30-20-2", fixture("random_weights")),
        ("MNIST 784-50-10", fixture("mnist_weights")),
    ] + [(f"random {w}-{w}-{w}-{w}-10", random_net(w)) for w in args.widths]
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in networks:
            linear = [m for m in model if isinstance(m, nn.Linear)]
            size = sum(m.in_features for m in linear)
            for method in METHODS:
                if method.startswith("lipsdp") and size > args.lipsdp_rows:
                    skipped.append(f"{method} on {name} ({size} rows)")
                    continue
                row = measure(name, model, method, args.repeats, Path(folder))
                print(row, flush=True)
                rows.append(row)
        for file in args.onnx:
            for norm in ("2", "inf"):
                for method in ("product", "auto"):
                    row = measure_onnx(file, method, norm, args.repeats, Path(folder))
                    print(row, flush=True)
                    rows.append(row)
    widths = " ".join(str(w) for w in args.widths)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "repeats": args.repeats,
        "skipped": ", ".join(skipped),
        "command": f"OMP_NUM_THREADS=1 python benchmarks/checker.py --widths {widths} "
        f"--repeats {args.repeats} --lipsdp-rows {args.lipsdp_rows} --onnx {' '.join(args.onnx)}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "checker.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(row) for row in rows]}, indent=2)
    )
    (args.out / "checker.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
