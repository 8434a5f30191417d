"""lipguard checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (architecture).

Untrusted files are data: weights load through safetensors (no pickle) and the architecture is
a JSON tree of known module types rebuilt by this module's registry, so loading a checkpoint
cannot run code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lipguard import _checks
from lipguard.errors import InvalidArgumentError, UnsupportedModuleError
from lipguard.nn import (
    GroupSort,
    LipschitzLinearModel,
    LipschitzMLP,
    MaxMin,
    OrthogonalLinear,
    Residual,
    SpectralLinear,
    SVDLinear,
)

FORMAT = "lipguard-checkpoint/1"
Spec = dict[str, Any]

_CONV_FIELDS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)


_LINEAR_FIELDS = ("in_features", "out_features", "bias", "lipschitz")

#: the constructor arguments stored for each leaf type; loading refuses any other key
_FIELDS: dict[type, tuple[str, ...]] = {
    nn.Linear: _LINEAR_FIELDS[:3],
    SpectralLinear: _LINEAR_FIELDS,
    OrthogonalLinear: _LINEAR_FIELDS,
    SVDLinear: _LINEAR_FIELDS,
    LipschitzLinearModel: (*_LINEAR_FIELDS, "norm"),
    nn.Conv1d: (*_CONV_FIELDS, "bias"),
    nn.Conv2d: (*_CONV_FIELDS, "bias"),
    nn.ReLU: (),
    nn.Tanh: (),
    nn.Sigmoid: (),
    nn.SiLU: (),
    nn.Identity: (),
    nn.LeakyReLU: ("negative_slope",),
    nn.ELU: ("alpha",),
    nn.GELU: ("approximate",),
    nn.Dropout: ("p",),
    nn.Flatten: ("start_dim", "end_dim"),
    GroupSort: ("group_size", "dim", "descending"),
    MaxMin: ("dim",),
}


def _leaf_spec(module: nn.Module) -> Spec:
    spec = {}
    for name in _FIELDS[type(module)]:
        spec[name] = module.bias is not None if name == "bias" else getattr(module, name)
    return spec


def _children(module: nn.Module) -> Spec:
    # registered for nn.Sequential and its subclass LipschitzMLP only
    return {"children": [_describe(child) for child in cast(nn.Sequential, module)]}


def _describe_mlp(module: nn.Module) -> Spec:
    return {**_children(module), "lipschitz": cast(LipschitzMLP, module).lipschitz}


def _describe_residual(module: nn.Module) -> Spec:
    return {"body": _describe(cast(Residual, module).body)}


_DESCRIBE: dict[type, Callable[[nn.Module], Spec]] = {
    nn.Sequential: _children,
    LipschitzMLP: _describe_mlp,
    Residual: _describe_residual,
    **{cls: _leaf_spec for cls in _FIELDS},
}


def _mlp(spec: Spec) -> LipschitzMLP:
    model = LipschitzMLP.__new__(LipschitzMLP)
    nn.Sequential.__init__(model, *[_build(child) for child in spec["children"]])
    model.lipschitz = _checks.positive_float("LipschitzMLP lipschitz", spec["lipschitz"])
    return model


def _leaf(cls: type) -> Callable[[Spec], nn.Module]:
    def build(spec: Spec) -> nn.Module:
        arguments = {k: v for k, v in spec.items() if k != "type"}
        unknown = sorted(set(arguments) - set(_FIELDS[cls]))
        if unknown:
            raise InvalidArgumentError(
                f"checkpoint: {cls.__name__} does not take {', '.join(map(repr, unknown))} "
                f"(accepted: {', '.join(_FIELDS[cls]) or 'no arguments'})"
            )
        try:
            return cls(**arguments)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InvalidArgumentError(
                f"checkpoint: cannot build {cls.__name__}: {str(error).splitlines()[0]}"
            ) from None

    return build


def _container(build: Callable[[Spec], nn.Module], *keys: str) -> Callable[[Spec], nn.Module]:
    def checked(spec: Spec) -> nn.Module:
        unknown = sorted(set(spec) - {"type", *keys})
        if unknown:
            raise InvalidArgumentError(
                f"checkpoint: {spec['type']} does not take {', '.join(map(repr, unknown))}"
            )
        return build(spec)

    return checked


_BUILD: dict[str, Callable[[Spec], nn.Module]] = {
    "Sequential": _container(
        lambda spec: nn.Sequential(*[_build(child) for child in spec["children"]]), "children"
    ),
    "LipschitzMLP": _container(_mlp, "children", "lipschitz"),
    "Residual": _container(lambda spec: Residual(_build(spec["body"])), "body"),
    **{cls.__name__: _leaf(cls) for cls in _FIELDS},
}


def _describe(module: nn.Module) -> Spec:
    describe = _DESCRIBE.get(type(module))
    if describe is None:
        raise UnsupportedModuleError(
            f"{type(module).__name__} cannot be saved in a lipguard checkpoint"
        )
    return {"type": type(module).__name__, **describe(module)}


def _build(spec: Spec) -> nn.Module:
    try:
        builder = _BUILD[spec["type"]]
    except (KeyError, TypeError):
        raise InvalidArgumentError(f"unknown module in checkpoint: {spec!r:.200}") from None
    try:
        return builder(spec)
    except (KeyError, TypeError, AttributeError) as error:
        raise InvalidArgumentError(f"malformed {spec['type']} in checkpoint: {error}") from None


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return stem.with_suffix(".json"), stem.with_suffix(".safetensors")


def save_checkpoint(
    model: nn.Module, path: str | Path, *, input_shape: tuple[int, ...] | None = None
) -> Path:
    """Write ``path.json`` (architecture, optional per-sample input shape) and
    ``path.safetensors`` (weights); returns the JSON path."""
    architecture, weights = _paths(path)
    payload = {
        "format": FORMAT,
        "model": _describe(model),
        "input_shape": list(input_shape) if input_shape is not None else None,
    }
    architecture.write_text(json.dumps(payload, indent=2))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    return architecture


MAX_DEPTH = 64  # nesting of containers a checkpoint may declare


def load_checkpoint(path: str | Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Rebuild a model saved by :func:`save_checkpoint`; returns ``(model, input_shape)``.

    Every failure of an untrusted file is an :class:`InvalidArgumentError` naming it, raised
    before any large allocation: the architecture is checked for shape, nesting depth and a
    parameter count no larger than the weights file holds."""
    architecture, weights = _paths(path)
    try:
        payload = json.loads(architecture.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0] or "unreadable"
        raise InvalidArgumentError(
            f"cannot read checkpoint architecture {architecture}: {reason}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InvalidArgumentError(f"{architecture} is not a {FORMAT} file")
    spec = payload.get("model")
    _check_depth(spec, architecture)
    available = _weight_elements(weights)
    declared = _declared_parameters(spec)
    if declared > available:
        raise InvalidArgumentError(
            f"{architecture} declares {declared:,} parameters but {weights.name} holds "
            f"{available:,}: the files do not belong together"
        )
    if not isinstance(spec, dict):
        raise InvalidArgumentError(f"unknown module in checkpoint: {spec!r:.200}")
    model = _build(spec)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        raise InvalidArgumentError(
            f"{weights.name} does not fit {architecture.name}: {first[0].strip()}"
        ) from None
    shape = payload.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list) and all(isinstance(n, int) and n >= 1 for n in shape)
    ):
        raise InvalidArgumentError(f"{architecture}: input_shape must be a list of positive ints")
    return model.eval(), tuple(shape) if shape else None


def _check_depth(spec: object, source: Path) -> None:
    """Refuse a tree nested deeper than ``MAX_DEPTH`` (checked without recursion)."""
    stack = [(spec, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidArgumentError(f"{source} nests modules deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def _weight_elements(weights: Path) -> int:
    """The number of values the safetensors file holds (from its header, nothing loaded)."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())  # noqa: SIM118
    except FileNotFoundError:
        raise InvalidArgumentError(f"cannot read weights {weights}: no such file") from None
    except Exception as error:  # safetensors raises its own error type for a corrupt file
        raise InvalidArgumentError(
            f"cannot read weights {weights}: not a safetensors file ({str(error)[:120]})"
        ) from None


def _declared_parameters(spec: object) -> int:
    """A lower bound of the parameters a spec asks for (weights of linear and conv layers)."""
    total, stack = 0, [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(value for value in node.values() if isinstance(value, (dict, list)))
        sizes = [
            node.get(k) for k in ("in_features", "out_features", "in_channels", "out_channels")
        ]
        numbers = [n for n in sizes if isinstance(n, int) and not isinstance(n, bool)]
        if len(numbers) == 2 and all(n > 0 for n in numbers):
            kernel = node.get("kernel_size", 1)
            kernel = kernel if isinstance(kernel, list) else [kernel]
            groups = node.get("groups", 1)
            if all(isinstance(k, int) and k > 0 for k in kernel) and isinstance(groups, int):
                total += numbers[0] * numbers[1] * math.prod(kernel) // max(groups, 1)
    return total
