"""Device-agnostic behaviour on a GPU (SPEC J): every public part follows the device of its
model and inputs, and a bound computed for a GPU model is the CPU float64 proof of the same
weights.

Every test here is marked ``cuda``: it runs where ``torch.cuda.is_available()`` and is skipped,
with that reason, everywhere else (the conftest hook). Run them alone with ``pytest -m cuda``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lipguard.attacks import PGD, CrossEntropy, ThreatModel
from lipguard.bounds import (
    certify,
    lipschitz_bound,
    lipschitz_lower_bound,
    local_lipschitz_bound,
)
from lipguard.monitor import LipschitzMonitor
from lipguard.nn import AOLConv2d, LipschitzCNN, LipschitzMLP, SLLConv2d, SpectralConv2d, vanilla
from lipguard.smoothing import SmoothedClassifier, SmoothedRegressor
from lipguard.train import fit

pytestmark = pytest.mark.cuda

GPU = torch.device("cuda")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)]
    return nn.Sequential(*layers)


def _points(count: int = 8, features: int = 6) -> torch.Tensor:
    return torch.randn(count, features, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["product", "compositional", "lipsdp"])
def test_a_gpu_models_bound_is_the_cpu_proof_of_the_same_weights(method):
    model = _mlp()
    on_cpu = lipschitz_bound(model, 2, method, input_shape=(6,))
    on_gpu = lipschitz_bound(copy.deepcopy(model).to(GPU), 2, method, input_shape=(6,))
    assert on_gpu.sound
    assert on_gpu.value == pytest.approx(on_cpu.value, rel=1e-9)


def test_local_and_lower_bounds_take_gpu_inputs():
    model = _mlp().to(GPU)
    x = _points().to(GPU)
    local = local_lipschitz_bound(model, x, 0.1)
    assert len(local) == len(x)
    assert all(bound.sound for bound in local)
    lower = lipschitz_lower_bound(model, x, steps=20)
    upper = lipschitz_bound(model, 2, "compositional", input_shape=(6,))
    assert 0 < lower.value <= upper.value


def test_certificates_of_a_gpu_model_verify_on_the_cpu(tmp_path):
    model = _mlp().to(GPU)
    certificate = certify(model, 2, "compositional", input_shape=(6,))
    certificate.save(tmp_path / "model.cert.json")
    assert certificate.verify(copy.deepcopy(model).cpu()).ok


@pytest.mark.parametrize("layer", ["spectral", "orthogonal", "svd"])
def test_lipschitz_layers_prove_their_bound_on_the_gpu(layer):
    torch.manual_seed(0)
    model = LipschitzMLP(6, 1, (32, 32), lipschitz=2.0, layer=layer).to(GPU)
    x = _points().to(GPU)
    assert model(x).device.type == "cuda"
    bound = model.certified_lipschitz()
    assert bound.sound
    assert bound.value <= 2.0 * (1 + 1e-6)
    exported = vanilla(model)
    assert torch.allclose(exported(x), model(x), atol=1e-5)
    engine = lipschitz_bound(model, 2, "product", input_shape=(6,))
    assert engine.value <= 2.0 * (1 + 1e-6)


@pytest.mark.parametrize("kind", [SpectralConv2d, AOLConv2d, SLLConv2d])
def test_conv_layers_bound_the_true_operator_norm_on_the_gpu(kind):
    torch.manual_seed(0)
    if kind is SpectralConv2d:
        layer = SpectralConv2d(3, 3, 3, padding=1, input_size=(8, 8))
    elif kind is AOLConv2d:
        layer = AOLConv2d(3, 3, 3, padding=1)
    else:
        layer = SLLConv2d(3, 3)
    layer = layer.to(GPU)
    x = torch.randn(4, 3, 8, 8, device=GPU)
    bound = layer.certified_lipschitz().value
    # the true norm by power iteration on the whole map's Jacobian (ReLU inside SLL: local)
    v = torch.randn(1, 3, 8, 8, device=GPU, dtype=torch.float64)
    double = copy.deepcopy(layer).double()
    point = x[:1].double()
    for _ in range(50):
        _, jvp = torch.func.jvp(double, (point,), (v / v.norm(),))
        (v,) = torch.func.vjp(double, point)[1](jvp)
    _, jvp = torch.func.jvp(double, (point,), (v / v.norm(),))
    assert float(jvp.norm()) <= bound * (1 + 1e-6)


def test_a_cnn_trains_and_certifies_on_the_gpu():
    torch.manual_seed(0)
    model = LipschitzCNN((1, 8, 8), 3, channels=(4, 8), lipschitz=1.0).to(GPU)
    x = torch.randn(32, 1, 8, 8, device=GPU)
    y = torch.randint(0, 3, (32,), device=GPU)
    fit(model, (x, y), epochs=1, batch_size=16, progress=False)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert model.certified_lipschitz().value <= 1.0 * (1 + 1e-6)


@pytest.mark.parametrize("regularizer", ["none", "aajr", "pgd_at", "trades", "jacobian"])
def test_fit_moves_cpu_data_to_a_gpu_model(regularizer):
    model = _mlp().to(GPU)
    x = _points(64)
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(2))
    options = {"eps": 0.1} if regularizer in ("aajr", "pgd_at", "trades") else None
    result = fit(
        model,
        (x, y),
        regularizer=regularizer,
        regularizer_options=options,
        epochs=2,
        batch_size=16,
        robust_eps=0.1,
        certify=True,
        progress=False,
    )
    assert len(result.history) == 2
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_attacks_stay_on_the_inputs_device():
    model = _mlp().to(GPU)
    x = _points().to(GPU)
    labels = model(x).argmax(1)
    result = PGD(ThreatModel(0.3, "inf"), steps=10, seed=0)(model, x, CrossEntropy(labels))
    assert result.x_adv.device.type == "cuda"
    assert float((result.x_adv - x).abs().max()) <= 0.3 + 1e-6


def test_smoothing_certifies_a_gpu_model():
    model = _mlp().to(GPU)
    x = _points().to(GPU)
    smoothed = SmoothedClassifier(model, 3, 0.25, seed=0)
    certificates = smoothed.certify(x, 50, 2000, 0.01, batch_size=1000)
    assert certificates.prediction.device.type == "cpu"
    assert (certificates.prediction >= -1).all()
    reward = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).to(GPU)
    bounds = SmoothedRegressor(reward, 0.25, (-1.0, 1.0), seed=0).certify(x, 1000)
    assert bool((bounds.lower <= bounds.mean).all())
    assert bool((bounds.mean <= bounds.upper).all())


def test_the_monitor_checks_a_gpu_model(tmp_path):
    torch.manual_seed(0)
    model = LipschitzMLP(6, 1, (16,), lipschitz=1.0).to(GPU)
    monitor = LipschitzMonitor(1.0, model=model, store=str(tmp_path / "audit.db"))
    states = _points(32).to(GPU)
    with torch.no_grad():
        rewards = model(states).reshape(-1)
    observation = monitor.observe(states, rewards)
    assert not [event for event in observation.events if event.kind == "violation"]
    tampered = rewards.clone()
    tampered[0] += 10.0
    observation = monitor.observe(states + 1e-3, tampered)
    assert any(event.kind == "violation" for event in observation.events)


def test_rl_numpy_boundaries_reach_a_gpu_model():
    from lipguard.rl.wrappers import policy_attack

    policy = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).to(GPU)
    perturb = policy_attack(policy, "continuous", 0.1, steps=3)
    observations = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    perturbed = perturb(observations)
    assert perturbed.dtype == np.float32
    assert perturbed.shape == observations.shape
    assert np.abs(perturbed - observations).max() <= 0.1 + 1e-6


def test_error_envelopes_of_a_gpu_model_contain_its_outputs():
    from lipguard.bounds import error_envelope

    model = _mlp().to(GPU)
    x = _points().to(GPU)
    envelope = error_envelope(model, x, 0.05, method="tightest", bound_method="compositional")
    moved = x + 0.05 * torch.nn.functional.normalize(torch.randn_like(x), dim=1)
    with torch.no_grad():
        assert bool(envelope.contains(model(moved)).all())
