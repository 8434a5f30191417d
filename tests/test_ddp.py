"""Data-parallel ``fit`` under ``torchrun``: two ranks reproduce one process on the same global
batches (weights, per-epoch metrics, early stopping), and only rank 0 writes the checkpoint."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lipguard.train import fit

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

# 76 training samples in batches of 25: the last batch has one sample, so rank 1's share of it
# is empty; 31 validation samples split 16/15.
COMMON: dict[str, Any] = dict(epochs=3, batch_size=25, learning_rate=1e-2, seed=3, progress=False)
CASES: dict[str, dict[str, Any]] = {
    "none": dict(regularizer="none", robust_eps=0.1, certify=True),
    "gradient_penalty": dict(
        regularizer="gradient_penalty", regularizer_options={"weight": 1.0, "lipschitz": 0.5}
    ),
    "aajr": dict(
        regularizer="aajr",
        regularizer_options={"weight": 1.0, "eps": 0.1, "steps": 3, "sample_step": True},
    ),
    "jacobian": dict(regularizer="jacobian", regularizer_options={"weight": 0.1}),
    "pgd_at": dict(regularizer="pgd_at", regularizer_options={"eps": 0.1, "steps": 2}),
    "trades": dict(regularizer="trades", regularizer_options={"beta": 1.0, "steps": 2}),
    "early_stop": dict(regularizer="none", epochs=12, learning_rate=0.3, patience=1),
}

SETUP = """
import torch
from torch import nn

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(107, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return (x[:76], y[:76]), (x[76:], y[76:])

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
"""

WORKER = """
import json, sys
import torch
from lipguard import distributed
from lipguard.train import fit, trainer

cases, out = json.loads(sys.argv[1]), sys.argv[2]
original = trainer._save

def recording_save(model, path):
    open(f"{out}/saved-by-rank{distributed.rank()}", "w").close()
    original(model, path)

trainer._save = recording_save
(train, validation) = data()
results = {}
for name, options in cases.items():
    net = model()
    checkpoint = f"{out}/{name}.safetensors" if name == "none" else None
    result = fit(net, train, validation=validation, checkpoint=checkpoint, **options)
    results[name] = {
        "fit": result.to_dict(),
        "weights": [p.detach().flatten().tolist() for p in net.parameters()],
    }
with open(f"{out}/rank{distributed.rank()}.json", "w") as f:
    json.dump(results, f)
"""

namespace: dict[str, Any] = {}
exec(SETUP, namespace)  # the same data and model in the test and the worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _summary(net: nn.Module, result: Any) -> dict[str, Any]:
    return {
        "fit": result.to_dict(),
        "weights": [p.detach().flatten().tolist() for p in net.parameters()],
    }


def _timeless(summary: dict[str, Any]) -> dict[str, Any]:
    history = [{k: v for k, v in m.items() if k != "seconds"} for m in summary["fit"]["history"]]
    return {**summary, "fit": {**summary["fit"], "history": history}}


def _close(a: Any, b: Any, path: str = "") -> None:
    """Recursive comparison to 1e-5 relative (1e-6 absolute); ``seconds`` is not compared."""

    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            if key != "seconds":
                _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        # the compositional bound's power iterations start from the global RNG, whose state
        # differs between the processes: it agrees to its own accuracy, not to rounding
        rel = 1e-3 if path.endswith("certified_lipschitz") else 1e-5
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-6), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a} != {b}"


@pytest.fixture(scope="module")
def two_ranks() -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    with tempfile.TemporaryDirectory(prefix="lipguard-ddp-") as folder:
        yield _launch(Path(folder))


def _launch(out: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Run every case once under ``torchrun --nproc_per_node=2``; each rank's results."""
    script = out / "worker.py"
    script.write_text(textwrap.dedent(SETUP) + textwrap.dedent(WORKER))
    cases = {name: {**COMMON, **options} for name, options in CASES.items()}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        str(script),
        json.dumps(cases),
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_match_one_process(name: str, two_ranks: Any) -> None:
    _, ranks = two_ranks
    assert _timeless(ranks[0][name]) == _timeless(ranks[1][name])  # identical on every rank
    (train, validation), net = namespace["data"](), namespace["model"]()
    options = {**COMMON, **CASES[name]}
    single = _summary(net, fit(net, train, validation=validation, **options))
    _close(ranks[0][name], single)
    if name == "early_stop":
        assert single["fit"]["stopped_early"]
        assert len(single["fit"]["history"]) < options["epochs"]


def test_only_rank_zero_writes_the_checkpoint(two_ranks: Any) -> None:
    out, ranks = two_ranks
    assert (out / "saved-by-rank0").exists()
    assert not (out / "saved-by-rank1").exists()
    from safetensors.torch import load_file

    state = load_file(str(out / "none.safetensors"))
    weights = [state[key].flatten().tolist() for key in sorted(state)]
    assert sorted(map(tuple, weights)) == sorted(map(tuple, ranks[0]["none"]["weights"]))


def test_data_parallel_true_outside_torchrun_is_refused() -> None:
    (train, _), net = namespace["data"](), namespace["model"]()
    with pytest.raises(ValueError, match="torchrun"):
        fit(net, train, epochs=1, progress=False, data_parallel=True)
