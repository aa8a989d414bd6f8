"""DLRM: bottom MLP, sum-pooled embeddings, interaction (dot, cat, dcn), top MLP -> one logit."""

from __future__ import annotations

import torch
from torch import nn

from recstack.models.base import RecModel
from recstack.models.embedding import EmbeddingBagCollection
from recstack.models.interaction import CrossNetV2, DotInteraction, dot_output_width
from recstack.models.mlp import MLP
from recstack.spec import ModelSpec


def bottom_block(spec: ModelSpec, gen: torch.Generator) -> nn.Module:
    """The bottom MLP (ReLU after every layer), or identity when `bottom_mlp` is empty."""
    if not spec.bottom_mlp:
        return nn.Identity()
    return MLP([spec.dense_features, *spec.bottom_mlp], relu_last=True, seed_gen=gen)


def top_input_width(spec: ModelSpec) -> int:
    """Input width of DLRM's top MLP for the spec's interaction."""
    d = spec.bottom_out
    if spec.interaction == "dot":
        return dot_output_width(spec.num_tables + 1, d)
    return d + sum(t.dim for t in spec.tables)


class DLRM(RecModel):
    """DLRM; also the DeepRecSys RMC1-3 models (interaction `cat`)."""

    def __init__(self, spec: ModelSpec, embeddings: EmbeddingBagCollection, gen: torch.Generator) -> None:
        super().__init__(spec, embeddings, 1)
        self.bottom = bottom_block(spec, gen)
        width = top_input_width(spec)
        self.interaction: nn.Module | None = None
        self.cross: CrossNetV2 | None = None
        if spec.interaction == "dot":
            self.interaction = DotInteraction(spec.num_tables + 1)
        elif spec.interaction == "dcn":
            self.cross = CrossNetV2(width, spec.dcn_layers, spec.dcn_low_rank, gen)
        self.top = MLP([width, *spec.top_mlp], relu_last=False, seed_gen=gen)

    def dense_forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottom(dense)
        if self.interaction is not None:
            z = self.interaction(x, pooled)
        else:
            z = torch.cat([x, *pooled], dim=1)
            if self.cross is not None:
                z = self.cross(z)
        return self._logits(self.top(z))
