"""`build_model`: a ModelSpec to a ready RecModel."""

from __future__ import annotations

import torch

from recstack.errors import ConfigError
from recstack.models.base import RecModel
from recstack.models.dlrm import DLRM
from recstack.models.embedding import EmbeddingBagCollection
from recstack.models.init import dense_generator
from recstack.models.zoo import DIEN, DIN, NCF, MultiTaskWideAndDeep, WideAndDeep
from recstack.spec import ModelSpec

FAMILIES: dict[str, type[RecModel]] = {
    "dlrm": DLRM, "ncf": NCF, "wnd": WideAndDeep, "mtwnd": MultiTaskWideAndDeep, "din": DIN, "dien": DIEN,
}


def build_model(
    spec: ModelSpec,
    backend: str = "torch",
    seed: int = 0,
    device: torch.device | str = "cpu",
    table_ids: list[int] | None = None,
    **embedding_kwargs: object,
) -> RecModel:
    """Build the model for `spec` with the given embedding backend.

    Same (spec, seed) gives bit-identical weights with every backend and on every device.
    `embedding_kwargs` go to EmbeddingBagCollection (e.g. fbgemm_optimizer="rowwise_adagrad",
    learning_rate=0.1 for the fbgemm backend's fused optimizer).
    `table_ids` builds a model-parallel shard: the full dense part, but embeddings holding only
    those global tables (weights equal to the full model's). Such a model is driven through
    `dense_forward(dense, pooled)` with all tables' pooled outputs (gathered from other ranks).
    """
    if spec.family not in FAMILIES:
        raise ConfigError(f"family: unknown model family {spec.family!r}")
    if spec.family == "dlrm" and spec.top_mlp[-1] != 1:
        raise ConfigError(f"top_mlp: family dlrm needs the last size 1 (one logit), got {spec.top_mlp[-1]}")
    tables = spec.tables if table_ids is None else [spec.tables[t] for t in table_ids]
    emb = EmbeddingBagCollection(
        tables, backend=backend, seed=seed, table_ids=table_ids, device=device, **embedding_kwargs
    )
    model = FAMILIES[spec.family](spec, emb, dense_generator(seed))
    return model.to(device)
