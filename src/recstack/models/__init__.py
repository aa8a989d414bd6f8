"""Models: embedding-bag collection with pluggable backends, DLRM, and the DeepRecSys zoo.

Public API: `build_model(spec, backend, seed, device)` -> `RecModel`; `EmbeddingBagCollection`
(torch / fused / fbgemm backends); `describe(spec)` for sizes and FLOPs; `BACKENDS`.
"""

from recstack.models.base import RecModel
from recstack.models.build import FAMILIES, build_model
from recstack.models.describe import describe
from recstack.models.embedding import FBGEMM_OPTIMIZERS, EmbeddingBagCollection, available_backends
from recstack.models.mlp import MLP

__all__ = [
    "BACKENDS", "FAMILIES", "FBGEMM_OPTIMIZERS", "MLP", "EmbeddingBagCollection", "RecModel",
    "available_backends", "build_model", "describe",
]


def __getattr__(name: str) -> object:
    if name == "BACKENDS":  # "torch", "fused", and "fbgemm" when fbgemm_gpu imports (checked lazily)
        return available_backends()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
