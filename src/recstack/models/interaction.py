"""Feature interactions between the bottom-MLP output and the pooled embeddings."""

from __future__ import annotations

import torch
from torch import nn

from recstack.models.init import init_linear


def dot_output_width(num_features: int, dim: int) -> int:
    """Width of the `dot` interaction: F(F-1)/2 pairwise products plus the dense vector."""
    return num_features * (num_features - 1) // 2 + dim


class DotInteraction(nn.Module):
    """Strict lower triangle of the pairwise dot products of [x, e_1..e_T], concatenated after x.

    Computes the full [F, F] Gram matrix with one bmm (F*F*d multiply-accumulates per sample)
    and gathers its F(F-1)/2 strict-lower-triangle entries (row-major order, as the reference).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        li, lj = torch.tril_indices(num_features, num_features, offset=-1)
        self.register_buffer("flat_idx", li * num_features + lj, persistent=False)
        self.num_features = num_features

    def forward(self, x: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        feats = torch.stack([x, *pooled], dim=1)  # [B, F, d]
        gram = torch.bmm(feats, feats.transpose(1, 2)).flatten(1)  # [B, F*F]
        return torch.cat([x, gram.index_select(1, self.flat_idx)], dim=1)


class CrossNetV2(nn.Module):
    """DCNv2 low-rank cross network: x_{l+1} = x0 * (U (V x_l) + b) + x_l, for `layers` layers.

    V: [rank, D] (no bias), U: [D, rank] with bias b; reference Linear initialisation.
    """

    def __init__(self, width: int, layers: int, rank: int, seed_gen: torch.Generator | None = None) -> None:
        super().__init__()
        self.v = nn.ModuleList(init_linear(nn.Linear(width, rank, bias=False), seed_gen) for _ in range(layers))
        self.u = nn.ModuleList(init_linear(nn.Linear(rank, width), seed_gen) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for v, u in zip(self.v, self.u):
            x = x0 * u(v(x)) + x
        return x
