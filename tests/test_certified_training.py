"""Certified radii, certified accuracy and certified-training losses: closed forms first."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipguard.errors import InvalidArgumentError, ShapeError
from lipguard.nn import LipschitzCNN
from lipguard.results import LipschitzBound
from lipguard.train import (
    CertifiedAccuracy,
    certified_hinge_loss,
    certified_margins,
    fit_certified,
    lipschitz_certified_accuracy,
    offset_cross_entropy,
)


class Linear(nn.Module):
    """A float64 linear classifier with its exact spectral norm as ``certified_lipschitz``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = weight.double(), bias.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() @ self.weight.T + self.bias

    def certified_lipschitz(self) -> LipschitzBound:
        value = float(torch.linalg.matrix_norm(self.weight, ord=2)) * (1 + 1e-12)
        return LipschitzBound(value, 2.0, "exact")


def antipodal(d: int = 5) -> tuple[Linear, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.randn(d, dtype=torch.float64)
    return Linear(torch.stack([w, -w]), torch.tensor([0.3, -0.1])), w


pytestmark = pytest.mark.usefixtures("one_thread")


# --- closed forms ----------------------------------------------------------------------------


def test_radius_is_the_exact_boundary_distance_for_antipodal_rows():
    # W = [w; -w]: ||W||₂ = √2·||w|| and ||w₁ - w₂|| = 2·||w|| = √2·||W||₂, so the certified
    # radius (z₁ - z₂)/(√2·L) is the distance to the decision boundary
    model, w = antipodal()
    x = torch.randn(50, 5, dtype=torch.float64)
    logits = model(x)
    labels = logits.argmax(1)
    lipschitz = float(torch.linalg.matrix_norm(model.weight, ord=2))
    radii = certified_margins(logits, labels, lipschitz)
    distance = (logits[:, 0] - logits[:, 1]).abs() / (2 * w.norm())
    assert torch.allclose(radii, distance, rtol=1e-12, atol=0)
    # moving by the radius along the normal: just inside keeps the label, just outside flips it
    sign = torch.where(labels == 0, -1.0, 1.0).double()[:, None]  # towards the other class
    normal = sign * w / w.norm()
    inside = model(x + normal * radii[:, None] * (1 - 1e-6)).argmax(1)
    outside = model(x + normal * radii[:, None] * (1 + 1e-6)).argmax(1)
    assert torch.equal(inside, labels)
    assert not bool((outside == labels).any())


def test_radius_never_exceeds_the_boundary_distance_of_a_linear_model():
    torch.manual_seed(1)
    weight, bias = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    x = torch.randn(200, 6, dtype=torch.float64)
    logits = x @ weight.T + bias
    labels = logits.argmax(1)
    radii = certified_margins(logits, labels, float(torch.linalg.matrix_norm(weight, ord=2)))
    rows = weight[labels][:, None, :] - weight[None]  # w_y - w_j
    gaps = logits.gather(1, labels[:, None]) - logits  # z_y - z_j
    exact = torch.where(gaps > 0, gaps / rows.norm(dim=2), math.inf).min(dim=1).values
    assert bool((radii > 0).all())
    assert bool((radii <= exact).all())


def test_margins_closed_form_and_wrong_predictions():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    radii = certified_margins(logits, torch.tensor([0, 0]), 0.5)
    assert float(radii[0]) == pytest.approx(2.0 / (math.sqrt(2) * 0.5), rel=1e-12)
    assert float(radii[0]) <= 2.0 / (math.sqrt(2) * 0.5)  # rounded down, never overstated
    assert float(radii[1]) == pytest.approx(-2.0 / (math.sqrt(2) * 0.5), rel=1e-12)


def test_hinge_loss_closed_form_and_zero_iff_certified():
    logits = torch.tensor([[3.0, 1.0, 0.0]])
    labels = torch.tensor([0])
    assert float(certified_hinge_loss(logits, labels, eps=1.0)) == 0.0  # margin 2 >= √2
    expected = 2 * math.sqrt(2) - 2
    assert float(certified_hinge_loss(logits, labels, eps=2.0)) == pytest.approx(expected)
    assert float(certified_hinge_loss(logits, labels, eps=1.0, lipschitz=2.0)) == pytest.approx(
        expected
    )
    torch.manual_seed(0)
    z, y = torch.randn(100, 5), torch.randint(0, 5, (100,))
    losses = certified_hinge_loss(z, y, 0.3, reduction="none")
    certified = certified_margins(z, y, 1.0) >= 0.3
    assert bool((losses[certified] == 0).all())
    assert bool((losses[~certified] > 0).all())


def test_offset_cross_entropy_closed_form():
    logits, labels = torch.zeros(1, 2), torch.tensor([0])
    eps, lipschitz, temperature = 0.2, 1.5, 4.0
    expected = math.log1p(math.exp(temperature * math.sqrt(2) * lipschitz * eps))
    value = offset_cross_entropy(logits, labels, eps, lipschitz, temperature=temperature)
    assert float(value) == pytest.approx(expected, rel=1e-6)
    z, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    plain = offset_cross_entropy(z, y, 0.0, temperature=1.0)
    assert float(plain) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-6)


def test_accuracy_uses_the_models_certified_bound():
    model, _ = antipodal()
    x = torch.randn(64, 5, dtype=torch.float64)
    y = model(x).argmax(1)
    y[:8] = 1 - y[:8]  # eight wrong labels
    result = lipschitz_certified_accuracy(model, x, y, eps=0.0)
    assert isinstance(result, CertifiedAccuracy)
    assert result.clean == pytest.approx(56 / 64)
    assert result.lipschitz == model.certified_lipschitz().value
    big = result.radii.max().item()
    assert result.at(big) == 0.0
    assert result.at(0.0) == result.certified
    assert lipschitz_certified_accuracy(model, x, y, 0.1).certified >= result.at(0.2)
    # a larger (looser) bound certifies less
    loose = lipschitz_certified_accuracy(model, x, y, 0.1, lipschitz=10 * result.lipschitz)
    assert loose.certified <= lipschitz_certified_accuracy(model, x, y, 0.1).certified


# --- properties ------------------------------------------------------------------------------


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """ℓ2 PGD on the runner-up margin within per-sample radii ``eps``."""
    torch.manual_seed(3)
    delta = (torch.randn_like(x) * 1e-3).requires_grad_(True)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(30):
        logits = model(x + delta)
        target = logits.gather(1, y[:, None])[:, 0]
        others = logits.scatter(1, y[:, None], -math.inf).max(1).values
        (grad,) = torch.autograd.grad((others - target).sum(), delta)
        with torch.no_grad():
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta += 0.25 * eps.view(shape) * step
            scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            delta *= scale.view(shape)
    return (x + delta).detach()


def test_attack_within_the_certified_radius_never_flips_a_certified_prediction():
    torch.manual_seed(0)
    centres = torch.randn(3, 1, 8, 8)
    y = torch.randint(0, 3, (96,))
    x = (centres[y] + 0.5 * torch.rand(96, 1, 8, 8)).clamp(0, 1)
    model = LipschitzCNN((1, 8, 8), 3, (4, 8))
    fit_certified(model, x, y, eps=0.3, epochs=4, batch_size=32, learning_rate=1e-2)
    model.requires_grad_(False)
    result = lipschitz_certified_accuracy(model, x, y, eps=0.05)
    certified = result.radii > 0
    assert result.certified > 0.3
    assert bool(certified.any())
    radius = result.radii[certified].float() * 0.999
    adversarial = pgd_l2(model, x[certified], y[certified], radius)
    assert bool(((adversarial - x[certified]).flatten(1).norm(dim=1) <= radius * 1.0001).all())
    with torch.no_grad():
        assert torch.equal(model(adversarial).argmax(1), y[certified])
    # the same attack with twice the radius does flip some: the radii are not vacuous
    loose = pgd_l2(model, x[certified], y[certified], 4 * radius / 0.999)
    with torch.no_grad():
        assert not torch.equal(model(loose).argmax(1), y[certified])


def test_fit_certified_raises_certified_accuracy():
    torch.manual_seed(0)
    centres = torch.rand(4, 1, 8, 8)
    y = torch.randint(0, 4, (128,))
    x = (centres[y] + 0.2 * torch.randn(128, 1, 8, 8)).clamp(0, 1)
    model = LipschitzCNN((1, 8, 8), 4, (4,))
    before = lipschitz_certified_accuracy(model, x, y, 0.1).certified
    seconds = fit_certified(model, x, y, eps=0.3, epochs=5, batch_size=32, loss="hinge")
    assert len(seconds) == 5
    assert not model.training
    after = lipschitz_certified_accuracy(model, x, y, 0.1)
    assert after.certified > before
    assert after.certified > 0.5


# --- bad arguments ---------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(InvalidArgumentError, match="lipschitz"):
        certified_margins(logits, labels, 0.0)
    with pytest.raises(InvalidArgumentError, match="sound"):
        certified_margins(logits, labels, LipschitzBound(1.0, 2.0, "estimate", sound=False))
    with pytest.raises(InvalidArgumentError, match="sound"):
        certified_margins(logits, labels, LipschitzBound(1.0, math.inf, "linf"))
    with pytest.raises(InvalidArgumentError, match=r"\[0, 3\)"):
        certified_margins(logits, torch.tensor([0, 1, 2, 3]), 1.0)
    with pytest.raises(InvalidArgumentError, match="integer"):
        certified_margins(logits, labels.float(), 1.0)
    with pytest.raises(ShapeError):
        certified_margins(logits[:, :1], labels, 1.0)
    with pytest.raises(ShapeError):
        certified_margins(logits, labels[:3], 1.0)
    with pytest.raises(InvalidArgumentError, match="eps"):
        certified_hinge_loss(logits, labels, -0.1)
    with pytest.raises(InvalidArgumentError, match="temperature"):
        offset_cross_entropy(logits, labels, 0.1, temperature=0.0)
    with pytest.raises(InvalidArgumentError, match="reduction"):
        certified_hinge_loss(logits, labels, 0.1, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="certified_lipschitz"):
        lipschitz_certified_accuracy(nn.Linear(3, 3), logits, labels, 0.1)
    with pytest.raises(ShapeError):
        lipschitz_certified_accuracy(nn.Linear(3, 3), logits, labels[:2], 0.1, 1.0)
    with pytest.raises(InvalidArgumentError, match="loss"):
        fit_certified(nn.Linear(3, 3), logits, labels, eps=0.1, loss="ce")  # type: ignore[arg-type]
