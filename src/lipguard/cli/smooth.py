"""``lipguard smooth certify``: randomized-smoothing certificates for a model file and a data
file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer
from rich import box
from rich.table import Table
from torch import nn

from lipguard import distributed
from lipguard.cli._io import (
    ModelArgument,
    OverwriteOption,
    console,
    load_model_and_samples,
    number,
    parse_range,
    refuse_existing,
    write_text,
)
from lipguard.errors import InvalidArgumentError

if TYPE_CHECKING:
    from lipguard.smoothing import ClassifierCertificates, RegressionCertificates


def certify_command(
    model: ModelArgument,
    data: Annotated[Path, typer.Option(help=".npz (x, optional y), .npy or .csv inputs.")],
    sigma: Annotated[float, typer.Option(help="Standard deviation of the Gaussian noise.")],
    n: Annotated[
        int,
        typer.Option(
            "--n",
            "--samples",
            help="Estimation samples per input (--samples under torchrun, whose own "
            "options --n would abbreviate).",
            min=1,
        ),
    ] = 100_000,
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
    eps: Annotated[
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
    from lipguard.smoothing import SmoothedClassifier, SmoothedRegressor

    distributed.initialise()  # under torchrun: the inputs are shared out over the ranks
    refuse_existing(out, overwrite)
    value_range = parse_range(output_range, "--output-range", "-1,1")
    network, x, y = load_model_and_samples(model, data, label_column, input_shape)
    table = Table(title=f"randomized smoothing: {model.name} on {data.name}", box=box.SIMPLE_HEAD)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("inputs", str(x.shape[0]))
    table.add_row("σ, n, α", f"{sigma:g}, {n}, {alpha:g}")
    started = time.perf_counter()
    if value_range is not None:
        regressor = SmoothedRegressor(network, sigma, value_range, seed=seed)
        bounds = regressor.certify(x, n, alpha, batch_size, progress=True)
        payload = _regression_rows(bounds, eps, table)
    else:
        classifier = SmoothedClassifier(network, _classes(network, x), sigma, seed=seed)
        radii = classifier.certify(x, n0, n, alpha, batch_size, progress=True)
        payload = _classification_rows(radii, y, table)
    seconds = time.perf_counter() - started
    if not distributed.is_main():
        return
    table.add_row("time", f"{seconds:.1f} s ({x.shape[0] * n / seconds:,.0f} samples/s)")
    console.print(table)
    if out is not None:
        write_text(out, json.dumps(payload, indent=2))
        console.print(f"certificates: {out}")


def _classes(network: nn.Module, x: torch.Tensor) -> int:
    """The number of classes of a classifier: its outputs per input (at least 2)."""
    with torch.no_grad():
        classes = int(network.eval()(x[:1]).shape[-1])
    if classes < 2:
        raise InvalidArgumentError(
            "the model has one output: a classifier needs one per class; for a "
            "regressor or reward model give --output-range a,b"
        )
    return classes


def _regression_rows(result: RegressionCertificates, eps: float, table: Table) -> dict[str, Any]:
    """The certified output bounds at radius ``eps`` as JSON; their median width into
    ``table``."""
    low, high = result.bounds(eps)
    table.add_row(f"median bound width at ε = {eps:g}", f"{float((high - low).median()):.4g}")
    return {
        "mean": result.mean.tolist(),
        "lower": low.tolist(),
        "upper": high.tolist(),
        "eps": eps,
    }


def _classification_rows(
    result: ClassifierCertificates, labels: torch.Tensor | None, table: Table
) -> dict[str, Any]:
    """The certified radii (and, with labels, the certified accuracy) as JSON; their summary into
    ``table``."""
    from lipguard.smoothing import certified_accuracy

    payload = result.to_dict()
    certified = ~result.abstained
    table.add_row("abstained", f"{float(result.abstained.float().mean()):.1%}")
    if bool(certified.any()):
        table.add_row("median certified radius", f"{float(result.radius[certified].median()):.4g}")
    if labels is not None:
        curve = certified_accuracy(result, labels, [0.0, 0.25, 0.5, 1.0])
        for radius, accuracy in zip(curve.radii, curve.accuracy, strict=True):
            table.add_row(f"certified accuracy at r = {radius:g}", f"{accuracy:.1%}")
        payload["certified_accuracy"] = curve.to_dict()
    return payload
