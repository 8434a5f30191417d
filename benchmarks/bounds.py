"""Benchmark lipguard's Lipschitz bounds against a straightforward cvxpy LipSDP and the product.

Networks: the two LipSDP fixtures (random 2-10-30-20-2 and MNIST 784-50-10), an MLP
64-256-256-10 trained here on scikit-learn's digits, and the four VNN-COMP ONNX networks of
``tests/fixtures/onnx`` (ACAS Xu, MNIST 256×2, a TensorFlow-exported CIFAR CNN, a CIFAR ResNet),
read through lipguard's ONNX import. For each, every lipguard method (product, compositional,
LipSDP-Neuron and -Layer with the barrier solver, where they apply) and the witnessed lower
bound, against two peers on the networks that are plain ReLU chains: LipSDP-Neuron written
directly in cvxpy and solved by Clarabel (with the MNIST input compressed by a thin SVD, as the
published timing did; run in a subprocess with a time limit) and the naive product of float64
spectral norms (numpy, no rounding control).
Reports each value, its ratio to the lower bound and its time (median of ``--repeats`` runs for
the fast methods). Writes ``bounds.json`` and ``bounds.md`` to ``--out``.

    python benchmarks/bounds.py
    python benchmarks/bounds.py --skip-cvxpy --repeats 1     # quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from digits import trained_digits_mlp
from layers import machine
from lipguard.bounds import lipschitz_bound, lipschitz_lower_bound
from lipguard.errors import LipguardError

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures" / "lipsdp"
ONNX = Path(__file__).parent.parent / "tests" / "fixtures" / "onnx"


@dataclass
class Row:
    network: str
    method: str
    value: float | None
    ratio_to_lower: float | None
    seconds: float | None
    sound: bool
    note: str = ""


def fixture(name: str) -> tuple[nn.Sequential, torch.Tensor]:
    import scipy.io

    matrices = scipy.io.loadmat(FIXTURES / f"{name}.mat")["weights"].ravel()
    layers: list[nn.Module] = []
    for index, matrix in enumerate(matrices):
        layer = nn.Linear(matrix.shape[1], matrix.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(matrix))
        layers += [layer] + ([nn.ReLU()] if index < len(matrices) - 1 else [])
    inputs = torch.randn(16, matrices[0].shape[1], generator=torch.Generator().manual_seed(0))
    return nn.Sequential(*layers).eval(), inputs


def chain_weights(model: nn.Module) -> list[np.ndarray]:
    """The weight matrices of a plain ``Linear``/ReLU chain (the peers' input)."""
    return [m.weight.detach().double().numpy() for m in model if isinstance(m, nn.Linear)]


def naive_product(weights: list[np.ndarray]) -> float:
    return float(np.prod([np.linalg.norm(w, 2) for w in weights]))


def onnx_networks() -> list[tuple[str, nn.Module, torch.Tensor, list[np.ndarray] | None]]:
    """The VNN-COMP fixtures with random start points; the weights of the two plain MLPs."""
    import onnx

    from lipguard.io import load_onnx

    networks = []
    for file, label, chain in (
        ("ACASXU_run2a_1_1_batch_2000.onnx", "ACAS Xu 5-50×6-5 (ONNX)", True),
        ("mnist-net_256x2.onnx", "MNIST 784-256-256-10 (ONNX)", True),
        ("cifar10_small.onnx", "CIFAR CNN, TF NHWC (ONNX)", False),
        ("resnet_2b.onnx", "CIFAR ResNet-2b (ONNX)", False),
    ):
        model, shape = load_onnx(ONNX / file)
        inputs = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
        weights = None
        if chain:  # MatMul (in, out) / Gemm transB (out, in) weights, in graph order
            proto = onnx.load(str(ONNX / file))
            arrays = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
            weights = []
            for node in proto.graph.node:
                if node.op_type == "MatMul":
                    weights.append(arrays[node.input[1]].T.astype(np.float64))
                elif node.op_type == "Gemm":
                    weights.append(arrays[node.input[1]].astype(np.float64))
        networks.append((label, model, inputs, weights))
    return networks


def cvxpy_lipsdp(weights: list[np.ndarray]) -> float:
    """LipSDP-Neuron as a direct cvxpy model (ReLU: α = 0, β = 1), input compressed by SVD."""
    import cvxpy as cp

    first = weights[0]
    if first.shape[1] > first.shape[0]:
        u, s, _ = np.linalg.svd(first, full_matrices=False)
        first = u * s  # same Lipschitz constant, input of dimension rank(W_0)
    weights = [first, *weights[1:]]
    hidden = [w.shape[0] for w in weights[:-1]]
    sizes = [first.shape[1], *hidden]
    rho = cp.Variable(nonneg=True)
    ts = [cp.Variable(n, nonneg=True) for n in hidden]
    blocks = [[np.zeros((a, b)) for b in sizes] for a in sizes]
    blocks[0][0] = -rho * np.eye(sizes[0])
    for k, t in enumerate(ts):
        blocks[k][k + 1] = weights[k].T @ cp.diag(t)
        blocks[k + 1][k] = cp.diag(t) @ weights[k]
        blocks[k + 1][k + 1] = -2 * cp.diag(t)
    last = len(hidden)
    blocks[last][last] = blocks[last][last] + weights[-1].T @ weights[-1]
    matrix = cp.bmat(blocks)
    problem = cp.Problem(cp.Minimize(rho), [(matrix + matrix.T) / 2 << 0])
    problem.solve(solver="CLARABEL")
    return math.sqrt(rho.value)


def _run_cvxpy(weights, queue, memory_limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    started = time.perf_counter()
    try:
        value = cvxpy_lipsdp(weights)
        queue.put((value, time.perf_counter() - started, ""))
    except Exception as error:  # report any peer failure in the table
        queue.put((None, time.perf_counter() - started, f"failed: {type(error).__name__}"))


def cvxpy_row(name: str, weights: list[np.ndarray], lower: float, limit: float) -> Row:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    memory_limit = 16 * 2**30
    process = multiprocessing.Process(target=_run_cvxpy, args=(weights, queue, memory_limit))
    started = time.perf_counter()
    process.start()
    process.join(limit)
    if process.is_alive():
        process.kill()
        return Row(
            name,
            "cvxpy LipSDP-Neuron (peer)",
            None,
            None,
            None,
            False,
            f"timed out after {limit:.0f} s",
        )
    if queue.empty():  # the solver aborted the process (e.g. a failed 100+ GiB allocation)
        return Row(
            name,
            "cvxpy LipSDP-Neuron (peer)",
            None,
            None,
            time.perf_counter() - started,
            False,
            f"crashed (exit code {process.exitcode}) under a 16 GiB memory limit",
        )
    value, seconds, note = queue.get()
    ratio = value / lower if value else None
    return Row(
        name,
        "cvxpy LipSDP-Neuron (peer)",
        value,
        ratio,
        seconds,
        False,
        note or "solver tolerance, no verification",
    )


def timed(function, repeats: int) -> tuple[object, float]:
    result, samples = None, []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - started)
    return result, statistics.median(samples)


#: LipSDP is run on normal forms up to this many rows (the CIFAR networks have tens of thousands)
LIPSDP_ROWS = 4000


def _lipsdp_rows(model: nn.Module, shape: tuple[int, ...]) -> int:
    from lipguard.bounds.frontend import to_graph
    from lipguard.bounds.network import Network

    try:
        network = Network.from_graph(to_graph(model, (shape,)))
    except LipguardError:
        return 0
    return network.input_size + sum(layer.size for layer in network.hidden)


def benchmark(name, model, inputs, repeats, cvxpy_limit, skip_cvxpy, weights) -> list[Row]:
    shape = tuple(inputs.shape[1:])
    lower, lower_seconds = timed(lambda: lipschitz_lower_bound(model, inputs, 2), 1)
    rows = [
        Row(
            name,
            "lipguard lower bound (witnessed)",
            lower.value,
            1.0,
            lower_seconds,
            False,
            "a pair of inputs realises it",
        )
    ]
    rows_of_lipsdp = _lipsdp_rows(model, shape)
    for method in ("product", "compositional", "lipsdp", "lipsdp-layer"):
        slow = method != "product"
        if method.startswith("lipsdp") and rows_of_lipsdp > LIPSDP_ROWS:
            note = f"not run: a {rows_of_lipsdp}-row matrix inequality (limit {LIPSDP_ROWS})"
            rows.append(Row(name, f"lipguard {method}", None, None, None, True, note))
            continue
        try:
            bound, seconds = timed(
                lambda m=method: lipschitz_bound(model, 2, m, input_shape=shape),
                1 if slow else repeats,
            )
        except LipguardError as error:
            rows.append(Row(name, f"lipguard {method}", None, None, None, True, str(error)[:90]))
            continue
        rows.append(
            Row(
                name,
                f"lipguard {method}",
                bound.value,
                bound.value / lower.value,
                seconds,
                True,
                bound.method,
            )
        )
    if weights is not None:
        product, seconds = timed(lambda: naive_product(weights), repeats)
        rows.append(
            Row(
                name,
                "naive product (peer)",
                product,
                product / lower.value,
                seconds,
                False,
                "float64 SVD, rounding unchecked",
            )
        )
        if not skip_cvxpy:
            rows.append(cvxpy_row(name, weights, lower.value, cvxpy_limit))
    for row in rows:
        print(row)
    return rows


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        "# Lipschitz bounds: values, tightness and time",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['threads']} "
        f"threads), torch {meta['machine']['torch']}. ℓ2 constants. *ratio* is the value over "
        "lipguard's witnessed lower bound on the same network (1.00 = provably tight). Fast "
        f"methods: median of {meta['repeats']} runs. Digits MLP test accuracy: "
        f"{meta['digits_accuracy']:.3f}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| network | method | value | ratio | time (s) | sound | note |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        value = "—" if row.value is None else f"{row.value:.4f}"
        ratio = "—" if row.ratio_to_lower is None else f"{row.ratio_to_lower:.4f}"
        seconds = "—" if row.seconds is None else f"{row.seconds:.3f}"
        lines.append(
            f"| {row.network} | {row.method} | {value} | {ratio} | {seconds} | "
            f"{'yes' if row.sound else 'no'} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cvxpy-limit", type=float, default=300.0)
    parser.add_argument("--skip-cvxpy", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()

    networks = []
    for label, file in (
        ("random 2-10-30-20-2", "random_weights"),
        ("MNIST 784-50-10", "mnist_weights"),
    ):
        model, inputs = fixture(file)
        networks.append((label, model, inputs, chain_weights(model)))
    digits, test_inputs, _, accuracy = trained_digits_mlp()
    networks.append(("digits MLP 64-256-256-10", digits, test_inputs[:16], chain_weights(digits)))
    networks += onnx_networks()
    rows: list[Row] = []
    for name, model, inputs, weights in networks:
        rows += benchmark(
            name, model, inputs, args.repeats, args.cvxpy_limit, args.skip_cvxpy, weights
        )
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "repeats": args.repeats,
        "digits_accuracy": accuracy,
        "command": f"python benchmarks/bounds.py --repeats {args.repeats} "
        f"--cvxpy-limit {args.cvxpy_limit:g}" + (" --skip-cvxpy" if args.skip_cvxpy else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bounds.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(row) for row in rows]}, indent=2)
    )
    (args.out / "bounds.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
