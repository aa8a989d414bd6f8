"""Index batches for a `ShardTable`: what cost measurement feeds each table's lookups.

Bag sizes are drawn from a gamma distribution with the table's mean pooling factor and
coefficient of variation (rounded, at least 0), row ids from a bounded Zipf over the table's
rows with the table's exponent, mapped through a keyed permutation so hot rows are scattered.
Deterministic in (table, batch size, seed).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from recstack.data._synth_sampling import KeyedPermutation, ZipfSampler
from recstack.spec.sharding import ShardTable


def _table_key(table: ShardTable, seed: int) -> int:
    return zlib.crc32(f"{table.name}:{table.rows}:{seed}".encode())


def bag_sizes(table: ShardTable, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    mean, cv = float(table.pooling), float(table.pooling_cv)
    if cv == 0.0:
        return np.full(batch_size, round(mean), dtype=np.int64)
    shape = 1.0 / (cv * cv)
    return np.maximum(0, np.rint(rng.gamma(shape, mean / shape, size=batch_size))).astype(np.int64)


def generate_indices(table: ShardTable, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices int64 [nnz], offsets int64 [batch_size + 1]) for one batch of one table."""
    rng = np.random.default_rng([seed, _table_key(table, seed)])
    lengths = bag_sizes(table, batch_size, rng)
    ranks = ZipfSampler(table.rows, table.zipf).sample(rng, int(lengths.sum()))
    ids = KeyedPermutation(table.rows, _table_key(table, 7919))(ranks) if table.rows > 1 else ranks
    offsets = np.zeros(batch_size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)), torch.from_numpy(offsets)
