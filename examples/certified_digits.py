"""Train a 1-Lipschitz CNN on digits and certify it: clean and certified accuracy at ε = 36/255.

8×8 digit images (ship with scikit-learn) scaled to [0, 1]; a :class:`~lipguard.nn.LipschitzCNN`
(AOL convolutions, MaxMin, PixelUnshuffle) trained with the offset cross-entropy. A test image
is certified when its logit margin exceeds √2·L·ε, with L the bound *proven* for the trained
model; no perturbation of ℓ2 norm ≤ ε can change its prediction.

    python examples/certified_digits.py
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from lipguard.nn import LipschitzCNN
from lipguard.train import fit_certified, lipschitz_certified_accuracy

torch.set_num_threads(1)  # small convolutions: one thread is fastest
data = load_digits()
x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
y = torch.tensor(data.target)
order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
train, test = order[:1347], order[1347:]

torch.manual_seed(0)
model = LipschitzCNN((1, 8, 8), 10, channels=(16, 32), lipschitz=1.0)
fit_certified(model, x[train], y[train], eps=0.3, epochs=20)

bound = model.certified_lipschitz()  # proven for the trained weights, rounding included
result = lipschitz_certified_accuracy(model, x[test], y[test], eps=36 / 255, lipschitz=bound)
print(f"certified bound: {bound}")
print(f"clean accuracy: {result.clean:.1%}, certified at ε = 36/255: {result.certified:.1%}")
assert bound.value <= 1.0
assert result.clean > 0.85
assert result.certified > 0.7
