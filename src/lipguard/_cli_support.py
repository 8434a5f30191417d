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


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"input shape must look like 3,32,32; got {text!r}") from None


def fail(error: Exception) -> None:
    console.print(f"[red]error:[/red] {error}")
    raise typer.Exit(code=2)
