"""Error-correcting output codes and their certificates (SPEC I4).

Oracles: exhaustive pairwise distances, exhaustive flip and block-corruption enumeration
against a brute-force NumPy decoder, and attacks within the certified ℓ2 radius.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lipguard.attacks import PGD, CustomObjective, ThreatModel
from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.nn import LipschitzMLP
from lipguard.nn.codes import (
    BlockHeads,
    CodedClassifier,
    OutputCode,
    certified_blocks,
    certified_flips,
    decode_hard,
    decode_soft,
    fit_bits,
    hadamard_code,
    lexicode,
    random_code,
)


def brute_distance(words: np.ndarray) -> int:
    return min(int((a != b).sum()) for a, b in itertools.combinations(words, 2))


def brute_decode(words: np.ndarray, received: np.ndarray) -> np.ndarray:
    """Nearest codeword per row of ``received``; ``argmin`` returns the first (lowest) index."""
    return (received[..., None, :] != words).sum(-1).argmin(-1)


def all_words(bits: int) -> np.ndarray:
    return np.array(list(itertools.product([0, 1], repeat=bits)), dtype=np.int64)


def flip_masks(bits: int, size: int) -> np.ndarray:
    masks = np.zeros((0, bits), dtype=np.int64)
    for chosen in itertools.combinations(range(bits), size):
        row = np.zeros((1, bits), dtype=np.int64)
        row[0, list(chosen)] = 1
        masks = np.vstack([masks, row])
    return masks


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("complements", [False, True])
def test_hadamard_distance_is_half_the_length(order, complements):
    length = 2**order
    rows = 2 * length if complements else length
    code = hadamard_code(rows, length, complements=complements)
    words = code.codewords.numpy()
    assert code.distance == brute_distance(words) == length // 2
    if not complements:  # any two rows of H differ in exactly half the positions
        assert {int((a != b).sum()) for a, b in itertools.combinations(words, 2)} == {length // 2}


def test_hadamard_default_length_and_prefix():
    code = hadamard_code(10)
    assert (code.bits, code.distance) == (16, 8)
    assert torch.equal(code.codewords, hadamard_code(16).codewords[:10])
    assert hadamard_code(10, complements=True).bits == 8


@pytest.mark.parametrize(("classes", "bits", "seed"), [(4, 7, 0), (8, 8, 1), (10, 15, 2)])
def test_random_code_distance_is_exact(classes, bits, seed):
    code = random_code(classes, bits, seed=seed)
    assert code.codewords.shape == (classes, bits)
    assert code.distance == brute_distance(code.codewords.numpy()) >= 1
    assert code.distance >= random_code(classes, bits, tries=1, seed=seed).distance


def test_lexicodes_are_the_hamming_codes():
    hamming = lexicode(16, 7)
    assert hamming.distance == brute_distance(hamming.codewords.numpy()) == 3
    extended = lexicode(16, 8)
    assert extended.distance == brute_distance(extended.codewords.numpy()) == 4
    with pytest.raises(InvalidArgumentError):
        lexicode(17, 7, distance=3)  # the Hamming code is perfect: no 17th word


def test_decoders_break_ties_towards_the_lowest_index():
    code = OutputCode(torch.eye(4))
    assert decode_hard(code, torch.zeros(3, 4, dtype=torch.long)).tolist() == [0, 0, 0]
    assert decode_hard(code, torch.tensor([[0, 1, 1, 0]])).tolist() == [1]
    assert decode_soft(code, torch.zeros(2, 4)).tolist() == [0, 0]
    assert decode_soft(code, torch.tensor([[0.0, 1.0, 1.0, 0.0]])).tolist() == [1]


def test_soft_decoding_is_nearest_in_l2():
    code = random_code(6, 9, seed=3)
    scores = torch.randn(200, 9, dtype=torch.float64) * 2
    signs = code.signs()
    nearest = torch.cdist(scores, signs).argmin(1)
    assert torch.equal(decode_soft(code, scores), nearest)


CODES = {
    "hamming-7": lexicode(16, 7),
    "hadamard-8": hadamard_code(8, 8),
    "random-8": random_code(6, 8, seed=1),
    "one-vs-rest-6": OutputCode(torch.eye(6)),
}


@pytest.mark.parametrize("name", sorted(CODES))
def test_flip_certificate_is_exact_on_every_received_word(name):
    code = CODES[name]
    words = code.codewords.numpy()
    received = all_words(code.bits)
    decoded = brute_decode(words, received)
    assert np.array_equal(decode_hard(code, torch.from_numpy(received)).numpy(), decoded)
    certified = certified_flips(code, torch.from_numpy(received)).numpy()
    for size in range(int(certified.max()) + 2):
        masks = flip_masks(code.bits, size)
        changed = (brute_decode(words, received[:, None, :] ^ masks) != decoded[:, None]).any(1)
        assert not changed[certified >= size].any(), f"{size} flips changed a certified word"
        assert changed[certified == size - 1].all(), f"certificate {size - 1} is not tight"
    is_codeword = (received[:, None, :] == words).all(-1).any(1)
    assert is_codeword.sum() == code.classes
    assert (certified[is_codeword] >= code.correctable).all()
    on_codewords = certified_flips(code, code.codewords)
    assert bool((on_codewords >= code.correctable).all())


@given(
    classes=st.integers(2, 6),
    bits=st.integers(3, 10),
    seed=st.integers(0, 10_000),
)
def test_flip_certificate_property(classes, bits, seed):
    code = random_code(classes, bits, seed=seed, tries=20)
    rng = np.random.default_rng(seed)
    received = rng.integers(0, 2, size=(4, bits))
    words = code.codewords.numpy()
    decoded = brute_decode(words, received)
    certified = certified_flips(code, torch.from_numpy(received)).numpy()
    for word, label, flips in zip(received, decoded, certified, strict=True):
        for size in range(1, int(flips) + 2):
            changed = brute_decode(words, word ^ flip_masks(bits, size)) != label
            assert changed.any() == (size > flips)
    blocks = certified_blocks(code, torch.from_numpy(received))
    assert np.array_equal(blocks.numpy(), certified)


def _block_attack(heads: BlockHeads, x: torch.Tensor, chosen: tuple[int, ...], target):
    """Overwrite the features of the ``chosen`` blocks so that their bits match ``target`` (a
    {0,1} word), solving the linear heads for scores of ±5: the strongest corruption."""
    x = x.clone()
    weight = (heads.weight * heads.mask).detach()
    for block in chosen:
        rows = (heads.groups == block).nonzero()[:, 0]
        features = heads.index[rows[0]][heads.mask[rows[0]] > 0]
        scores = 5.0 * (2.0 * target[rows] - 1.0) - heads.bias.detach()[rows]
        matrix = weight[rows][:, : len(features)]
        x[features] = torch.linalg.lstsq(matrix, scores[:, None]).solution[:, 0]
    return x


def test_block_certificate_survives_every_corruption():
    torch.manual_seed(1)
    blocks = [[0, 1], [0, 1], [2, 3], [4, 5], [6, 7], [6, 7], [8, 9], [10, 11]]
    heads = BlockHeads(12, blocks).double()
    code = random_code(4, 8, seed=5)
    assert heads.groups.tolist() == [0, 0, 1, 2, 3, 3, 4, 5]
    centres = torch.randn(4, 12, dtype=torch.float64) * 3
    labels = torch.arange(4).repeat_interleave(30)
    x = centres[labels] + 0.3 * torch.randn(120, 12, dtype=torch.float64)
    fit_bits(heads, x, labels, code, epochs=150, lr=0.1)
    with torch.no_grad():
        decoded = decode_hard(code, (heads(x) > 0).long())
        certified = certified_blocks(code, (heads(x) > 0).long(), heads.groups)
    assert float((decoded == labels).double().mean()) > 0.5  # 2 features per bit: a hard task
    assert int(certified.max()) >= 1
    for index in range(0, 120, 4):
        point, limit = x[index], int(certified[index])
        for size in range(1, min(limit + 1, 6) + 1):
            changed = False
            for chosen, target in itertools.product(
                itertools.combinations(range(6), size), code.codewords.double()
            ):
                corrupted = _block_attack(heads, point, chosen, target)
                with torch.no_grad():
                    changed |= int(decode_hard(code, (heads(corrupted[None]) > 0).long())) != int(
                        decoded[index]
                    )
            assert changed == (size > limit), (index, size, limit)


def test_block_heads_read_only_their_block():
    heads = BlockHeads(6, [[0, 1, 2], [3], [4, 5]])
    with torch.no_grad():
        heads.weight.normal_()
    x = torch.randn(5, 6)
    moved = x.clone()
    moved[:, 3] = 1e6
    delta = heads(moved) - heads(x)
    assert bool((delta[:, [0, 2]] == 0).all())
    assert bool((delta[:, 1] != 0).all())
    weight = heads.weight.detach().double()
    expected = torch.stack([weight[0, :3].norm(), weight[1, :1].norm(), weight[2, :2].norm()])
    assert torch.allclose(heads.bit_lipschitz(), expected, rtol=1e-12)
    assert bool((heads.bit_lipschitz() >= expected).all())


def _clusters(count: int = 160) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    centres = torch.randn(4, 6, generator=generator) * 2.5
    labels = torch.arange(4).repeat(count // 4)
    return centres[labels] + 0.3 * torch.randn(count, 6, generator=generator), labels


def _attack_changes(model: CodedClassifier, x: torch.Tensor, eps: float) -> torch.Tensor:
    """PGD on a smooth surrogate of the decision: push the soft scores towards the best other
    codeword. True where the decision changed within ``‖δ‖₂ <= eps``."""
    signs = model.code.signs(torch.float32)
    clean = model.predict(x)

    def loss(out: torch.Tensor, _clean: torch.Tensor) -> torch.Tensor:
        correlation = torch.tanh(4 * out) @ signs.T
        own = correlation.gather(1, clean[:, None])[:, 0]
        others = correlation.scatter(1, clean[:, None], -1e9).max(1).values
        return others - own

    attack = PGD(ThreatModel(eps, 2), steps=40, restarts=2)
    adversarial = attack(model, x, CustomObjective(loss)).x_adv
    assert bool(((adversarial - x).norm(dim=1) <= eps * (1 + 1e-5)).all())
    return model.predict(adversarial) != clean


@pytest.mark.parametrize("decoding", ["hard", "soft"])
def test_l2_certificate_holds_under_attack(decoding):
    torch.manual_seed(0)
    code = lexicode(4, 8)
    network = LipschitzMLP(6, 8, (16,), lipschitz=4.0)
    x, y = _clusters()
    fit_bits(network, x, y, code, epochs=200, lr=0.02)
    model = CodedClassifier(network, code, network.certified_lipschitz(), decoding=decoding)
    radius = model.certified_radius(x)
    assert float((model.predict(x) == y).double().mean()) > 0.95
    assert float((radius > 0).double().mean()) > 0.9  # confident points get a radius
    eps = float(radius.quantile(0.5))
    inside = radius > eps
    assert not bool(_attack_changes(model, x[inside], eps).any())
    generator = torch.Generator().manual_seed(3)
    directions = torch.randn(20, *x.shape, generator=generator)
    directions /= directions.norm(dim=-1, keepdim=True)
    noisy = x + directions * (radius.float() * 0.999)[:, None]
    for sample in noisy:
        assert torch.equal(model.predict(sample), model.predict(x))
    assert bool(_attack_changes(model, x, 20 * eps).any())  # the attack is not toothless


def test_per_bit_bounds_certify_and_combine():
    torch.manual_seed(0)
    code = hadamard_code(4, 8)
    heads = BlockHeads(6, [[0, 1, 2, 3, 4, 5]] * 8)
    x, y = _clusters()
    fit_bits(heads, x, y, code, epochs=200, lr=0.05)
    per_bit = CodedClassifier(heads, code, bit_lipschitz=heads.bit_lipschitz())
    joint_value = float(torch.linalg.matrix_norm(heads.weight.detach().double(), 2)) * 1.001
    joint = CodedClassifier(heads, code, joint_value)
    both = CodedClassifier(heads, code, joint_value, bit_lipschitz=heads.bit_lipschitz())
    radii = [model.certified_radius(x) for model in (per_bit, joint, both)]
    assert torch.equal(radii[2], torch.maximum(radii[0], radii[1]))
    eps = float(radii[2].quantile(0.5))
    assert not bool(_attack_changes(both, x[radii[2] > eps], eps).any())


def test_bound_from_the_engine_when_none_is_given():
    network = LipschitzMLP(6, 8, (8,), lipschitz=1.0)
    x, _ = _clusters(8)
    given_bound = CodedClassifier(network, lexicode(4, 8), network.certified_lipschitz())
    computed = CodedClassifier(network, lexicode(4, 8))
    assert torch.allclose(computed.certified_radius(x), given_bound.certified_radius(x))


def test_bad_inputs_are_refused():
    with pytest.raises(InvalidArgumentError, match="equal"):
        OutputCode(torch.tensor([[0, 1, 1], [1, 0, 0], [0, 1, 1]]))
    with pytest.raises(InvalidArgumentError):
        OutputCode(torch.tensor([[0, 2], [1, 0]]))
    with pytest.raises(ShapeError):
        OutputCode(torch.tensor([0, 1, 1]))
    with pytest.raises(ShapeError):
        OutputCode(torch.tensor([[0, 1, 1]]))
    with pytest.raises(InvalidArgumentError, match="more than"):
        hadamard_code(9, 8)
    with pytest.raises(InvalidArgumentError):
        hadamard_code(4, 6)
    with pytest.raises(InvalidArgumentError, match="need more than"):
        random_code(9, 3)
    with pytest.raises(InvalidArgumentError):
        lexicode(4, 17)
    code = hadamard_code(4, 4)
    with pytest.raises(ShapeError):
        decode_hard(code, torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ShapeError):
        certified_flips(code, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ShapeError):
        certified_blocks(code, torch.zeros(2, 4, dtype=torch.long), [0, 1])
    with pytest.raises(ShapeError):
        decode_soft(code, torch.zeros(2, 3))
    with pytest.raises(InvalidArgumentError):
        BlockHeads(6, [[0, 1], [1, 2]])
    with pytest.raises(InvalidArgumentError):
        BlockHeads(3, [[0, 3]])
    with pytest.raises(ShapeError):
        CodedClassifier(LipschitzMLP(6, 4, (8,)), code, 1.0, bit_lipschitz=[1.0, 1.0])
    with pytest.raises(InvalidArgumentError):
        CodedClassifier(LipschitzMLP(6, 4, (8,)), code, 1.0, decoding="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        CodedClassifier(LipschitzMLP(6, 4, (8,)), code, -1.0)
    with pytest.raises(ShapeError):
        CodedClassifier(LipschitzMLP(6, 5, (8,)), code, 1.0).predict(torch.zeros(2, 6))
