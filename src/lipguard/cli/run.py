"""``lipguard run``: the main job (see :mod:`lipguard.pipeline`)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lipguard.cli._io import console, fail
from lipguard.errors import LipguardError

if TYPE_CHECKING:
    from lipguard.pipeline.results import RunResults
    from lipguard.pipeline.run import Tracker


def run_command(
    env: Annotated[str | None, typer.Option(help="Gymnasium id (default Pendulum-v1).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file overriding any setting (docs/pipeline.md).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the results (default: a new runs/<date-time>); an existing one that "
            "holds files is refused unless --overwrite.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the results in --out (only once the new run finishes).")
    ] = False,
    quick: Annotated[bool, typer.Option(help="A short run (about 35 s on 2 cores).")] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 0).")] = None,
) -> None:
    """Learn, certify, attack, smooth, train policies on and monitor reward models, end to end,
    and write an HTML report."""
    from lipguard.pipeline import load_config, run_pipeline

    try:
        settings = load_config(config, quick=quick, env=env, seed=seed)
    except (LipguardError, OSError, ValueError) as error:
        fail(str(error))
    if out is None:
        out = Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        fail(f"{out} already holds results; pass --overwrite to replace them, or another --out")
    console.print(
        f"[bold]lipguard run[/bold] on {settings.env}: reward target L = {settings.lipschitz:g}, "
        f"{settings.algorithm} {settings.timesteps} steps per policy → {out}"
    )
    with _tracker() as track:
        results = run_pipeline(settings, out, track, overwrite=overwrite)
    console.print(_summary(results))
    for check in results.checks.checks:
        colour, mark = _MARKS[check.verdict]
        detail = f" [dim]({check.detail})[/]" if check.detail else ""
        console.print(f"[{colour}]{mark}[/] {check.name}{detail}")
    console.print(f"report: {out / 'report.html'}  results: {out / 'results.json'}")
    console.print(
        f"audit log: {out / 'audit.db'}, head {results.monitor.audit_head} (keep it "
        "elsewhere; `lipguard audit verify --expect-head` checks the log still holds it)"
    )
    if not results.checks.ok:
        raise typer.Exit(1)


@contextmanager
def _tracker() -> Iterator[Tracker]:
    """Progress of the stages: live bars on a terminal; elsewhere (CI, ``| tee``, a log file)
    one line when a stage starts and one when it ends, each with the run's elapsed time."""
    if console.is_terminal:
        columns = (
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:

            @contextmanager
            def bar(description: str, total: int) -> Iterator[Callable[[], None]]:
                task = progress.add_task(description, total=total)
                yield lambda: progress.advance(task)

            yield bar
        return
    started = time.perf_counter()

    def stamp() -> str:
        return f"[{time.perf_counter() - started:7.1f} s]"

    @contextmanager
    def lines(description: str, total: int) -> Iterator[Callable[[], None]]:
        began = time.perf_counter()
        console.print(f"{stamp()} {description} …", highlight=False)
        yield lambda: None
        took = time.perf_counter() - began
        console.print(f"{stamp()} {description}: done in {took:.1f} s", highlight=False)

    yield lines


#: how each verdict of the run's checks is printed
_MARKS = {
    "pass": ("green", "✔"),
    "fail": ("red", "✘"),
    "warn": ("yellow", "!"),
    "skipped": ("dim", "–"),
}


def _summary(results: RunResults) -> Table:
    table = Table(
        title="Reward models and the policies trained on them",
        caption="L seen: witnessed lower bound · return: true return of the policy · "
        "gap: own-reward minus true return · MAD: true return under MAD",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("reward", no_wrap=True)
    for column in ("MSE", "L proven", "L seen", "return", "gap", "discont.", "MAD"):
        table.add_column(column, justify="right")
    for name, policy in results.policies.items():
        reward = results.rewards.get(name)
        table.add_row(
            name,
            f"{reward.test_mse:.4f}" if reward else "",
            f"{reward.certified_lipschitz:.3f}" if reward else "",
            f"{reward.lower_bound:.3f}" if reward and reward.lower_bound else "",
            f"{policy.true_return:.1f}",
            "" if policy.reward_gap is None else f"{policy.reward_gap:.1f}",
            f"{policy.discontinuity_rate:.0%}",
            f"{policy.return_mad:.1f}",
        )
    return table
