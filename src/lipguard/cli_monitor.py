"""``lipguard monitor`` (replay a log through the monitor) and ``lipguard audit`` (verify and
summarise an audit store)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich import box
from rich.table import Table

from lipguard._cli_support import console, fail
from lipguard._progress import progress_bar
from lipguard.errors import InvalidArgumentError, LipguardError

audit_app = typer.Typer(help="Verify and summarise a tamper-evident audit store.")


def load_log(path: Path, reward_column: int) -> tuple[np.ndarray, np.ndarray]:
    """States and rewards from ``.npz`` (arrays ``states`` and ``rewards``), ``.csv`` (numeric;
    ``reward_column`` holds the reward, the other columns the state) or ``.parquet``."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                if "states" not in archive or "rewards" not in archive:
                    raise InvalidArgumentError(f"{path} needs arrays 'states' and 'rewards'")
                return archive["states"], archive["rewards"]
        if path.suffix == ".csv":
            table = np.loadtxt(path, delimiter=",", ndmin=2)
        elif path.suffix == ".parquet":
            import pandas

            table = pandas.read_parquet(path).to_numpy(dtype=np.float64)
        else:
            raise InvalidArgumentError(f"a log must be .npz, .csv or .parquet, got {path.name}")
    except ImportError:
        raise InvalidArgumentError("reading Parquet needs pandas and pyarrow installed") from None
    except (OSError, ValueError) as error:
        if isinstance(error, LipguardError):
            raise
        raise InvalidArgumentError(f"cannot read {path}: {error}") from None
    rewards = table[:, reward_column]
    return np.delete(table, reward_column % table.shape[1], axis=1), rewards


def _tolerance(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise InvalidArgumentError(
            f"--tolerance must be 'auto' or a number, got {text!r}"
        ) from None


def monitor_command(
    log: Annotated[Path, typer.Argument(help="A .npz (states, rewards), .csv or .parquet log.")],
    lipschitz: Annotated[float, typer.Option(help="The Lipschitz bound to check.")],
    norm: Annotated[str, typer.Option(help="State distance: 2 or inf.")] = "2",
    window: Annotated[
        int, typer.Option(help="Recent observations each one is compared with.")
    ] = 1024,
    batch_size: Annotated[int, typer.Option(help="Observations per monitor call.")] = 256,
    tolerance: Annotated[
        str,
        typer.Option(
            help="Slack added to every bound: 'auto' (the rewards' floating-point rounding) or a "
            "number (0: exact comparison)."
        ),
    ] = "auto",
    noise_floor: Annotated[float, typer.Option(help="Ignore pairs closer than this.")] = 0.0,
    reward_column: Annotated[int, typer.Option(help="CSV/Parquet column of the reward.")] = -1,
    db: Annotated[Path | None, typer.Option(help="Record every event in this audit store.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the events as JSON here.")] = None,
) -> None:
    """Replay a (state, reward) log through the Lipschitz monitor."""
    from lipguard.monitor import LipschitzMonitor

    try:
        states, rewards = load_log(log, reward_column)
        monitor = LipschitzMonitor(
            lipschitz,
            norm,
            window=window,
            tolerance=_tolerance(tolerance),
            noise_floor=noise_floor,
            store=str(db) if db else None,
        )
        events = []
        with progress_bar(len(states), "monitoring", True) as advance:
            for start in range(0, len(states), batch_size):
                chunk = slice(start, start + batch_size)
                events += monitor.observe(states[chunk], rewards[chunk]).events
                advance(len(states[chunk]))
    except LipguardError as error:
        fail(error)
    counts = Counter(event.kind for event in events)
    table = Table(title=f"monitor: {log.name} (L = {lipschitz:g}, ℓ{norm})", box=box.SIMPLE_HEAD)
    table.add_column("event")
    table.add_column("count", justify="right")
    table.add_row("observations", str(len(states)))
    for kind, count in sorted(counts.items()):
        table.add_row(kind, str(count))
    violations = [e for e in events if e.kind == "violation"]
    if violations:
        worst = max(violations, key=lambda e: e.details["ratio"])
        table.add_row("worst ratio |Δr|/d", f"{worst.details['ratio']:.4g} at step {worst.step}")
    console.print(table)
    if out is not None:
        out.write_text(json.dumps([vars(e) for e in events], indent=2, default=float))
        console.print(f"events: {out}")
    if db is not None:
        console.print(f"audit store: {db}")


@audit_app.command("verify")
def audit_verify(
    db: Annotated[str, typer.Argument(help="The audit store: a SQLite file or SQLAlchemy URL.")],
    key: Annotated[str | None, typer.Option(help="HMAC key (or set LIPGUARD_AUDIT_KEY).")] = None,
) -> None:
    """Recompute the hash chain; exit code 1 if any record was edited, deleted or reordered."""
    from lipguard.monitor import AuditStore

    try:
        report = AuditStore(db, key=key).verify()
    except LipguardError as error:
        fail(error)
    for problem in report.problems:
        console.print(f"[red]✗[/red] {problem}")
    if not report.ok:
        console.print(f"[red]audit log has been tampered with[/red] ({report.records} records)")
        raise typer.Exit(code=1)
    console.print(f"[green]audit log intact[/green]: {report.records} records")


@audit_app.command("report")
def audit_report(
    db: Annotated[str, typer.Argument(help="The audit store: a SQLite file or SQLAlchemy URL.")],
    plot: Annotated[Path | None, typer.Option(help="Save a violation timeline (PNG).")] = None,
) -> None:
    """Summarise the events over time (and plot the timeline)."""
    from lipguard.monitor import AuditStore

    try:
        records = AuditStore(db).records()
    except LipguardError as error:
        fail(error)
    counts = Counter(record.kind for record in records)
    table = Table(title=f"audit store {db}", box=box.SIMPLE_HEAD)
    table.add_column("kind")
    table.add_column("records", justify="right")
    table.add_column("first step", justify="right")
    table.add_column("last step", justify="right")
    for kind in sorted(counts):
        steps = [r.payload.get("step", 0) for r in records if r.kind == kind]
        table.add_row(kind, str(counts[kind]), str(min(steps)), str(max(steps)))
    console.print(table)
    if plot is not None and records:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots(figsize=(7, 3))
        for row, kind in enumerate(sorted(counts)):
            steps = [r.payload.get("step", 0) for r in records if r.kind == kind]
            ax.scatter(steps, [row] * len(steps), s=8, label=kind)
        ax.set_yticks(range(len(counts)), sorted(counts))
        ax.set_xlabel("stream step")
        ax.set_title("monitor events over time")
        ax.grid(alpha=0.3)
        figure.savefig(plot, dpi=120, bbox_inches="tight")
        console.print(f"timeline: {plot}")
