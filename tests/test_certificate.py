"""Certificates: bound to the weights and architecture, re-checked independently."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lipguard.bounds import Certificate, CertificateError, certify
from lipguard.bounds.certificate import claims_sha256
from tests.conftest import lipsdp_fixture


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 2)
    )


@pytest.fixture
def saved(model, tmp_path):
    certificate = certify(model, inputs=torch.randn(8, 3))
    return certificate, certificate.save(tmp_path / "cert.json")


def test_certificate_contents(model, saved):
    certificate, path = saved
    data = json.loads(path.read_text())
    assert data["upper"]["sound"] is True
    assert certificate.upper.value >= certificate.lower.value > 0
    assert certificate.gap == pytest.approx(certificate.upper.value / certificate.lower.value)
    assert len(certificate.weights_sha256) == 64
    assert data["torch_version"] == torch.__version__
    assert data["created"].endswith("+00:00")


def test_round_trip_and_verification(model, saved):
    _, path = saved
    result = Certificate.load(path).verify(model)
    assert result.ok
    assert any("re-proven" in str(check) for check in result.checks)


def test_any_weight_change_fails_verification(model, saved):
    _, path = saved
    with torch.no_grad():
        model[2].bias[3] += 1e-7
    result = Certificate.load(path).verify(model)
    assert not result.ok
    assert "weights changed" in str(result.checks[-1])


def test_architecture_change_fails_verification(model, saved):
    _, path = saved
    model[3] = nn.Sigmoid()  # same state_dict, different function
    result = Certificate.load(path).verify(model)
    assert not result.ok
    assert "architecture" in str(result.checks[-1])


def test_edited_claims_are_refused_on_loading(saved):
    _, path = saved
    data = json.loads(path.read_text())
    data["upper"]["value"] *= 0.5
    path.write_text(json.dumps(data))
    with pytest.raises(CertificateError, match="edited"):
        Certificate.load(path)


def test_forged_claims_fail_verification(model, saved):
    _, path = saved
    data = json.loads(path.read_text())
    data["upper"]["value"] *= 0.5
    data["claims_sha256"] = claims_sha256(data)  # a forger recomputes the hash
    path.write_text(json.dumps(data))
    assert not Certificate.load(path).verify(model).ok
    data["upper"]["value"] *= 2.0
    data["lower"]["value"] *= 1.0001
    data["claims_sha256"] = claims_sha256(data)
    path.write_text(json.dumps(data))
    result = Certificate.load(path).verify(model)
    assert not result.ok
    assert "witness" in str(result.checks[-1])


def test_lipsdp_certificates_store_and_recheck_their_multipliers(tmp_path):
    network = lipsdp_fixture("random_weights")
    certificate = certify(network, method="lipsdp", lower_bound=False)
    assert certificate.upper.details is not None
    path = certificate.save(tmp_path / "lipsdp.json")
    loaded = Certificate.load(path)
    assert loaded.upper.details["multipliers"] == certificate.upper.details["multipliers"]
    assert loaded.verify(network).ok


def test_malformed_files(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(CertificateError, match="malformed"):
        Certificate.load(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(CertificateError, match="not a lipguard-certificate"):
        Certificate.load(path)
