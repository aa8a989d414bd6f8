"""Tiny models and hand-built stores for the trainer tests (no synthesiser needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recstack.data import StoreTable, StoreWriter
from recstack.spec import ModelSpec, TrainSpec


def tiny_spec(tables: int = 4, rows: int = 60, dim: int = 4, dense: int = 5, pooling: int = 2) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "tiny-dlrm",
        "dense_features": dense,
        "bottom_mlp": [16, dim],
        "top_mlp": [16, 1],
        "interaction": "dot",
        "table_groups": [{"name": "t", "count": tables, "rows": rows, "dim": dim, "pooling": pooling}],
    })


def make_store(path: Path, spec: ModelSpec, n: int = 2000, seed: int = 0, teacher: bool = True) -> Path:
    """Labels from a hidden logistic model of the dense features and per-row table effects."""
    rng = np.random.default_rng(seed)
    d = spec.dense_features
    pool = [int(t.pooling) for t in spec.tables]
    dense = rng.normal(size=(n, d)).astype(np.float32)
    ids = np.concatenate([rng.integers(0, t.rows, size=(n, p)) for t, p in zip(spec.tables, pool)], axis=1)
    w = rng.normal(size=d)
    effects = [rng.normal(size=t.rows) for t in spec.tables]
    z = dense @ w * 0.7
    col = 0
    for t, p, e in zip(spec.tables, pool, effects):
        z = z + e[ids[:, col : col + p]].sum(1) * 0.5
        col += p
    prob = 1 / (1 + np.exp(-(z - 0.5)))
    labels = (rng.random(n) < prob).astype(np.float32)
    tables = [StoreTable(t.name, t.rows, p) for t, p in zip(spec.tables, pool)]
    a, b = int(n * 0.8), int(n * 0.9)
    w_ = StoreWriter(path, d, tables)
    w_.append(dense, labels, ids=ids.astype(np.int32))
    extra = {}
    if teacher:
        from recstack.train.metrics import auc

        extra["teacher_auc"] = auc(labels[b:], prob[b:])
    w_.close({"train": (0, a), "val": (a, b), "test": (b, n)}, **extra)
    return path


def tiny_train_spec(**kw) -> TrainSpec:
    base = {"optimizer": "sgd", "lr": 0.2, "batch_size": 64, "steps": 20, "eval_batch_size": 256}
    base.update(kw)
    return TrainSpec.model_validate(base)


def write_config(path: Path, spec: ModelSpec, ts: TrainSpec | None = None) -> Path:
    """A model config YAML (ModelSpec fields + train section) for the CLI."""
    import yaml

    doc = spec.model_dump()
    if ts is not None:
        doc["train"] = ts.model_dump()
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def train_losses(run: Path) -> list[float]:
    from recstack.io import read_jsonl

    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
