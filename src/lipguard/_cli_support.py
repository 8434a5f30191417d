"""What the command-line modules share: the console, model loading, error exit, and the
command group that turns every user error into one line and exit code 2."""

from __future__ import annotations

import math
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import typer
from rich.console import Console
from typer.core import TyperGroup

from lipguard.errors import InvalidArgumentError, LipguardError

console = Console()
errors = Console(stderr=True, highlight=False, soft_wrap=True)


class OneLineErrors(TyperGroup):
    """The ``lipguard`` command group: a user error — a bad option (Click's usage errors), a
    :class:`~lipguard.errors.LipguardError` or a file the system cannot read or write — prints
    one line, ``error: …``, on stderr and exits with code 2; no traceback. Anything else is a
    bug and keeps its traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            _print_error("aborted")
            sys.exit(1)
        except LipguardError as error:
            _print_error(str(error))
            sys.exit(2)
        except OSError as error:
            where = f" {error.filename}" if error.filename else ""
            _print_error(f"cannot use{where}: {error.strerror or error}")
            sys.exit(2)
        except Exception as error:  # Click's own exceptions (usage errors, bad parameters)
            if not (hasattr(error, "format_message") and hasattr(error, "exit_code")):
                raise
            _print_error(error.format_message())
            sys.exit(error.exit_code)
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


def _print_error(message: str) -> None:
    errors.print(f"[red]error:[/red] {' '.join(message.split())}", markup=True)


def number(*, low: float | None = None, strict: bool = False) -> Callable[[Any], Any]:
    """A Typer callback: the option is finite and ``>= low`` (``> low`` when ``strict``)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        below = low is not None and (value <= low if strict else value < low)
        if not math.isfinite(value) or below:
            bound = "" if low is None else f" and {'>' if strict else '>='} {low:g}"
            raise typer.BadParameter(f"must be finite{bound}, got {value}")
        return value

    return check


def load_model(path: Path):
    """``(model, per-sample input shape)`` from an ONNX file or a lipguard checkpoint."""
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


def parse_pair(text: str | None, option: str, example: str) -> tuple[float, float] | None:
    """``"a,b"`` → ``(a, b)``, two finite numbers with ``a < b``."""
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{option} must look like {example}; got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise typer.BadParameter(f"{option} needs two finite numbers a < b; got {text!r}")
    return low, high


def accepted_inputs(network, x) -> None:
    """Check, on one input, that the model takes inputs of this shape (one line if not)."""
    import torch

    try:
        with torch.no_grad():
            network.eval()(x[:1])
    except (RuntimeError, ValueError, IndexError) as error:
        raise InvalidArgumentError(
            f"the model does not take inputs of shape {tuple(x.shape[1:])}: "
            f"{str(error).splitlines()[0]}"
        ) from None


def fail(error: Exception | str) -> NoReturn:
    """Report a user error in one line and exit with code 2."""
    _print_error(str(error))
    raise typer.Exit(code=2)


OverwriteOption = typer.Option(
    "--overwrite", help="Replace output files that exist (without it they are refused)."
)


def refuse_existing(path: Path | None, overwrite: bool = False) -> None:
    """Check an output path before any work: its folder exists and, unless ``overwrite``, the
    file does not (nothing is replaced without an explicit flag)."""
    if path is None:
        return
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"cannot write {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise InvalidArgumentError(f"cannot write {path}: it is a folder")
    if path.exists() and not overwrite:
        raise InvalidArgumentError(f"{path} exists; pass --overwrite to replace it")


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (a temporary file renamed over it): a failure leaves the old
    file, or none, never half a file."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_text(text)
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise InvalidArgumentError(f"cannot write {path}: {error.strerror or error}") from None


def read_csv(path: Path) -> np.ndarray:
    """A numeric CSV file as a 2-D float64 array: one line errors for a missing, empty, ragged
    or non-numeric file."""
    if not path.is_file():
        raise InvalidArgumentError(f"cannot read {path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy only warns on an empty file
            table = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except (ValueError, UserWarning, UnicodeDecodeError) as error:
        detail = str(error).splitlines()[0] if str(error) else "not a numeric CSV file"
        raise InvalidArgumentError(f"cannot read {path}: {detail}") from None
    if table.size == 0:
        raise InvalidArgumentError(f"{path} holds no data")
    return table


def split_column(table: np.ndarray, column: int, option: str) -> tuple[np.ndarray, np.ndarray]:
    """``(the other columns, column)`` after checking the index (negative counts from the end)."""
    width = table.shape[1]
    if not -width <= column < width:
        raise InvalidArgumentError(
            f"{option} {column} is out of range: the file has {width} columns"
        )
    if width < 2:
        raise InvalidArgumentError(f"the file needs at least 2 columns for {option}, it has 1")
    return np.delete(table, column % width, axis=1), table[:, column]


def read_npz(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """Numeric arrays from an ``.npz`` file (never unpickled): one-line errors for a missing or
    corrupt file, a missing array or a non-numeric one."""
    if not path.is_file():
        raise InvalidArgumentError(f"cannot read {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in required if name not in archive]
            if missing:
                raise InvalidArgumentError(f"{path} needs arrays {', '.join(map(repr, required))}")
            arrays = {name: archive[name] for name in required + optional if name in archive}
    except LipguardError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InvalidArgumentError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    for name, array in arrays.items():
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise InvalidArgumentError(f"{path}: array {name!r} is not numeric ({array.dtype})")
    return arrays


def read_npy(path: Path) -> np.ndarray:
    """A numeric ``.npy`` array (never unpickled), with one-line errors."""
    if not path.is_file():
        raise InvalidArgumentError(f"cannot read {path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InvalidArgumentError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    if not np.issubdtype(array.dtype, np.number):
        raise InvalidArgumentError(f"{path} is not a numeric array ({array.dtype})")
    return array


def reshaped(x, shape: tuple):
    """Data samples ``(N, ...)`` reshaped to the per-sample ``shape`` (one input only)."""
    if shape and isinstance(shape[0], tuple):
        raise InvalidArgumentError(
            "data files feed models with one input; this model takes several"
        )
    size = math.prod(x.shape[1:])
    if math.prod(shape) != size:
        raise InvalidArgumentError(
            f"samples of {size} values cannot take the input shape {tuple(shape)}"
        )
    return x.reshape(x.shape[0], *shape)
