"""`RecModel`: the interface every model family implements (the trainer and sharding rely on it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recstack.data.batch import SparseBatch
from recstack.models.embedding import EmbeddingBagCollection
from recstack.spec import ModelSpec

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor


class RecModel(nn.Module):
    """A recommendation model = embedding collection + dense part.

    `dense_forward(dense, pooled)` is split out so model-parallel training can run the
    embeddings elsewhere (sharded) and feed the pooled outputs in. Logits are [B] when
    `num_outputs == 1`, else [B, num_outputs]; sigmoid lives in the loss.
    """

    spec: ModelSpec
    embeddings: EmbeddingBagCollection
    num_outputs: int

    def __init__(self, spec: ModelSpec, embeddings: EmbeddingBagCollection, num_outputs: int = 1) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = embeddings
        self.num_outputs = num_outputs

    def dense_forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, dense: torch.Tensor, sparse: SparseBatch | KeyedJaggedTensor) -> torch.Tensor:
        return self.dense_forward(dense, self.embeddings(sparse))

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the embedding tables (dense gradients)."""
        return [p for n, p in self.named_parameters() if not n.startswith("embeddings.")]

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding weights: sparse gradients (torch, fused), or updated inside backward (fbgemm)."""
        return self.embeddings.sparse_parameters()

    @property
    def fused_optimizer(self) -> bool:
        """True when embeddings update themselves in backward; do not step sparse_parameters()."""
        return self.embeddings.fused_optimizer

    @staticmethod
    def _logits(x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1)
