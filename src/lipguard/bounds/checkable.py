"""The proof data of the independent checker (:mod:`lipguard.check`): ``certify(checkable=True)``.

Two families. A dense ``nn.Sequential`` of ``nn.Linear`` layers with one activation between
consecutive ones (ReLU, LeakyReLU with slope in [0, 1], Tanh, Sigmoid, Identity), checked
against its safetensors file. A model read by :func:`lipguard.io.load_onnx`, checked against the
ONNX file itself (convolutions, residual sums, permutations; :mod:`lipguard.check.graph`). The
network is lowered by the checker's own code, so the claims are about what the checker reads.

Methods: ``product`` for every network and norm (ℓ2, ℓ∞; one operator-norm claim per
matrix); for chains ``compositional`` (the cut/merge programme's block norms in any of those
norms, or lipguard's fast LipSDP certificate) and, in ℓ2, ``lipsdp``/``lipsdp-layer`` (the
multipliers). Every section is re-proven by the checker before it is written; where the checker
needs more room than lipguard's own proof (it encloses exact products, and its PSD test has its
own rounding allowance), the claimed norms or ``ρ`` are raised by a relative ``2^-30``,
``2^-20`` or ``2^-13``, and the certificate states the bound with them.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from typing import Any, cast

import torch
from torch import nn

from lipguard.bounds.api import AUTO_LIPSDP_SIZE, Method
from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.norms import matrix_norm
from lipguard.errors import CertificationError
from lipguard.results import LipschitzBound

_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Identity: "identity",
}
#: relative increases of the claims tried until the independent checker re-proves them
_LADDER = (0.0, 2.0**-30, 2.0**-20, 2.0**-13)
#: the methods whose proof data the checker reads
METHODS = ("auto", "product", "lipsdp", "lipsdp-layer", "compositional")


def checkable_network(model: nn.Module) -> tuple[list[Any], dict[str, Any]]:
    """The checker's steps for ``model`` and the section naming what they come from; anything
    outside the two families is refused by name."""
    from lipguard.check import checker

    source = getattr(model, "source", None)
    if isinstance(source, bytes):  # read from ONNX: the checker reads the same bytes
        try:
            steps, _ = checker.read_onnx(source)
        except (ValueError, IndexError, KeyError, TypeError) as error:
            raise CertificationError(f"not checkable: {error}") from None
        return steps, {"format": checker.FORMAT, "onnx_sha256": hashlib.sha256(source).hexdigest()}
    section = {"format": checker.FORMAT, "layers": _dense_layers(model)}
    tensors = {
        name: tensor.detach().cpu().to(torch.float64).numpy()
        for name, tensor in model.state_dict().items()
    }
    return checker.read_layers(section, tensors), section


def _dense_layers(model: nn.Module) -> list[dict[str, Any]]:
    """The canonical chain of an ``nn.Sequential`` of ``nn.Linear`` layers with one activation
    between consecutive ones."""
    from lipguard.check.graph import SLOPES

    if type(model) is not nn.Sequential:
        raise CertificationError(
            "checkable certificates cover nn.Sequential models and models read from ONNX, "
            f"not {type(model).__name__}"
        )
    layers: list[dict[str, Any]] = []
    children = [  # a reused activation module appears at each of its places
        (name, module)
        for name, module in model.named_modules(remove_duplicate=False)
        if name and "." not in name
    ]
    for index, (name, module) in enumerate(children):
        expect_linear = index % 2 == 0
        if expect_linear != (type(module) is nn.Linear) or (
            not expect_linear and type(module) not in _ACTIVATIONS
        ):
            raise CertificationError(
                f"checkable certificates cover Linear, activation, …, Linear chains (activations "
                f"{sorted(_ACTIVATIONS.values())}); module {name!r} is {type(module).__name__}"
            )
        if expect_linear:
            bias = None if module.bias is None else f"{name}.bias"
            layers.append({"weight": f"{name}.weight", "bias": bias, "activation": None})
            continue
        kind = _ACTIVATIONS[type(module)]
        if kind == "leaky_relu":
            slope = float(module.negative_slope)
            if not 0.0 <= slope <= 1.0:
                raise CertificationError(f"LeakyReLU slope {slope} is outside [0, 1]")
            layers[-1]["activation"] = {"kind": kind, "slope": slope, "slopes": [slope, 1.0]}
        else:
            layers[-1]["activation"] = {"kind": kind, "slopes": list(SLOPES[kind])}
    if not layers or layers[-1]["activation"] is not None:
        raise CertificationError("checkable certificates cover chains that end with nn.Linear")
    return layers


def checkable_bound(
    model: nn.Module, steps: list[Any], p: float, method: str, shape: Any
) -> LipschitzBound:
    """lipguard's bound by a method the checker re-proves. ``auto``: LipSDP for a small ℓ2 chain
    without identity activations (the cut/merge programme where LipSDP's multipliers cannot be
    verified), the programme for other chains, the product for every other graph."""
    from lipguard.bounds.api import lipschitz_bound
    from lipguard.check import checker

    if method not in METHODS:
        raise CertificationError(f"checkable certificates state methods {METHODS}, not {method!r}")
    path = checker.chain(steps)
    if path is None and method not in ("auto", "product"):
        raise CertificationError(f"method {method!r} needs a chain W φ(⋯ φ(W x)): use product")
    if method == "auto" and path is not None:
        plain = all(step.kind != "identity" for step in path[1::2])
        rows = sum(int(w.shape[1]) for _, w in checker.weights(steps))
        if p == 2 and plain and rows <= AUTO_LIPSDP_SIZE:
            try:
                return lipschitz_bound(model, p, "lipsdp", input_shape=shape)
            except CertificationError:
                pass
        method = "compositional"
    chosen = cast(Method, "product" if method == "auto" else method)
    return lipschitz_bound(model, p, chosen, input_shape=shape)


def _float_up(value: Fraction) -> float:
    """The least float >= ``value``."""
    result = float(value)
    return result if Fraction(result) >= value else math.nextafter(result, math.inf)


def _block_norms(weights: list[torch.Tensor], p: float) -> list[list[float]]:
    """``σ(i, j) >= ||W_j ⋯ W_i||_p`` of the float64 products (the engine's sound norms; the
    ladder covers the difference to the checker's exact products)."""
    norms: list[list[float]] = []
    for j in range(len(weights)):
        product, row = weights[j], [0.0] * (j + 1)
        for i in range(j, -1, -1):
            product = product if i == j else product @ weights[i]
            row[i] = matrix_norm(Enclosure.exact(product), p)
        norms.append(row)
    return norms


def checkable_proof(
    steps: list[Any], section: dict[str, Any], upper: LipschitzBound
) -> tuple[LipschitzBound, dict[str, Any]]:
    """``section`` completed with the proof data of ``upper``, re-proven by the checker, and the
    bound it proves (``upper`` itself, or slightly larger where the checker needs it)."""
    from lipguard.check import checker

    p, given, path = upper.norm, upper.details or {}, checker.chain(steps)
    norm = "2" if p == 2 else "inf"
    layers = [] if path is None else checker.layers_of(path)
    hidden = [layer.weight.shape[0] for layer in layers[:-1]]
    # compositional's fast LipSDP certificate is about lipguard's normal form, which merges
    # identity activations: where that is not the chain, the checker gets the DP instead
    lipsdp = "multipliers" in given and [len(t) for t in given["multipliers"]] == hidden
    matrices = [torch.tensor(w) for _, w in checker.weights(steps)]
    if upper.method == "product":
        claims = [matrix_norm(Enclosure.exact(w), p) for w in matrices]
    elif upper.method == "compositional" and not lipsdp:
        blocks = _block_norms(matrices, p)
    elif upper.method in ("lipsdp-neuron", "lipsdp-layer", "compositional") and lipsdp:
        rho, multipliers = float(given["rho"]), given["multipliers"]
        section["multipliers"] = multipliers
    else:
        raise CertificationError(
            f"method {upper.method!r} has no checkable proof (LipSDP multipliers must match the "
            f"hidden layers {hidden})"
        )
    for step in _LADDER:
        details: dict[str, Any] | None = upper.details
        if upper.method == "product":
            section["sigmas"] = [_float_up(Fraction(s) * (1 + Fraction(step))) for s in claims]
            exact = checker.product_value(steps, [Fraction(s) for s in section["sigmas"]])
        elif "multipliers" not in section:
            raised = [
                [_float_up(Fraction(s) * (1 + Fraction(step))) for s in row] for row in blocks
            ]
            section["block_norms"] = raised
            exact = checker.dp_value(layers, [[Fraction(s) for s in row] for row in raised])
            details = None
        else:
            section["rho"] = _float_up(Fraction(rho) * (1 + Fraction(step)))
            root = math.sqrt(section["rho"])
            while Fraction(root) ** 2 < Fraction(section["rho"]):
                root = math.nextafter(root, math.inf)
            exact, details = Fraction(root), {"rho": section["rho"], "multipliers": multipliers}
        value = max(upper.value, _float_up(exact))
        if not checker.prove_upper(steps, section, upper.method, norm, Fraction(value)):
            bound = LipschitzBound(value, p, upper.method, upper.scope, True, upper.margin, details)
            return bound, section
    raise CertificationError(
        f"the independent checker could not re-prove the {upper.method} bound {upper.value:.9g}"
    )
