"""Re-prove a lipguard certificate's claims from the weights file and the certificate alone.

The network (the certificate's ``checkable.layers``, every tensor read from the safetensors file)
is ``f(x) = W_k φ_{k-1}(⋯ φ_1(W_1 x + b_1) ⋯) + b_k`` on a flat input ``x`` with each ``φ_i``
applied elementwise: ``relu``, ``leaky_relu`` (``max(x, a·x)``, ``0 <= a <= 1``), ``tanh``,
``sigmoid`` or ``identity``, each nondecreasing with slopes in ``[α, β]`` (:data:`SLOPES`).
Weights are exact binary floats (float16/bfloat16/float32/float64), widened exactly.

Claims checked, each failure reported with its reason:

- ``claims_sha256`` and ``weights_sha256`` are recomputed (the recipe of lipguard's certificates);
- the upper bound is global, sound, in the ℓ2 norm, and ``||f(x) - f(y)||₂ <= value·||x - y||₂``
  is proven for every ``x, y`` by ``product`` (``||W_i||₂ <= σ_i``, each proven by
  ``σ_i² I - W_iᵀW_i ⪰ 0``; then ``value >= Π σ_i · Π β_i`` exactly) or ``lipsdp-neuron``
  (Fazlyab et al., NeurIPS 2019, Theorem 2, with the multipliers stated: the matrix below ⪰ 0,
  then ``value² >= ρ`` exactly), ``lipsdp-layer`` (the same, one multiplier per layer) or
  ``compositional`` (its cut/merge programme over proven block norms, :func:`prove_dp`, or
  its fast LipSDP certificate, proven as ``lipsdp-neuron``);
- the lower bound's witnesses ``x ≠ y`` satisfy ``||f(x) - f(y)||₂² >= lower²·||x - y||₂²``,
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
from typing import Any

import numpy as np
from mpmath import iv  # type: ignore[import-untyped]

from lipguard.check import psd
from lipguard.check.psd import Enclosed, Matrix

FORMAT = "lipguard-checkable/1"
#: each activation's slope range [α, β] (leaky_relu: [a, 1] for its slope a)
SLOPES = {
    "relu": (0.0, 1.0),
    "tanh": (0.0, 1.0),
    "sigmoid": (0.0, 0.25),
    "identity": (1.0, 1.0),
}
_LIMIT = 2.0**64  # largest magnitude of a weight, multiplier or bound this checker accepts
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
    """``accepted`` when every claim is proven; ``upper`` the proven bound (``None`` when not),
    ``lower`` whether the witnessed lower bound was confirmed (``None`` when none is stated)."""

    accepted: bool
    reasons: list[str] = field(default_factory=list)
    upper: float | None = None
    lower: bool | None = None


@dataclass(frozen=True)
class Layer:
    weight: Matrix  # (out, in), exact float64
    bias: Matrix | None  # (out,)
    kind: str | None  # the activation after this layer; None after the last
    slopes: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))


def read_safetensors(path: Path) -> tuple[dict[str, Matrix], str]:
    """The tensors of a safetensors file (as float64) and the SHA-256 lipguard certificates use:
    over the entries sorted by name, ``f"{name}|torch.{dtype}|{shape tuple}|"`` then the raw
    little-endian bytes."""
    try:
        data = path.read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except (OSError, ValueError) as error:
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
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckInputError(f"{what} must be a finite number, got {value!r}")
    if abs(value) > _LIMIT:
        raise CheckInputError(f"{what} = {value!r} exceeds this checker's range 2^64")
    return float(value)


def _get(data: object, key: str, what: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise CheckInputError(f"missing field {what}.{key}")
    return data[key]


def read_layers(section: dict[str, Any], tensors: dict[str, Matrix]) -> list[Layer]:
    """The chain the certificate describes; raises :class:`ValueError` naming what is outside
    the family (the caller reports it as the reason for rejection)."""
    entries, layers, used = _get(section, "layers", "checkable"), list[Layer](), list[str]()
    if not isinstance(entries, list) or not entries:
        raise CheckInputError("checkable.layers must be a non-empty list")
    for index, entry in enumerate(entries):
        where = f"layers[{index}]"
        names = [_get(entry, key, where) for key in ("weight", "bias")]
        activation = _get(entry, "activation", where)
        if names[0] is None or any(n is not None and n not in tensors for n in names):
            raise ValueError(f"{where}: tensors {names} are not all in the weights file")
        used += [name for name in names if name is not None]
        weight, bias = tensors[names[0]], None if names[1] is None else tensors[names[1]]
        inputs = layers[-1].weight.shape[0] if layers else weight.shape[-1]
        if (
            weight.ndim != 2
            or weight.shape[1] != inputs
            or (bias is not None and bias.shape != weight.shape[:1])
        ):
            raise ValueError(
                f"{where}: shapes do not chain ({weight.shape}, {names[1]}, {inputs} inputs)"
            )
        if not all((np.abs(t) <= _LIMIT).all() for t in (weight, bias) if t is not None):
            raise ValueError(
                f"{where}: a weight is not finite or exceeds this checker's range 2^64"
            )
        if (activation is None) != (index == len(entries) - 1):
            raise ValueError(f"{where}: every layer but the last has an activation, the last none")
        if activation is None:
            layers.append(Layer(weight, bias, None))
            continue
        kind = _get(activation, "kind", f"layers[{index}].activation")
        if kind == "leaky_relu":
            slope = _number(_get(activation, "slope", f"layers[{index}].activation"), "slope")
            if not 0 <= slope <= 1:
                raise ValueError(f"layer {index}: leaky_relu slope {slope!r} is outside [0, 1]")
            truth = (Fraction(slope), Fraction(1))
        elif kind in SLOPES:
            truth = (Fraction(SLOPES[kind][0]), Fraction(SLOPES[kind][1]))
        else:
            raise ValueError(f"layer {index}: activation {kind!r} is not in this checker's family")
        stated = _get(activation, "slopes", f"layers[{index}].activation")
        numbers = (
            [Fraction(_number(s, "slope")) for s in stated] if isinstance(stated, list) else []
        )
        if numbers != list(truth):
            raise ValueError(
                f"layer {index}: {kind} has slopes {[float(t) for t in truth]}, stated {stated!r}"
            )
        layers.append(Layer(weight, bias, kind, truth))
    if sorted(used) != sorted(tensors) or len(set(used)) != len(used):
        unused = sorted(set(tensors) ^ set(used))
        raise ValueError(f"the layers must use every tensor of the weights file once: {unused}")
    return layers


def prove_product(layers: list[Layer], sigmas: object, value: Fraction) -> list[str]:
    """``||f(x) - f(y)||₂ <= Π σ_i Π β_i ||x - y||₂`` (``||W||₂ <= σ`` ⟸ ``σ²I - WᵀW ⪰ 0``, or
    the smaller ``σ²I - WWᵀ``, same nonzero spectrum; each ``φ_i`` is ``β_i``-Lipschitz)."""
    if not isinstance(sigmas, list) or len(sigmas) != len(layers):
        return [f"product: {len(layers)} spectral-norm bounds needed, got {sigmas!r}"]
    reasons, bound = [], Fraction(1)
    for index, (layer, sigma) in enumerate(zip(layers, sigmas, strict=True)):
        s = Fraction(_number(sigma, f"sigmas[{index}]"))
        w = layer.weight if layer.weight.shape[0] <= layer.weight.shape[1] else layer.weight.T
        n = w.shape[0]
        square = psd.scale_rows([s * s] * n, np.eye(n))
        reason = psd.prove_psd(psd.add(square, psd.negate(psd.product(w, psd.exact(w.T)))))
        if s < 0 or reason is not None:
            reasons.append(
                f"product: ||W_{index}||₂ <= {float(s)!r} not proven ({reason or 'negative'})"
            )
        bound *= s * layer.slopes[1]
    if value < bound:
        reasons.append(
            f"product: the stated bound {float(value)!r} < Π σ_i·Π β_i = {float(bound)!r}"
        )
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


def _exact_output(layers: list[Layer], x: list[float]) -> list[Fraction]:
    values = [Fraction(v) for v in x]
    for layer in layers:
        weight = np.array(
            [[Fraction(w) for w in row] for row in layer.weight.tolist()], dtype=object
        )
        values = list(weight @ np.array(values, dtype=object))
        if layer.bias is not None:
            values = [v + Fraction(b) for v, b in zip(values, layer.bias.tolist(), strict=True)]
        if layer.kind is not None:
            low = layer.slopes[0]
            values = [v if v >= 0 else low * v for v in values]  # relu, leaky_relu, identity
    return values


def _point(kind: str, slope: Fraction, value: Any) -> Any:
    """``φ`` of a point interval, enclosed (outward rounding)."""
    if kind == "tanh":
        return 2 / (1 + iv.exp(-2 * value)) - 1
    if kind == "sigmoid":
        return 1 / (1 + iv.exp(-value))
    if value.a >= 0:
        return value
    return value * iv.mpf(slope.numerator) / slope.denominator


def _interval_output(layers: list[Layer], x: list[float]) -> list[Any]:
    values = [iv.mpf(v) for v in x]
    for layer in layers:
        rows = layer.weight.tolist()
        values = [
            sum((iv.mpf(w) * v for w, v in zip(row, values, strict=True)), iv.mpf(0))
            for row in rows
        ]
        if layer.bias is not None:
            values = [v + iv.mpf(b) for v, b in zip(values, layer.bias.tolist(), strict=True)]
        if layer.kind is not None:  # every φ is nondecreasing: φ([a, b]) ⊆ [φ(a), φ(b)]
            slope = layer.slopes[0]
            ends = [
                (_point(layer.kind, slope, iv.mpf(v.a)), _point(layer.kind, slope, iv.mpf(v.b)))
                for v in values
            ]
            values = [iv.mpf([a.a, b.b]) for a, b in ends]
    return values


def _fraction(raw: tuple[int, int, int, int]) -> Fraction:
    sign, mantissa, exponent, _ = raw
    if mantissa == 0 and raw != (0, 0, 0, 0):
        raise ValueError("non-finite interval endpoint")
    return (-1) ** sign * Fraction(mantissa) * Fraction(2) ** exponent


def check_lower(layers: list[Layer], lower: dict[str, Any], upper: Fraction) -> list[str]:
    """``||f(x) - f(y)||₂² >= lower²·||x - y||₂²`` for the stated witnesses, and lower <= upper."""
    value = Fraction(_number(_get(lower, "value", "lower"), "lower.value"))
    size = layers[0].weight.shape[1]
    x, y = (_get(lower, key, "lower") for key in ("x", "y"))
    if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) == size):
        return [f"lower bound: witnesses must hold {size} numbers each"]
    x, y = [_number(v, "witness") for v in x], [_number(v, "witness") for v in y]
    distance = sum(
        ((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(x, y, strict=True)), Fraction(0)
    )
    if all(layer.kind not in ("tanh", "sigmoid") for layer in layers):
        fx, fy = _exact_output(layers, x), _exact_output(layers, y)
        change = sum(((a - b) ** 2 for a, b in zip(fx, fy, strict=True)), Fraction(0))
    else:
        saved, iv.prec = iv.prec, 160
        try:
            ix, iy, change = _interval_output(layers, x), _interval_output(layers, y), Fraction(0)
            for p, q in zip(ix, iy, strict=True):
                low, high = (_fraction(end) for end in (p - q)._mpi_)
                change += 0 if low <= 0 <= high else min(abs(low), abs(high)) ** 2
        finally:
            iv.prec = saved
    reasons = []
    if distance == 0 or change < value * value * distance:
        reasons.append(f"lower bound: the witnesses do not show a ratio >= {float(value)!r}")
    if value > upper:
        reasons.append(f"lower bound {float(value)!r} exceeds the upper bound {float(upper)!r}")
    return reasons


def prove_dp(layers: list[Layer], norms: object, value: Fraction) -> list[str]:
    """The cut/merge bound (Combettes & Pesquet 2020; lipguard's ``compositional`` DP), with
    ``norms[j][i] = σ(i, j) >= ||W_j W_{j-1} ⋯ W_i||₂`` for ``0 <= i <= j <= k``.

    Between ``x`` and ``y`` each neuron of hidden layer ``m`` (after ``W_m``) acts as a factor
    ``d ∈ [α_m, β_m]`` (slope restriction), so ``f(x) - f(y) = W_k D_{k-1} ⋯ D_0 W_0 (x - y)``
    with ``D_m = c_m I + g_m S_m``, ``c = (α + β)/2``, ``g = (β - α)/2``, ``S_m`` diagonal with
    ``|S_m| <= 1``. The ranges are fixed per layer by the activation kind, so ``c_m``, ``g_m`` are
    exact rational *scalars* and no square root of ``Γ`` is ever needed. Expanding the product
    over the set of layers where ``S`` is taken ("cuts"), a term is a product of blocks
    ``(Π_{i<=m<j} c_m) W_j ⋯ W_i`` separated by ``g_m S_m``; its norm is at most
    ``Π blocks (Π c)·σ(i, j) · Π_cuts g_m``. The sum over all cut sets is the programme
    ``G_0 = 1``, ``G_{j+1} = g_j Σ_{i<=j} G_i (Π_{i<=m<j} c_m) σ(i, j)``, bound ``= G_{k+1}``
    without the last ``g``, evaluated in exact rationals. ``||P||₂ <= σ`` is proven by
    ``[[σI, Pᵀ], [P, σI]] ⪰ 0`` (for unit ``v`` and ``u = Pv/||Pv||``, the form at ``(v, -u)`` is
    ``2σ - 2||Pv||``), with ``P`` enclosed (:func:`psd.product`)."""
    depth = len(layers) - 1
    if not isinstance(norms, list) or [
        len(row) if isinstance(row, list) else -1 for row in norms
    ] != list(range(1, depth + 2)):
        return [f"compositional: block norms σ(i, j) for 0 <= i <= j <= {depth} needed"]
    sigma = [[Fraction(_number(s, "block norm")) for s in row] for row in norms]
    if any(s < 0 for row in sigma for s in row):
        return ["compositional: block norms must be >= 0"]
    centre = [(a + b) / 2 for a, b in (layer.slopes for layer in layers)]
    radius = [(b - a) / 2 for a, b in (layer.slopes for layer in layers)]
    reasons, totals, blocks = [], [Fraction(1)], list[Enclosed]()
    for j, layer in enumerate(layers):
        blocks = [psd.product(layer.weight, block) for block in blocks]
        blocks.append(psd.exact(layer.weight))
        total = Fraction(0)
        for i, block in enumerate(blocks):
            s, (m, n) = sigma[j][i], block.value.shape
            grid = [[psd.exact(float(s) * np.eye(n)), Enclosed(block.value.T, block.error.T)]]
            reason = psd.prove_psd(psd.block([*grid, [block, psd.exact(float(s) * np.eye(m))]]))
            if reason is not None:
                reasons.append(f"compositional: ||W_{j}⋯W_{i}||₂ <= {float(s)!r} ({reason})")
            total += totals[i] * math.prod(centre[i:j], start=Fraction(1)) * s
        totals.append(total * (radius[j] if j < depth else 1))
    if value < totals[-1]:
        reasons.append(
            f"compositional: the stated bound {float(value)!r} < the DP's {float(totals[-1])!r}"
        )
    return reasons


def prove_upper(
    layers: list[Layer], section: dict[str, Any], method: str, value: Fraction
) -> list[str]:
    """Reasons the upper bound ``value`` is not proven by ``method`` (empty: proven).
    ``compositional`` is proven by its DP (``block_norms``) or, where lipguard's fast
    LipSDP-style certificate won, by the LipSDP-Neuron matrix (``rho``, ``multipliers``)."""
    try:
        if method == "product":
            return prove_product(layers, _get(section, "sigmas", "checkable"), value)
        if method == "compositional" and "block_norms" in section:
            return prove_dp(layers, section["block_norms"], value)
        if method in ("lipsdp-neuron", "lipsdp-layer", "compositional"):
            given = _get(section, "multipliers", "checkable")
            untied = isinstance(given, list) and any(
                isinstance(t, list) and len(set(t)) > 1 for t in given
            )
            if method == "lipsdp-layer" and untied:
                return ["lipsdp-layer: the multipliers of a layer must be equal"]
            return prove_lipsdp(layers, section, value)
    except CheckInputError as error:  # the proof data of another method, or none
        return [f"{method}: no proof ({error})"]
    methods = "product, lipsdp-neuron, lipsdp-layer, compositional"
    return [f"method {method!r} is not checkable in this milestone ({methods})"]


def check(weights_path: str | Path, certificate_path: str | Path) -> CheckResult:
    """Re-prove the certificate's claims about the network its ``checkable`` section describes
    with the weights in ``weights_path``; raises :class:`CheckInputError` for unreadable input."""
    try:
        data = json.loads(Path(certificate_path).read_text())
    except (OSError, ValueError) as error:
        raise CheckInputError(f"cannot read certificate {certificate_path}: {error}") from error
    upper = _get(data, "upper", "certificate")
    value = Fraction(_number(_get(upper, "value", "upper"), "upper.value"))
    reasons = []
    if _get(data, "claims_sha256", "certificate") != claims_sha256(data):
        reasons.append("claims_sha256 does not match the certificate's fields (edited file)")
    claimed = {key: _get(upper, key, "upper") for key in ("norm", "scope", "sound", "method")}
    if claimed["norm"] != "2":
        reasons.append(f"norm {claimed['norm']!r}: this milestone checks ℓ2 bounds only")
    if claimed["scope"] != "global" or claimed["sound"] is not True:
        scope, sound = claimed["scope"], claimed["sound"]
        reasons.append(f"the bound must be global and sound (scope {scope!r}, sound {sound!r})")
    section = data.get("checkable")
    if not isinstance(section, dict) or section.get("format") != FORMAT:
        return CheckResult(False, [*reasons, f"no {FORMAT} section: nothing to check"])
    tensors, digest = read_safetensors(Path(weights_path))
    if digest != _get(data, "weights_sha256", "certificate"):
        mismatch = f"weights_sha256 mismatch: the file has {digest[:16]}…"
        return CheckResult(False, [*reasons, mismatch])
    try:
        layers = read_layers(section, tensors)
    except ValueError as error:
        if isinstance(error, CheckInputError):
            raise
        return CheckResult(False, [*reasons, f"architecture: {error}"])
    if _get(data, "input_shape", "certificate") != [layers[0].weight.shape[1]]:
        reasons.append(f"input_shape must be [{layers[0].weight.shape[1]}]")
    failed = prove_upper(layers, section, str(claimed["method"]), value)
    lower, confirmed = data.get("lower"), None
    if lower is not None:
        problems = check_lower(layers, lower, value)
        confirmed, reasons = not problems, reasons + problems
    reasons += failed
    return CheckResult(not reasons, reasons, None if failed else float(value), confirmed)
