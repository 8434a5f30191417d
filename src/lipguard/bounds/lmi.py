"""LipSDP certificates (Fazlyab et al., NeurIPS 2019), made sound in floating point.

For ``f(x) = W_L φ(⋯ φ(W_0 x))`` whose neuron ``j`` of hidden layer ``k`` is slope-restricted in
``[α_kj, β_kj]``, write ``P_k = diag(α∘β)``, ``S_k = diag(α + β)``. If non-negative diagonal
multipliers ``T_k`` and ``ρ`` make the symmetric block-tridiagonal matrix ``-M`` positive
semidefinite, where (``x_0`` the input, ``x_k`` the outputs of hidden layer ``k``)

    -M[x_0, x_0] = ρI + 2 W_0ᵀ P_1 T_1 W_0          -M[x_{k-1}, x_k] = -W_{k-1}ᵀ S_k T_k
    -M[x_k, x_k] = 2T_k + 2 W_kᵀ P_{k+1} T_{k+1} W_k     -M[x_L, x_L] = 2T_L - W_Lᵀ W_L,

then ``||f(x) - f(y)||₂ <= √ρ·||x - y||₂`` (LipSDP-Neuron; a scalar per layer is LipSDP-Layer).

This module provides

- :func:`rho_for_multipliers`: for given ``T`` the least feasible ``ρ``, by eliminating the hidden
  blocks from the output backwards (Schur complements), differentiable — ``ρ(T)`` is convex in
  ``T`` because the matrix inequality is jointly convex in ``(ρ, T)``;
- :func:`initial_multipliers` (a feasible closed-form start) and :func:`refine_multipliers`
  (gradient descent on ``ρ(T)`` with backtracking), the *compositional* method;
- :func:`verify`: the proof. It rebuilds ``-M`` for the exact network in
  :class:`~lipguard.bounds.enclosure.Enclosure` arithmetic (every product's rounding bounded)
  and proves it PSD with :func:`lipguard.linalg.prove_psd`, trying slightly larger ``ρ`` until
  the proof goes through. Whatever produced ``T`` — a closed form, gradient descent, an
  interior-point solver at its tolerance — only this step decides the bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from lipguard.bounds.enclosure import Enclosure
from lipguard.bounds.network import Network
from lipguard.linalg import U64, prove_psd, up

Slopes = list[tuple[torch.Tensor, torch.Tensor]]
#: relative increases of ρ tried by :func:`verify`
_RHO_LADDER = (2.0**-40, 2.0**-30, 2.0**-20, 2.0**-13, 2.0**-8, 2.0**-4)


@dataclass(frozen=True)
class LipSDPProof:
    """A verified certificate: ``||f(x) - f(y)|| <= value·||x - y||`` with ``value = √ρ``."""

    value: float
    rho: float
    multipliers: tuple[torch.Tensor, ...]


def has_linear_neurons(slopes: Slopes) -> bool:
    """True when some hidden neuron has a single slope (identity neurons from the GroupSort
    expansion): LipSDP's constraint for them is exact only as its multiplier tends to infinity,
    so the matrix inequality has no attained optimum; such networks use the other methods."""
    return any(bool((alpha == beta).any()) for alpha, beta in slopes)


def global_slopes(network: Network) -> Slopes:
    """Each hidden neuron's global slope range."""
    return [layer.slope_bounds() for layer in network.hidden]


def _input_root(network: Network) -> torch.Tensor:
    """``R`` with ``RᵀR``-equivalent spectrum to the input block: ``W_0`` when it has at most as
    many columns as rows, else ``G^{1/2}`` for ``G = W_0 W_0ᵀ`` (so ``λ_max(W_0ᵀKW_0) =
    λ_max(RᵀKR)`` uses the smaller matrix)."""
    w0 = network.weights[0].value
    if w0.shape[1] <= w0.shape[0]:
        return w0
    values, vectors = torch.linalg.eigh(w0 @ w0.T)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def rho_for_multipliers(
    network: Network,
    slopes: Slopes,
    multipliers: list[torch.Tensor],
    root: torch.Tensor | None = None,
    temperature: float | None = None,
) -> torch.Tensor:
    """The least ``ρ`` making ``-M(ρ, T) ⪰ 0`` (float64 estimate, differentiable in ``T``);
    ``inf`` when no ``ρ`` works for these multipliers. With a ``temperature`` τ, the smooth
    upper approximation ``τ·log Σ_i exp(λ_i/τ)`` of that largest eigenvalue instead."""
    weights = [w.value for w in network.weights]
    depth = len(network.hidden)
    infinite = torch.tensor(math.inf, dtype=torch.float64)
    schur = torch.diag(2 * multipliers[-1]) - weights[-1].T @ weights[-1]
    for k in range(depth - 1, 0, -1):  # eliminate hidden layer k+1 (0-based k), reach layer k
        factor, info = torch.linalg.cholesky_ex(schur)
        if int(info):
            return infinite
        alpha, beta = slopes[k]
        coupling = weights[k].T * ((alpha + beta) * multipliers[k])
        solved = torch.cholesky_solve(coupling.T, factor)
        quadratic = weights[k].T @ ((2 * alpha * beta * multipliers[k])[:, None] * weights[k])
        schur = torch.diag(2 * multipliers[k - 1]) + quadratic - coupling @ solved
    factor, info = torch.linalg.cholesky_ex(schur)
    if int(info):
        return infinite
    alpha, beta = slopes[0]
    scale = (alpha + beta) * multipliers[0]
    kernel = scale[:, None] * torch.cholesky_solve(torch.diag(scale), factor)
    kernel = kernel - torch.diag(2 * alpha * beta * multipliers[0])
    root = _input_root(network) if root is None else root
    inner = root.T @ kernel @ root
    values = torch.linalg.eigvalsh((inner + inner.T) / 2)
    if temperature is not None:
        return temperature * torch.logsumexp(values / temperature, 0)
    return values[-1].clamp_min(0.0)


def initial_multipliers(network: Network, slopes: Slopes) -> list[torch.Tensor]:
    """A feasible start: one scalar per layer, chosen from the output backwards so that every
    Schur complement is at least that scalar times the identity."""
    weights = [w.value for w in network.weights]
    depth = len(network.hidden)
    multipliers: list[torch.Tensor] = [torch.empty(0)] * depth
    gram = weights[-1].T @ weights[-1]
    scale = max(float(torch.linalg.eigvalsh(gram)[-1]), 1e-12)
    multipliers[-1] = torch.full((network.hidden[-1].size,), scale, dtype=torch.float64)
    schur = 2 * scale * torch.eye(gram.shape[0], dtype=torch.float64) - gram
    for k in range(depth - 1, 0, -1):
        alpha, beta = slopes[k]
        coupling = weights[k].T * ((alpha + beta) * multipliers[k])
        quadratic = weights[k].T @ ((2 * alpha * beta * multipliers[k])[:, None] * weights[k])
        pressure = coupling @ torch.linalg.solve(schur, coupling.T) - quadratic
        top = float(torch.linalg.eigvalsh((pressure + pressure.T) / 2)[-1])
        scale = max(top, 1e-9 * max(float(pressure.abs().max()), 1.0))
        multipliers[k - 1] = torch.full((network.hidden[k - 1].size,), scale, dtype=torch.float64)
        schur = 2 * scale * torch.eye(pressure.shape[0], dtype=torch.float64) - pressure
    return multipliers


def refine_multipliers(
    network: Network,
    slopes: Slopes,
    multipliers: list[torch.Tensor],
    *,
    iterations: int = 300,
    seconds: float = 1.0,
    tied: bool = False,
    smooth: bool = True,
) -> list[torch.Tensor]:
    """Decrease ``ρ(T)`` by first-order descent on ``log T`` (LipDiff's eigenvalue optimisation):
    Adam on the smooth ``τ·log Σ exp(λ_i/τ)`` of the eigenvalues whose largest is ``ρ``, ``τ``
    shrinking as it goes, an infeasible step undone with a smaller rate. Returns the multipliers
    of the smallest ``ρ`` seen; stops after ``iterations``, ``seconds`` or when that stalls.
    ``tied``: one multiplier per layer (LipSDP-Layer; each layer's first value is its start).
    ``smooth=False``: backtracking gradient steps on ``ρ(T)`` itself instead (per neuron), which
    gain more in a budget of a few iterations and stall sooner."""
    with torch.enable_grad():  # callers may be inside torch.no_grad()
        if not smooth:
            return _backtracking_descent(network, slopes, multipliers, iterations, seconds)
        return _descend(network, slopes, multipliers, iterations, seconds, tied)


#: Adam's rate on log T, the first temperature relative to ρ and its floor, how often τ shrinks
#: (by _COOLING), and how many steps without a relative gain of _PROGRESS stop the descent
_RATE = 0.05
_FIRST_TEMPERATURE = 1e-2
_LAST_TEMPERATURE = 1e-5
_COOLING_EVERY, _COOLING = 50, 0.7
_PATIENCE = 200
_PROGRESS = 1e-7


def _descend(
    network: Network,
    slopes: Slopes,
    multipliers: list[torch.Tensor],
    iterations: int,
    seconds: float,
    tied: bool,
) -> list[torch.Tensor]:
    started = time.perf_counter()
    root = _input_root(network)
    best_value = float(rho_for_multipliers(network, slopes, multipliers, root))
    if not math.isfinite(best_value):
        return multipliers
    best = [m.clone() for m in multipliers]
    sizes = [m.numel() for m in multipliers]
    starts = [m[:1] for m in multipliers] if tied else multipliers
    logs = [torch.log(m.clamp_min(1e-300)).clone().requires_grad_(True) for m in starts]
    optimizer = torch.optim.Adam(logs, lr=_RATE)
    temperature = max(best_value, 1e-300) * _FIRST_TEMPERATURE
    saved, since_best = [m.detach().clone() for m in logs], 0
    for step in range(iterations):
        if time.perf_counter() - started > seconds or since_best > _PATIENCE:
            break
        current = [m.exp().expand(size) for m, size in zip(logs, sizes, strict=True)]
        smooth = rho_for_multipliers(network, slopes, current, root, temperature)
        if not bool(torch.isfinite(smooth)):  # left the feasible set: undo, smaller steps
            with torch.no_grad():
                for m, s in zip(logs, saved, strict=True):
                    m.copy_(s)
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
            continue
        value = float(rho_for_multipliers(network, slopes, [c.detach() for c in current], root))
        since_best += 1
        if value < best_value:
            if value < best_value * (1 - _PROGRESS):
                since_best = 0
            best_value, best = value, [c.detach().clone() for c in current]
        saved = [m.detach().clone() for m in logs]
        optimizer.zero_grad()
        smooth.backward()
        optimizer.step()
        if step % _COOLING_EVERY == _COOLING_EVERY - 1:
            temperature = max(temperature * _COOLING, best_value * _LAST_TEMPERATURE)
    return best


def _backtracking_descent(
    network: Network,
    slopes: Slopes,
    multipliers: list[torch.Tensor],
    iterations: int,
    seconds: float,
) -> list[torch.Tensor]:
    """Normalised gradient steps on ``ρ(T)`` itself with a growing step, halved until ``ρ``
    decreases: big moves in a few iterations (it stalls where eigenvalues cross)."""
    root = _input_root(network)
    logs = [torch.log(m.clamp_min(1e-300)).clone().requires_grad_(True) for m in multipliers]
    best = rho_for_multipliers(network, slopes, [m.exp() for m in logs], root)
    if not torch.isfinite(best):
        return multipliers
    step, started = 0.5, time.perf_counter()
    for _ in range(iterations):
        if time.perf_counter() - started > seconds:
            break
        gradients = torch.autograd.grad(best, logs)
        norm = math.sqrt(sum(float((g * g).sum()) for g in gradients)) or 1.0
        while step > 1e-6 and time.perf_counter() - started <= seconds:
            trial = [
                (m - step * g / norm).detach().requires_grad_(True)
                for m, g in zip(logs, gradients, strict=True)
            ]
            value = rho_for_multipliers(network, slopes, [m.exp() for m in trial], root)
            if torch.isfinite(value) and float(value.detach()) < float(best.detach()) * (1 - 1e-12):
                logs, best = trial, value
                step *= 1.5
                break
            step *= 0.5
        else:
            break
    return [m.detach().exp() for m in logs]


def lipsdp_matrix(
    network: Network,
    slopes: Slopes,
    multipliers: list[torch.Tensor],
    rho: float,
    *,
    eliminate_input: bool = False,
) -> Enclosure:
    """``-M(ρ, T)`` for the exact network, as a float64 matrix with an entrywise rounding bound.

    With ``eliminate_input`` (allowed when every first-layer neuron has ``α·β = 0``, so the input
    block is exactly ``ρI``), the input is removed by the exact Schur complement
    ``[[ρI, B], [Bᵀ, D]] ⪰ 0 ⟺ D - BᵀB/ρ ⪰ 0``: the matrix covers the hidden layers only and
    ``BᵀB = S_1T_1 (W_0W_0ᵀ) T_1S_1`` needs no inverse.
    """
    weights = list(network.weights)
    sizes = [network.input_size] + [layer.size for layer in network.hidden]
    first = 1 if eliminate_input else 0
    offsets = [0]
    for size in sizes[first:]:
        offsets.append(offsets[-1] + size)
    value = torch.zeros(offsets[-1], offsets[-1], dtype=torch.float64)
    error = torch.zeros_like(value)

    def place(row: int, column: int, block: Enclosure) -> None:
        rows = slice(offsets[row - first], offsets[row - first + 1])
        columns = slice(offsets[column - first], offsets[column - first + 1])
        value[rows, columns] += block.value
        error[rows, columns] += block.abs_error()
        if row != column:
            value[columns, rows] += block.value.T
            error[columns, rows] += block.abs_error().T

    depth = len(network.hidden)
    for k in range(first, depth + 1):  # the block of x_k
        if k < depth:
            alpha, beta = slopes[k]
            t = multipliers[k]
            quadratic = 2 * alpha * beta * t
            if bool((quadratic != 0).any()):
                # 2·α·β·t is a product of three floats: relative error <= 3u
                scaled = weights[k].T.scale_columns(quadratic, relative_error=3 * U64)
                place(k, k, scaled.matmul(weights[k]))
            place(k, k + 1, weights[k].T.scale_columns(-(alpha + beta) * t, relative_error=2 * U64))
        if k == 0:
            place(0, 0, Enclosure(rho * torch.eye(sizes[0], dtype=torch.float64)))
        else:
            place(k, k, Enclosure(torch.diag(2 * multipliers[k - 1])))
    if eliminate_input:
        alpha, beta = slopes[0]
        coupling = weights[0].T.scale_columns(
            (alpha + beta) * multipliers[0], relative_error=2 * U64
        )
        squared = coupling.T.matmul(coupling)  # BᵀB
        place(
            1,
            1,
            Enclosure(
                -squared.value / rho, squared.abs_error() / rho + U64 * squared.value.abs() / rho
            ),
        )
    last = weights[-1].T.matmul(weights[-1])
    place(depth, depth, Enclosure(-last.value, last.error))
    # each entry received at most two additions, each rounding by <= u·|result|
    error += 4 * U64 * value.abs()
    return Enclosure(value, error)


def verify(
    network: Network, slopes: Slopes, multipliers: list[torch.Tensor], rho: float
) -> LipSDPProof | None:
    """Prove a Lipschitz bound ``√ρ'`` with ``ρ' >= ρ`` for these multipliers, or ``None``."""
    clean = [m.detach().to(torch.float64).clamp_min(0.0) for m in multipliers]
    if not math.isfinite(rho) or rho < 0:
        return None
    eliminate = bool((slopes[0][0] * slopes[0][1] == 0).all()) if network.hidden else False
    for step in _RHO_LADDER:
        candidate = max(rho, 1e-300) * (1 + step)
        matrix = lipsdp_matrix(network, slopes, clean, candidate, eliminate_input=eliminate)
        if prove_psd(matrix.value, matrix.frobenius_error()):
            bound = up(math.sqrt(candidate) * (1 + 2 * U64))
            return LipSDPProof(bound, candidate, tuple(clean))
    return None


def feasible(
    network: Network, slopes: Slopes, multipliers: list[torch.Tensor]
) -> tuple[list[torch.Tensor], float] | None:
    """Nudge multipliers from a solver (which may sit just outside the feasible set) until
    ``ρ(T)`` is finite; returns them with that ``ρ``."""
    base = [m.detach().to(torch.float64).clamp_min(0.0) for m in multipliers]
    largest = max(float(m.max()) for m in base) if base else 1.0
    for nudge in (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        trial = [m + nudge * largest for m in base]
        rho = float(rho_for_multipliers(network, slopes, trial))
        if math.isfinite(rho):
            return trial, rho
    return None
