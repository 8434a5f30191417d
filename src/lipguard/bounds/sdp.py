"""LipSDP solved as a semidefinite program.

The matrix inequality of :mod:`lipguard.bounds.lmi` is affine in ``x = (ρ, t)``:
``F(x) = -M = C + ρ·F_ρ + Σ_j t_j F_j ⪰ 0``, where the multiplier of neuron ``j`` enters through
``F_j = 2·e eᵀ - s_j(e wᵀ + w eᵀ) + 2 p_j·w wᵀ`` (``e`` its own coordinate, ``w`` its weight row in
the previous block, ``s = α + β``, ``p = αβ``): a rank-two matrix. LipSDP-Layer ties the
multipliers of a layer together. When the input is wider than the first hidden layer it is
compressed exactly: ``f`` depends on ``x`` only through ``W_0 x``, so restricting ``x = W_0ᵀy``
(the row space) replaces ``I`` by ``G = W_0 W_0ᵀ`` and ``W_0`` by ``G``.

Solvers (all results are then *proven* by :func:`lipguard.bounds.lmi.verify`; none is trusted):

- ``"barrier"`` (default): a primal log-barrier path-following method written for this
  structure. Its Newton system needs ``tr(Z F_i Z F_j)`` with ``Z = F⁻¹``, which the rank-two
  ``F_j`` reduce to ``Uᵀ Z U`` for the ``n × 2m`` matrix ``U`` of their factors: ``O(n²m)`` per
  step instead of the dense ``O(n⁶)`` cone scaling of generic conic solvers.
- ``"clarabel"``: the sparse constraint matrix in Clarabel's packed PSD format (exact, but
  generic: about 40 s on the MNIST fixture).
- ``"scs"``: the same data for SCS (first-order; a fallback).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

from lipguard.bounds.lmi import (
    Slopes,
    initial_multipliers,
    refine_multipliers,
    rho_for_multipliers,
)
from lipguard.bounds.network import Network
from lipguard.errors import InvalidArgumentError, SolverError

SOLVERS = ("barrier", "clarabel", "scs")
#: first-order descent stops at its time budget, when it stalls or after this many steps
_DESCENT_STEPS = 100_000
#: shares of the time budget: the barrier's, and a polish's after a finished barrier
_BARRIER_SHARE = 0.25
_POLISH_SHARE = 0.05


@dataclass(frozen=True)
class _Problem:
    """``F(x) = C + ρ F_ρ + Σ t_j F_j`` in terms of its pieces (float64, n × n)."""

    size: int
    input_block: torch.Tensor  # F_ρ restricted to the first d_in coordinates
    constant: torch.Tensor  # C (dense n × n)
    own: torch.Tensor  # (m,) index of each neuron's coordinate
    rows: torch.Tensor  # (m, n): each neuron's weight row placed in the previous block
    s: torch.Tensor  # (m,) α + β
    p: torch.Tensor  # (m,) α β
    groups: torch.Tensor  # (m,) index of the variable that holds each neuron's multiplier
    variables: int  # number of multiplier variables


def _problem(network: Network, slopes: Slopes, variant: str) -> _Problem:
    weights = [w.value for w in network.weights]
    w0 = weights[0]
    compress = w0.shape[1] > w0.shape[0]
    first = w0 @ w0.T if compress else w0
    input_block = first if compress else torch.eye(w0.shape[1], dtype=torch.float64)
    hidden = [layer.size for layer in network.hidden]
    offsets = np.cumsum([0, input_block.shape[0], *hidden]).tolist()
    size = offsets[-1]
    own, s, p, groups, rows = [], [], [], [], []
    variable = 0
    for k, width in enumerate(hidden):
        alpha, beta = slopes[k]
        previous = first if k == 0 else weights[k]
        block = torch.zeros(width, size, dtype=torch.float64)
        block[:, offsets[k] : offsets[k + 1]] = previous
        rows.append(block)
        own.append(torch.arange(offsets[k + 1], offsets[k + 2]))
        s.append(alpha + beta)
        p.append(alpha * beta)
        if variant == "neuron":
            groups.append(torch.arange(variable, variable + width))
            variable += width
        else:
            groups.append(torch.full((width,), variable))
            variable += 1
    constant = torch.zeros(size, size, dtype=torch.float64)
    constant[offsets[-2] :, offsets[-2] :] = -(weights[-1].T @ weights[-1])
    return _Problem(
        size,
        input_block,
        constant,
        torch.cat(own),
        torch.cat(rows),
        torch.cat(s),
        torch.cat(p),
        torch.cat(groups),
        variable,
    )


def solve_lipsdp(
    network: Network,
    slopes: Slopes,
    *,
    variant: str = "neuron",
    solver: str = "barrier",
    seconds: float = 10.0,
) -> tuple[list[torch.Tensor], float]:
    """Solve LipSDP-Neuron (``variant="neuron"``) or -Layer; returns ``(multipliers, ρ)``, the
    multipliers as one per-neuron vector per hidden layer.

    With the ``"barrier"`` solver, ``seconds`` is a time budget. The barrier method gets a quarter
    of it; if it finishes (small networks), a short first-order descent polishes its point.
    Otherwise (wide networks, where its Newton systems are ill-conditioned) first-order descent on
    ``ρ(T)`` — LipDiff's eigenvalue optimisation, tied per layer for LipSDP-Layer — runs from the
    closed-form multipliers and then from the barrier's point. The smallest ``ρ`` wins."""
    if variant not in ("neuron", "layer"):
        raise InvalidArgumentError(f"variant must be 'neuron' or 'layer', got {variant!r}")
    if solver not in SOLVERS:
        raise InvalidArgumentError(f"solver must be one of {SOLVERS}, got {solver!r}")
    problem = _problem(network, slopes, variant)
    sizes = [layer.size for layer in network.hidden]
    if solver != "barrier":
        rho, values = _conic(problem, solver)
        return list(values[problem.groups].split(sizes)), rho
    started = time.perf_counter()
    tied = variant == "layer"

    def left() -> float:
        return max(seconds - (time.perf_counter() - started), 0.0)

    def descend(multipliers: list[torch.Tensor], budget: float) -> list[torch.Tensor]:
        return refine_multipliers(
            network, slopes, multipliers, iterations=_DESCENT_STEPS, seconds=budget, tied=tied
        )

    _, values, finished = _barrier(
        problem, network, slopes, deadline=started + _BARRIER_SHARE * seconds
    )
    barrier = list(values[problem.groups].split(sizes))
    candidates = [barrier]
    if finished:  # converged (or stalled) within its share: a short polish is enough
        candidates.append(descend(barrier, min(left(), _POLISH_SHARE * seconds)))
    else:  # a wide network: descent from the closed-form start, then polish the barrier's point
        start = initial_multipliers(network, slopes)  # one value per layer: both variants
        candidates.append(descend(start, 0.8 * left()))
        candidates.append(descend(barrier, max(left(), _POLISH_SHARE * seconds)))
    rhos = [float(rho_for_multipliers(network, slopes, c)) for c in candidates]
    rhos = [value if math.isfinite(value) else math.inf for value in rhos]
    best = min(range(len(candidates)), key=rhos.__getitem__)
    return candidates[best], rhos[best]


def _matrix(problem: _Problem, rho: float, t: torch.Tensor) -> torch.Tensor:
    """``F(ρ, t)`` as a dense matrix."""
    neurons = t[problem.groups]
    f = problem.constant.clone()
    d = problem.input_block.shape[0]
    f[:d, :d] += rho * problem.input_block
    f += problem.rows.T @ ((2 * problem.p * neurons)[:, None] * problem.rows)
    cross = problem.rows.T * (problem.s * neurons)  # n × m: -s_j t_j w_j in column own_j
    f[:, problem.own] -= cross
    f[problem.own, :] -= cross.T
    f[problem.own, problem.own] += 2 * neurons
    return f


def _barrier(
    problem: _Problem, network: Network, slopes: Slopes, deadline: float = math.inf
) -> tuple[float, torch.Tensor, bool]:
    """Minimise ρ subject to F(ρ, t) ⪰ 0, t >= 0 by a primal log-barrier path-following method:
    Newton steps on ``ρ/μ - log det F - Σ log t`` for decreasing ``μ``, until ``deadline``
    (``time.perf_counter()``); every iterate is strictly feasible. Returns ``(ρ, t, finished)``,
    ``finished`` False when the deadline cut it short."""
    start = initial_multipliers(network, slopes)  # one value per layer: valid for both variants
    t = torch.empty(problem.variables, dtype=torch.float64)
    t[problem.groups] = torch.cat(start)
    sizes = [layer.size for layer in network.hidden]
    rho = 2.0 * float(rho_for_multipliers(network, slopes, list(t[problem.groups].split(sizes))))
    rho += 1e-12
    barrier_weight = problem.size + problem.variables
    mu = rho / barrier_weight
    aggregate = torch.zeros(problem.groups.numel(), problem.variables, dtype=torch.float64)
    aggregate[torch.arange(problem.groups.numel()), problem.groups] = 1.0
    for _ in range(60):  # outer iterations: μ shrinks 5x each
        for _ in range(50):  # damped Newton steps at fixed μ
            if time.perf_counter() > deadline:
                return rho, t, False
            gradient, hessian = _newton_system(problem, rho, t, mu, aggregate)
            step = _newton_step(hessian, gradient)
            if step is None:
                return rho, t, True
            decrement = float(-(gradient @ step))  # λ², λ the Newton decrement
            # damped Newton (Nesterov): for a self-concordant barrier a step of 1/(1 + λ)
            # decreases it and stays feasible; full steps once λ < 1/4 (quadratic convergence)
            damping = 1.0 if decrement < 1 / 16 else 1.0 / (1.0 + math.sqrt(decrement))
            for halvings in range(40):  # rounding can still push it out: halve if needed
                length = damping * 0.5**halvings
                new_rho, new_t = rho + length * float(step[0]), t + length * step[1:]
                if _barrier_value(problem, new_rho, new_t, mu) < math.inf:
                    break
            else:
                return rho, t, True  # no feasible progress left in float64
            rho, t = new_rho, new_t
            if decrement < 1e-9:
                break
        if mu * barrier_weight < 1e-10 * max(rho, 1e-300):
            break
        mu /= 5.0
    return rho, t, True


def _newton_step(hessian: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor | None:
    """Solve ``H·step = -g`` after scaling ``H`` to unit diagonal (the multipliers of different
    layers can differ by many orders of magnitude). ``None`` when rounding has made the system
    meaningless — ``H`` not positive definite, which it is in exact arithmetic: the iterate is
    then as accurate as float64 allows near the boundary of the feasible set."""
    diagonal = hessian.diagonal()
    if not bool(torch.isfinite(hessian).all() and torch.isfinite(gradient).all()) or bool(
        (diagonal <= 0).any()
    ):
        return None
    scale = diagonal.rsqrt()
    factor, info = torch.linalg.cholesky_ex(scale[:, None] * hessian * scale[None, :])
    if int(info):
        return None
    step = scale * torch.cholesky_solve((-scale * gradient)[:, None], factor)[:, 0]
    return step if bool(torch.isfinite(step).all()) else None


def _barrier_value(problem: _Problem, rho: float, t: torch.Tensor, mu: float) -> float:
    """``ρ/μ - log det F(ρ, t) - Σ log t``, or ``inf`` outside the strictly feasible set."""
    if not bool((t > 0).all()):
        return math.inf
    factor, info = torch.linalg.cholesky_ex(_matrix(problem, rho, t))
    if int(info):
        return math.inf
    log_det = 2.0 * float(torch.log(factor.diagonal()).sum())
    return rho / mu - log_det - float(torch.log(t).sum())


def _newton_system(
    problem: _Problem, rho: float, t: torch.Tensor, mu: float, aggregate: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hessian of ``ρ/μ - log det F(x) - Σ log t`` in ``x = (ρ, t)``."""
    f = _matrix(problem, rho, t)
    factor, info = torch.linalg.cholesky_ex(f)
    if int(info):
        raise SolverError("the barrier iterate left the feasible set (numerical breakdown)")
    z = torch.cholesky_inverse(factor)
    m = problem.own.numel()
    # U = [e_j, w_j] per neuron, D_j = [[2, -s_j], [-s_j, 2 p_j]]
    zu_e = z[:, problem.own]  # Z e_j
    zu_w = z @ problem.rows.T  # Z w_j
    q_ee = zu_e[problem.own, :]  # e_iᵀ Z e_j
    q_ew = zu_w[problem.own, :]  # e_iᵀ Z w_j
    q_ww = problem.rows @ zu_w  # w_iᵀ Z w_j
    two = torch.full((m,), 2.0, dtype=torch.float64)
    d = torch.stack(
        [torch.stack([two, -problem.s], -1), torch.stack([-problem.s, 2 * problem.p], -1)], -2
    )
    q = torch.stack(
        [torch.stack([q_ee, q_ew], -1), torch.stack([q_ew.T, q_ww], -1)], -2
    )  # (m, m, 2, 2): q[i, j] = U_iᵀ Z U_j
    x = torch.einsum("iab,ijbc->ijac", d, q)  # D_i U_iᵀ Z U_j
    h_tt = torch.einsum("ijac,jica->ij", x, x)  # tr(D_i Q_ij D_j Q_ji)
    g_t = torch.einsum("iiaa->i", x)  # tr(Z F_i)
    # ρ: F_ρ = E B Eᵀ on the input block
    size_in = problem.input_block.shape[0]
    b = problem.input_block
    z_in = z[:, :size_in]  # Z E
    zb = z_in[:size_in] @ b
    h_rr = float((zb * zb.T).sum())  # tr(Z_00 B Z_00 B)
    g_r = float(zb.diagonal().sum())
    r_e = z_in[problem.own]  # e_jᵀ Z E   (m × d_in)
    r_w = problem.rows @ z_in  # w_jᵀ Z E   (m × d_in)
    s_ee = ((r_e @ b) * r_e).sum(-1)
    s_ew = ((r_e @ b) * r_w).sum(-1)
    s_ww = ((r_w @ b) * r_w).sum(-1)
    h_rt = 2 * s_ee - 2 * problem.s * s_ew + 2 * problem.p * s_ww  # tr(D_j U_jᵀ Z F_ρ Z U_j)
    neurons_grad = -g_t
    neurons_hess = h_tt
    grad_t = aggregate.T @ neurons_grad - 1.0 / t
    hess_t = aggregate.T @ neurons_hess @ aggregate + torch.diag(1.0 / t**2)
    grad = torch.cat([torch.tensor([1.0 / mu - g_r], dtype=torch.float64), grad_t])
    hess = torch.zeros(problem.variables + 1, problem.variables + 1, dtype=torch.float64)
    hess[0, 0] = h_rr
    hess[0, 1:] = hess[1:, 0] = aggregate.T @ h_rt
    hess[1:, 1:] = hess_t
    return grad, hess


def _conic(problem: _Problem, solver: str) -> tuple[float, torch.Tensor]:
    """Pass the problem to Clarabel or SCS as sparse conic data."""
    n = problem.size
    columns = [_lower_entries(_embed(problem.input_block, n))]
    for variable in range(problem.variables):
        unit = torch.zeros(problem.variables, dtype=torch.float64)
        unit[variable] = 1.0
        columns.append(_lower_entries(_matrix(problem, 0.0, unit) - problem.constant))
    count = len(columns)
    a_psd = _packed(columns, n)
    b_psd = _packed([_lower_entries(problem.constant)], n).toarray()[:, 0]
    a = sparse.vstack([-a_psd, -sparse.identity(count, format="csc")]).tocsc()
    b = np.concatenate([b_psd, np.zeros(count)])
    q = np.zeros(count)
    q[0] = 1.0
    x = _clarabel(q, a, b, n, count) if solver == "clarabel" else _scs(q, a, b, n, count)
    return float(x[0]), torch.tensor(x[1:], dtype=torch.float64)


def _embed(block: torch.Tensor, size: int) -> torch.Tensor:
    full = torch.zeros(size, size, dtype=torch.float64)
    full[: block.shape[0], : block.shape[1]] = block
    return full


def _lower_entries(matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lower = np.tril(matrix.numpy())
    rows, cols = np.nonzero(lower)
    return rows, cols, lower[rows, cols]


def _packed(
    columns: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int
) -> sparse.csc_matrix:
    """Clarabel's packing: the upper triangle by columns (= the lower by rows), off-diagonal
    entries scaled by √2."""
    data, row_index, col_index = [], [], []
    for number, (rows, cols, values) in enumerate(columns):
        position = rows * (rows + 1) // 2 + cols
        data.append(values * np.where(rows == cols, 1.0, math.sqrt(2.0)))
        row_index.append(position)
        col_index.append(np.full(position.shape, number))
    return sparse.csc_matrix(
        (np.concatenate(data), (np.concatenate(row_index), np.concatenate(col_index))),
        shape=(size * (size + 1) // 2, len(columns)),
    )


def _clarabel(
    q: np.ndarray, a: sparse.csc_matrix, b: np.ndarray, size: int, count: int
) -> np.ndarray:
    import clarabel  # ships no type information

    cones = [clarabel.PSDTriangleConeT(size), clarabel.NonnegativeConeT(count)]
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    result = clarabel.DefaultSolver(
        sparse.csc_matrix((count, count)), q, a, b, cones, settings
    ).solve()
    if str(result.status) not in ("Solved", "AlmostSolved"):
        raise SolverError(f"Clarabel returned {result.status}")
    return np.asarray(result.x)


def _scs(q: np.ndarray, a: sparse.csc_matrix, b: np.ndarray, size: int, count: int) -> np.ndarray:
    try:
        import scs  # ships no type information
    except ImportError:
        raise SolverError("SCS is not installed (pip install scs)") from None
    # SCS packs the lower triangle by columns and wants the non-negative rows first.
    length = size * (size + 1) // 2
    rows, cols = np.tril_indices(size)
    position = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(rows, cols, strict=True))}
    order = np.asarray([position[(r, c)] for c in range(size) for r in range(c, size)])
    data = {
        "A": sparse.vstack([a[length:], a[:length][order]]).tocsc(),
        "b": np.concatenate([b[length:], b[:length][order]]),
        "c": q,
    }
    result = scs.SCS(
        data, {"l": count, "s": [size]}, verbose=False, eps_abs=1e-9, eps_rel=1e-9
    ).solve()
    if not str(result["info"]["status"]).startswith("solved"):
        raise SolverError(f"SCS returned {result['info']['status']}")
    return np.asarray(result["x"])
