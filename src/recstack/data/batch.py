"""recstack's own batch types.

`SparseBatch` uses the table-batched (TBE) layout that FBGEMM and recstack's fused
embedding backend consume directly: one flat `indices` tensor holding table 0's bags for
all B samples, then table 1's, and so on, and `offsets` of length T*B+1 into it.
It converts to and from TorchRec's KeyedJaggedTensor, whose layout is the same
(key-major values with per-key lengths).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseBatch:
    indices: torch.Tensor  # int64 [nnz]
    offsets: torch.Tensor  # int64 [T*B + 1], offsets[0] == 0
    num_tables: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.offsets.numel() != self.num_tables * self.batch_size + 1:
            raise ValueError(
                f"offsets has {self.offsets.numel()} entries, expected T*B+1 = "
                f"{self.num_tables * self.batch_size + 1}"
            )

    @classmethod
    def from_fixed(cls, ids: torch.Tensor, pooling: list[int]) -> SparseBatch:
        """From a sample-major [B, sum(pooling)] id matrix whose columns are grouped by table."""
        b = ids.shape[0]
        cols = torch.split(ids, pooling, dim=1)
        indices = torch.cat([c.reshape(-1) for c in cols]).long()
        lengths = torch.tensor(pooling, dtype=torch.long).repeat_interleave(b)
        offsets = torch.zeros(len(pooling) * b + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        return cls(indices, offsets, len(pooling), b)

    @classmethod
    def from_lengths(cls, indices: torch.Tensor, lengths: torch.Tensor, num_tables: int) -> SparseBatch:
        """From table-major indices and per-(table, sample) lengths of shape [T*B] or [T, B]."""
        lengths = lengths.reshape(-1).long()
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        return cls(indices.long(), offsets, num_tables, lengths.numel() // num_tables)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def table(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, offsets relative to the table's first index, length B+1) of table t."""
        b = self.batch_size
        off = self.offsets[t * b : (t + 1) * b + 1]
        start = int(off[0])
        return self.indices[start : int(off[-1])], off - start

    def select_tables(self, tables: list[int]) -> SparseBatch:
        """The sub-batch of the given tables (in that order), e.g. one rank's shard."""
        parts, lens = [], []
        b = self.batch_size
        for t in tables:
            idx, off = self.table(t)
            parts.append(idx)
            lens.append(off[1:] - off[:-1])
        if not tables:
            return SparseBatch(self.indices[:0], torch.zeros(1, dtype=torch.long), 0, b)
        return SparseBatch.from_lengths(torch.cat(parts), torch.cat(lens), len(tables))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseBatch:
        return SparseBatch(
            self.indices.to(device, non_blocking=non_blocking),
            self.offsets.to(device, non_blocking=non_blocking),
            self.num_tables,
            self.batch_size,
        )

    def to_kjt(self, keys: list[str]):  # -> torchrec.KeyedJaggedTensor
        from torchrec import KeyedJaggedTensor

        if len(keys) != self.num_tables:
            raise ValueError(f"{len(keys)} keys for {self.num_tables} tables")
        return KeyedJaggedTensor(keys=list(keys), values=self.indices, lengths=self.lengths)

    @classmethod
    def from_kjt(cls, kjt, keys: list[str] | None = None) -> SparseBatch:
        """From a KeyedJaggedTensor; `keys` picks and orders the features (default: kjt's order)."""
        if keys is not None and list(keys) != list(kjt.keys()):
            kjt = kjt.permute([kjt.keys().index(k) for k in keys])
        n = len(kjt.keys())
        return cls.from_lengths(kjt.values(), kjt.lengths(), n)


@dataclass
class Batch:
    dense: torch.Tensor  # float32 [B, dense_features]
    sparse: SparseBatch
    labels: torch.Tensor  # float32 [B] (or [B, tasks] for multi-task models)

    @property
    def batch_size(self) -> int:
        return self.sparse.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )
