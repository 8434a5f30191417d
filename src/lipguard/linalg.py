"""Sound linear algebra: certified upper bounds on the spectral norm of a matrix.

Power iteration (what ``torch.nn.utils.parametrizations.spectral_norm`` uses) returns a *lower*
estimate of the largest singular value; a Rayleigh quotient with a small residual only shows that
*some* singular value lies nearby (for ``diag(1, 100)`` started at ``e1`` the residual is zero and
the estimate is 1). An upper bound that holds for every input needs information about the whole
spectrum. :func:`spectral_norm_certificate` gets it in three steps:

1. form the Gram matrix ``G = WᵀW`` (or ``WWᵀ``, whichever is smaller) in float64;
2. estimate ``μ ≈ λ_max(G)`` by a warm-started Lanczos iteration;
3. *prove* ``λ_max(G) <= c`` for a candidate ``c`` slightly above ``μ``, either by Weyl's
   inequality ``λ_max(G) <= μ + ||G - μI||_F`` (tight when ``G`` is close to a multiple of the
   identity, as for orthogonal layers) or by a Cholesky factorisation of ``cI - G``: if it
   completes in floating point, Higham's backward error theorem (Accuracy and Stability of
   Numerical Algorithms, 2nd ed., Thm 10.3, the argument of Rump, BIT 46, 2006) gives
   ``λ_min(cI - G) >= -γ_{k+1}·||R̂||_F²``.

Every rounding error on the way (the Gram product, the diagonal shift, the factorisation, the
final square root) is bounded a priori and added, so ``upper`` is ``>= σ_max(W)`` for the matrix
exactly as stored, not only up to rounding. These margins are about 1e-12 relative; the slack of
the bound (typically 1e-8 to 1e-6) comes from choosing ``c`` a little above ``μ``.

Cost: one Gram product and usually one Cholesky factorisation, ``O(k²·max(m, n))`` with
``k = min(m, n)``. No cheaper sound method exists for an arbitrary dense matrix; what makes
repeated certification cheap is the warm start and, in :mod:`lipguard.nn`, not certifying again
while the weights are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

import torch

from lipguard import _checks
from lipguard.errors import InvalidArgumentError, ShapeError

#: unit roundoff of IEEE float64 (round to nearest)
U64 = 2.0**-53
#: factor on Higham's γ_{k+1}, so that the bound also covers blocked (level-3 BLAS) Cholesky
#: implementations, whose error constants differ from the textbook algorithm's by a small factor
CHOLESKY_SAFETY = 4.0
#: relative slack above the estimate accepted from Weyl's bound without a Cholesky proof
_ACCEPT_SHIFT = 2.0**-20
#: relative spread of the block's Ritz values below which Weyl's bound is tried first
_NEAR_SCALAR = 2.0**-10
#: smallest relative step of the first Cholesky candidate above the estimate
_MIN_STEP = 2.0**-26
#: each failed Cholesky multiplies the step by this; after _LADDER_TRIES, Weyl's bound is used
_STEP_GROWTH = 16.0
_LADDER_TRIES = 8
#: Lanczos stops when the top Ritz value moves, or its residual falls, below this (relative)
_CONVERGED = 1e-7
#: weight of the fixed-seed random component mixed into a warm start
_START_NOISE = 1e-3
#: Gram matrices up to this size get a dense eigensolver instead of Lanczos
_DENSE_EIGENSOLVER = 64
#: Lanczos checks its Ritz values every this many steps
_CHECK_EVERY = 4
#: batched bounds: power-iteration steps that rank a batch, and how many of the top are refined
_POWER_STEPS = 12
_RANK_TOP = 2
#: relative step above the batch's top estimate at which every matrix is first proven
_LEVEL_STEP = 2.0**-22


@overload
def up(value: float) -> float: ...
@overload
def up(value: torch.Tensor) -> torch.Tensor: ...
def up(value: float | torch.Tensor) -> float | torch.Tensor:
    """The next representable number above ``value`` (IEEE 754 ``nextUp``).

    A Python float steps in float64, a tensor in its own dtype, entry by entry. One
    round-to-nearest operation errs by at most half an ulp, so ``up(fl(a ∘ b)) >= a ∘ b``:
    applied to the result of each operation, it turns a computed bound into a proven one.
    """
    if isinstance(value, torch.Tensor):
        return torch.nextafter(value, torch.full_like(value, math.inf))
    return math.nextafter(value, math.inf)


@overload
def down(value: float) -> float: ...
@overload
def down(value: torch.Tensor) -> torch.Tensor: ...
def down(value: float | torch.Tensor) -> float | torch.Tensor:
    """The next representable number below ``value`` (IEEE 754 ``nextDown``): the mirror of
    :func:`up`, for lower bounds (``down(fl(a ∘ b)) <= a ∘ b``)."""
    if isinstance(value, torch.Tensor):
        return torch.nextafter(value, torch.full_like(value, -math.inf))
    return math.nextafter(value, -math.inf)


def mul_up(a: float, b: float) -> float:
    """``a·b`` rounded towards +inf: ``>=`` the exact product of the two floats."""
    return up(a * b)


def gamma(k: int, u: float = U64) -> float:
    """Higham's ``γ_k = k·u / (1 - k·u)``: relative error bound of a length-``k`` dot product."""
    ku = k * u
    if ku >= 0.5:
        raise OverflowError(f"gamma({k}) is not small for unit roundoff {u}")
    return ku / (1.0 - ku)


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff (half the machine epsilon) of a floating-point dtype."""
    return torch.finfo(dtype).eps / 2.0


def cast_margin(dtype: torch.dtype, rank: int) -> float:
    """Relative growth of ``σ_max`` when ``W·s`` is rounded to ``dtype`` entry by entry, for
    results in the normal range (:func:`underflow_margin` adds the subnormal range).

    ``fl(W·fl(s)) = (W·s)∘(1+E) + D`` with ``|E| <= u`` entrywise after the scalar itself was
    rounded (one more ``u``) and ``|D| <=`` :func:`underflow_unit` (zero unless a result is
    subnormal), and ``||A∘E||₂ <= u·||A||_F <= u·√rank·||A||₂``; so the stored product has
    ``σ_max <= s·σ_max(W)·(1 + u·(√rank + 2)) + ||D||_F``.
    """
    return unit_roundoff(dtype) * (math.sqrt(rank) + 2.0)


def underflow_unit(dtype: torch.dtype) -> float:
    """Largest absolute rounding error of one result in the subnormal range of ``dtype``: half
    the smallest subnormal (2⁻²⁵ for float16). Relative error bounds do not hold there."""
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps / 2.0


def underflow_margin(dtype: torch.dtype, entries: int) -> float:
    """An absolute bound on ``||D||_F``, the part of rounding ``entries`` results to ``dtype``
    that relative bounds miss (results in the subnormal range): ``underflow_unit·√entries``."""
    return underflow_unit(dtype) * math.sqrt(entries) * (1.0 + 4.0 * U64)


@dataclass(frozen=True)
class SpectralNormCertificate:
    """A proven upper bound on the largest singular value of one matrix.

    Attributes:
        upper: ``σ_max(W) <= upper`` for the matrix exactly as it was stored, all rounding errors
            of the computation included. Sound.
        lower: ``||W v||₂`` for the unit witness ``right_vector``, computed in float64: a lower
            estimate of ``σ_max`` (exact up to ~1e-15 relative rounding), not a guarantee.
        right_vector: unit vector ``v`` (float64, length ``in``) with ``||W v|| = lower``.
        left_vector: unit vector ``u = W v / ||W v||`` (float64, length ``out``).
        method: ``"zero"``, ``"weyl"`` or ``"cholesky"``: which proof holds.
        margin: relative floating-point margin included in ``upper``.
    """

    upper: float
    lower: float
    right_vector: torch.Tensor
    left_vector: torch.Tensor
    method: str
    margin: float

    @property
    def gap(self) -> float:
        """``upper / lower`` (>= 1): how tight the certificate is."""
        return math.inf if self.lower == 0.0 else self.upper / self.lower


def spectral_norm_certificate(
    weight: torch.Tensor,
    *,
    warm_start: torch.Tensor | None = None,
    max_iterations: int = 200,
) -> SpectralNormCertificate:
    """Prove an upper bound on ``σ_max(weight)``, the spectral norm of a 2-D tensor.

    Args:
        weight: finite floating-point matrix of any dtype and device (read, not changed).
        warm_start: a previous certificate's ``right_vector`` for a matrix of the same shape;
            starting the Lanczos iteration there makes repeated certification during training cheap.
        max_iterations: cap on Lanczos steps. The bound is sound for any value; more steps
            only make it tighter and the proof cheaper.

    Returns:
        A :class:`SpectralNormCertificate` whose ``upper`` is a sound bound.

    Raises:
        NonFiniteError: the matrix holds NaN or infinity.
        ShapeError: the tensor is not 2-D.
    """
    _checks.matrix("weight", weight)
    w = weight.detach().to(torch.float64)
    rows, cols = w.shape
    magnitude = float(weight.detach().abs().max()) if w.numel() else 0.0
    if magnitude == 0.0:
        return _zero_certificate(w)
    # Scale by a power of two (exact) so that no product can overflow or underflow. Entries of
    # float32 (or narrower) matrices are always within range, so only float64 ones may need it.
    scale_exp = 0
    if not 2.0**-400 <= magnitude <= 2.0**400:
        scale_exp = math.frexp(magnitude)[1]
        w = w * 2.0**-scale_exp

    right_side = cols <= rows  # G = WᵀW has the right singular vectors as eigenvectors
    gram = w.T @ w if right_side else w @ w.T
    inner = rows if right_side else cols

    start = None
    if warm_start is not None and warm_start.numel() == cols:
        v0 = warm_start.detach().to(device=w.device, dtype=torch.float64).reshape(-1)
        start = v0 if right_side else w @ v0
    estimate = _top_eigenpair(gram, start, max_iterations)
    proof = _prove_lambda_max(gram, estimate)

    # Rounding of the Gram product: |Ĝ - G| <= γ_inner·|W|ᵀ|W| entrywise, whose spectral norm is
    # <= γ_inner·||W||_F². Each Ĝ_ii is a sum of squares with relative error <= γ_inner, so
    # ||W||_F² <= tr(Ĝ) / ((1 - γ_inner)(1 - γ_k)), the trace being summed in floating point.
    trace = float(gram.diagonal().sum())
    fro2 = trace / ((1.0 - gamma(inner)) * (1.0 - gamma(gram.shape[0])))
    lam = proof.bound + gamma(inner) * fro2
    # Underflow (only possible for float64 entries below 2^-400): each product, sum or
    # factorisation step that underflows errs by at most one subnormal ulp; this term covers
    # every such event with room to spare.
    lam += 16.0 * (rows * cols + gram.numel()) * (gram.shape[0] + 1) * 2.0**-1074
    upper_scaled = math.sqrt(lam) * (1.0 + 8.0 * U64)

    if right_side:
        right = estimate.vector
    else:
        right = w.T @ estimate.vector
        right = right / torch.linalg.vector_norm(right)
    image = w @ right
    lower_scaled = float(torch.linalg.vector_norm(image))
    left = image / lower_scaled if lower_scaled > 0.0 else image
    return SpectralNormCertificate(
        upper=math.ldexp(upper_scaled, scale_exp),
        lower=min(math.ldexp(lower_scaled, scale_exp), math.ldexp(upper_scaled, scale_exp)),
        right_vector=right,
        left_vector=left,
        method=proof.method,
        margin=upper_scaled / math.sqrt(proof.core) - 1.0,
    )


@dataclass(frozen=True)
class _Estimate:
    value: float  # top Ritz value μ (a Rayleigh quotient: <= λ_max up to rounding)
    change: float  # relative error estimate: min(|μ - μ_previous|, Ritz residual) / μ
    spread: float  # (μ - smallest Ritz value) / μ: small when G is nearly a multiple of I
    vector: torch.Tensor  # unit Ritz vector of μ


@dataclass(frozen=True)
class _Proof:
    bound: float  # λ_max(Ĝ) <= bound for the stored float64 Gram matrix Ĝ
    core: float  # the same bound before floating-point margins
    method: str


def _zero_certificate(w: torch.Tensor) -> SpectralNormCertificate:
    right = torch.zeros(w.shape[1], dtype=torch.float64, device=w.device)
    left = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    right[:1] = 1.0
    left[:1] = 1.0
    return SpectralNormCertificate(0.0, 0.0, right, left, "zero", 0.0)


def _top_eigenpair(
    gram: torch.Tensor, start: torch.Tensor | None, max_iterations: int
) -> _Estimate:
    """Estimate the top eigenpair of a symmetric PSD matrix: a dense eigensolver for small
    matrices, Lanczos otherwise."""
    size = gram.shape[0]
    if size <= _DENSE_EIGENSOLVER:
        values, vectors = torch.linalg.eigh(gram)
        mu = float(values[-1])
        spread = (mu - float(values[0])) / mu if mu > 0.0 else math.inf
        return _Estimate(max(mu, 0.0), 0.0, spread, vectors[:, -1])
    return _lanczos(gram, start, min(size, max(1, max_iterations)))


def _lanczos(gram: torch.Tensor, start: torch.Tensor | None, steps: int) -> _Estimate:
    """Lanczos with full reorthogonalisation; the Ritz values are checked every few steps.

    The start vector is the warm start (if any) plus a small random component from a generator
    with a fixed seed, so the run is deterministic and cannot stall in an invariant subspace that
    misses the top eigenvector.
    """
    size, device = gram.shape[0], gram.device
    generator = torch.Generator(device=device).manual_seed(0x11B)
    vector = torch.randn(size, dtype=gram.dtype, device=device, generator=generator)
    vector /= torch.linalg.vector_norm(vector)
    if start is not None and bool(torch.isfinite(start).all()):
        norm = float(torch.linalg.vector_norm(start))
        if norm > 0.0:
            vector = start / norm + _START_NOISE * vector
            vector /= torch.linalg.vector_norm(vector)
    basis = torch.empty(steps, size, dtype=gram.dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    mu, change, spread = 0.0, math.inf, math.inf
    ritz = torch.ones(1, dtype=torch.float64)
    for j in range(steps):
        basis[j] = vector
        image = torch.mv(gram, vector)
        alphas.append(float(torch.dot(vector, image)))
        # Full reorthogonalisation, twice: one classical Gram-Schmidt pass loses orthogonality
        # when β << α (clustered spectra), two passes suffice (Kahan-Parlett).
        active = basis[: j + 1]
        for _ in range(2):
            image = torch.addmv(image, active.T, torch.mv(active, image), alpha=-1.0)
        beta = float(torch.linalg.vector_norm(image))
        exhausted = beta <= 1e-14 * max(abs(a) for a in alphas)
        if not exhausted and (j + 1) % _CHECK_EVERY and j + 1 < steps:
            betas.append(beta)
            vector = image / beta
            continue
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(tridiagonal)
        previous, mu = mu, float(values[-1])
        ritz = vectors[:, -1]
        if mu <= 0.0:
            break
        spread = (mu - float(values[0])) / mu
        # β·|last component of the Ritz vector| is the residual norm of the Ritz pair; an
        # exhausted Krylov space is invariant, so its Ritz values are eigenvalues.
        residual = 0.0 if exhausted else beta * abs(float(ritz[-1])) / mu
        change = min(residual, abs(mu - previous) / mu)
        if change <= _CONVERGED:
            break
        betas.append(beta)
        vector = image / beta
    top = basis[: ritz.numel()].T @ ritz.to(device=device)
    return _Estimate(max(mu, 0.0), change, spread, top / torch.linalg.vector_norm(top))


def _prove_lambda_max(gram: torch.Tensor, estimate: _Estimate) -> _Proof:
    """Prove an upper bound on ``λ_max`` of the symmetric matrix stored in ``gram``'s lower
    triangle (the upper one may differ by rounding and is never read)."""
    mu = estimate.value
    diagonal = gram.diagonal()
    max_diagonal = float(diagonal.max())
    if mu <= 0.0:
        return _weyl(gram, 0.0, max_diagonal)
    if estimate.spread <= _NEAR_SCALAR:
        weyl = _weyl(gram, mu, max_diagonal)
        if weyl.bound <= mu * (1.0 + _ACCEPT_SHIFT):
            return weyl
    # The estimate's remaining error is, heuristically, a small multiple of its last change; the
    # choice of candidate only affects cost and tightness, never soundness.
    step = max(_MIN_STEP, 64.0 * estimate.change)
    for _ in range(_LADDER_TRIES):
        candidate = mu * (1.0 + step)
        shifted = -gram
        shifted.diagonal().add_(candidate)
        smallest = cholesky_certificate(shifted)
        if smallest is not None:
            # Â = fl(candidate·I - Ĝ) differs from candidate·I - Ĝ only by the rounding of its
            # diagonal, <= u·(candidate + max Ĝ_ii).
            diagonal_rounding = U64 * (candidate + max_diagonal)
            bound = (candidate - smallest + diagonal_rounding) * (1.0 + 4.0 * U64)
            return _Proof(bound, candidate, "cholesky")
        step *= _STEP_GROWTH
    return _weyl(gram, mu, max_diagonal)


def cholesky_certificate(matrix: torch.Tensor) -> float | None:
    """Prove that a symmetric matrix is (almost) positive semidefinite, or return ``None``.

    Runs a floating-point Cholesky factorisation of the symmetric matrix stored in ``matrix``'s
    lower triangle (float64; the upper triangle is never read). If it completes, Higham's
    Theorem 10.3 gives ``R̂ᵀR̂ = A + ΔA`` with ``|ΔA| <= γ_{k+1}|R̂ᵀ||R̂|``, so
    ``λ_min(A) >= -γ_{k+1}·||R̂||_F²``, and the diagonal of the same identity gives
    ``||R̂||_F² <= tr(A)/(1 - γ_{k+1})`` (Rump, BIT 46, 2006). ``γ`` is multiplied by
    :data:`CHOLESKY_SAFETY` to cover blocked LAPACK implementations.

    Returns:
        A proven lower bound (<= 0) on ``λ_min`` of the stored matrix, or ``None`` if the
        factorisation breaks down (which proves nothing).
    """
    size = matrix.shape[-1]
    trace = float(matrix.diagonal().abs().sum()) / (1.0 - gamma(size))
    if int(torch.linalg.cholesky_ex(matrix).info) != 0:
        return None
    g = CHOLESKY_SAFETY * gamma(size + 1)
    return -(g * trace / (1.0 - g)) * (1.0 + 4.0 * U64)


def _weyl(gram: torch.Tensor, mu: float, max_diagonal: float) -> _Proof:
    """Weyl: ``λ_max(Ĝ) <= μ + ||Ĝ - μI||₂ <= μ + ||Ĝ - μI||_F``, rounding included.

    Only the lower triangle is read: ``||S||_F² = Σ_i s_ii² + 2·Σ_{i>j} s_ij²``. The diagonal
    shift rounds each entry by <= u relative and the sums of squares by <= γ_{k²}.
    """
    size = gram.shape[0]
    off_diagonal = torch.tril(gram, diagonal=-1)
    shifted_diagonal = gram.diagonal() - mu
    squares = 2.0 * float((off_diagonal * off_diagonal).sum()) + float(
        (shifted_diagonal * shifted_diagonal).sum()
    )
    fro = math.sqrt(squares / (1.0 - gamma(size * size)))
    bound = (mu + fro * (1.0 + 2.0 * U64) + U64 * (max_diagonal + mu)) * (1.0 + 4.0 * U64)
    return _Proof(bound, mu + fro, "weyl")


def max_spectral_norm(matrices: torch.Tensor) -> float:
    """A sound upper bound on ``max_b σ_max(matrices[b])`` over a batch ``(..., m, n)``.

    The batched counterpart of :func:`spectral_norm_certificate` for many small matrices (the
    frequency responses of a convolution, say): float64 Gram matrices, then
    :func:`max_gram_eigenvalue_bound`.
    """
    _checks.finite_tensor("matrices", matrices)
    if matrices.dim() < 2:
        raise ShapeError(f"matrices must have shape (..., m, n), got {tuple(matrices.shape)}")
    a = matrices.detach().to(torch.float64)
    if a.shape[-1] > a.shape[-2]:
        a = a.transpose(-1, -2)
    a = a.reshape(-1, *a.shape[-2:])
    if a.numel() == 0:
        return 0.0
    _check_batch_range(a)
    return max_gram_eigenvalue_bound(a.transpose(-1, -2) @ a, a.shape[-2])


def _check_batch_range(a: torch.Tensor) -> None:
    magnitude = a.abs().amax(dim=(-1, -2))
    if bool((magnitude > 2.0**400).any()) or bool(
        ((magnitude > 0) & (magnitude < 2.0**-400)).any()
    ):
        raise InvalidArgumentError("entries beyond 2^±400 are not supported in batched bounds")


def max_gram_eigenvalue_bound(gram: torch.Tensor, inner: int) -> float:
    """A sound upper bound on ``max_b σ_max(M_b)`` from the float64 Gram matrices
    ``gram[b] = fl(M_bᵀM_b)`` of a batch of ``inner × k`` matrices, each entry computed as one
    dot product of length ``inner`` (so ``|Ĝ - G| <= γ_inner·|M|ᵀ|M|``) from entries within
    ``2^±400``.

    Only the largest eigenvalue over the batch is estimated closely (power iteration ranks the
    matrices, a dense eigensolver refines the top few); every matrix is then proven below that
    level by a batched Cholesky factorisation of ``c·I - Ĝ_b`` (Higham's backward error, as in
    :func:`cholesky_certificate`), and a matrix whose proof fails gets its own estimate and a
    ladder of larger candidates. A matrix never proven counts with its Frobenius norm.
    """
    size = gram.shape[-1]
    diagonal = gram.diagonal(dim1=-2, dim2=-1)
    max_diagonal = diagonal.amax(dim=-1)
    fro2 = diagonal.sum(dim=-1) / ((1 - gamma(inner)) * (1 - gamma(size)))
    estimate = _ranked_estimates(gram)
    level = torch.full_like(estimate, float(estimate.max()))
    bound = _cholesky_ladder(gram, level, max_diagonal, tries=1, step=_LEVEL_STEP)
    failed = torch.isinf(bound)
    if bool(failed.any()):  # underestimated by the ranking: each gets its own estimate
        own = torch.linalg.eigvalsh(gram[failed])[:, -1].clamp_min(0.0)
        retried = _cholesky_ladder(
            gram[failed], own, max_diagonal[failed], _LADDER_TRIES, _MIN_STEP
        )
        bound[failed] = retried
    bound = torch.where(torch.isinf(bound), fro2 * (1 + 4 * U64), bound)
    bound = bound + gamma(inner) * fro2 + (inner * size + size * size) * (size + 1) * 2.0**-1070
    return float((torch.sqrt(bound) * (1 + 8 * U64)).max())


def _ranked_estimates(gram: torch.Tensor) -> torch.Tensor:
    """Estimates of each ``λ_max(gram[b])``: exact (to rounding) for small matrices and for the
    few that power iteration ranks highest, power-iteration values (<= λ_max) for the rest."""
    count, size = gram.shape[0], gram.shape[-1]
    if size <= _DENSE_EIGENSOLVER or count <= _RANK_TOP:
        return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0)
    generator = torch.Generator(device=gram.device).manual_seed(0x11B)
    vector = torch.randn(count, size, 1, dtype=gram.dtype, device=gram.device, generator=generator)
    for _ in range(_POWER_STEPS):
        vector = gram @ vector
        vector = vector / torch.linalg.vector_norm(vector, dim=1, keepdim=True).clamp_min(1e-300)
    estimate = (vector.transpose(1, 2) @ gram @ vector).reshape(count).clamp_min(0.0)
    for index in estimate.topk(_RANK_TOP).indices.tolist():
        refined = _lanczos(gram[index], vector[index, :, 0], min(size, 200))
        estimate[index] = max(refined.value, float(estimate[index]))
    return estimate


def _cholesky_ladder(
    gram: torch.Tensor,
    estimate: torch.Tensor,
    max_diagonal: torch.Tensor,
    tries: int,
    step: float,
) -> torch.Tensor:
    """Proven ``λ_max(gram[b]) <= bound[b]`` (``inf`` where no candidate was proven): candidates
    ``estimate·(1 + step)`` with a step growing by :data:`_STEP_GROWTH` per try."""
    cols = gram.shape[-1]
    g = CHOLESKY_SAFETY * gamma(cols + 1)
    steps = torch.full_like(estimate, step)
    bound = torch.full_like(estimate, math.inf)
    for _ in range(tries):
        pending = torch.isinf(bound)
        if not bool(pending.any()):
            break
        candidate = torch.where(estimate > 0, estimate * (1 + steps), max_diagonal)
        shifted = -gram
        shifted.diagonal(dim1=-2, dim2=-1).add_(candidate.unsqueeze(-1))
        trace = shifted.diagonal(dim1=-2, dim2=-1).abs().sum(dim=-1) / (1 - gamma(cols))
        proven = torch.linalg.cholesky_ex(shifted).info == 0
        value = candidate + g * trace / (1 - g) * (1 + 4 * U64) + U64 * (candidate + max_diagonal)
        bound = torch.where(pending & proven, value * (1 + 4 * U64), bound)
        steps = steps * _STEP_GROWTH
    return bound


def prove_psd(matrix: torch.Tensor, perturbation: float = 0.0) -> bool:
    """Prove that every symmetric ``A*`` with ``||A* - matrix||₂ <= perturbation`` is PSD.

    ``matrix`` is a float64 symmetric matrix (its lower triangle is read). The proof shifts it
    down by ``τ`` (twice the sum of the perturbation, Cholesky's backward error and the shift's
    own rounding), runs :func:`cholesky_certificate` and checks that the proven
    ``λ_min(matrix) >= τ + λ_min(shifted) - rounding`` still exceeds the perturbation. ``False``
    proves nothing (the matrix may still be PSD, but not with a provable margin).
    """
    size = matrix.shape[-1]
    diagonal = matrix.diagonal().abs()
    largest = float(diagonal.max()) if size else 0.0
    g = CHOLESKY_SAFETY * gamma(size + 1)
    backward = g * float(diagonal.sum()) / ((1 - gamma(size)) * (1 - g))
    tau = 2.0 * (perturbation + backward + 2 * U64 * largest) + 2.0**-1000
    shifted = matrix.clone()
    shifted.diagonal().sub_(tau)
    smallest = cholesky_certificate(shifted)
    if smallest is None:
        return False
    # the stored shift differs from matrix - τI by <= u·(|m_ii| + τ) on the diagonal
    margin = (tau + smallest - U64 * (largest + tau)) * (1 - 4 * U64)
    return margin >= perturbation
