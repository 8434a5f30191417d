"""The digits MLP the benchmarks share: scikit-learn's digits (pixels scaled to [0, 1]), a fixed
seeded split, and an MLP 64-256-256-10 trained with Adam, optionally under Gaussian noise."""

from __future__ import annotations

import torch
from torch import nn


def trained_digits_mlp(
    epochs: int = 30, noise: float = 0.0
) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, float]:
    """``(model in eval mode, test inputs, test labels, clean test accuracy)``; 1400 training
    digits, the other 397 for testing; ``noise`` is the σ of Gaussian data augmentation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train))].split(64):
            inputs = x[batch] + noise * torch.randn_like(x[batch]) if noise else x[batch]
            loss = nn.functional.cross_entropy(model(inputs), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model, x[test], y[test], accuracy
