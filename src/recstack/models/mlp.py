"""The MLP block shared by every model (bottom, top, towers, attention units).

Plain first version: a stack of Linear (+ReLU) layers with the reference initialisation.
The constructor signature is a stable contract; the internals may be optimised.
"""

from __future__ import annotations

import torch
from torch import nn

from recstack.models.init import init_linear


class MLP(nn.Module):
    """Linear+ReLU layers over `sizes` (input width first, e.g. [13, 512, 256, 64, 16]).

    `relu_last=False` leaves the last layer linear (a logit); `sigmoid_last=True` applies a
    sigmoid after it instead. Weights come from `seed_gen` (the global RNG when None), in order.
    """

    def __init__(
        self,
        sizes: list[int],
        sigmoid_last: bool = False,
        relu_last: bool = True,
        seed_gen: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"MLP needs an input and at least one layer size, got {sizes}")
        self.sizes = list(sizes)
        layers: list[nn.Module] = []
        n = len(sizes) - 1
        for i in range(n):
            layers.append(init_linear(nn.Linear(sizes[i], sizes[i + 1]), seed_gen))
            last = i == n - 1
            if last and sigmoid_last:
                layers.append(nn.Sigmoid())
            elif not last or relu_last:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
