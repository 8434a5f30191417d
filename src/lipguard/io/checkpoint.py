"""lipguard checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (architecture).

Untrusted files are data: weights load through safetensors (no pickle) and the architecture is
a JSON tree of known module types rebuilt by this module's registry, so loading a checkpoint
cannot run code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

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


def _fields(*names: str) -> Callable[[nn.Module], Spec]:
    return lambda module: {name: getattr(module, name) for name in names}


def _linear_spec(module: nn.Module) -> Spec:
    spec = {
        "in_features": module.in_features,
        "out_features": module.out_features,
        "bias": module.bias is not None,
    }
    if hasattr(module, "lipschitz"):
        spec["lipschitz"] = module.lipschitz
    return spec


def _conv_spec(module: nn.Module) -> Spec:
    spec = {name: getattr(module, name) for name in _CONV_FIELDS}
    spec["bias"] = module.bias is not None
    return spec


def _children(module: nn.Module) -> Spec:
    return {"children": [_describe(child) for child in module]}


_DESCRIBE: dict[type, Callable[[nn.Module], Spec]] = {
    nn.Sequential: _children,
    LipschitzMLP: lambda m: {**_children(m), "lipschitz": m.lipschitz},
    nn.Linear: _linear_spec,
    SpectralLinear: _linear_spec,
    OrthogonalLinear: _linear_spec,
    SVDLinear: _linear_spec,
    LipschitzLinearModel: lambda m: {**_linear_spec(m), "norm": m.norm},
    nn.Conv1d: _conv_spec,
    nn.Conv2d: _conv_spec,
    nn.ReLU: _fields(),
    nn.Tanh: _fields(),
    nn.Sigmoid: _fields(),
    nn.SiLU: _fields(),
    nn.Identity: _fields(),
    nn.LeakyReLU: _fields("negative_slope"),
    nn.ELU: _fields("alpha"),
    nn.GELU: _fields("approximate"),
    nn.Dropout: _fields("p"),
    nn.Flatten: _fields("start_dim", "end_dim"),
    GroupSort: _fields("group_size", "dim", "descending"),
    MaxMin: _fields("dim"),
    Residual: lambda m: {"body": _describe(m.body)},
}


def _mlp(spec: Spec) -> LipschitzMLP:
    model = LipschitzMLP.__new__(LipschitzMLP)
    nn.Sequential.__init__(model, *[_build(child) for child in spec["children"]])
    model.lipschitz = float(spec["lipschitz"])
    return model


def _linear_like(cls: type) -> Callable[[Spec], nn.Module]:
    def build(spec: Spec) -> nn.Module:
        arguments = {k: v for k, v in spec.items() if k != "type"}
        return cls(**arguments)

    return build


_BUILD: dict[str, Callable[[Spec], nn.Module]] = {
    "Sequential": lambda spec: nn.Sequential(*[_build(child) for child in spec["children"]]),
    "LipschitzMLP": _mlp,
    "Residual": lambda spec: Residual(_build(spec["body"])),
    **{
        cls.__name__: _linear_like(cls)
        for cls in _DESCRIBE
        if cls not in (nn.Sequential, LipschitzMLP, Residual)
    },
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
    return builder(spec)


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


def load_checkpoint(path: str | Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Rebuild a model saved by :func:`save_checkpoint`; returns ``(model, input_shape)``."""
    architecture, weights = _paths(path)
    try:
        payload = json.loads(architecture.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidArgumentError(
            f"cannot read checkpoint architecture {architecture}: {error}"
        ) from None
    if payload.get("format") != FORMAT:
        raise InvalidArgumentError(f"{architecture} is not a {FORMAT} file")
    model = _build(payload["model"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    shape = payload.get("input_shape")
    return model.eval(), tuple(shape) if shape else None
