"""``lipguard certify`` (prove a Lipschitz bound of a model file) and ``lipguard verify``
(re-check a certificate against it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lipguard.cli._io import (
    ModelArgument,
    OverwriteOption,
    console,
    load_model,
    norm_option,
    parse_shape,
    refuse_existing,
)
from lipguard.norm import L2, Norm
from lipguard.results import Check

if TYPE_CHECKING:
    from lipguard.bounds import Method


def certify_command(
    model: ModelArgument,
    norm: Annotated[Norm, norm_option("2 or inf.")] = L2,
    method: Annotated[
        str, typer.Option(help="auto, product, compositional, lipsdp, lipsdp-layer.")
    ] = "auto",
    input_shape: Annotated[
        str | None,
        typer.Option(help="Per-sample input shape, e.g. 3,32,32 (3,32,32;16 for two inputs)."),
    ] = None,
    lower: Annotated[bool, typer.Option(help="Also search for a witnessed lower bound.")] = True,
    checkable: Annotated[
        bool,
        typer.Option(
            "--checkable", help="Add the proof data of the independent checker (lipguard.check)."
        ),
    ] = False,
    save: Annotated[Path | None, typer.Option(help="Write the certificate JSON here.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the certificate as JSON.")
    ] = False,
    overwrite: Annotated[bool, OverwriteOption] = False,
) -> None:
    """Prove a Lipschitz upper bound (and find a lower bound) for a model file."""
    from lipguard.bounds import certify as certify_model

    refuse_existing(save, overwrite)
    network, stored_shape = load_model(model)
    shape = parse_shape(input_shape) or stored_shape
    started = time.perf_counter()
    quiet = Console(stderr=True, quiet=json_output)
    with quiet.status("proving the upper bound, searching for the lower bound"):
        # certify_model refuses a method it does not know, in one line
        certificate = certify_model(
            network,
            norm,
            cast("Method", method),
            input_shape=shape,
            lower_bound=lower,
            checkable=checkable,
        )
    seconds = time.perf_counter() - started
    if save is not None:
        certificate.save(save)
    if json_output:
        print(json.dumps(certificate.to_dict(), indent=2))
        return
    table = Table(title=f"Lipschitz certificate: {model.name}", box=box.SIMPLE_HEAD)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_column("how")
    upper = certificate.upper
    table.add_row("upper bound", f"{upper.value:.6g}", f"[green]proven[/green] ({upper.method})")
    if certificate.lower is not None:
        table.add_row("lower bound", f"{certificate.lower.value:.6g}", "witnessed pair of inputs")
        table.add_row("gap", f"{certificate.gap:.4f}", "upper / lower")
    table.add_row("norm", Norm.parse(upper.norm).label, "")
    table.add_row("input shape", _shape_text(certificate.input_shape), "per sample")
    table.add_row("weights sha256", certificate.weights_sha256[:16] + "…", "")
    table.add_row("time", f"{seconds:.2f} s", "")
    console.print(table)
    if save is not None:
        console.print(f"certificate: {save}")


def _shape_text(shape: tuple[Any, ...]) -> str:
    if shape and isinstance(shape[0], tuple):
        return " + ".join("×".join(map(str, item)) for item in shape)
    return "×".join(map(str, shape))


_MARKS = {"pass": "[green]✓[/green]", "fail": "[red]✗[/red]", "warn": "[yellow]![/yellow]"}


def verify_command(
    certificate: Annotated[Path, typer.Argument(help="A certificate JSON file.")],
    model: Annotated[
        Path, typer.Argument(help="The .onnx file or lipguard checkpoint it is about.")
    ],
) -> None:
    """Re-check a certificate against a model file; exit code 1 if any claim fails."""
    from lipguard.bounds import Certificate

    loaded = Certificate.load(certificate)
    network, _ = load_model(model)
    report = loaded.verify(network)
    for check in report.checks:
        console.print(f"{_MARKS.get(check.verdict, '-')} {_check_text(check)}")
    if not report.ok:
        raise typer.Exit(code=1)
    console.print("[green]certificate verified[/green]")


def _check_text(check: Check) -> str:
    return escape(f"{check.name}: {check.detail}" if check.detail else check.name)
