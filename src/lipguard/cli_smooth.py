"""``lipguard smooth``: randomized-smoothing certificates for a model file and a data file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich import box
from rich.table import Table

from lipguard._cli_support import console, fail, load_model, parse_shape
from lipguard.errors import InvalidArgumentError, LipguardError

smooth_app = typer.Typer(help="Randomized smoothing: certified radii and output bounds.")


def load_data(path: Path, label_column: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and optional labels from ``.npz`` (arrays ``x`` and optionally ``y``), ``.npy``
    (inputs only) or ``.csv`` (numeric; ``label_column`` holds the labels if given)."""
    labels = None
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                if "x" not in archive:
                    raise InvalidArgumentError(f"{path} has no array named 'x'")
                inputs = archive["x"]
                labels = archive.get("y", None)
        elif path.suffix == ".npy":
            inputs = np.load(path)
        elif path.suffix == ".csv":
            table = np.loadtxt(path, delimiter=",", ndmin=2)
            if label_column is not None:
                labels = table[:, label_column]
                table = np.delete(table, label_column, axis=1)
            inputs = table
        else:
            raise InvalidArgumentError(f"data must be .npz, .npy or .csv, got {path.name}")
    except (OSError, ValueError) as error:
        if isinstance(error, LipguardError):
            raise
        raise InvalidArgumentError(f"cannot read {path}: {error}") from None
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels).astype(np.int64)) if labels is not None else None
    return x, y


def _parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"output range must look like -1,1; got {text!r}") from None
    return low, high


@smooth_app.command("certify")
def certify_command(
    model: Annotated[Path, typer.Argument(help="An .onnx file or a lipguard checkpoint.")],
    data: Annotated[Path, typer.Option(help=".npz (x, optional y), .npy or .csv inputs.")],
    sigma: Annotated[float, typer.Option(help="Standard deviation of the Gaussian noise.")],
    n: Annotated[int, typer.Option(help="Estimation samples per input.")] = 100_000,
    n0: Annotated[int, typer.Option(help="Selection samples per input (classifiers).")] = 100,
    alpha: Annotated[float, typer.Option(help="Failure probability of each certificate.")] = 0.001,
    batch_size: Annotated[int, typer.Option(help="Noisy samples per forward pass.")] = 10_000,
    output_range: Annotated[
        str | None,
        typer.Option(help="a,b: certify a bounded regressor/reward instead of a classifier."),
    ] = None,
    epsilon: Annotated[
        float, typer.Option(help="Regression: ℓ2 radius of the certified output bounds.")
    ] = 0.1,
    label_column: Annotated[int | None, typer.Option(help="CSV column holding the labels.")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape, e.g. 1,8,8.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write every certificate as JSON here.")] = None,
) -> None:
    """Certify every input of a data file with Gaussian randomized smoothing."""
    from lipguard.smoothing import SmoothedClassifier, SmoothedRegressor, certified_accuracy

    try:
        network, stored_shape = load_model(model)
        x, y = load_data(data, label_column)
        shape = parse_shape(input_shape) or stored_shape
        if shape is not None:
            x = x.reshape(x.shape[0], *shape)
        started = time.perf_counter()
        if output_range is not None:
            smoothed = SmoothedRegressor(network, sigma, _parse_range(output_range), seed=seed)
            result = smoothed.certify(x, n, alpha, batch_size, progress=True)
            low, high = result.bounds(epsilon)
            payload = {
                "mean": result.mean.tolist(),
                "lower": low.tolist(),
                "upper": high.tolist(),
                "epsilon": epsilon,
            }
        else:
            with torch.no_grad():
                classes = int(network.eval()(x[:1]).shape[-1])
            smoothed = SmoothedClassifier(network, classes, sigma, seed=seed)
            result = smoothed.certify(x, n0, n, alpha, batch_size, progress=True)
            payload = result.to_dict()
        seconds = time.perf_counter() - started
    except LipguardError as error:
        fail(error)
    table = Table(title=f"randomized smoothing: {model.name} on {data.name}", box=box.SIMPLE_HEAD)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("inputs", str(x.shape[0]))
    table.add_row("σ, n, α", f"{sigma:g}, {n}, {alpha:g}")
    if output_range is not None:
        width = (high - low).median()
        table.add_row(f"median bound width at ε = {epsilon:g}", f"{float(width):.4g}")
    else:
        certified = ~result.abstained
        table.add_row("abstained", f"{float(result.abstained.float().mean()):.1%}")
        if bool(certified.any()):
            table.add_row(
                "median certified radius", f"{float(result.radius[certified].median()):.4g}"
            )
        if y is not None:
            curve = certified_accuracy(result, y, [0.0, 0.25, 0.5, 1.0])
            for radius, accuracy in zip(curve.radii, curve.accuracy, strict=True):
                table.add_row(f"certified accuracy at r = {radius:g}", f"{accuracy:.1%}")
            payload["certified_accuracy"] = curve.to_dict()
    table.add_row("time", f"{seconds:.1f} s ({x.shape[0] * n / seconds:,.0f} samples/s)")
    console.print(table)
    if out is not None:
        out.write_text(json.dumps(payload, indent=2))
        console.print(f"certificates: {out}")
