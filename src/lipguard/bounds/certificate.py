"""Lipschitz certificates: a proven upper bound and a witnessed lower bound, bound to a model.

A :class:`Certificate` records the bounds together with the SHA-256 of the model's weights
(every ``state_dict`` tensor: name, dtype, shape, bytes), of its architecture (an exact
canonical description: every module's type and constructor settings, floats by their exact
``repr``, and the operators the bound engine sees), the weights' dtypes, versions and a
timestamp. It is saved as JSON together with ``claims_sha256``, the SHA-256 of every other field,
so an edited file is refused on loading. A hash can be recomputed by whoever edits the file, so
:meth:`Certificate.verify` trusts no field: it re-checks each claim against the model — the
hashes and dtype must match; the upper bound must be proven again *in the stated norm with the
stated method* (LipSDP multipliers are re-verified, and only as an ℓ2 proof); the scope must be
global and the bound marked sound; the lower bound's witnesses are re-evaluated on the same
function and must reproduce the stated ratio, which may not exceed the upper bound.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lipguard
from lipguard._threads import on_idle_cores
from lipguard.bounds import lmi
from lipguard.bounds.api import (
    METHODS,
    CertificationError,
    InputShape,
    Method,
    _network,
    _prepare,
    lipschitz_bound,
)
from lipguard.bounds.checkable import checkable_bound, checkable_network, checkable_proof
from lipguard.bounds.frontend import input_shapes, to_graph
from lipguard.bounds.graph import module_settings
from lipguard.bounds.ir import Graph
from lipguard.bounds.lower import LipschitzLowerBound, lipschitz_lower_bound
from lipguard.bounds.ops import Activation, Conv, Dense, Gather, MaxPool, Operator, Sort, Sum
from lipguard.errors import CertificateError, LipguardError
from lipguard.norm import L2, Norm, NormLike
from lipguard.results import Check, LipschitzBound, Report

FORMAT = "lipguard-certificate/2"
#: methods whose certificates carry LipSDP multipliers (an ℓ2 proof re-checked by lmi.verify)
_MULTIPLIER_METHODS = ("lipsdp-neuron", "lipsdp-layer", "compositional")
#: what :func:`certify` may have written as the upper bound's method
_CERTIFIED_METHODS = ("product", *_MULTIPLIER_METHODS)

#: a certificate's ``input_shape``: one per-sample shape, or a tuple of them (several inputs)
CertifiedShape = tuple[int, ...] | tuple[tuple[int, ...], ...]


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every ``state_dict`` entry (sorted by name): name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_dtype(model: nn.Module) -> str:
    """The floating-point dtypes of the model's parameters and buffers, e.g. ``"float32"``."""
    names = {
        str(tensor.dtype).removeprefix("torch.")
        for tensor in model.state_dict().values()
        if tensor.is_floating_point()
    }
    return ",".join(sorted(names)) or "none"


def _describe_graph(graph: Graph) -> list[object]:
    """A canonical, exact description of a graph: every node's operator kind, settings,
    inputs and shape (constant index maps by the sha256 of their bytes)."""
    parts: list[object] = []
    for node in graph.nodes:
        parts.append(
            [type(node.op).__name__, list(node.inputs), list(node.shape), _settings_of(node.op)]
        )
    return [parts, list(graph.inputs), graph.output]


def _settings_of(op: Operator | None) -> list[object]:
    if op is None:
        return []
    if isinstance(op, Dense):
        return [list(op.in_shape), list(op.out_shape)]
    if isinstance(op, Conv):
        return [
            list(op.in_shape),
            list(op.out_shape),
            op.stride,
            op.padding,
            op.dilation,
            op.groups,
        ]
    if isinstance(op, Activation):
        return [op.spec.name]
    if isinstance(op, Sort):
        return [op.group_size, op.descending]
    if isinstance(op, Sum):
        return list(op.coefficients)
    if isinstance(op, Gather):
        fill = None if op.fill is None else _bytes_sha256(op.fill)
        return [_bytes_sha256(op.index), fill, list(op.in_sizes), list(op.out_shape)]
    if isinstance(op, MaxPool):
        return [_bytes_sha256(op.windows), list(op.in_shape), list(op.out_shape)]
    return []  # Scale: its constants are buffers, in the weights hash


def _bytes_sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


def architecture_sha256(model: nn.Module, input_shape: InputShape) -> str:
    """SHA-256 of an exact canonical description of the architecture: every module's path, type
    and settings (including ``inplace`` flags and activation parameters to the last bit) and the
    graph the bound engine reads for ``input_shape`` (one shape, or a list of them)."""
    shapes = input_shapes(model, input_shape)
    modules = [
        [path, f"{type(module).__module__}.{type(module).__qualname__}", module_settings(module)]
        for path, module in model.named_modules()
    ]
    graph = _describe_graph(to_graph(model, shapes))
    text = json.dumps(
        [[list(shape) for shape in shapes], modules, graph], sort_keys=True, allow_nan=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


def claims_sha256(data: dict[str, Any]) -> str:
    """SHA-256 of every field of a certificate's JSON form but ``claims_sha256`` itself
    (canonical JSON: sorted keys, no whitespace, floats by their exact ``repr``)."""
    claims = {key: value for key, value in data.items() if key != "claims_sha256"}
    text = json.dumps(claims, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Certificate:
    """A proven upper bound, a witnessed lower bound, and the model they are about."""

    upper: LipschitzBound
    lower: LipschitzLowerBound | None
    input_shape: CertifiedShape  # per-sample shape; a tuple of shapes for several inputs
    dtype: str
    weights_sha256: str
    architecture_sha256: str
    lipguard_version: str
    torch_version: str
    created: str
    #: proof data for the independent checker :mod:`lipguard.check` (``certify(checkable=True)``)
    checkable: dict[str, Any] | None = None

    @property
    def gap(self) -> float:
        """``upper / lower`` (>= 1): how close the bounds are."""
        if self.lower is None or self.lower.value <= 0:
            return math.inf
        return self.upper.value / self.lower.value

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, ``claims_sha256`` included."""
        data = {
            "format": FORMAT,
            "upper": self.upper.to_dict(),
            "lower": None if self.lower is None else self.lower.to_dict(),
            "gap": self.gap,
            "input_shape": _listed(self.input_shape),
            "dtype": self.dtype,
            "weights_sha256": self.weights_sha256,
            "architecture_sha256": self.architecture_sha256,
            "lipguard_version": self.lipguard_version,
            "torch_version": self.torch_version,
            "created": self.created,
        }
        if self.checkable is not None:
            data["checkable"] = self.checkable
        data["claims_sha256"] = claims_sha256(data)
        return data

    def save(self, path: str | Path) -> Path:
        """Write the certificate as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @staticmethod
    def load(path: str | Path) -> Certificate:
        """Read a certificate written by :meth:`save`; refuses files whose fields were edited
        (``claims_sha256`` mismatch) or that an older lipguard wrote."""
        try:
            data = json.loads(Path(path).read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                found = data.get("format") if isinstance(data, dict) else None
                hint = "; certify the model again" if str(found).startswith("lipguard-") else ""
                raise CertificateError(f"{path}: not a {FORMAT} file (format {found!r}){hint}")
            if data.get("claims_sha256") != claims_sha256(data):
                raise CertificateError(
                    f"{path}: the certificate was edited after it was made (claims_sha256 "
                    "does not match its fields)"
                )
            return _from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as error:
            if isinstance(error, CertificateError):
                raise
            raise CertificateError(f"{path}: malformed certificate ({error})") from error

    def verify(self, model: nn.Module) -> Report:
        """Re-check every claim against ``model``; never trusts the stored numbers. The report
        stops at the first failed check (the last one)."""
        checks: list[Check] = []

        def fail(name: str, reason: str) -> Report:
            return Report.of([*checks, Check(name, "fail", reason)])

        problem = self._claims_problem()
        if problem is not None:
            return fail("claims", problem)
        checks.append(
            Check("claims", "pass", "consistent (global, sound, known method, lower <= upper)")
        )
        dtype = weights_dtype(model)
        if dtype != self.dtype:
            return fail(
                "weights", f"dtype changed: the model is {dtype}, the certificate says {self.dtype}"
            )
        digest = weights_sha256(model)
        if digest != self.weights_sha256:
            return fail(
                "weights",
                f"weights changed: sha256 {digest[:16]}… ≠ "
                f"{self.weights_sha256[:16]}… in the certificate",
            )
        checks.append(Check("weights", "pass", f"sha256 and dtype ({dtype}) match"))
        try:
            architecture = architecture_sha256(model, self.input_shape)
        except LipguardError as error:
            return fail("architecture", f"architecture cannot be read: {error}")
        if architecture != self.architecture_sha256:
            return fail("architecture", "architecture changed since the certificate")
        checks.append(Check("architecture", "pass", "sha256 matches"))
        try:
            proven = self._reprove_upper(model)
        except LipguardError as error:
            return fail("upper bound", f"upper bound could not be proven again: {error}")
        norm = Norm(self.upper.norm).label
        if proven is None or not proven <= self.upper.value * (1 + 1e-9):
            return fail(
                "upper bound",
                f"upper bound {self.upper.value:.9g} ({norm}, {self.upper.method}) could not be "
                f"proven again (got {proven})",
            )
        checks.append(
            Check(
                "upper bound",
                "pass",
                f"re-proven in {norm}: {proven:.9g} <= {self.upper.value:.9g}",
            )
        )
        if self.lower is not None:
            ratio = self.lower.check(model)
            if not ratio >= self.lower.value * (1 - 1e-9):
                return fail(
                    "lower bound", f"lower-bound witness gives {ratio:.9g} < {self.lower.value:.9g}"
                )
            checks.append(
                Check("lower bound", "pass", f"witness re-evaluated in {norm}: {ratio:.9g}")
            )
        return Report.of(checks)

    def _claims_problem(self) -> str | None:
        """What is inconsistent among the stated fields themselves, if anything."""
        upper = self.upper
        if upper.scope != "global":
            return f"scope {upper.scope!r}: certificates state global bounds only"
        if not upper.sound:
            return "the upper bound is not marked sound"
        if upper.method not in _CERTIFIED_METHODS:
            return f"unknown upper-bound method {upper.method!r}"
        if upper.norm not in (2.0, math.inf):
            return f"unsupported norm {upper.norm}"
        if "multipliers" in (upper.details or {}) and upper.norm != 2.0:
            return "LipSDP multipliers prove an ℓ2 bound, but the certificate states ℓ∞"
        if self.lower is not None and not self.lower.value <= upper.value:
            return (
                f"the witnessed lower bound {self.lower.value:.9g} exceeds the upper bound "
                f"{upper.value:.9g}: one of them is false"
            )
        return None

    def _reprove_upper(self, model: nn.Module) -> float | None:
        details = self.upper.details or {}
        if "multipliers" in details:
            if self.upper.method not in _MULTIPLIER_METHODS:
                return None
            network = _network(model, input_shapes(model, self.input_shape))
            multipliers = [torch.tensor(m, dtype=torch.float64) for m in details["multipliers"]]
            proof = lmi.verify(network, lmi.global_slopes(network), multipliers, details["rho"])
            return None if proof is None else proof.value
        method = self.upper.method.replace("lipsdp-neuron", "lipsdp")
        if method not in METHODS:
            return None
        return lipschitz_bound(model, self.upper.norm, method, input_shape=self.input_shape).value


def _from_dict(data: dict[str, Any]) -> Certificate:
    upper = LipschitzBound.from_dict(data["upper"], "upper bound")
    given = data["input_shape"]
    shape: CertifiedShape
    if given and all(isinstance(size, list) for size in given):  # several inputs
        shape = tuple(tuple(int(size) for size in item) for item in given)
        shapes = shape
    else:
        shape = tuple(int(size) for size in given)
        shapes = (shape,)
    lower = None
    if data["lower"] is not None:
        lower = LipschitzLowerBound.from_dict(data["lower"], upper.norm, shapes)
    return Certificate(
        upper=upper,
        lower=lower,
        input_shape=shape,
        dtype=str(data["dtype"]),
        weights_sha256=str(data["weights_sha256"]),
        architecture_sha256=str(data["architecture_sha256"]),
        lipguard_version=str(data["lipguard_version"]),
        torch_version=str(data["torch_version"]),
        created=str(data["created"]),
        checkable=data.get("checkable"),
    )


def _listed(shape: CertifiedShape) -> list[int | list[int]]:
    return [list(item) if isinstance(item, tuple) else item for item in shape]


@on_idle_cores
def certify(
    model: nn.Module,
    norm: NormLike = L2,
    method: Method = "auto",
    *,
    inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_shape: InputShape | None = None,
    lower_bound: bool = True,
    seed: int = 0,
    checkable: bool = False,
) -> Certificate:
    """Prove an upper bound, search for a witnessed lower bound, and bind both to ``model``.

    ``inputs`` seeds the lower-bound search (a batch of typical inputs, one tensor per input for
    a model with several); without it, standard normal points of the input shape are used.

    ``checkable``: also write the proof data that the independent checker :mod:`lipguard.check`
    re-proves (a ``"checkable"`` section; a dense ``nn.Sequential`` or a model read from ONNX,
    ℓ1, ℓ2 or ℓ∞, see :mod:`lipguard.bounds.checkable`; ``auto`` picks LipSDP for small ℓ2
    chains, the cut/merge programme for other chains, else the product). The section is
    re-proven by the checker before it is written, its claimed norms or ``ρ`` raised by at most
    a relative ``2^-13`` where the checker needs room (the stated bound with them).
    """
    p, shapes = _prepare(model, norm, input_shape)
    shape = shapes[0] if len(shapes) == 1 else shapes
    section: dict[str, Any] | None = None
    if checkable:
        steps, section = checkable_network(model)
        upper = checkable_bound(model, steps, p, method, shape)
        upper, section = checkable_proof(steps, section, upper)
    else:
        upper = lipschitz_bound(model, p, method, input_shape=shape)
    lower = None
    if lower_bound:
        if inputs is None:
            generator = torch.Generator().manual_seed(seed)
            inputs = [
                torch.randn((16, *item), generator=generator, dtype=torch.float64)
                for item in shapes
            ]
        lower = lipschitz_lower_bound(model, inputs, p, seed=seed)
        if lower.value > upper.value:  # both are proven about one function: a bug, not a claim
            raise CertificationError(
                f"the witnessed lower bound {lower.value:.9g} exceeds the proven upper bound "
                f"{upper.value:.9g}; please report this model"
            )
    return Certificate(
        upper=upper,
        lower=lower,
        input_shape=shape,
        dtype=weights_dtype(model),
        weights_sha256=weights_sha256(model),
        architecture_sha256=architecture_sha256(model, shape),
        lipguard_version=lipguard.__version__,
        torch_version=torch.__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        checkable=section,
    )
