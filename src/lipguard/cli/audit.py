"""``lipguard audit``: verify, checkpoint and summarise a tamper-evident audit store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from lipguard.cli._io import KeyOption, OverwriteOption, console, refuse_existing

if TYPE_CHECKING:
    from lipguard.monitor import AuditRecord, AuditStore

#: the audit store a verb reads
StoreArgument = Annotated[
    str, typer.Argument(help="The audit store: a SQLite file or SQLAlchemy URL.")
]


def verify_command(
    db: StoreArgument,
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
    for check in report.failures:
        console.print(f"[red]✗[/red] {escape(check.detail)}")
    if not report.ok:
        console.print(f"[red]audit log has been tampered with[/red] ({report.records} records)")
        raise typer.Exit(code=1)
    anchored = (
        " up to the checkpoint"
        if anchor or head
        else " (no checkpoint: a truncated tail would not show)"
    )
    console.print(f"[green]audit log intact[/green]: {report.records} records{anchored}")


def checkpoint_command(
    db: StoreArgument,
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


def report_command(
    db: StoreArgument,
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


def _verified(db: str, key: str | None) -> AuditStore:
    """The audit store opened read-only after its chain verified; exit code 1 if it did not."""
    from lipguard.monitor import AuditStore

    store = AuditStore(db, key=key, create=False)
    report = store.verify()
    if not report.ok:
        console.print(
            f"[red]audit log has been tampered with[/red] ({len(report.failures)} problems, first: "
            f"{escape(report.failures[0].detail)}); run `lipguard audit verify` for all of them"
        )
        raise typer.Exit(code=1)
    return store


def _step(record: AuditRecord) -> int:
    step = record.payload.get("step", 0)
    return step if isinstance(step, int) else 0
