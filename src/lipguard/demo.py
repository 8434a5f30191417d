"""The layer demo run by ``lipguard run``: learn a reward with and without a guaranteed bound.

Task: the reward of Gymnasium's Pendulum-v1, ``r = -(θ² + 0.1·θ̇² + 0.001·u²)``, learned from
noisy samples of the features ``(cos θ, sin θ, θ̇, u)``. Three reward models with the same
widths are trained on the same data:

- ``unconstrained``: ``nn.Linear`` + ReLU;
- ``torch spectral_norm``: each layer wrapped in ``torch.nn.utils.parametrizations.spectral_norm``
  and the output scaled so the *nominal* bound is the target (power iteration: an estimate);
- ``lipguard``: :class:`lipguard.nn.LipschitzMLP` with the same target, guaranteed.

For each it reports test error, the bound it claims, the bound its weights actually give (the
product of exact float64 singular values), and the largest input-gradient norm observed on
held-out states (a lower bound on the true constant).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lipguard.nn import LipschitzMLP


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the layer demo (``quick`` shortens training)."""

    lipschitz: float = 8.0
    hidden: tuple[int, ...] = (64, 64)
    train_samples: int = 4096
    test_samples: int = 1024
    epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 3e-3
    label_noise: float = 0.1
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> DemoConfig:
        return cls(train_samples=2048, epochs=15, seed=seed)


@dataclass
class ModelReport:
    """What the demo measured for one reward model."""

    name: str
    test_mse: float
    claimed_bound: float | None
    claim_is_sound: bool
    weight_norm_product: float
    max_observed_gradient: float
    train_seconds: float
    layer_sigma_max: list[float] = field(default_factory=list)


def pendulum_reward(features: torch.Tensor) -> torch.Tensor:
    """Pendulum-v1's reward from ``(cos θ, sin θ, θ̇, u)`` features."""
    theta = torch.atan2(features[:, 1], features[:, 0])
    return -(theta**2 + 0.1 * features[:, 2] ** 2 + 0.001 * features[:, 3] ** 2)


def sample_transitions(count: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform states and actions over Pendulum-v1's ranges, as reward-model features."""
    uniform = torch.rand(count, 3, generator=generator, dtype=torch.float64)
    theta = (uniform[:, 0] * 2 - 1) * math.pi
    speed = (uniform[:, 1] * 2 - 1) * 8.0
    torque = (uniform[:, 2] * 2 - 1) * 2.0
    return torch.stack([theta.cos(), theta.sin(), speed, torque], dim=1).float()


def _plain_mlp(widths: list[int], wrap: Callable[[nn.Linear], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layers.append(wrap(nn.Linear(fan_in, fan_out)))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _Scaled(nn.Module):
    def __init__(self, body: nn.Module, factor: float) -> None:
        super().__init__()
        self.body, self.factor = body, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.factor


def build_models(config: DemoConfig) -> dict[str, nn.Module]:
    """The three reward models, initialised from the config's seed."""
    torch.manual_seed(config.seed)
    widths = [4, *config.hidden, 1]
    spectral = torch.nn.utils.parametrizations.spectral_norm
    return {
        "unconstrained": _plain_mlp(widths, lambda layer: layer),
        "torch spectral_norm": _Scaled(_plain_mlp(widths, spectral), config.lipschitz),
        "lipguard": LipschitzMLP(
            4, 1, config.hidden, lipschitz=config.lipschitz, activation="groupsort"
        ),
    }


def _layer_sigmas(model: nn.Module) -> list[float]:
    """Exact (float64 SVD) largest singular values of the weights a model really applies."""
    sigmas = []
    for module in model.modules():
        if isinstance(module, nn.Linear) or hasattr(module, "effective_weight"):
            weight = (
                module.effective_weight() if hasattr(module, "effective_weight") else module.weight
            )
            sigmas.append(float(torch.linalg.matrix_norm(weight.detach().double(), ord=2)))
    return sigmas


def _max_gradient_norm(
    model: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor
) -> float:
    points = states.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(points).sum(), points)
    return float(gradient.norm(dim=1).max())


def train_and_measure(
    name: str,
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    config: DemoConfig,
    advance: Callable[[], None],
) -> ModelReport:
    """Train one model with Adam on the squared error, then measure it."""
    train_x, train_y, test_x, test_y = data
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed + 1)
    started = time.perf_counter()
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(train_x.shape[0], generator=generator)
        for start in range(0, train_x.shape[0], config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = ((model(train_x[batch]).squeeze(-1) - train_y[batch]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        advance()
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        test_mse = float(((model(test_x).squeeze(-1) - test_y) ** 2).mean())
    sigmas = _layer_sigmas(model)
    product = math.prod(sigmas) * (config.lipschitz if isinstance(model, _Scaled) else 1.0)
    claimed: float | None = None
    sound = False
    if isinstance(model, LipschitzMLP):
        claimed, sound = model.certified_lipschitz().value, True
    elif isinstance(model, _Scaled):
        claimed = config.lipschitz
    return ModelReport(
        name=name,
        test_mse=test_mse,
        claimed_bound=claimed,
        claim_is_sound=sound,
        weight_norm_product=product,
        max_observed_gradient=_max_gradient_norm(model, test_x),
        train_seconds=seconds,
        layer_sigma_max=sigmas,
    )


def run_demo(
    config: DemoConfig, progress: Callable[[str, int], Callable[[], None]]
) -> list[ModelReport]:
    """Run the demo; ``progress(name, total)`` returns a callback advanced once per epoch."""
    generator = torch.Generator().manual_seed(config.seed)
    train_x = sample_transitions(config.train_samples, generator)
    test_x = sample_transitions(config.test_samples, generator)
    noise = torch.randn(config.train_samples, generator=generator) * config.label_noise
    data = (train_x, pendulum_reward(train_x) + noise, test_x, pendulum_reward(test_x))
    return [
        train_and_measure(name, model, data, config, progress(name, config.epochs))
        for name, model in build_models(config).items()
    ]


def reference_max_gradient(config: DemoConfig) -> float:
    """The steepest slope of the true reward on the demo's held-out states (about 6.5: the
    reward's constant is ``sqrt((2π)² + 1.6² + 0.004²)``)."""
    generator = torch.Generator().manual_seed(config.seed)
    sample_transitions(config.train_samples, generator)  # same stream as run_demo
    states = sample_transitions(config.test_samples, generator)
    return _max_gradient_norm(lambda x: pendulum_reward(x).unsqueeze(-1), states)


def write_results(
    reports: list[ModelReport], reference: float, config: DemoConfig, out: Path
) -> Path:
    """Write ``results.json`` (config, the true reward's steepest slope, per-model measurements)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    payload = {
        "demo": "layers",
        "config": asdict(config),
        "true_reward_max_gradient": reference,
        "models": [asdict(report) for report in reports],
    }
    path.write_text(json.dumps(payload, indent=2))
    return path
