"""Re-prove a lipguard certificate's claims from the weights file and the certificate alone.

The network (:mod:`lipguard.check.graph`): a dense chain ``W_k φ(⋯ φ(W_1 x + b_1) ⋯) + b_k``
named by the certificate's ``checkable.layers`` in a safetensors file, or an ONNX file's graph
(convolutions, residual sums, permutations). Each activation ``φ`` (``relu``, ``leaky_relu``
``max(x, a·x)`` with ``0 <= a <= 1``, ``tanh``, ``sigmoid``, ``identity``) is nondecreasing
with slopes in ``[α, β]`` (:data:`SLOPES`); weights are exact binary floats widened exactly.

Claims checked, each failure reported with its reason:

- ``claims_sha256`` and ``weights_sha256`` (or ``onnx_sha256``, of the ONNX file's bytes) are
  recomputed (the recipe of lipguard's certificates);
- the upper bound is global, sound, in ℓ2 or ℓ∞, and ``||f(x) - f(y)|| <= value·||x - y||``
  is proven for every ``x, y`` by ``product`` (``||W|| <= σ`` for every matrix, :func:`prove_norm`;
  then the graph's product, sums at residual joins, :func:`prove_product`), ``lipsdp-neuron``
  (ℓ2, Fazlyab et al., NeurIPS 2019, Theorem 2, with the multipliers stated: the matrix below
  ⪰ 0, then ``value² >= ρ`` exactly), ``lipsdp-layer`` (the same, one multiplier per layer) or
  ``compositional`` (its cut/merge programme over proven block norms, :func:`prove_dp`, or
  its fast LipSDP certificate, proven as ``lipsdp-neuron``); all but ``product`` need a chain;
- the lower bound's witnesses ``x ≠ y`` satisfy ``||f(x) - f(y)|| >= lower·||x - y||``,
  evaluated exactly (rationals) or by outward-rounded interval arithmetic (``tanh``,
  ``sigmoid``), and ``lower <= upper``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from mpmath import iv  # type: ignore[import-untyped]

from lipguard.check import psd
from lipguard.check.graph import (
    LIMIT,
    Step,
    activation,
    chain,
    evaluate,
    reachable,
    read_onnx,
    weights,
)
from lipguard.check.psd import Enclosed, Matrix

#: the ``checkable`` section's format tag this checker reads
FORMAT = "lipguard-checkable/1"
_DTYPES = {
    "F64": ("float64", "<f8"),
    "F32": ("float32", "<f4"),
    "F16": ("float16", "<f2"),
    "BF16": ("bfloat16", "<u2"),
}


class CheckInputError(ValueError):
    """An unreadable or malformed weights file or certificate (not a rejected claim)."""


@dataclass
class CheckResult:
    """``accepted`` when every claim is proven; ``upper`` the proven bound (``None`` when not) in
    the norm ``norm`` (``"2"`` or ``"∞"``), ``lower`` whether the witnessed lower bound was
    confirmed (``None`` when none is stated)."""

    accepted: bool
    reasons: list[str] = field(default_factory=list)
    upper: float | None = None
    lower: bool | None = None
    norm: str = "2"


def read_safetensors(path: Path) -> tuple[dict[str, Matrix], str]:
    """The tensors of a safetensors file (as float64) and the SHA-256 lipguard certificates use:
    over the entries sorted by name, ``f"{name}|torch.{dtype}|{shape tuple}|"`` then the raw
    little-endian bytes."""
    try:
        data = path.read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except (OSError, ValueError, RecursionError) as error:
        raise CheckInputError(f"cannot read weights {path}: {error}") from error
    if len(data) < 8 + size or not isinstance(header, dict):
        raise CheckInputError(f"{path}: not a safetensors file")
    body, digest, tensors = data[8 + size :], hashlib.sha256(), {}
    for name in sorted(key for key in header if key != "__metadata__"):
        try:
            info = header[name]
            (dtype, code), shape, (begin, end) = (
                _DTYPES[info["dtype"]],
                info["shape"],
                info["data_offsets"],
            )
            raw = body[begin:end]
            if not all(type(n) is int and n >= 0 for n in [*shape, begin, end]):
                raise ValueError(f"shape {shape} and offsets must be non-negative integers")
            if len(raw) != end - begin or len(raw) != math.prod(shape) * np.dtype(code).itemsize:
                raise ValueError("size does not match shape")
        except (KeyError, TypeError, ValueError) as error:
            raise CheckInputError(
                f"{path}: tensor {name!r} is malformed or not float ({error})"
            ) from error
        digest.update(f"{name}|torch.{dtype}|{tuple(shape)}|".encode() + raw)
        array = np.frombuffer(raw, code)
        if dtype == "bfloat16":  # the top half of a float32
            array = (array.astype("<u4") << 16).view("<f4")
        tensors[name] = array.astype(np.float64).reshape(shape)
    return tensors, digest.hexdigest()


def claims_sha256(data: dict[str, Any]) -> str:
    """SHA-256 of canonical JSON of every field but ``claims_sha256`` (lipguard's recipe)."""
    claims = {key: value for key, value in data.items() if key != "claims_sha256"}
    text = json.dumps(claims, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckInputError(f"{what} must be a finite number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CheckInputError(f"{what} must be a finite number, got {value!r}")
    if abs(value) > LIMIT:  # before float(): an int may be too large for a float
        raise CheckInputError(f"{what} = {value!r} exceeds this checker's range 2^64")
    return float(value)


def _get(data: object, key: str, what: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise CheckInputError(f"missing field {what}.{key}")
    return data[key]


def read_layers(section: dict[str, Any], tensors: dict[str, Matrix]) -> list[Step]:
    """The dense chain ``checkable.layers`` describes, as steps; raises :class:`ValueError`
    naming what is outside the family (the caller reports it as the reason for rejection)."""
    entries, steps, used = _get(section, "layers", "checkable"), [Step("input", 0)], list[str]()
    if not isinstance(entries, list) or not entries:
        raise CheckInputError("checkable.layers must be a non-empty list")
    for index, entry in enumerate(entries):
        where = f"layers[{index}]"
        names = [_get(entry, key, where) for key in ("weight", "bias")]
        kind = _get(entry, "activation", where)
        if not all(n is None or isinstance(n, str) for n in names):
            raise CheckInputError(f"{where}: tensor names must be strings")
        if names[0] is None or any(n is not None and n not in tensors for n in names):
            raise ValueError(f"{where}: tensors {names} are not all in the weights file")
        used += [name for name in names if name is not None]
        weight, bias = tensors[names[0]], None if names[1] is None else tensors[names[1]]
        if weight.ndim != 2:
            raise ValueError(f"{where}: the weight has shape {weight.shape}, not a matrix")
        steps[0] = steps[0] if index else Step("input", weight.shape[1])
        if weight.shape[1] != steps[-1].size or (
            bias is not None and bias.shape != weight.shape[:1]
        ):
            raise ValueError(f"{where}: shapes do not chain ({weight.shape}, {names[1]})")
        if not all((np.abs(t) <= LIMIT).all() for t in (weight, bias) if t is not None):
            raise ValueError(
                f"{where}: a weight is not finite or exceeds this checker's range 2^64"
            )
        if (kind is None) != (index == len(entries) - 1):
            raise ValueError(f"{where}: every layer but the last has an activation, the last none")
        biases = () if bias is None else (bias,)
        steps.append(Step("affine", weight.shape[0], (len(steps) - 1,), weight, (), biases))
        if kind is None:
            continue
        name = _get(kind, "kind", f"{where}.activation")
        if not isinstance(name, str):
            raise CheckInputError(f"{where}.activation.kind must be a string")
        slope = _get(kind, "slope", f"{where}.activation") if name == "leaky_relu" else 0.0
        act = activation(name, _number(slope, "slope"))
        stated = _get(kind, "slopes", f"{where}.activation")
        numbers = (
            [Fraction(_number(s, "slope")) for s in stated] if isinstance(stated, list) else []
        )
        if numbers != list(act.slopes):
            truth = [float(t) for t in act.slopes]
            raise ValueError(f"layer {index}: {name} has slopes {truth}, stated {stated!r}")
        steps.append(Step("act", weight.shape[0], (len(steps) - 1,), kind=name, slopes=act.slopes))
    if sorted(used) != sorted(tensors) or len(set(used)) != len(used):
        unused = sorted(set(tensors) ^ set(used))
        raise ValueError(f"the layers must use every tensor of the weights file once: {unused}")
    return steps


class Layer(NamedTuple):
    """A matrix of a chain and the slope range of the activation after it (``[1, 1]`` last)."""

    weight: Matrix
    slopes: tuple[Fraction, Fraction]


def layers_of(path: list[Step]) -> list[Layer]:
    """A :func:`chain`'s matrices with the activations that follow them."""
    acts = [step.slopes for step in path[1::2]] + [(Fraction(1), Fraction(1))]
    matrices = [step.weight for step in path[0::2] if step.weight is not None]
    return [Layer(w, slopes) for w, slopes in zip(matrices, acts, strict=True)]


def prove_norm(matrix: Enclosed, bound: Fraction, norm: str) -> str | None:
    """Prove ``||A|| <= bound`` for every ``A`` the enclosure stands for (``None``: proven).
    ℓ∞: the largest row sum of ``|V| + E``, correctly rounded by :func:`math.fsum` and raised by
    ``1 + 2^-51`` (each entry of ``|V| + E`` rounded by at most ``u``, the sum by ``u``). ℓ2 of
    an exact ``W``: ``bound² I - WᵀW ⪰ 0`` (or the smaller ``WWᵀ``, same nonzero spectrum); of an
    enclosed ``P``: ``[[bI, Pᵀ], [P, bI]] ⪰ 0`` (for unit ``v`` and ``u = Pv/||Pv||`` the form at
    ``(v, -u)`` is ``2b - 2||Pv||``)."""
    value, error = matrix
    if bound < 0:
        return "negative"
    if norm == "inf":
        largest = max((math.fsum(row) for row in (np.abs(value) + error).tolist()), default=0.0)
        enough = bound >= Fraction(largest) * (1 + Fraction(2) ** -51)
        return None if enough else f"row sums reach {largest!r}"
    if not error.any():
        w = value if value.shape[0] <= value.shape[1] else value.T
        square = psd.scale_rows([bound * bound] * w.shape[0], np.eye(w.shape[0]))
        return psd.prove_psd(psd.add(square, psd.negate(psd.product(w, psd.exact(w.T)))))
    rows, columns = value.shape
    grid = [[psd.exact(float(bound) * np.eye(columns)), Enclosed(value.T, error.T)]]
    return psd.prove_psd(psd.block([*grid, [matrix, psd.exact(float(bound) * np.eye(rows))]]))


def product_value(steps: list[Step], sigmas: list[Fraction]) -> Fraction:
    """The graph's product bound from ``||W|| <= σ`` per matrix (in :func:`weights` order):
    ``L_input = 1``, an affine step multiplies by its ``σ``, an activation by its ``β``, a sum
    adds (``||u + v|| <= ||u|| + ||v||``), in exact rationals."""
    claimed = dict(zip((i for i, _ in weights(steps)), sigmas, strict=True))
    factor = {0: Fraction(1)}
    for index in reachable(steps)[1:]:
        step, first = steps[index], factor[steps[index].inputs[0]]
        if step.op == "add":
            factor[index] = first + factor[step.inputs[1]]
        else:
            scale = step.slopes[1] if step.op == "act" else claimed.get(index, Fraction(1))
            factor[index] = first * scale
    return factor[len(steps) - 1]


def prove_product(steps: list[Step], sigmas: object, norm: str, value: Fraction) -> list[str]:
    """Every claim ``||W|| <= σ`` proven (:func:`prove_norm`), then ``value >=``
    :func:`product_value`."""
    matrices = weights(steps)
    if not isinstance(sigmas, list) or len(sigmas) != len(matrices):
        return [f"product: {len(matrices)} operator-norm bounds needed, got {sigmas!r}"]
    claims = [Fraction(_number(s, f"sigmas[{n}]")) for n, s in enumerate(sigmas)]
    reasons = []
    for number, ((_, matrix), sigma) in enumerate(zip(matrices, claims, strict=True)):
        reason = prove_norm(psd.exact(matrix), sigma, norm)
        if reason is not None:
            reasons.append(f"product: ||W_{number}||_{norm} <= {float(sigma)!r} ({reason})")
    bound = product_value(steps, claims)
    if value < bound:
        reasons.append(f"product: the stated bound {float(value)!r} < the product {float(bound)!r}")
    return reasons


def lipsdp_matrix(
    layers: list[Layer], multipliers: list[list[Fraction]], rho: Fraction
) -> Enclosed:
    """LipSDP-Neuron's matrix (Fazlyab et al. 2019, Theorem 2; ``T_k = diag(t_k)``) for hidden
    outputs ``x_1..x_L`` and ``P_k = diag(α_k β_k)``, ``S_k = diag(α_k + β_k)``: the quadratic
    form ``ρ||x_0||² - ||W_L x_L||² + Σ_k Σ_j 2t_kj(α β v_j² - (α + β) v_j x_kj + x_kj²)`` with
    ``v = W_{k-1} x_{k-1}``; each summand is ``<= 0`` along the network (slope restriction), so
    the matrix ⪰ 0 gives ``||f(x) - f(y)||₂² <= ρ||x - y||₂²``. Blocks:
    ``[0,0] = ρI + 2W_0ᵀP_1T_1W_0``, ``[k,k] = 2T_k + 2W_kᵀP_{k+1}T_{k+1}W_k`` (``k < L``),
    ``[L,L] = 2T_L - W_LᵀW_L``, ``[k-1,k] = -W_{k-1}ᵀS_kT_k``."""
    depth = len(layers) - 1
    sizes = [layers[0].weight.shape[1]] + [layer.weight.shape[0] for layer in layers[:-1]]
    grid = [[psd.exact(np.zeros((rows, columns))) for columns in sizes] for rows in sizes]
    for k in range(depth + 1):
        w = layers[k].weight
        diagonal = [rho] * sizes[0] if k == 0 else [2 * t for t in multipliers[k - 1]]
        item = psd.scale_rows(diagonal, np.eye(sizes[k]))
        if k < depth:
            (alpha, beta), t = layers[k].slopes, multipliers[k]
            if alpha * beta != 0:
                quadratic = psd.scale_rows([2 * alpha * beta * tj for tj in t], w)
                item = psd.add(item, psd.product(w.T, quadratic))
            coupling = psd.negate(psd.scale_columns(w.T, [(alpha + beta) * tj for tj in t]))
            grid[k][k + 1] = coupling
            grid[k + 1][k] = Enclosed(coupling.value.T, coupling.error.T)
        else:
            item = psd.add(item, psd.negate(psd.product(w.T, psd.exact(w))))
        grid[k][k] = item
    return psd.block(grid)


def prove_lipsdp(layers: list[Layer], section: dict[str, Any], value: Fraction) -> list[str]:
    rho = Fraction(_number(_get(section, "rho", "checkable"), "rho"))
    given = _get(section, "multipliers", "checkable")
    sizes = [layer.weight.shape[0] for layer in layers[:-1]]
    if (
        not isinstance(given, list)
        or [len(t) if isinstance(t, list) else -1 for t in given] != sizes
    ):
        return [f"LipSDP: multipliers for hidden layers of sizes {sizes} needed"]
    multipliers = [[Fraction(_number(t, "multiplier")) for t in layer] for layer in given]
    reasons = []
    if rho < 0 or any(t < 0 for layer in multipliers for t in layer):
        return ["LipSDP: ρ and the multipliers must be >= 0"]
    reason = psd.prove_psd(lipsdp_matrix(layers, multipliers, rho))
    if reason is not None:
        reasons.append(f"LipSDP: the matrix inequality is not proven ({reason})")
    if value * value < rho:
        reasons.append(f"LipSDP: the stated bound {float(value)!r} < √ρ (ρ = {float(rho)!r})")
    return reasons


def _fraction(raw: tuple[int, int, int, int]) -> Fraction:
    sign, mantissa, exponent, _ = raw
    if mantissa == 0 and raw != (0, 0, 0, 0):
        raise ValueError("non-finite interval endpoint")
    return (-1) ** sign * Fraction(mantissa) * Fraction(2) ** exponent


def _size(values: list[Fraction], norm: str) -> Fraction:
    """``max |v|`` (ℓ∞) or ``Σ v²`` (ℓ2, the squared norm)."""
    return (
        max(values, default=Fraction(0))
        if norm == "inf"
        else sum((v * v for v in values), Fraction(0))
    )


def check_lower(steps: list[Step], lower: dict[str, Any], norm: str, upper: Fraction) -> list[str]:
    """``||f(x) - f(y)|| >= lower·||x - y||`` for the stated witnesses (compared squared for
    ℓ2), from :func:`evaluate` — exact, or enclosing intervals at 160 bits whose gap's smallest
    magnitude is used — and ``lower <= upper``."""
    value = Fraction(_number(_get(lower, "value", "lower"), "lower.value"))
    x, y = (_get(lower, key, "lower") for key in ("x", "y"))
    if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) == steps[0].size):
        return [f"lower bound: witnesses must hold {steps[0].size} numbers each"]
    x, y = (np.array([_number(v, "witness") for v in w], np.float64) for w in (x, y))
    distance = _size(
        [abs(Fraction(a) - Fraction(b)) for a, b in zip(x.tolist(), y.tolist(), strict=True)], norm
    )
    saved, iv.prec = iv.prec, 160
    try:
        gaps = []
        for p, q in zip(evaluate(steps, x), evaluate(steps, y), strict=True):
            if isinstance(p, Fraction):
                gaps.append(abs(p - q))
                continue
            low, high = (_fraction(end) for end in (p - q)._mpi_)
            gaps.append(Fraction(0) if low <= 0 <= high else min(abs(low), abs(high)))
    finally:
        iv.prec = saved
    scale = value * value if norm == "2" else value
    reasons = []
    if distance == 0 or _size(gaps, norm) < scale * distance:
        reasons.append(f"lower bound: the witnesses do not show a ratio >= {float(value)!r}")
    if value > upper:
        reasons.append(f"lower bound {float(value)!r} exceeds the upper bound {float(upper)!r}")
    return reasons


def dp_value(layers: list[Layer], sigma: list[list[Fraction]]) -> Fraction:
    """The cut/merge programme's value in exact rationals (see :func:`prove_dp`)."""
    centre = [(a + b) / 2 for a, b in (layer.slopes for layer in layers)]
    totals = [Fraction(1)]
    for j in range(len(layers)):
        total = sum(
            (
                totals[i] * math.prod(centre[i:j], start=Fraction(1)) * sigma[j][i]
                for i in range(j + 1)
            ),
            Fraction(0),
        )
        alpha, beta = layers[j].slopes
        totals.append(total * ((beta - alpha) / 2 if j < len(layers) - 1 else 1))
    return totals[-1]


def prove_dp(layers: list[Layer], norms: object, norm: str, value: Fraction) -> list[str]:
    """The cut/merge bound (Combettes & Pesquet 2020; lipguard's ``compositional`` DP), with
    ``norms[j][i] = σ(i, j) >= ||W_j W_{j-1} ⋯ W_i||`` for ``0 <= i <= j <= k``.

    Between ``x`` and ``y`` each neuron of hidden layer ``m`` (after ``W_m``) acts as a factor
    ``d ∈ [α_m, β_m]`` (slope restriction), so ``f(x) - f(y) = W_k D_{k-1} ⋯ D_0 W_0 (x - y)``
    with ``D_m = c_m I + g_m S_m``, ``c = (α + β)/2``, ``g = (β - α)/2``, ``S_m`` diagonal with
    ``|S_m| <= 1`` (operator norm ``<= 1`` in ℓ2 and ℓ∞). The ranges are fixed per layer by the
    activation kind, so ``c_m``, ``g_m`` are exact rational *scalars* and no square root is ever
    needed. Expanding the product over the set of layers where ``S`` is taken ("cuts"), a term
    is a product of blocks ``(Π_{i<=m<j} c_m) W_j ⋯ W_i`` separated by ``g_m S_m``; its norm is at
    most ``Π blocks (Π c)·σ(i, j) · Π_cuts g_m``. The sum over all cut sets is the programme
    ``G_0 = 1``, ``G_{j+1} = g_j Σ_{i<=j} G_i (Π_{i<=m<j} c_m) σ(i, j)``, bound ``= G_{k+1}``
    without the last ``g`` (:func:`dp_value`). Each ``σ(i, j)`` is proven by :func:`prove_norm`
    on the product enclosed by :func:`psd.product`."""
    depth = len(layers) - 1
    if not isinstance(norms, list) or [
        len(row) if isinstance(row, list) else -1 for row in norms
    ] != list(range(1, depth + 2)):
        return [f"compositional: block norms σ(i, j) for 0 <= i <= j <= {depth} needed"]
    sigma = [[Fraction(_number(s, "block norm")) for s in row] for row in norms]
    reasons, blocks = [], list[Enclosed]()
    for j, layer in enumerate(layers):
        blocks = [psd.product(layer.weight, block) for block in blocks]
        blocks.append(psd.exact(layer.weight))
        for i, block in enumerate(blocks):
            reason = prove_norm(block, sigma[j][i], norm)
            if reason is not None:
                reasons.append(
                    f"compositional: ||W_{j}⋯W_{i}|| <= {float(sigma[j][i])!r} ({reason})"
                )
    total = dp_value(layers, sigma)
    if value < total:
        reasons.append(
            f"compositional: the stated bound {float(value)!r} < the DP's {float(total)!r}"
        )
    return reasons


def prove_upper(
    steps: list[Step], section: dict[str, Any], method: str, norm: str, value: Fraction
) -> list[str]:
    """Reasons the upper bound ``value`` is not proven by ``method`` (empty: proven).
    ``product`` covers every graph and norm; the others need a :func:`chain`, LipSDP the ℓ2
    norm. ``compositional`` is proven by its DP (``block_norms``) or, where lipguard's fast
    LipSDP-style certificate won, by the LipSDP-Neuron matrix (``rho``, ``multipliers``)."""
    path = chain(steps)
    lipsdp = method in ("lipsdp-neuron", "lipsdp-layer") or (
        method == "compositional" and "block_norms" not in section
    )
    try:
        if method == "product":
            return prove_product(steps, _get(section, "sigmas", "checkable"), norm, value)
        if method not in ("lipsdp-neuron", "lipsdp-layer", "compositional"):
            methods = "product, lipsdp-neuron, lipsdp-layer, compositional"
            return [f"method {method!r} is not checkable ({methods})"]
        if path is None:
            return [f"{method}: the network is not a chain W φ(⋯ φ(W x)): product only"]
        if not lipsdp:
            return prove_dp(layers_of(path), section["block_norms"], norm, value)
        if norm != "2":
            return [f"{method}: LipSDP proves ℓ2 bounds, not ℓ{norm}"]
        given = _get(section, "multipliers", "checkable")
        untied = isinstance(given, list) and any(
            isinstance(t, list) and len(set(t)) > 1 for t in given
        )
        if method == "lipsdp-layer" and untied:
            return ["lipsdp-layer: the multipliers of a layer must be equal"]
        return prove_lipsdp(layers_of(path), section, value)
    except CheckInputError as error:  # the proof data of another method, or none
        return [f"{method}: no proof ({error})"]


def read_network(
    weights_path: Path, data: dict[str, Any], section: dict[str, Any]
) -> tuple[list[Step], list[int]] | str:
    """The steps and input shape the certificate is about, or the reason they are refused:
    an ONNX file (``onnx_sha256`` of its bytes) or a safetensors file (``weights_sha256``)."""
    if "onnx_sha256" in section:
        try:
            raw = weights_path.read_bytes()
        except OSError as error:
            raise CheckInputError(f"cannot read weights {weights_path}: {error}") from error
        if hashlib.sha256(raw).hexdigest() != section["onnx_sha256"]:
            return "onnx_sha256 mismatch: the file is not the one certified"
        try:
            return read_onnx(raw)
        except (ValueError, IndexError, KeyError, TypeError) as error:  # a malformed graph
            return f"architecture: {error}"
    tensors, digest = read_safetensors(weights_path)
    if digest != _get(data, "weights_sha256", "certificate"):
        return f"weights_sha256 mismatch: the file has {digest[:16]}…"
    try:
        steps = read_layers(section, tensors)
    except ValueError as error:
        if isinstance(error, CheckInputError):
            raise
        return f"architecture: {error}"
    return steps, [steps[0].size]


def check(weights_path: str | Path, certificate_path: str | Path) -> CheckResult:
    """Re-prove the certificate's claims about the network its ``checkable`` section describes
    with the weights in ``weights_path``; raises :class:`CheckInputError` for unreadable input."""
    try:
        data = json.loads(Path(certificate_path).read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise CheckInputError(f"cannot read certificate {certificate_path}: {error}") from error
    upper = _get(data, "upper", "certificate")
    value = Fraction(_number(_get(upper, "value", "upper"), "upper.value"))
    reasons = []
    if _get(data, "claims_sha256", "certificate") != claims_sha256(data):
        reasons.append("claims_sha256 does not match the certificate's fields (edited file)")
    claimed = {key: _get(upper, key, "upper") for key in ("norm", "scope", "sound", "method")}
    norm = str(claimed["norm"])
    if norm not in ("2", "inf"):
        reasons.append(f"norm {norm!r}: this checker proves ℓ2 and ℓ∞ bounds")
    if value < 0:
        reasons.append(f"the upper bound {float(value)!r} is negative")
    if claimed["scope"] != "global" or claimed["sound"] is not True:
        scope, sound = claimed["scope"], claimed["sound"]
        reasons.append(f"the bound must be global and sound (scope {scope!r}, sound {sound!r})")
    section = data.get("checkable")
    if not isinstance(section, dict) or section.get("format") != FORMAT:
        return CheckResult(False, [*reasons, f"no {FORMAT} section: nothing to check"])
    network = read_network(Path(weights_path), data, section)
    if isinstance(network, str):
        return CheckResult(False, [*reasons, network])
    steps, shape = network
    if _get(data, "input_shape", "certificate") != shape:
        reasons.append(f"input_shape must be {shape}")
    if reasons:  # a norm or scope this checker does not prove: nothing more to say
        return CheckResult(False, reasons)
    try:
        failed = prove_upper(steps, section, str(claimed["method"]), norm, value)
    except MemoryError:
        failed = ["the proof's matrices are too large for this machine"]
    lower, confirmed = data.get("lower"), None
    if lower is not None:
        problems = check_lower(steps, lower, norm, value)
        confirmed, reasons = not problems, reasons + problems
    reasons += failed
    proven = None if failed else float(value)
    return CheckResult(not reasons, reasons, proven, confirmed, "∞" if norm == "inf" else norm)
