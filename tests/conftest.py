"""Shared test configuration.

Hypothesis runs derandomized by default so CI is reproducible; set HYPOTHESIS_PROFILE=thorough
to search with fresh randomness and more examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` where no GPU is present, and those marked ``slow`` unless
    ``LIPGUARD_SLOW_TESTS=1``; say so."""
    gpu = pytest.mark.skip(reason="no CUDA GPU here: the device tests run where one is present")
    slow = pytest.mark.skip(reason="slow (minutes): run with LIPGUARD_SLOW_TESTS=1")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(gpu)
        if "slow" in item.keywords and os.environ.get("LIPGUARD_SLOW_TESTS") != "1":
            item.add_marker(slow)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def true_sigma(matrix: torch.Tensor) -> float:
    """Largest singular value by a float64 SVD (relative error ~1e-15)."""
    return float(torch.linalg.matrix_norm(matrix.detach().to(torch.float64), ord=2))


FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def lipsdp_fixture(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    """A LipSDP example network (weights (out, in), no biases, ReLU between layers)."""
    import scipy.io

    matrices = scipy.io.loadmat(FIXTURES / "lipsdp" / f"{name}.mat")["weights"].ravel()
    layers: list[torch.nn.Module] = []
    for index, matrix in enumerate(matrices):
        weight = torch.tensor(matrix, dtype=dtype)
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
        layers.append(layer)
        if index < len(matrices) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions run fastest on one thread (and do not oversubscribe a busy machine);
    the previous thread count is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shuffled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, pixels scaled to [0, 1], in a fixed shuffled order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def check_rendered_report(out: Path, tmp_path: Path) -> None:
    """A run's report.html holds its five plots and sections and, where Chromium is installed,
    renders as a full, non-blank page (skipped with its reason otherwise)."""
    from lipguard.pipeline.screenshot import find_browser, screenshot

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    for heading in ("Verdict", "Reward models", "Policies", "Runtime monitor"):
        assert heading in page
    if find_browser() is None:
        pytest.skip("no Chromium here (apt-get install chromium): the screenshot is not checked")
    png = screenshot(out / "report.html", tmp_path / "report.png")
    from matplotlib import image

    pixels = image.imread(png)
    assert pixels.shape[0] >= 2000
    assert pixels.shape[1] > 1000
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, tables and plots
    assert (pixels[..., :3].mean(-1) < 0.5).mean() > 0.01  # dark pixels: text and axes
