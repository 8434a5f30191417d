"""The ``lipguard`` command."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

import lipguard
from lipguard._cli_support import (
    OneLineErrors,
    OverwriteOption,
    console,
    fail,
    load_model,
    parse_shape,
    refuse_existing,
)
from lipguard.cli_attack import attack_command
from lipguard.cli_monitor import audit_app, monitor_command
from lipguard.cli_run import run_command
from lipguard.cli_smooth import smooth_app
from lipguard.errors import LipguardError

app = typer.Typer(
    cls=OneLineErrors,
    help="lipguard: smooth, provable reward and value models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command("run")(run_command)
app.add_typer(smooth_app, name="smooth")
app.command("attack")(attack_command)
app.command("monitor")(monitor_command)
app.add_typer(audit_app, name="audit")


def _version(value: bool) -> None:
    if value:
        console.print(f"lipguard {lipguard.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """lipguard: smooth, provable reward and value models."""


@app.command()
def certify(
    model: Annotated[Path, typer.Argument(help="An .onnx file or a lipguard checkpoint.")],
    norm: Annotated[str, typer.Option(help="2 or inf.")] = "2",
    method: Annotated[
        str, typer.Option(help="auto, product, compositional, lipsdp, lipsdp-layer.")
    ] = "auto",
    input_shape: Annotated[
        str | None,
        typer.Option(help="Per-sample input shape, e.g. 3,32,32 (3,32,32;16 for two inputs)."),
    ] = None,
    lower: Annotated[bool, typer.Option(help="Also search for a witnessed lower bound.")] = True,
    save: Annotated[Path | None, typer.Option(help="Write the certificate JSON here.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the certificate as JSON.")
    ] = False,
    overwrite: Annotated[bool, OverwriteOption] = False,
) -> None:
    """Prove a Lipschitz upper bound (and find a lower bound) for a model file."""
    from lipguard.bounds import certify as certify_model

    refuse_existing(save, overwrite)
    try:
        network, stored_shape = load_model(model)
        shape = parse_shape(input_shape) or stored_shape
        started = time.perf_counter()
        quiet = Console(stderr=True, quiet=json_output)
        with quiet.status("proving the upper bound, searching for the lower bound"):
            certificate = certify_model(network, norm, method, input_shape=shape, lower_bound=lower)
        seconds = time.perf_counter() - started
    except LipguardError as error:
        fail(error)
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
    table.add_row("norm", "inf" if upper.norm == math.inf else f"ℓ{upper.norm:g}", "")
    table.add_row("input shape", _shape_text(certificate.input_shape), "per sample")
    table.add_row("weights sha256", certificate.weights_sha256[:16] + "…", "")
    table.add_row("time", f"{seconds:.2f} s", "")
    console.print(table)
    if save is not None:
        console.print(f"certificate: {save}")


def _shape_text(shape: tuple) -> str:
    if shape and isinstance(shape[0], tuple):
        return " + ".join("×".join(map(str, item)) for item in shape)
    return "×".join(map(str, shape))


@app.command()
def verify(
    certificate: Annotated[Path, typer.Argument(help="A certificate JSON file.")],
    model: Annotated[
        Path, typer.Argument(help="The .onnx file or lipguard checkpoint it is about.")
    ],
) -> None:
    """Re-check a certificate against a model file; exit code 1 if any claim fails."""
    from lipguard.bounds import Certificate

    try:
        loaded = Certificate.load(certificate)
        network, _ = load_model(model)
        result = loaded.verify(network)
    except LipguardError as error:
        fail(error)
    for check in result.checks:
        mark = "[green]✓[/green]" if result.ok or check is not result.checks[-1] else "[red]✗[/red]"
        console.print(f"{mark} {check}")
    if not result.ok:
        raise typer.Exit(code=1)
    console.print("[green]certificate verified[/green]")
