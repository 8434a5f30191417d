"""What the verbs share: the consoles, the one-line error exit, the option parsers, and the
loaders of model and data files."""

from __future__ import annotations

import math
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import torch
import typer
from rich.console import Console
from rich.markup import escape
from torch import nn
from typer.core import TyperCommand, TyperGroup

from lipguard.errors import InvalidArgumentError, LipguardError
from lipguard.monitor.store import KEY_VARIABLE
from lipguard.norm import Norm

console = Console()
errors = Console(stderr=True, highlight=False, soft_wrap=True)

#: a per-sample input shape (ints), or one such shape per input of a model with several inputs
InputShape = Sequence[Any]

#: old option spellings still accepted (with a note on stderr), and their replacements
RENAMED_OPTIONS = {"--epsilon": "--eps"}


class OneLineErrors(TyperGroup):
    """The ``lipguard`` command group: a user error — a bad option (Click's usage errors), a
    :class:`~lipguard.errors.LipguardError` or a file the system cannot read or write — prints
    one line, ``error: …``, on stderr and exits with code 2; no traceback. Anything else is a
    bug and keeps its traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(
                args,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
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


class Command(TyperCommand):
    """A verb that still takes the old spellings of renamed options (:data:`RENAMED_OPTIONS`):
    each is read as its new spelling and, once the options parsed, a one-line deprecation note
    goes to stderr. Old spellings appear nowhere in ``--help``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: Click's Context
        spellings = {name for param in self.get_params(ctx) for name in param.opts}
        used: dict[str, str] = {}
        renamed: list[str] = []
        for index, arg in enumerate(args):
            if arg == "--":  # everything after it is an argument, never an option
                renamed += args[index:]
                break
            old, equals, value = arg.partition("=")
            new = RENAMED_OPTIONS.get(old)
            if new is not None and new in spellings:
                used[old] = new
                arg = f"{new}{equals}{value}"
            renamed.append(arg)
        remaining = super().parse_args(ctx, renamed)
        for old, new in used.items():
            errors.print(f"note: {old} is deprecated and will be removed; use {new}", markup=False)
        return remaining


def _print_error(message: str) -> None:
    text = escape(" ".join(message.split()))  # a message's own [brackets] are not markup
    errors.print(f"[red]error:[/red] {text}", markup=True)


def fail(message: Exception | str) -> NoReturn:
    """Report a user error in one line on stderr and exit with code 2 (no traceback)."""
    _print_error(str(message))
    raise typer.Exit(code=2)


# Options and their parsers


def number(
    *, low: float | None = None, strict: bool = False
) -> Callable[[float | None], float | None]:
    """A Typer callback: the option is finite and ``>= low`` (``> low`` when ``strict``)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        below = low is not None and (value <= low if strict else value < low)
        if not math.isfinite(value) or below:
            bound = "" if low is None else f" and {'>' if strict else '>='} {low:g}"
            raise typer.BadParameter(f"must be finite{bound}, got {value}")
        return value

    return check


def parse_norm(value: Norm | str) -> Norm:
    """A Typer parser: ``1``, ``2`` or ``inf`` (or ``l1``, ``l2``, ``linf``) as a
    :class:`Norm`."""
    try:
        return Norm.parse(value)
    except InvalidArgumentError as error:
        raise typer.BadParameter(str(error)) from None


def norm_option(help: str) -> Any:
    """A ``--norm`` option read by :func:`parse_norm` (help shows its default by its label)."""
    return typer.Option(help=help, parser=parse_norm, metavar="NORM")


def parse_shape(text: str | None) -> InputShape | None:
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


def parse_range(text: str | None, option: str, example: str) -> tuple[float, float] | None:
    """``"a,b"`` → ``(a, b)``, two finite numbers with ``a < b`` (an input box, an output
    range)."""
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{option} must look like {example}; got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise typer.BadParameter(f"{option} needs two finite numbers a < b; got {text!r}")
    return low, high


#: the model file a verb reads
ModelArgument = Annotated[Path, typer.Argument(help="An .onnx file or a lipguard checkpoint.")]

OverwriteOption = typer.Option(
    "--overwrite", help="Replace output files that exist (without it they are refused)."
)

KeyOption = Annotated[
    str | None,
    typer.Option(help=f"HMAC key of a keyed log (or set {KEY_VARIABLE}).", show_default=False),
]


# Output files


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


# Models


def load_model(path: Path) -> tuple[nn.Module, InputShape | None]:
    """``(model, per-sample input shape)`` from an ONNX file or a lipguard checkpoint."""
    from lipguard.io import load_checkpoint, load_onnx

    if path.suffix == ".onnx":
        return load_onnx(path)
    return load_checkpoint(path)


def load_model_and_samples(
    model: Path, data: Path, label_column: int | None, input_shape: str | None
) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None]:
    """``(model, inputs, labels or None)``: the model of a model file and the samples of a data
    file (see :func:`load_samples`) in the model's input shape (``input_shape`` overrides the
    stored one), checked on one input."""
    network, stored_shape = load_model(model)
    x, y = load_samples(data, label_column)
    shape = parse_shape(input_shape) or stored_shape
    if shape is not None:
        x = reshaped(x, shape)
    accepted_inputs(network, x)
    return network, x, y


def accepted_inputs(network: nn.Module, x: torch.Tensor) -> None:
    """Check, on one input, that the model takes inputs of this shape (one line if not)."""
    try:
        with torch.no_grad():
            network.eval()(x[:1])
    except (RuntimeError, ValueError, IndexError) as error:
        raise InvalidArgumentError(
            f"the model does not take inputs of shape {tuple(x.shape[1:])}: "
            f"{str(error).splitlines()[0]}"
        ) from None


def reshaped(x: torch.Tensor, shape: InputShape) -> torch.Tensor:
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


# Data files


def load_data(
    path: Path,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    *,
    column: int | None,
    column_option: str,
    formats: tuple[str, ...],
    what: str,
) -> dict[str, np.ndarray]:
    """The named arrays of a data file in one of ``formats``:

    - ``.npz``: the arrays ``required`` and those of ``optional`` it holds (never unpickled);
    - ``.npy``: one array, the first name;
    - ``.csv`` or ``.parquet``: a numeric table; with ``column``, that column is the second name
      and the other columns the first, else the whole table is the first.

    ``what`` names the file in the error for another format (``"data"``, ``"a log"``).
    """
    if path.suffix not in formats:
        kinds = ", ".join(formats[:-1]) + f" or {formats[-1]}"
        raise InvalidArgumentError(f"{what} must be {kinds}, got {path.name}")
    first, *others = required + optional
    if path.suffix == ".npz":
        return read_npz(path, required, optional)
    if path.suffix == ".npy":
        return {first: read_npy(path)}
    table = read_csv(path) if path.suffix == ".csv" else _read_parquet(path)
    if column is None:
        return {first: table}
    rest, values = split_column(table, column, column_option)
    return {first: rest, others[0]: values}


def load_samples(path: Path, label_column: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and optional labels from ``.npz`` (arrays ``x`` and optionally ``y``), ``.npy``
    (inputs only) or ``.csv`` (numeric; ``label_column`` holds the labels if given)."""
    arrays = load_data(
        path,
        ("x",),
        ("y",),
        column=label_column,
        column_option="--label-column",
        formats=(".npz", ".npy", ".csv"),
        what="data",
    )
    inputs, labels = arrays["x"], arrays.get("y")
    if inputs.ndim < 2 or len(inputs) == 0:
        raise InvalidArgumentError(f"{path}: inputs must be an array of samples (N, ...), N >= 1")
    if not np.isfinite(inputs).all():
        raise InvalidArgumentError(f"{path}: inputs hold NaN or infinity")
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    if labels is None:
        return x, None
    if labels.shape != (len(inputs),) or not np.isfinite(labels).all() or (labels % 1 != 0).any():
        raise InvalidArgumentError(f"{path}: labels must be one whole number per input")
    return x, torch.as_tensor(labels.astype(np.int64))


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


def _read_parquet(path: Path) -> np.ndarray:
    """A Parquet file as a 2-D float64 array (needs pandas and pyarrow)."""
    try:
        import pandas

        table = pandas.read_parquet(path).to_numpy(dtype=np.float64)
    except ImportError:
        raise InvalidArgumentError("reading Parquet needs pandas and pyarrow installed") from None
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    if table.ndim != 2 or table.size == 0:
        raise InvalidArgumentError(f"{path} holds no data")
    return np.asarray(table)


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


def read_npz(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
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
