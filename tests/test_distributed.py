"""Sharded certification and attacks under torchrun: bit-identical for every world size.

Each case runs the same small problem with ``torch.distributed.run`` at world sizes 1 and 2 (or
as a plain process) and compares the JSON outputs exactly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lipguard.io import save_checkpoint
from lipguard.smoothing import SmoothedClassifier
from lipguard.smoothing._sampling import run_noisy, stream_seed
from lipguard.smoothing.noise import IsotropicNoise

TIMEOUT = 120

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    from lipguard import distributed
    from lipguard.attacks import PGD, CrossEntropy, RandomNoise, ThreatModel, robustness_curve
    from lipguard.smoothing import SmoothedClassifier, SmoothedQuantile, SmoothedRegressor

    distributed.initialise()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1).detach()
    result = {"world_size": distributed.world_size()}
    for per_input in (False, True):
        smoothed = SmoothedClassifier(model, 3, 0.5, seed=3, per_input_noise=per_input)
        certs = smoothed.certify(x, 50, 2000, 0.01, batch_size=1000, looks=2)
        result[f"certify-{per_input}"] = certs.to_dict()
        result[f"predict-{per_input}"] = smoothed.predict(x, 500, batch_size=700).tolist()
    reward = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    bounds = SmoothedRegressor(reward, 0.3, (-1.0, 1.0), seed=5).certify(x, 2000)
    result["regressor"] = [bounds.mean.tolist(), bounds.lower.tolist(), bounds.upper.tolist()]
    quantile = SmoothedQuantile(reward, 0.3, per_input_noise=True).certify(x, 500)
    result["quantile"] = quantile.sorted_outputs.tolist()
    # fewer inputs than ranks: the sample blocks are shared out instead (7 uneven blocks)
    one = x[:1]
    few = SmoothedClassifier(model, 3, 0.5, seed=4, per_input_noise=True)
    result["few-certify"] = few.certify(one, 50, 2000, 0.01, batch_size=300).to_dict()
    result["few-votes"] = few.votes(x[:1], 2000, batch_size=300).tolist()
    mean = SmoothedRegressor(reward, 0.3, (-1.0, 1.0), seed=6).certify(one, 2000, batch_size=300)
    result["few-regressor"] = [mean.mean.tolist(), mean.lower.tolist(), mean.upper.tolist()]
    few_quantile = SmoothedQuantile(reward, 0.3, seed=6).certify(one, 700, batch_size=300)
    result["few-quantile"] = few_quantile.sorted_outputs.tolist()
    attacks = {
        "pgd": lambda t: PGD(t, steps=5, seed=2),
        "random": lambda t: RandomNoise(t, samples=10, seed=2),
    }
    curve = robustness_curve(model, x, CrossEntropy(y), [0.1, 0.3, 0.5], attacks)
    result["curve"] = curve.to_dict()
    if distributed.is_main():
        with open(sys.argv[1], "w") as handle:
            json.dump(result, handle)
    """
)


def _free_port() -> str:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return str(handle.getsockname()[1])


def _run(arguments: list[str], world_size: int | None, cwd: Path) -> None:
    """Run ``arguments`` (a script or ``-m module ...``) under torchrun with ``world_size``
    processes, or as a plain process for ``None``."""
    if world_size is None:
        command = [sys.executable, *arguments]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={world_size}",
            "--master_port",
            _free_port(),
            *arguments,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_api_results_are_bit_identical_for_world_sizes_1_and_2(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    outputs = {}
    for world_size in (1, 2):
        path = tmp_path / f"out{world_size}.json"
        _run([str(script), str(path)], world_size, tmp_path)
        outputs[world_size] = json.loads(path.read_text())
    assert outputs[1].pop("world_size") == 1
    assert outputs[2].pop("world_size") == 2
    assert outputs[1] == outputs[2]
    # and the sharded run certified something (the comparison is not vacuous)
    assert any(p >= 0 for p in outputs[2]["certify-False"]["prediction"])


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    save_checkpoint(model, tmp_path / "model", input_shape=(4,))
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    return tmp_path / "model.json", tmp_path / "data.npz"


@pytest.mark.parametrize(
    "verb",
    [
        ["smooth", "certify", "--sigma", "0.5", "--samples", "2000", "--n0", "50"],
        ["attack", "--eps", "0.3", "--steps", "5", "--batch-size", "3"],
    ],
    ids=["smooth-certify", "attack"],
)
def test_cli_under_torchrun_matches_a_single_process(tmp_path, files, verb):
    model, data = files
    outputs = {}
    for world_size in (None, 2):
        out = tmp_path / f"out{world_size}.json"
        arguments = [*verb, str(model), "--data", str(data), "--out", str(out)]
        _run(["-m", "lipguard", *arguments], world_size, tmp_path)
        outputs[world_size] = json.loads(out.read_text())
    assert outputs[None] == outputs[2]


def test_an_inputs_noise_does_not_depend_on_the_batch():
    """With per-input streams, input ``i``'s noisy outputs are the same alone or in any batch,
    for any batch size that keeps the sample blocks."""
    noise = IsotropicNoise(1.0)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))

    def noisy(inputs, indices, batch_size):
        store = torch.empty(inputs.shape[0], 8, 3)

        def consume(rows, samples, outputs):
            store[rows, samples] = outputs.view(rows.stop - rows.start, -1, 3)

        same = nn.Identity()
        run_noisy(same, inputs, noise, 8, batch_size, 7, "t", same, consume, indices, True)
        return store - inputs[:, None]

    everything = noisy(x, None, 40)
    alone = noisy(x[3:4], [3], 8)
    shuffled = noisy(x[[4, 3, 0]], [4, 3, 0], 16)
    assert torch.equal(alone[0], everything[3])
    assert torch.equal(shuffled[1], everything[3])
    assert torch.equal(shuffled[0], everything[4])
    assert not torch.equal(everything[0], everything[1])  # different inputs, independent noise
    assert stream_seed(7, "t", 3, 0) != stream_seed(7, "t", 4, 0)


@pytest.mark.parametrize("per_input", [False, True])
def test_certificates_do_not_depend_on_the_batch_composition(per_input):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    smoothed = SmoothedClassifier(model, 3, 0.5, seed=1, per_input_noise=per_input)
    full = smoothed.votes(x, 400, batch_size=800)
    part = smoothed.votes(x[[5, 2]], 400, batch_size=400, indices=[5, 2])
    assert torch.equal(part, full[[5, 2]])
