"""Embedding-sharding specs shared by pools, tasks, planners, cost measurement and plans.

A `ShardTable` is what a sharder knows about a table (REFERENCE.md section 8: rows, dim,
pooling factor, size, 17 reuse bins) plus the generator parameters that reproduce its index
batches. A `ShardTask` is a set of tables to place on devices with a memory cap; a
`ShardingPlan` says, per table, how it is split and where the pieces go (exportable to TorchRec).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
SHARDING_TYPES = ("table_wise", "column_wise", "row_wise", "table_row_wise", "data_parallel")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardTable(_Strict):
    name: str
    rows: int = Field(gt=0)
    dim: int = Field(gt=0)
    pooling: float = Field(gt=0, description="mean indices per bag (pooling factor)")
    zipf: float = Field(default=0.0, ge=0, description="row-popularity exponent of the index generator")
    pooling_cv: float = Field(default=1.0, ge=0, description="coefficient of variation of bag sizes")
    reuse: list[float] = Field(default_factory=list, description="17 reuse-factor bins (share of accesses)")
    dtype: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"

    @property
    def bytes(self) -> int:
        return self.rows * self.dim * DTYPE_BYTES[self.dtype]

    @model_validator(mode="after")
    def _bins(self) -> ShardTable:
        if self.reuse and len(self.reuse) != 17:
            raise ValueError(f"reuse must have 17 bins, got {len(self.reuse)}")
        return self


class TablePool(_Strict):
    name: str
    seed: int = 0
    source: str = Field(default="", description="how the pool was made (calibration target, data file)")
    tables: list[ShardTable] = Field(min_length=1)
    calibration: dict = Field(default_factory=dict)


class ShardTask(_Strict):
    id: int = Field(ge=0)
    tables: list[ShardTable] = Field(min_length=1)
    devices: int = Field(gt=0)
    mem_bytes: int = Field(gt=0, description="memory cap per device")
    batch_size: int = Field(default=65536, gt=0)
    split: Literal["train", "test", "all"] = "all"


class TaskSet(_Strict):
    pool: str
    seed: int = 0
    tasks: list[ShardTask] = Field(min_length=1)


class TableSharding(_Strict):
    """How one table is placed: the sharding type, the ranks holding its shards, and each shard's
    [rows, cols] size and [row, col] offset into the table."""

    sharding_type: Literal["table_wise", "column_wise", "row_wise", "table_row_wise", "data_parallel"]
    ranks: list[int] = Field(min_length=1)
    shard_sizes: list[list[int]] = Field(default_factory=list)
    shard_offsets: list[list[int]] = Field(default_factory=list)
    compute_kernel: str = "fused"

    @model_validator(mode="after")
    def _shards(self) -> TableSharding:
        if any(r < 0 for r in self.ranks):
            raise ValueError("ranks must be >= 0")
        if self.sharding_type == "table_wise" and len(self.ranks) != 1:
            raise ValueError("table_wise puts the table on exactly one rank")
        if self.shard_sizes and len(self.shard_sizes) != len(self.ranks):
            raise ValueError(f"{len(self.shard_sizes)} shard sizes for {len(self.ranks)} ranks")
        if self.shard_offsets and len(self.shard_offsets) != len(self.shard_sizes):
            raise ValueError("shard_offsets must match shard_sizes")
        return self


class ShardingPlan(_Strict):
    """The plan file format (JSON): `{"format": "recstack-sharding-plan/1", "devices": D,
    "tables": {name: TableSharding}, ...}`."""

    format: Literal["recstack-sharding-plan/1"] = "recstack-sharding-plan/1"
    planner: str = ""
    task: int | None = None
    devices: int = Field(gt=0)
    tables: dict[str, TableSharding]
    meta: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ranks(self) -> ShardingPlan:
        for name, t in self.tables.items():
            bad = [r for r in t.ranks if r >= self.devices]
            if bad:
                raise ValueError(f"table {name!r}: rank {bad[0]} outside 0..{self.devices - 1}")
        return self

    def rank_of(self) -> dict[str, int]:
        """Table -> rank, for table-wise plans (what the trainer's table placement takes)."""
        out = {}
        for name, t in self.tables.items():
            if t.sharding_type != "table_wise":
                raise ValueError(f"table {name!r} is {t.sharding_type}; only table_wise maps to one rank")
            out[name] = t.ranks[0]
        return out
