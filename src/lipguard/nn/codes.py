"""Error-correcting output codes with certificates (SPEC I4).

A classifier with ``classes`` outputs is replaced by ``bits`` binary classifiers, one per column
of a codeword matrix :class:`OutputCode` (a class per row); a prediction is the codeword nearest
to the received bits (Dietterich & Bakiri 1995). Conventions used throughout:

- bit ``1`` is sign ``+1`` and bit ``0`` is sign ``-1``; a score ``s_j`` gives bit ``s_j > 0``
  (a score of exactly 0 is bit 0);
- decoding ties go to the **lowest class index** (hard and soft decoding alike).

Three certificates say when the decision cannot change:

- :func:`certified_flips`: the number of received bits that may be flipped, arbitrarily;
- :func:`certified_blocks`: the number of feature blocks that may be corrupted, arbitrarily,
  when every bit reads one block of a partition of the features (:class:`BlockHeads`);
- :meth:`CodedClassifier.certified_radius`: an ℓ2 radius, from sound Lipschitz bounds on the
  bit scores.

All three are exact for the model they state: the worst case is computed, not bounded.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipguard import _checks
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.linalg import down, gamma, up
from lipguard.results import LipschitzBound

#: how :class:`CodedClassifier` decodes its scores
Decoding = Literal["hard", "soft"]
DECODINGS: tuple[Decoding, ...] = get_args(Decoding)
#: :func:`lexicode` enumerates all ``2**bits`` words, so ``bits`` is capped here
LEXICODE_MAX_BITS = 16

MatrixLike = torch.Tensor | np.ndarray | Sequence[Sequence[int]]


def _as_bits(name: str, matrix: MatrixLike) -> torch.Tensor:
    """``matrix`` as an int64 {0,1} tensor; accepts {0,1}, ±1 and booleans."""
    try:
        tensor = torch.as_tensor(matrix).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidArgumentError(f"{name} must be a matrix of bits, got {matrix!r}") from error
    if tensor.dtype == torch.bool:
        return tensor.long()
    _checks.finite_tensor(name, tensor)
    values = set(torch.unique(tensor).tolist())
    if not (values <= {0, 1} or values <= {-1, 1}):
        raise InvalidArgumentError(
            f"{name} must hold {{0, 1}} or {{-1, +1}} entries, got values {sorted(values)[:5]}"
        )
    return (tensor > 0).long()


@dataclass(frozen=True, eq=False)
class OutputCode:
    """A binary code: one codeword (row) per class, one bit (column) per binary classifier.

    ``codewords`` may hold {0,1}, ±1 (``-1`` ↦ bit 0) or booleans; rows must be distinct. The
    minimum Hamming distance ``distance`` is computed exactly over all pairs of rows; nearest
    codeword decoding corrects any ``(distance - 1) // 2`` bit errors.

    Attributes:
        codewords: int64 {0,1} tensor ``(classes, bits)`` (a private copy).
        distance: the exact minimum Hamming distance between two codewords.
    """

    codewords: torch.Tensor
    distance: int = field(init=False)

    def __post_init__(self) -> None:
        words = _as_bits("codewords", self.codewords).clone()
        if words.dim() != 2 or words.shape[0] < 2 or words.shape[1] < 1:
            raise ShapeError(
                f"codewords must be (classes >= 2, bits >= 1), got {tuple(words.shape)}"
            )
        pairwise = hamming_matrix(words, words)
        pairwise.fill_diagonal_(words.shape[1] + 1)
        same = (pairwise == 0).nonzero()
        if len(same):
            first, second = same[0].tolist()
            raise InvalidArgumentError(f"codewords of classes {first} and {second} are equal")
        object.__setattr__(self, "codewords", words)
        object.__setattr__(self, "distance", int(pairwise.min()))

    @property
    def classes(self) -> int:
        """Number of codewords."""
        return int(self.codewords.shape[0])

    @property
    def bits(self) -> int:
        """Codeword length."""
        return int(self.codewords.shape[1])

    @property
    def correctable(self) -> int:
        """``(distance - 1) // 2``: bit errors that nearest codeword decoding always corrects."""
        return (self.distance - 1) // 2

    def signs(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The codewords as ±1 (``classes, bits``)."""
        return (2 * self.codewords - 1).to(dtype)

    def __repr__(self) -> str:
        return f"OutputCode(classes={self.classes}, bits={self.bits}, distance={self.distance})"


def hamming_matrix(received: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """Hamming distances ``(N, K)`` between {0,1} rows of ``received`` and of ``codewords``."""
    return (received[:, None, :] != codewords[None, :, :]).sum(-1)


def _sylvester_bits(order: int) -> torch.Tensor:
    """The Sylvester–Hadamard matrix ``H_{2^order}`` as bits: ``H[i, j] = (-1)^{popcount(i & j)}``,
    bit 1 where the entry is ``+1``."""
    index = torch.arange(2**order)
    parity = torch.zeros(2**order, 2**order, dtype=torch.long)
    for bit in range(order):
        parity ^= ((index[:, None] >> bit) & (index[None, :] >> bit)) & 1
    return 1 - parity


def hadamard_code(
    classes: int, bits: int | None = None, *, complements: bool = False
) -> OutputCode:
    """The first ``classes`` rows of the Sylvester–Hadamard matrix of order ``bits = 2^k``.

    Any two rows of ``H_{2^k}`` differ in exactly ``2^(k-1)`` positions, and so does a row and
    the complement of another; a row and its own complement differ everywhere. So the code has
    distance ``2^(k-1)`` and holds up to ``2^k`` classes (``2^(k+1)`` with ``complements``: the
    rows followed by their complements). Column 0 of ``H`` is constant (all ``+1``): that bit
    carries no information, and is kept so the length is ``2^k``.

    Args:
        classes: number of codewords (>= 2).
        bits: a power of two >= 2; by default the smallest one with enough rows.
        complements: also use the complemented rows.
    """
    classes = _checks.positive_int("classes", classes)
    if classes < 2:
        raise InvalidArgumentError(f"a code needs classes >= 2, got {classes}")
    per_order = 2 if complements else 1
    if bits is None:
        order = max(1, math.ceil(math.log2(math.ceil(classes / per_order))))
    else:
        bits = _checks.positive_int("bits", bits)
        if bits < 2 or bits & (bits - 1):
            raise InvalidArgumentError(
                f"Hadamard codes have a power-of-two length >= 2, got {bits}"
            )
        order = bits.bit_length() - 1
    rows = _sylvester_bits(order)
    if complements:
        rows = torch.cat([rows, 1 - rows])
    if classes > len(rows):
        raise InvalidArgumentError(
            f"{classes} classes need more than the {len(rows)} codewords of a Hadamard code of "
            f"length {2**order}"
        )
    return OutputCode(rows[:classes])


def _popcount_table(bits: int) -> torch.Tensor:
    table = torch.zeros(2**bits, dtype=torch.long)
    for bit in range(bits):
        table[1 << bit : 2 << bit] = table[: 1 << bit] + 1
    return table


def _greedy_words(bits: int, distance: int, limit: int, popcount: torch.Tensor) -> list[int]:
    """Words ``0, 1, …, 2^bits - 1`` taken in order when they are at distance ``>= distance``
    from all words taken before (at most ``limit``)."""
    words = torch.arange(2**bits)
    alive = torch.ones(2**bits, dtype=torch.bool)
    chosen: list[int] = []
    while len(chosen) < limit and bool(alive.any()):
        word = int(alive.nonzero()[0])
        chosen.append(word)
        alive &= popcount[words ^ word] >= distance
    return chosen


def lexicode(classes: int, bits: int, distance: int | None = None) -> OutputCode:
    """A greedy lexicographic code (Conway & Sloane 1986): the words of length ``bits`` in
    increasing order, each kept when it is at distance ``>= distance`` from all kept before.

    Lexicodes are linear and often optimal — length 7 and distance 3 give the Hamming code
    (16 words), length 8 and distance 4 the extended Hamming code, length 24 and distance 8
    the Golay code. Without ``distance``, the largest distance that still yields ``classes``
    words is used. The first codeword is all zeros. ``bits`` is at most
    :data:`LEXICODE_MAX_BITS` (every word is enumerated).
    """
    classes = _checks.positive_int("classes", classes)
    bits = _checks.positive_int("bits", bits)
    if classes < 2:
        raise InvalidArgumentError(f"a code needs classes >= 2, got {classes}")
    if bits > LEXICODE_MAX_BITS:
        raise InvalidArgumentError(f"lexicode enumerates 2^bits words: bits <= 16, got {bits}")
    if classes > 2**bits:
        raise InvalidArgumentError(f"{classes} classes need more than the 2^{bits} words")
    popcount = _popcount_table(bits)
    targets = (
        range(bits, 0, -1) if distance is None else [_checks.positive_int("distance", distance)]
    )
    for target in targets:
        words = _greedy_words(bits, target, classes, popcount)
        if len(words) == classes:
            shifts = torch.arange(bits - 1, -1, -1)
            return OutputCode((torch.tensor(words)[:, None] >> shifts) & 1)
    raise InvalidArgumentError(
        f"the lexicode of length {bits} and distance {distance} has fewer than {classes} words"
    )


def random_code(classes: int, bits: int, *, tries: int = 100, seed: int = 0) -> OutputCode:
    """The code of largest minimum distance among ``tries`` uniformly random ``classes × bits``
    matrices (the first such one; reproducible from ``seed``), its distance measured exactly.

    Random codes are the classic ECOC baseline (Dietterich & Bakiri 1995; Allwein et al. 2000);
    the distance is whatever the search found, never promised in advance.
    """
    classes = _checks.positive_int("classes", classes)
    bits = _checks.positive_int("bits", bits)
    tries = _checks.positive_int("tries", tries)
    if classes < 2:
        raise InvalidArgumentError(f"a code needs classes >= 2, got {classes}")
    if bits < 63 and classes > 2**bits:
        raise InvalidArgumentError(f"{classes} classes need more than the 2^{bits} words")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, 2, (tries, classes, bits), generator=generator)
    pairwise = (draws[:, :, None, :] != draws[:, None, :, :]).sum(-1)
    pairwise += torch.eye(classes, dtype=torch.long) * (bits + 1)
    distances = pairwise.flatten(1).min(1).values
    best = int(distances.argmax())
    if int(distances[best]) == 0:
        raise InvalidArgumentError(
            f"no draw of {classes} distinct words of length {bits} in {tries} tries; "
            "raise bits or tries"
        )
    return OutputCode(draws[best])


def _check_code(code: OutputCode) -> OutputCode:
    if not isinstance(code, OutputCode):
        raise InvalidArgumentError(f"code must be an OutputCode, got {type(code).__name__}")
    return code


def _check_received(code: OutputCode, received: torch.Tensor) -> torch.Tensor:
    if not isinstance(received, torch.Tensor):
        raise InvalidArgumentError(f"bits must be a torch.Tensor, got {type(received).__name__}")
    if received.dim() != 2 or received.shape[1] != _check_code(code).bits:
        raise ShapeError(f"bits must be (N, {code.bits}), got {tuple(received.shape)}")
    return _as_bits("bits", received).to(received.device)


def _check_scores(code: OutputCode, scores: torch.Tensor) -> torch.Tensor:
    _checks.finite_tensor("scores", scores)
    if scores.dim() != 2 or scores.shape[1] != _check_code(code).bits:
        raise ShapeError(f"scores must be (N, {code.bits}), got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise InvalidArgumentError(f"scores must have a floating-point dtype, got {scores.dtype}")
    return scores


def _first_min(values: torch.Tensor) -> torch.Tensor:
    """Per row, the lowest column index holding the row's minimum (the tie-break rule)."""
    index = torch.arange(values.shape[1], device=values.device).expand_as(values)
    lowest = values.min(1, keepdim=True).values
    return torch.where(values == lowest, index, values.shape[1]).min(1).values


def hard_bits(scores: torch.Tensor) -> torch.Tensor:
    """Bits ``s > 0`` (int64) of scores ``(N, bits)``."""
    return (scores > 0).long()


def decode_hard(code: OutputCode, bits: torch.Tensor) -> torch.Tensor:
    """Nearest codeword in Hamming distance of received bits ``(N, bits)``; a tie goes to the
    lowest class index."""
    received = _check_received(code, bits)
    return _first_min(hamming_matrix(received, code.codewords.to(received.device)))


def decode_soft(code: OutputCode, scores: torch.Tensor) -> torch.Tensor:
    """Nearest ±1 codeword in ℓ2 of real scores ``(N, bits)``, i.e. the largest correlation
    ``⟨s, c_k⟩`` (all codewords have norm ``√bits``, so ``‖s - c_k‖² = ‖s‖² - 2⟨s, c_k⟩ +
    bits``); computed in float64, a tie goes to the lowest class index."""
    scores = _check_scores(code, scores).detach().double()
    return _first_min(-(scores @ code.signs().to(scores.device).T))


def _attack_sets(code: OutputCode, received: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """``A[n, k, j]``: bit ``j`` of input ``n`` agrees with the decoded codeword and not with
    codeword ``k`` — the only flips that move the word towards ``k`` (each by 2 in the gap)."""
    words = code.codewords.to(received.device)
    own = words[decoded]
    return (received == own)[:, None, :] & (received[:, None, :] != words[None, :, :])


def _needed_flips(distances: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """``u[n, k]``: fewest flips (all in the attack set) that make class ``k`` win over the
    decoded one: the gap ``g = d_k - d_ŷ`` must fall below 0, or to 0 when ``k < ŷ`` (ties go
    to the lowest index); ``u = ⌊(g - [k < ŷ]) / 2⌋ + 1``. The decoded column holds a value
    larger than any count (``bits + 1``)."""
    gap = distances - distances.gather(1, decoded[:, None])
    classes = torch.arange(distances.shape[1], device=distances.device)
    lower = (classes[None, :] < decoded[:, None]).long()
    needed = torch.div(gap - lower, 2, rounding_mode="floor") + 1
    return needed.scatter(1, decoded[:, None], distances.new_full((len(decoded), 1), 2**62))


def _flip_analysis(code: OutputCode, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The needed flips ``(N, K)`` and attack sets ``(N, K, bits)`` of received words."""
    received = _check_received(code, bits)
    distances = hamming_matrix(received, code.codewords.to(received.device))
    decoded = _first_min(distances)
    return _needed_flips(distances, decoded), _attack_sets(code, received, decoded)


def certified_flips(code: OutputCode, bits: torch.Tensor) -> torch.Tensor:
    """Per received word ``(N, bits)``, the largest ``t`` such that flipping any ``t`` or fewer
    of its bits leaves :func:`decode_hard` unchanged (int64 ``(N,)``).

    With ``r`` the distance to the decoded codeword and ``r_k`` to codeword ``k``, a flip moves
    the gap ``r_k - r`` by at most 2, so ``t = min_k ⌊(r_k - r - [k < ŷ]) / 2⌋`` (ties go to the
    lowest index). The certificate is exact: some ``t + 1`` flips change the decision. For a
    codeword it is at least ``(distance - 1) // 2``.
    """
    needed, _sets = _flip_analysis(code, bits)
    return needed.min(1).values - 1


def _check_groups(code: OutputCode, groups: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    if groups is None:
        return torch.arange(code.bits)
    tensor = torch.as_tensor(groups).detach().cpu()
    if tensor.shape != (code.bits,) or tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ShapeError(f"groups must be {code.bits} integer block indices, one per bit")
    if len(tensor) and int(tensor.min()) < 0:
        raise InvalidArgumentError("groups must be block indices >= 0")
    return tensor.long()


def certified_blocks(
    code: OutputCode, bits: torch.Tensor, groups: Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Per received word ``(N, bits)``, the largest number of feature blocks whose corruption
    cannot change :func:`decode_hard` (int64 ``(N,)``).

    Assumption (not checked here; :class:`BlockHeads` guarantees it by construction): the input
    features are partitioned into blocks and bit ``j`` is a function of block ``groups[j]``
    only, so corrupting a set of blocks — to any values — can flip exactly the bits that read
    them and no other. ``groups=None`` means one block per bit, where the answer equals
    :func:`certified_flips`. The worst case is exact: against each class, the adversary
    corrupts the blocks holding the most useful bits (a sorted cumulative count).
    """
    block = _check_groups(code, groups).to(bits.device)
    needed, sets = _flip_analysis(code, bits)
    per_block = sets.double() @ F.one_hot(block).double()  # exact: integer counts
    reachable = per_block.sort(-1, descending=True).values.cumsum(-1)
    surviving = (reachable < needed[..., None]).sum(-1)
    return surviving.min(1).values


def _bound_value(lipschitz: float | LipschitzBound) -> float:
    if isinstance(lipschitz, LipschitzBound):
        if not lipschitz.sound or lipschitz.norm != 2.0:
            raise InvalidArgumentError(f"certificates need a sound ℓ2 bound, got {lipschitz}")
        return _checks.positive_float("lipschitz", lipschitz.value)
    return _checks.positive_float("lipschitz", lipschitz)


def _smallest_sum(values: torch.Tensor, allowed: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``[n, k]``: the sum of the ``count[n, k]`` smallest ``values[n, j]`` with
    ``allowed[n, k, j]`` (``+inf`` where fewer are allowed)."""
    masked = torch.where(allowed, values[:, None, :], math.inf).sort(-1).values
    sums = torch.cat([masked.new_zeros(*masked.shape[:2], 1), masked.cumsum(-1)], -1)
    return sums.gather(-1, count.clamp(0, masked.shape[-1])[..., None])[..., 0]


class CodedClassifier(nn.Module):
    """A classifier that decodes the bit scores ``s = network(x)`` with an :class:`OutputCode`,
    with an ℓ2 certified radius from Lipschitz bounds on the scores.

    ``forward`` returns the scores ``(N, bits)``; :meth:`predict` decodes them (``"hard"``:
    Hamming on ``s > 0``; ``"soft"``: correlation with the ±1 codewords). Bounds (at least
    one, or neither to have :func:`lipguard.bounds.lipschitz_bound` prove one at each
    :meth:`certified_radius` call):

    - ``lipschitz``: ``L`` with ``‖s(x+δ) - s(x)‖₂ <= L‖δ‖₂`` for the score vector. Using it for
      each bit is sound, since ``|s_j(x+δ) - s_j(x)| <= ‖s(x+δ) - s(x)‖₂``; the certificate uses
      the stronger joint form (flipping a set ``S`` of bits needs ``L‖δ‖ >= ‖s_S‖₂``).
    - ``bit_lipschitz``: ``L_j`` with ``|s_j(x+δ) - s_j(x)| <= L_j‖δ‖₂`` per bit; often much
      tighter (e.g. :meth:`BlockHeads.bit_lipschitz`).

    With both, the larger of the two radii is returned (each is sound). The bounds are taken
    as given: a claimed, unproven constant gives an unproven radius.
    """

    def __init__(
        self,
        network: nn.Module,
        code: OutputCode,
        lipschitz: float | LipschitzBound | None = None,
        *,
        bit_lipschitz: Sequence[float] | torch.Tensor | None = None,
        decoding: Decoding = "hard",
    ) -> None:
        super().__init__()
        if decoding not in DECODINGS:
            raise InvalidArgumentError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        self.network = network
        self.code = _check_code(code)
        self.decoding = decoding
        self.lipschitz = None if lipschitz is None else _bound_value(lipschitz)
        self.bit_lipschitz = None if bit_lipschitz is None else self._per_bit(bit_lipschitz)

    def _per_bit(self, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
        if tensor.shape != (self.code.bits,):
            raise ShapeError(f"bit_lipschitz must hold {self.code.bits} values, one per bit")
        _checks.finite_tensor("bit_lipschitz", tensor)
        if bool((tensor <= 0).any()):
            raise InvalidArgumentError("bit_lipschitz values must be > 0")
        return tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bit scores ``(N, bits)``."""
        scores: torch.Tensor = self.network(x)
        if scores.dim() != 2 or scores.shape[1] != self.code.bits:
            raise ShapeError(
                f"the network must return scores (N, {self.code.bits}), got {tuple(scores.shape)}"
            )
        return scores

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The decoded classes ``(N,)`` (the network in eval mode)."""
        with _checks.evaluating(self):
            return self.decode(self(x))

    def decode(self, scores: torch.Tensor) -> torch.Tensor:
        """Decode scores with this classifier's rule (ties: lowest class index)."""
        if self.decoding == "soft":
            return decode_soft(self.code, scores)
        return decode_hard(self.code, hard_bits(_check_scores(self.code, scores)))

    @torch.no_grad()
    def certified_radius(self, x: torch.Tensor) -> torch.Tensor:
        """Per input, ``R`` (float64 ``(N,)``) such that ``predict(x + δ) == predict(x)`` for
        every ``‖δ‖₂ < R``, under the stated Lipschitz bounds (exact arithmetic of the decoder;
        radii are rounded down). ``R = 0`` where a score is 0 or a decoding tie is at stake.

        Hard decoding: class ``k`` wins only once at least ``u_k`` bits of its attack set flip
        (:func:`certified_flips`), and bit ``j`` flips only when ``|s_j(x+δ) - s_j(x)| >=
        |s_j(x)|``; ``R`` is the least ℓ2 cost of such a set of flips, over all ``k``: the
        ``u_k``-th smallest ``|s_j|/L_j`` (per-bit bounds) or the root sum of the ``u_k``
        smallest ``s_j²`` over ``L`` (joint bound). Soft decoding: the correlation margin
        ``⟨s, c_ŷ - c_k⟩`` over its Lipschitz constant, ``2√d_k·L`` or ``2·Σ_{j: c_ŷj≠c_kj} L_j``.
        """
        with _checks.evaluating(self):
            scores = _check_scores(self.code, self(x)).detach().double()
        joint, per_bit = self.lipschitz, self.bit_lipschitz
        if joint is None and per_bit is None:
            from lipguard.bounds import lipschitz_bound

            joint = _bound_value(lipschitz_bound(self.network, 2, input_shape=tuple(x.shape[1:])))
        radius = scores.new_zeros(len(scores))
        if self.decoding == "soft":
            margins, costs = self._soft_margins(scores)
            if joint is not None:
                radius = torch.maximum(radius, _quotient_down(margins, costs.sqrt() * 2 * joint))
            if per_bit is not None:
                radius = torch.maximum(radius, self._soft_per_bit(margins, scores, per_bit))
            return radius
        needed, sets = _flip_analysis(self.code, hard_bits(scores))
        needed = torch.where(needed > self.code.bits, self.code.bits + 1, needed)
        if joint is not None:
            squares = _smallest_sum(scores.square(), sets, needed).min(1).values
            lower = squares.sqrt() * (1 - gamma(self.code.bits + 2))
            radius = torch.maximum(radius, _quotient_down(lower, torch.full_like(lower, joint)))
        if per_bit is not None:
            ratios = down(scores.abs() / up(per_bit.to(scores.device)))
            radius = torch.maximum(radius, _kth_smallest(ratios, sets, needed).min(1).values)
        return radius

    def _soft_margins(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower bounds on the margins ``⟨s, c_ŷ - c_k⟩`` ``(N, K)`` (the decoded column
        ``+inf``) and the distances ``d_k`` to the decoded codeword."""
        signs = self.code.signs().to(scores.device)
        decoded = decode_soft(self.code, scores)
        difference = signs[decoded][:, None, :] - signs[None, :, :]
        terms = scores[:, None, :] * difference
        error = gamma(self.code.bits) * terms.abs().sum(-1)
        margins = (terms.sum(-1) - error).clamp_min(0.0)
        margins = margins.scatter(1, decoded[:, None], math.inf)
        return margins, (difference != 0).sum(-1).double()

    def _soft_per_bit(
        self, margins: torch.Tensor, scores: torch.Tensor, per_bit: torch.Tensor
    ) -> torch.Tensor:
        signs = self.code.signs().to(scores.device)
        decoded = decode_soft(self.code, scores)
        differ = (signs[decoded][:, None, :] != signs[None, :, :]).double()
        costs = up(2 * (differ @ per_bit.to(scores.device)) * (1 + gamma(self.code.bits)))
        return _quotient_down(margins, costs).min(1).values


def _quotient_down(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` rounded down; for ``(N, K)`` the minimum over classes (the
    decoded class holds ``inf`` and is never the minimum)."""
    quotient = down(numerator / denominator)
    return quotient.min(1).values if quotient.dim() == 2 else quotient


def _kth_smallest(values: torch.Tensor, allowed: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """``[n, k]``: the ``rank[n, k]``-th smallest ``values[n, j]`` with ``allowed[n, k, j]``
    (``+inf`` past the end)."""
    masked = torch.where(allowed, values[:, None, :], math.inf).sort(-1).values
    padded = torch.cat([masked, masked.new_full((*masked.shape[:2], 1), math.inf)], -1)
    return padded.gather(-1, (rank - 1).clamp(0, masked.shape[-1])[..., None])[..., 0]


class BlockHeads(nn.Module):
    """Linear bit classifiers, each reading one block of a partition of the input features:
    ``s_j(x) = w_j · x[blocks[j]] + b_j``.

    Blocks of different bits are disjoint or identical (a block may feed several bits); bit
    ``j`` reads its block and nothing else (gathered, not masked), which is the assumption of
    :func:`certified_blocks` — :attr:`groups` is its argument. :meth:`bit_lipschitz` gives the
    exact per-bit ℓ2 constants ``‖w_j‖₂`` (rounded up) for :class:`CodedClassifier`.
    """

    index: torch.Tensor
    mask: torch.Tensor

    def __init__(
        self,
        in_features: int,
        blocks: Sequence[Sequence[int]],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = _checks.positive_int("in_features", in_features)
        lists = [tuple(int(i) for i in block) for block in blocks]
        if not lists or any(not block for block in lists):
            raise InvalidArgumentError("blocks must be a non-empty list of non-empty blocks")
        distinct = list(dict.fromkeys(lists))
        seen = set(itertools.chain.from_iterable(distinct))
        if sum(len(set(block)) for block in distinct) != len(seen) or any(
            len(set(block)) != len(block) for block in distinct
        ):
            raise InvalidArgumentError("blocks must be disjoint (or identical), without repeats")
        if min(seen) < 0 or max(seen) >= in_features:
            raise InvalidArgumentError(f"block indices must lie in [0, {in_features})")
        width = max(len(block) for block in lists)
        index = torch.full((len(lists), width), in_features, dtype=torch.long)
        for row, block in enumerate(lists):
            index[row, : len(block)] = torch.tensor(block)
        self.register_buffer("index", index.to(device))
        self.register_buffer("mask", (index < in_features).to(device=device, dtype=dtype))
        self.groups = torch.tensor([distinct.index(block) for block in lists])
        self.weight = nn.Parameter(torch.zeros(len(lists), width, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(len(lists), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, bits)`` of inputs ``(N, in_features)``."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ShapeError(f"inputs must be (N, {self.in_features}), got {tuple(x.shape)}")
        padded = torch.cat([x, x.new_zeros(len(x), 1)], 1)
        gathered = padded[:, self.index]  # (N, bits, width); padding reads the constant 0
        return (gathered * (self.weight * self.mask)).sum(-1) + self.bias

    @torch.no_grad()
    def bit_lipschitz(self) -> torch.Tensor:
        """``‖w_j‖₂`` per bit (float64, rounded up): the exact ℓ2 Lipschitz constant of
        ``s_j``, with a relative margin ``γ_width`` for the rounding of its evaluation."""
        weight = (self.weight * self.mask).detach().double()
        norms = weight.square().sum(-1).sqrt() * (1 + gamma(weight.shape[1] + 2))
        return up(norms).cpu()


def fit_bits(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    code: OutputCode,
    *,
    epochs: int = 300,
    lr: float = 0.05,
) -> float:
    """Train ``model`` (inputs → scores ``(N, bits)``) with full-batch Adam on the mean binary
    cross-entropy of every bit against the codeword of the label; returns the final loss."""
    _check_code(code)
    _checks.finite_tensor("x", x)
    if y.shape != (len(x),) or y.is_floating_point():
        raise ShapeError(f"y must hold {len(x)} integer labels, got {tuple(y.shape)}")
    if len(y) == 0 or int(y.min()) < 0 or int(y.max()) >= code.classes:
        raise InvalidArgumentError(f"labels must lie in [0, {code.classes}) and not be empty")
    epochs = _checks.positive_int("epochs", epochs)
    targets = code.codewords.to(device=x.device)[y].to(x.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=_checks.positive_float("lr", lr))
    loss = torch.zeros(())
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x), targets)
        loss.backward()
        optimizer.step()
    return float(loss.detach())
