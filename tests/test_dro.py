"""The DRO ↔ dual-norm identity against brute-force inner maximisation."""

from __future__ import annotations

import itertools

import pytest
import torch

from lipguard.train.dro import dual_norm_regularizer, margin_loss, robust_linear_loss


def _case(seed: int = 0, d: int = 4):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=generator, dtype=torch.float64)
    b = float(torch.randn(1, generator=generator))
    x = torch.randn(6, d, generator=generator, dtype=torch.float64)
    y = torch.where(torch.rand(6, generator=generator) > 0.5, 1.0, -1.0).double()
    return w, b, x, y


def _brute(w, b, x, y, candidates, loss):
    """max over the candidate perturbations of the loss, per sample."""
    margins = y[:, None] * ((x[:, None, :] + candidates[None]) @ w + b)
    return margin_loss(margins, loss).amax(1)


@pytest.mark.parametrize("loss", ["logistic", "hinge"])
def test_linf_identity_matches_the_box_corners(loss):
    w, b, x, y = _case()
    eps = 0.3
    corners = torch.tensor(list(itertools.product([-eps, eps], repeat=4)), dtype=torch.float64)
    brute = _brute(w, b, x, y, corners, loss)  # a linear objective peaks at a corner
    closed = robust_linear_loss(w, b, x, y, eps, "inf", loss)
    assert closed.numpy() == pytest.approx(brute.numpy(), rel=1e-12)


@pytest.mark.parametrize("loss", ["logistic", "hinge"])
def test_l1_identity_matches_the_vertices(loss):
    w, b, x, y = _case(1)
    eps = 0.5
    vertices = torch.cat([eps * torch.eye(4), -eps * torch.eye(4)]).double()
    brute = _brute(w, b, x, y, vertices, loss)
    closed = robust_linear_loss(w, b, x, y, eps, 1, loss)
    assert closed.numpy() == pytest.approx(brute.numpy(), rel=1e-12)


def test_l2_identity_bounds_and_approaches_sampled_directions():
    w, b, x, y = _case(2, d=3)
    eps = 0.4
    directions = torch.randn(
        200_000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    sphere = eps * directions / directions.norm(dim=1, keepdim=True)
    brute = _brute(w, b, x, y, sphere, "logistic")
    closed = robust_linear_loss(w, b, x, y, eps, 2, "logistic")
    assert bool((brute <= closed + 1e-12).all())
    assert brute.numpy() == pytest.approx(closed.numpy(), rel=1e-4)


def test_dual_norm_regularizer():
    w = torch.tensor([3.0, -4.0])
    assert float(dual_norm_regularizer(w, 0.5, 2)) == pytest.approx(2.5)
    assert float(dual_norm_regularizer(w, 0.5, "inf")) == pytest.approx(3.5)
    assert float(dual_norm_regularizer(w, 0.5, 1)) == pytest.approx(2.0)
