"""Walking a module tree as its forward pass does.

``nn.Module.named_children`` lists a module placed under several names once, but
``nn.Sequential.forward`` calls it at every place: a walk that proves, exports or rewrites a
model by ``named_children`` would drop the later places (for a bound, a factor left out).
"""

from __future__ import annotations

from torch import nn


def placed_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, child)`` for every place of a child, in registration order (the order
    ``nn.Sequential`` calls them), a module placed twice listed twice."""
    return [(name, child) for name, child in module._modules.items() if child is not None]
