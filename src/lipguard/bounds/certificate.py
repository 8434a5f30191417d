"""Lipschitz certificates: a proven upper bound and a witnessed lower bound, bound to a model.

A :class:`Certificate` records the bounds together with the SHA-256 of the model's weights
(every ``state_dict`` tensor: name, dtype, shape, bytes) and of its architecture as the bound
engine sees it (operator types, activations, shapes), plus versions and a timestamp. It is saved
as JSON. :meth:`Certificate.verify` re-checks it against a model independently of whatever
produced it: the hashes must match, the upper bound is proven again (LipSDP certificates by
re-verifying the stored multipliers, the others by recomputing with the same method) and the
lower bound's witnesses are re-evaluated.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lipguard
from lipguard.bounds import lmi
from lipguard.bounds.api import _network, _prepare, lipschitz_bound
from lipguard.bounds.graph import Activation, Conv, Dense, Skip, Sort, to_operators
from lipguard.bounds.lower import LipschitzLowerBound, lipschitz_lower_bound
from lipguard.errors import LipguardError
from lipguard.results import LipschitzBound

FORMAT = "lipguard-certificate/1"


class CertificateError(LipguardError, ValueError):
    """A certificate file is malformed."""


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every ``state_dict`` entry (sorted by name): name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def architecture_sha256(model: nn.Module, input_shape: Sequence[int]) -> str:
    """SHA-256 of the operator sequence the bound engine sees (types, activations, shapes)."""

    def describe(operators: Sequence) -> list[str]:
        parts = []
        for operator in operators:
            if isinstance(operator, Dense):
                parts.append(f"dense{operator.in_shape}->{operator.out_shape}")
            elif isinstance(operator, Conv):
                parts.append(
                    f"conv{operator.in_shape}->{operator.out_shape}|s{operator.stride}"
                    f"|p{operator.padding}|d{operator.dilation}|g{operator.groups}"
                )
            elif isinstance(operator, Activation):
                parts.append(f"act:{operator.spec.name}{operator.shape}")
            elif isinstance(operator, Sort):
                parts.append(f"sort{operator.group_size}:{operator.descending}{operator.shape}")
            elif isinstance(operator, Skip):
                parts.append(f"skip[{';'.join(describe(operator.body))}]")
        return parts

    text = ";".join(describe(to_operators(model, tuple(input_shape))))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    """The outcome of :meth:`Certificate.verify`: ``ok`` and what was checked."""

    ok: bool
    checks: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Certificate:
    """A proven upper bound, a witnessed lower bound, and the model they are about."""

    upper: LipschitzBound
    lower: LipschitzLowerBound | None
    input_shape: tuple[int, ...]
    weights_sha256: str
    architecture_sha256: str
    lipguard_version: str
    torch_version: str
    created: str

    @property
    def gap(self) -> float:
        """``upper / lower`` (>= 1): how close the bounds are."""
        if self.lower is None or self.lower.value <= 0:
            return math.inf
        return self.upper.value / self.lower.value

    def to_dict(self) -> dict[str, Any]:
        lower = None
        if self.lower is not None:
            lower = {
                "value": self.lower.value,
                "method": self.lower.method,
                "x": self.lower.x.reshape(-1).tolist(),
                "y": self.lower.y.reshape(-1).tolist(),
                "gradient_norm": self.lower.gradient_norm,
            }
        return {
            "format": FORMAT,
            "upper": {
                "value": self.upper.value,
                "norm": _norm_name(self.upper.norm),
                "method": self.upper.method,
                "scope": self.upper.scope,
                "sound": self.upper.sound,
                "margin": self.upper.margin,
                "details": self.upper.details,
            },
            "lower": lower,
            "gap": self.gap,
            "input_shape": list(self.input_shape),
            "weights_sha256": self.weights_sha256,
            "architecture_sha256": self.architecture_sha256,
            "lipguard_version": self.lipguard_version,
            "torch_version": self.torch_version,
            "created": self.created,
        }

    def save(self, path: str | Path) -> Path:
        """Write the certificate as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @staticmethod
    def load(path: str | Path) -> Certificate:
        """Read a certificate written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT:
                raise CertificateError(f"{path}: not a {FORMAT} file")
            upper = data["upper"]
            norm = math.inf if upper["norm"] == "inf" else float(upper["norm"])
            shape = tuple(int(size) for size in data["input_shape"])
            lower = None
            if data["lower"] is not None:
                raw = data["lower"]
                lower = LipschitzLowerBound(
                    raw["value"],
                    norm,
                    raw["method"],
                    torch.tensor(raw["x"], dtype=torch.float64).reshape(shape),
                    torch.tensor(raw["y"], dtype=torch.float64).reshape(shape),
                    raw["gradient_norm"],
                )
            return Certificate(
                LipschitzBound(
                    upper["value"],
                    norm,
                    upper["method"],
                    upper["scope"],
                    upper["sound"],
                    upper["margin"],
                    upper["details"],
                ),
                lower,
                shape,
                data["weights_sha256"],
                data["architecture_sha256"],
                data["lipguard_version"],
                data["torch_version"],
                data["created"],
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
            if isinstance(error, CertificateError):
                raise
            raise CertificateError(f"{path}: malformed certificate ({error})") from error

    def verify(self, model: nn.Module) -> Verification:
        """Re-check every claim against ``model``; never trusts the stored numbers alone."""
        checks: list[str] = []
        digest = weights_sha256(model)
        if digest != self.weights_sha256:
            return Verification(
                False,
                [
                    f"weights changed: sha256 {digest[:16]}… ≠ "
                    f"{self.weights_sha256[:16]}… in the certificate"
                ],
            )
        checks.append("weights sha256 matches")
        architecture = architecture_sha256(model, self.input_shape)
        if architecture != self.architecture_sha256:
            return Verification(False, [*checks, "architecture changed since the certificate"])
        checks.append("architecture matches")
        proven = self._reprove_upper(model)
        if proven is None or proven > self.upper.value * (1 + 1e-9):
            return Verification(
                False,
                [
                    *checks,
                    f"upper bound {self.upper.value:.9g} could not be proven again (got {proven})",
                ],
            )
        checks.append(f"upper bound re-proven: {proven:.9g} <= {self.upper.value:.9g}")
        if self.lower is not None:
            ratio = self.lower.check(model)
            if ratio < self.lower.value * (1 - 1e-9):
                return Verification(
                    False,
                    [*checks, f"lower-bound witness gives {ratio:.9g} < {self.lower.value:.9g}"],
                )
            checks.append(f"lower-bound witness re-evaluated: {ratio:.9g}")
        return Verification(True, checks)

    def _reprove_upper(self, model: nn.Module) -> float | None:
        details = self.upper.details or {}
        if "multipliers" in details:
            network = _network(model, self.input_shape)
            multipliers = [torch.tensor(m, dtype=torch.float64) for m in details["multipliers"]]
            proof = lmi.verify(network, lmi.global_slopes(network), multipliers, details["rho"])
            return None if proof is None else proof.value
        method = "compositional" if self.upper.method == "compositional" else self.upper.method
        method = method.replace("lipsdp-neuron", "lipsdp")
        return lipschitz_bound(model, self.upper.norm, method, input_shape=self.input_shape).value


def _norm_name(norm: float) -> str | float:
    return "inf" if norm == math.inf else norm


def certify(
    model: nn.Module,
    norm: float | str = 2,
    method: str = "auto",
    *,
    inputs: torch.Tensor | None = None,
    input_shape: Sequence[int] | None = None,
    lower_bound: bool = True,
    seed: int = 0,
) -> Certificate:
    """Prove an upper bound, search for a witnessed lower bound, and bind both to ``model``.

    ``inputs`` seeds the lower-bound search (a batch of typical inputs); without it, standard
    normal points of the input shape are used.
    """
    p, shape = _prepare(model, norm, input_shape)
    upper = lipschitz_bound(model, p, method, input_shape=shape)
    lower = None
    if lower_bound:
        if inputs is None:
            generator = torch.Generator().manual_seed(seed)
            inputs = torch.randn((16, *shape), generator=generator, dtype=torch.float64)
        lower = lipschitz_lower_bound(model, inputs, p, seed=seed)
    return Certificate(
        upper,
        lower,
        shape,
        weights_sha256(model),
        architecture_sha256(model, shape),
        lipguard.__version__,
        torch.__version__,
        datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
