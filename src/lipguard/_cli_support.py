"""What the command-line modules share: the console, model loading, error exit."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def load_model(path: Path):
    from lipguard.io import load_checkpoint, load_onnx

    if path.suffix == ".onnx":
        return load_onnx(path)
    return load_checkpoint(path)


def parse_shape(text: str | None) -> tuple | None:
    """``3,32,32`` (one input) or ``3,32,32;16`` (one shape per input, separated by ``;``)."""
    if text is None:
        return None
    try:
        shapes = [
            tuple(int(part) for part in item.replace("x", ",").split(",") if part.strip())
            for item in text.split(";")
        ]
    except ValueError:
        raise typer.BadParameter(
            f"input shape must look like 3,32,32 (or 3,32,32;16 for two inputs); got {text!r}"
        ) from None
    return shapes[0] if len(shapes) == 1 else tuple(shapes)


def fail(error: Exception) -> None:
    console.print(f"[red]error:[/red] {error}")
    raise typer.Exit(code=2)
