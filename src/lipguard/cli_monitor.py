"""``lipguard monitor`` (replay a log through the monitor) and ``lipguard audit`` (verify and
summarise an audit store)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich import box
from rich.table import Table

from lipguard._cli_support import (
    OverwriteOption,
    console,
    number,
    read_csv,
    read_npz,
    refuse_existing,
    split_column,
    write_text,
)
from lipguard._progress import progress_bar
from lipguard.errors import InvalidArgumentError
from lipguard.monitor.store import KEY_VARIABLE

audit_app = typer.Typer(help="Verify and summarise a tamper-evident audit store.")


def load_log(path: Path, reward_column: int) -> tuple[np.ndarray, np.ndarray]:
    """States and rewards from ``.npz`` (arrays ``states`` and ``rewards``), ``.csv`` (numeric;
    ``reward_column`` holds the reward, the other columns the state) or ``.parquet``."""
    if path.suffix == ".npz":
        arrays = read_npz(path, ("states", "rewards"))
        return arrays["states"], arrays["rewards"]
    if path.suffix == ".csv":
        table = read_csv(path)
    elif path.suffix == ".parquet":
        table = _read_parquet(path)
    else:
        raise InvalidArgumentError(f"a log must be .npz, .csv or .parquet, got {path.name}")
    return split_column(table, reward_column, "--reward-column")


def _read_parquet(path: Path) -> np.ndarray:
    try:
        import pandas

        table = pandas.read_parquet(path).to_numpy(dtype=np.float64)
    except ImportError:
        raise InvalidArgumentError("reading Parquet needs pandas and pyarrow installed") from None
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    if table.ndim != 2 or table.size == 0:
        raise InvalidArgumentError(f"{path} holds no data")
    return table


def _tolerance(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(
            f"--tolerance must be 'auto' or a finite number >= 0, got {text!r}"
        )
    return value


KeyOption = Annotated[
    str | None,
    typer.Option(help=f"HMAC key of a keyed log (or set {KEY_VARIABLE}).", show_default=False),
]


def monitor_command(
    log: Annotated[Path, typer.Argument(help="A .npz (states, rewards), .csv or .parquet log.")],
    lipschitz: Annotated[
        float,
        typer.Option(help="The Lipschitz bound to check.", callback=number(low=0, strict=True)),
    ],
    norm: Annotated[str, typer.Option(help="State distance: 2 or inf.")] = "2",
    window: Annotated[
        int, typer.Option(help="Recent observations each one is compared with.", min=1)
    ] = 1024,
    batch_size: Annotated[int, typer.Option(help="Observations per monitor call.", min=1)] = 256,
    tolerance: Annotated[
        str,
        typer.Option(
            help="Slack added to every bound: 'auto' (the rewards' floating-point rounding) or a "
            "number (0: exact comparison)."
        ),
    ] = "auto",
    noise_floor: Annotated[
        float,
        typer.Option(help="Ignore pairs closer than this.", callback=number(low=0)),
    ] = 0.0,
    pairs: Annotated[
        str,
        typer.Option(
            help="'worst': one event per offending observation (its worst pair and the number of "
            "violating pairs), a bounded log; 'all': one event per violating pair."
        ),
    ] = "worst",
    reward_column: Annotated[int, typer.Option(help="CSV/Parquet column of the reward.")] = -1,
    db: Annotated[Path | None, typer.Option(help="Record every event in this audit store.")] = None,
    key: KeyOption = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Write a checkpoint of the audit store here at the end (keep it elsewhere)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the events as JSON here.")] = None,
    overwrite: Annotated[bool, OverwriteOption] = False,
) -> None:
    """Replay a (state, reward) log through the Lipschitz monitor."""
    from lipguard.monitor import AuditStore, LipschitzMonitor

    tolerance_value = _tolerance(tolerance)
    if pairs not in ("worst", "all"):
        raise typer.BadParameter(f"--pairs must be 'worst' or 'all', got {pairs!r}")
    for target in (out, checkpoint):
        refuse_existing(target, overwrite)
    if checkpoint is not None and db is None:
        raise InvalidArgumentError("--checkpoint needs --db (the audit store it is of)")
    states, rewards = load_log(log, reward_column)
    store = AuditStore(db, key=key) if db is not None else None
    monitor = LipschitzMonitor(
        lipschitz,
        norm,
        window=window,
        tolerance=tolerance_value,
        noise_floor=noise_floor,
        store=store,
        pairs=pairs,
    )
    events = []
    with progress_bar(len(states), "monitoring", True) as advance:
        for start in range(0, len(states), batch_size):
            chunk = slice(start, start + batch_size)
            events += monitor.observe(states[chunk], rewards[chunk]).events
            advance(len(states[chunk]))
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
        write_text(out, json.dumps([vars(e) for e in events], indent=2, default=float))
        console.print(f"events: {out}")
    if store is not None:
        count, head = store.head()
        console.print(f"audit store: {db} ({count} records, head {count}:{head})")
        if checkpoint is not None:
            store.checkpoint().save(checkpoint, overwrite=overwrite)
            console.print(f"checkpoint: {checkpoint}")


@audit_app.command("verify")
def audit_verify(
    db: Annotated[str, typer.Argument(help="The audit store: a SQLite file or SQLAlchemy URL.")],
    key: KeyOption = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="A checkpoint from `lipguard audit checkpoint`: the log must still hold it."
        ),
    ] = None,
    expect_head: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH of a record the log must still hold (a head kept elsewhere)."),
    ] = None,
) -> None:
    """Recompute the hash chain; exit code 1 if any record was edited, deleted, reordered or
    forged, or the log no longer holds the checkpoint. Never creates or changes anything."""
    from lipguard.monitor import AuditStore, Checkpoint

    anchor = Checkpoint.load(checkpoint) if checkpoint is not None else None
    head = Checkpoint.parse_head(expect_head) if expect_head is not None else None
    report = AuditStore(db, key=key, create=False).verify(head, checkpoint=anchor)
    for problem in report.problems:
        console.print(f"[red]✗[/red] {problem}")
    if not report.ok:
        console.print(f"[red]audit log has been tampered with[/red] ({report.records} records)")
        raise typer.Exit(code=1)
    anchored = (
        " up to the checkpoint"
        if anchor or head
        else " (no checkpoint: a truncated tail would not show)"
    )
    console.print(f"[green]audit log intact[/green]: {report.records} records{anchored}")


@audit_app.command("checkpoint")
def audit_checkpoint(
    db: Annotated[str, typer.Argument(help="The audit store: a SQLite file or SQLAlchemy URL.")],
    out: Annotated[Path, typer.Option(help="Write the checkpoint JSON here (keep it elsewhere).")],
    key: KeyOption = None,
    overwrite: Annotated[bool, OverwriteOption] = False,
) -> None:
    """Export a checkpoint (log id, count, head; signed when keyed) after verifying the log."""
    refuse_existing(out, overwrite)
    store = _verified(db, key)
    point = store.checkpoint()
    point.save(out, overwrite=overwrite)
    console.print(f"checkpoint of {point.count} records, head {point.count}:{point.head} → {out}")


@audit_app.command("report")
def audit_report(
    db: Annotated[str, typer.Argument(help="The audit store: a SQLite file or SQLAlchemy URL.")],
    key: KeyOption = None,
    plot: Annotated[Path | None, typer.Option(help="Save a violation timeline (PNG).")] = None,
    overwrite: Annotated[bool, OverwriteOption] = False,
) -> None:
    """Verify the log, then summarise its events over time (and plot the timeline)."""
    refuse_existing(plot, overwrite)
    store = _verified(db, key)
    records = store.records()
    counts = Counter(record.kind for record in records)
    table = Table(title=f"audit store {db}", box=box.SIMPLE_HEAD)
    table.add_column("kind")
    table.add_column("records", justify="right")
    table.add_column("first step", justify="right")
    table.add_column("last step", justify="right")
    steps_of = {kind: [_step(r) for r in records if r.kind == kind] for kind in counts}
    for kind in sorted(counts):
        steps = steps_of[kind]
        table.add_row(kind, str(counts[kind]), str(min(steps)), str(max(steps)))
    console.print(table)
    if plot is not None and records:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots(figsize=(7, 3))
        for row, kind in enumerate(sorted(counts)):
            ax.scatter(steps_of[kind], [row] * counts[kind], s=8, label=kind)
        ax.set_yticks(range(len(counts)), sorted(counts))
        ax.set_xlabel("stream step")
        ax.set_title("monitor events over time")
        ax.grid(alpha=0.3)
        figure.savefig(plot, dpi=120, bbox_inches="tight")
        console.print(f"timeline: {plot}")


def _verified(db: str, key: str | None):
    """The audit store opened read-only after its chain verified; exit code 1 if it did not."""
    from lipguard.monitor import AuditStore

    store = AuditStore(db, key=key, create=False)
    report = store.verify()
    if not report.ok:
        console.print(
            f"[red]audit log has been tampered with[/red] ({len(report.problems)} problems, first: "
            f"{report.problems[0]}); run `lipguard audit verify` for all of them"
        )
        raise typer.Exit(code=1)
    return store


def _step(record) -> int:
    step = record.payload.get("step", 0)
    return step if isinstance(step, int) else 0
