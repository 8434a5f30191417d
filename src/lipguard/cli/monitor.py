"""``lipguard monitor``: replay a (state, reward) log through the Lipschitz monitor."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from lipguard._progress import progress_bar
from lipguard.cli._io import (
    KeyOption,
    OverwriteOption,
    console,
    load_data,
    norm_option,
    number,
    refuse_existing,
    write_text,
)
from lipguard.errors import InvalidArgumentError
from lipguard.norm import L2, Norm


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


def monitor_command(
    log: Annotated[Path, typer.Argument(help="A .npz (states, rewards), .csv or .parquet log.")],
    lipschitz: Annotated[
        float,
        typer.Option(help="The Lipschitz bound to check.", callback=number(low=0, strict=True)),
    ],
    norm: Annotated[Norm, norm_option("State distance: 2 or inf.")] = L2,
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
    arrays = load_data(
        log,
        ("states", "rewards"),
        column=reward_column,
        column_option="--reward-column",
        formats=(".npz", ".csv", ".parquet"),
        what="a log",
    )
    states, rewards = arrays["states"], arrays["rewards"]
    store = AuditStore(db, key=key) if db is not None else None
    monitor = LipschitzMonitor(
        lipschitz,
        norm.p,
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
    table = Table(
        title=f"monitor: {log.name} (L = {lipschitz:g}, {norm.label})", box=box.SIMPLE_HEAD
    )
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
