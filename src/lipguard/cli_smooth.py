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

from lipguard._cli_support import (
    OverwriteOption,
    accepted_inputs,
    console,
    fail,
    load_model,
    number,
    parse_pair,
    parse_shape,
    read_csv,
    read_npy,
    read_npz,
    refuse_existing,
    reshaped,
    split_column,
    write_text,
)
from lipguard.errors import InvalidArgumentError, LipguardError

smooth_app = typer.Typer(help="Randomized smoothing: certified radii and output bounds.")


def load_data(path: Path, label_column: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and optional labels from ``.npz`` (arrays ``x`` and optionally ``y``), ``.npy``
    (inputs only) or ``.csv`` (numeric; ``label_column`` holds the labels if given)."""
    labels = None
    if path.suffix == ".npz":
        arrays = read_npz(path, ("x",), ("y",))
        inputs, labels = arrays["x"], arrays.get("y")
    elif path.suffix == ".npy":
        inputs = read_npy(path)
    elif path.suffix == ".csv":
        inputs = read_csv(path)
        if label_column is not None:
            inputs, labels = split_column(inputs, label_column, "--label-column")
    else:
        raise InvalidArgumentError(f"data must be .npz, .npy or .csv, got {path.name}")
    if inputs.ndim < 2 or len(inputs) == 0:
        raise InvalidArgumentError(f"{path}: inputs must be an array of samples (N, ...), N >= 1")
    if not np.isfinite(inputs).all():
        raise InvalidArgumentError(f"{path}: inputs hold NaN or infinity")
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    if labels is None:
        return x, None
    if labels.shape != (len(inputs),) or not np.isfinite(labels).all() or (labels % 1 != 0).any():
        raise InvalidArgumentError(f"{path}: labels must be one whole number per input")
    return x, torch.as_tensor(labels.astype(np.int64))


@smooth_app.command("certify")
def certify_command(
    model: Annotated[Path, typer.Argument(help="An .onnx file or a lipguard checkpoint.")],
    data: Annotated[Path, typer.Option(help=".npz (x, optional y), .npy or .csv inputs.")],
    sigma: Annotated[float, typer.Option(help="Standard deviation of the Gaussian noise.")],
    n: Annotated[int, typer.Option(help="Estimation samples per input.", min=1)] = 100_000,
    n0: Annotated[
        int, typer.Option(help="Selection samples per input (classifiers).", min=1)
    ] = 100,
    alpha: Annotated[float, typer.Option(help="Failure probability of each certificate.")] = 0.001,
    batch_size: Annotated[
        int, typer.Option(help="Noisy samples per forward pass.", min=1)
    ] = 10_000,
    output_range: Annotated[
        str | None,
        typer.Option(help="a,b: certify a bounded regressor/reward instead of a classifier."),
    ] = None,
    epsilon: Annotated[
        float,
        typer.Option(
            help="Regression: ℓ2 radius of the certified output bounds.", callback=number(low=0)
        ),
    ] = 0.1,
    label_column: Annotated[int | None, typer.Option(help="CSV column holding the labels.")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape, e.g. 1,8,8.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write every certificate as JSON here.")] = None,
    overwrite: Annotated[bool, OverwriteOption] = False,
) -> None:
    """Certify every input of a data file with Gaussian randomized smoothing."""
    from lipguard.smoothing import SmoothedClassifier, SmoothedRegressor, certified_accuracy

    refuse_existing(out, overwrite)
    try:
        network, stored_shape = load_model(model)
        x, y = load_data(data, label_column)
        shape = parse_shape(input_shape) or stored_shape
        if shape is not None:
            x = reshaped(x, shape)
        accepted_inputs(network, x)
        started = time.perf_counter()
        if output_range is not None:
            smoothed = SmoothedRegressor(
                network, sigma, parse_pair(output_range, "--output-range", "-1,1"), seed=seed
            )
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
            if classes < 2:
                raise InvalidArgumentError(
                    "the model has one output: a classifier needs one per class; for a "
                    "regressor or reward model give --output-range a,b"
                )
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
        write_text(out, json.dumps(payload, indent=2))
        console.print(f"certificates: {out}")
