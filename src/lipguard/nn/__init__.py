"""Lipschitz-constrained layers (dense and convolutional) and model builders (SPEC A1–A4).

Every layer here guarantees its bound at every call, rounding included; the bound is proven
by :func:`lipguard.linalg.spectral_norm_certificate`, not estimated.
"""

from lipguard.nn.activations import GroupSort, MaxMin
from lipguard.nn.affine import DiagonalAffine
from lipguard.nn.base import LipschitzLinear
from lipguard.nn.cnn import LipschitzCNN
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
    hard_bits,
    lexicode,
    random_code,
)
from lipguard.nn.conv import AOLConv2d, LipschitzConv2d, SLLConv2d, SpectralConv2d
from lipguard.nn.export import vanilla
from lipguard.nn.linear_model import LipschitzLinearModel, project_rows
from lipguard.nn.mlp import LipschitzMLP, split_lipschitz
from lipguard.nn.orthogonal import OrthogonalLinear, SVDLinear
from lipguard.nn.penalties import gradient_penalty
from lipguard.nn.residual import Residual
from lipguard.nn.spectral import SpectralLinear

__all__ = [
    "AOLConv2d",
    "BlockHeads",
    "CodedClassifier",
    "DiagonalAffine",
    "GroupSort",
    "LipschitzCNN",
    "LipschitzConv2d",
    "LipschitzLinear",
    "LipschitzLinearModel",
    "LipschitzMLP",
    "MaxMin",
    "OrthogonalLinear",
    "OutputCode",
    "Residual",
    "SLLConv2d",
    "SVDLinear",
    "SpectralConv2d",
    "SpectralLinear",
    "certified_blocks",
    "certified_flips",
    "decode_hard",
    "decode_soft",
    "fit_bits",
    "gradient_penalty",
    "hadamard_code",
    "hard_bits",
    "lexicode",
    "project_rows",
    "random_code",
    "split_lipschitz",
    "vanilla",
]
