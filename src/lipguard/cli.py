"""The ``lipguard`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import lipguard
from lipguard.demo import (
    DemoConfig,
    ModelReport,
    reference_max_gradient,
    run_demo,
    write_results,
)

app = typer.Typer(
    help="lipguard: smooth, provable reward and value models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()


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
def run(
    quick: Annotated[bool, typer.Option(help="Shorter training (about a quarter).")] = False,
    out: Annotated[Path, typer.Option(help="Folder for results.json.")] = Path("runs/layer-demo"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Learn Pendulum's reward with and without a guaranteed Lipschitz bound, and compare."""
    config = DemoConfig.quick(seed) if quick else DemoConfig(seed=seed)
    console.print(
        f"[bold]lipguard run[/bold]: learning Pendulum-v1's reward with a Lipschitz target "
        f"L = {config.lipschitz:g} ({config.train_samples} noisy samples, {config.epochs} epochs)"
    )
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:

        def track(name: str, total: int):
            task = progress.add_task(name, total=total)
            return lambda: progress.advance(task)

        reports = run_demo(config, track)
    reference = reference_max_gradient(config)
    console.print(_table(reports, reference))
    path = write_results(reports, reference, config, out)
    console.print(_verdict(reports))
    console.print(f"results: {path}")


def _table(reports: list[ModelReport], reference: float) -> Table:
    table = Table(
        title="Learned Pendulum-v1 rewards, measured on held-out states", box=box.SIMPLE_HEAD
    )
    table.add_column("model", no_wrap=True)
    table.add_column("MSE", justify="right")
    table.add_column("claimed L", justify="right")
    table.add_column("claim", justify="center", min_width=8)
    table.add_column("∏ true σ", justify="right")
    table.add_column("max ‖∇r‖", justify="right")
    table.add_column("s", justify="right")
    for report in reports:
        claimed = "—" if report.claimed_bound is None else f"{report.claimed_bound:.6f}"
        if report.claimed_bound is None:
            claim = "none"
        elif report.claim_is_sound:
            claim = "[green]proven[/green]"
        else:
            claim = "[yellow]estimate[/yellow]"
        table.add_row(
            report.name,
            f"{report.test_mse:.4f}",
            claimed,
            claim,
            f"{report.weight_norm_product:.4f}",
            f"{report.max_observed_gradient:.4f}",
            f"{report.train_seconds:.1f}",
        )
    table.add_row("true reward", "", "", "", "", f"{reference:.4f}", "", style="dim")
    table.caption = (
        "MSE: test error · ∏ true σ: product of the exact singular values of the applied "
        "weights (what the weights really give) · max ‖∇r‖: steepest slope seen · s: seconds"
    )
    return table


def _verdict(reports: list[ModelReport]) -> str:
    lines = []
    for report in reports:
        if report.claimed_bound is None:
            continue
        excess = report.weight_norm_product / report.claimed_bound - 1.0
        if report.claim_is_sound:
            lines.append(
                f"{report.name}: certified L <= {report.claimed_bound:.6f}; the weights give "
                f"{report.weight_norm_product:.6f}, the steepest observed slope is "
                f"{report.max_observed_gradient:.4f}."
            )
        elif excess > 0:
            lines.append(
                f"{report.name}: claims L = {report.claimed_bound:g} but its weights give "
                f"{report.weight_norm_product:.4f} ({excess:+.2%}): power iteration is an estimate."
            )
        else:
            lines.append(
                f"{report.name}: claims L = {report.claimed_bound:g}; its weights give "
                f"{report.weight_norm_product:.4f} this time, but nothing guarantees it."
            )
    return "\n".join(lines)
