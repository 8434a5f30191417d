"""Benchmark lipguard's randomized-smoothing CERTIFY against ART and a per-sample loop.

An MLP 64-256-256-10 is trained with Gaussian noise (σ) on scikit-learn's digits (pixels scaled
to [0, 1]); the first ``--inputs`` test digits are certified with ``n0 = 100`` selection and
``--n`` estimation samples at α = 0.001 by

- lipguard's ``SmoothedClassifier.certify`` (inputs × noise samples in one batched stream, votes
  counted on the device);
- ART's ``PyTorchRandomizedSmoothing.certify`` (the peer);
- a plain per-sample counting loop in the style of the reference implementation (written here
  independently: for each input, batches of noise, predictions, ``np.bincount``);

and the raw batched forward throughput of the base model on pre-drawn noisy inputs is measured
as the ceiling. Reports throughput in noisy forward samples per second (median of
``--repeats``), the ratio to the raw forward pass, and whether the three radius distributions
agree within Monte-Carlo error (mean radius with its standard error, abstention rate, certified
accuracy at a few radii, two-sample Kolmogorov–Smirnov p-value against lipguard's radii).
Writes ``smoothing.json`` and ``smoothing.md`` to ``--out``.

    python benchmarks/smoothing.py
    python benchmarks/smoothing.py --inputs 20 --n 2000 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from digits import trained_digits_mlp
from layers import machine
from lipguard.smoothing import SmoothedClassifier

N0, ALPHA, RADII = 100, 0.001, (0.0, 0.25, 0.5, 0.75)


def raw_forward(model: nn.Module, x: torch.Tensor, sigma: float, n: int, batch_size: int) -> float:
    """Seconds the base model alone needs for the same work as CERTIFY (``len(x)·(n0 + n)``
    samples), on one pre-drawn noisy batch: the ceiling for any smoothing implementation."""
    noisy = x[0] + sigma * torch.randn(batch_size, x.shape[1])
    total = len(x) * (N0 + n)
    with torch.inference_mode():
        model(noisy)
        started = time.perf_counter()
        for start in range(0, total, batch_size):
            model(noisy[: min(batch_size, total - start)]).argmax(1)
    return time.perf_counter() - started


def lipguard_certify(model, x, sigma, n, batch_size):
    result = SmoothedClassifier(model, 10, sigma).certify(x, N0, n, ALPHA, batch_size)
    return result.prediction.numpy(), result.radius.numpy()


def art_certify(model, x, sigma, n, batch_size):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    classifier = PyTorchRandomizedSmoothing(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(x.shape[1],),
        nb_classes=10,
        device_type="cpu",
        sample_size=N0,
        scale=sigma,
        alpha=ALPHA,
    )
    prediction, radius = classifier.certify(x.numpy(), n=n, batch_size=batch_size)
    return np.asarray(prediction), np.asarray(radius)


def loop_certify(model, x, sigma, n, batch_size):
    """One input at a time, noise batch by noise batch, counts in numpy (reference style)."""

    def counts(point: torch.Tensor, total: int) -> np.ndarray:
        tally = np.zeros(10, dtype=np.int64)
        remaining = total
        with torch.no_grad():
            while remaining:
                size = min(batch_size, remaining)
                remaining -= size
                batch = point.repeat(size, 1)
                labels = model(batch + sigma * torch.randn_like(batch)).argmax(1)
                tally += np.bincount(labels.numpy(), minlength=10)
        return tally

    predictions, radii = [], []
    for point in x:
        selected = int(counts(point, N0).argmax())
        votes = int(counts(point, n)[selected])
        p_lower = stats.beta.ppf(ALPHA, votes, n - votes + 1) if votes else 0.0
        if p_lower < 0.5:
            predictions.append(-1)
            radii.append(0.0)
        else:
            predictions.append(selected)
            radii.append(sigma * stats.norm.ppf(p_lower))
    return np.array(predictions), np.array(radii)


def summarise(name, runner, model, x, y, sigma, n, batch_size, repeats, reference):
    """Run ``runner`` ``repeats`` times, each right after a raw forward pass of the same work
    (the machine is shared and noisy: the ratio is taken within each pair, then the median)."""
    seconds, raws = [], []
    for repeat in range(repeats):
        raws.append(raw_forward(model, x, sigma, n, batch_size))
        torch.manual_seed(repeat)
        started = time.perf_counter()
        prediction, radius = runner(model, x, sigma, n, batch_size)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    correct = prediction == y.numpy()
    row = {
        "method": name,
        "seconds": median,
        "samples_per_second": len(x) * (N0 + n) / median,
        "ratio_to_raw_forward": statistics.median(
            r / s for r, s in zip(raws, seconds, strict=True)
        ),
        "raw_samples_per_second": len(x) * (N0 + n) / statistics.median(raws),
        "mean_radius": float(radius.mean()),
        "radius_standard_error": float(radius.std(ddof=1) / np.sqrt(len(radius))),
        "abstained": float((prediction == -1).mean()),
        "certified_accuracy": {str(r): float((correct & (radius >= r)).mean()) for r in RADII},
        "ks_p_value_vs_lipguard": (
            None if reference is None else float(stats.ks_2samp(radius, reference).pvalue)
        ),
    }
    return row, radius


def markdown(rows, meta) -> str:
    lines = [
        "# Randomized smoothing: CERTIFY throughput and agreement",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['threads']} "
        f"threads), torch {meta['machine']['torch']}, ART {meta['art']}. MLP 64-256-256-10 "
        f"trained with Gaussian noise σ = {meta['sigma']} on scikit-learn digits (clean test "
        f"accuracy {meta['accuracy']:.3f}); {meta['inputs']} test digits, n0 = {N0}, "
        f"n = {meta['n']}, α = {ALPHA}, batch {meta['batch_size']}; median of "
        f"{meta['repeats']} runs. *× raw forward*: the base model alone on a pre-drawn noisy "
        "batch, same number of samples, timed right before each run (median of the ratios).",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| method | samples/s | × raw forward | × ART | mean radius (± s.e.) | abstain | "
        + " | ".join(f"cert. acc. r={r}" for r in RADII)
        + " | KS p vs lipguard |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(RADII) + "---:|",
    ]
    art = next(row for row in rows if row["method"].startswith("ART"))
    for row in rows:
        ks = row["ks_p_value_vs_lipguard"]
        lines.append(
            f"| {row['method']} | {row['samples_per_second']:,.0f} | "
            f"{row['ratio_to_raw_forward']:.2f} | "
            f"{row['samples_per_second'] / art['samples_per_second']:.2f} | "
            f"{row['mean_radius']:.4f} ± {row['radius_standard_error']:.4f} | "
            f"{row['abstained']:.1%} | "
            + " | ".join(f"{row['certified_accuracy'][str(r)]:.1%}" for r in RADII)
            + f" | {'—' if ks is None else f'{ks:.2f}'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    import art

    model, x_test, y_test, accuracy = trained_digits_mlp(epochs=60, noise=args.sigma)
    x, y = x_test[: args.inputs], y_test[: args.inputs]
    rows, reference = [], None
    for name, runner in (
        ("lipguard SmoothedClassifier", lipguard_certify),
        ("ART PyTorchRandomizedSmoothing (peer)", art_certify),
        ("per-sample loop (reference style)", loop_certify),
    ):
        row, radius = summarise(
            name, runner, model, x, y, args.sigma, args.n, args.batch_size, args.repeats, reference
        )
        reference = radius if reference is None else reference
        rows.append(row)
        print(row)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "art": art.__version__,
        "sigma": args.sigma,
        "inputs": len(x),
        "n": args.n,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "accuracy": accuracy,
        "command": f"python benchmarks/smoothing.py --sigma {args.sigma} --inputs {args.inputs} "
        f"--n {args.n} --batch-size {args.batch_size} --repeats {args.repeats}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smoothing.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / "smoothing.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
