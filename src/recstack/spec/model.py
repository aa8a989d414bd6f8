"""Model specs: what a recommendation model is, independent of how it is built or run.

`ModelSpec` is the object every capability shares (data generation, models, training,
sharding, performance model). YAML configs list tables compactly as groups with a `count`;
`ModelSpec.tables` is always the expanded per-table list.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Family = Literal["dlrm", "ncf", "wnd", "mtwnd", "din", "dien"]
Interaction = Literal["dot", "cat", "dcn"]
PoolingDist = Literal["fixed", "poisson", "uniform"]
DType = Literal["fp32", "fp16", "bf16", "int8"]

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TableSpec(_Strict):
    """One embedding table.

    `pooling` is the mean number of lookups per bag (the pooling factor). With
    `pooling_dist="fixed"` every bag has exactly `pooling` lookups; "poisson" draws
    1 + Poisson(pooling - 1); "uniform" draws from [1, 2*pooling - 1].
    `zipf` is the exponent of the power-law row-access distribution used by the
    synthetic generator (0 = uniform). `reuse_bins` optionally holds a measured 17-bin
    reuse histogram (fraction of accesses per reuse-count bin, REFERENCE.md section 8).
    """

    name: str
    rows: int = Field(gt=0)
    dim: int = Field(gt=0)
    pooling: float = Field(default=1.0, gt=0)
    pooling_dist: PoolingDist = "fixed"
    zipf: float = Field(default=1.05, ge=0)
    dtype: DType = "fp32"
    reuse_bins: list[float] | None = None

    @field_validator("reuse_bins")
    @classmethod
    def _bins(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and len(v) != 17:
            raise ValueError(f"reuse_bins must have 17 entries, got {len(v)}")
        return v

    @property
    def bytes(self) -> int:
        return self.rows * self.dim * DTYPE_BYTES[self.dtype]

    @property
    def max_pooling(self) -> int:
        """Upper bound on lookups per bag (used to size fixed buffers)."""
        if self.pooling_dist == "fixed":
            return round(self.pooling)
        return max(1, round(2 * self.pooling - 1)) if self.pooling_dist == "uniform" else 0


class TableGroup(_Strict):
    """YAML shorthand: `count` identical tables named `{name}_{i}` (or `name` when count is 1)."""

    name: str
    count: int = Field(default=1, gt=0)
    rows: int | list[int] = Field(description="rows per table, or one value per table")
    dim: int = Field(gt=0)
    pooling: float | list[float] = 1.0
    pooling_dist: PoolingDist = "fixed"
    zipf: float = Field(default=1.05, ge=0)
    dtype: DType = "fp32"

    @model_validator(mode="after")
    def _lists_match(self) -> TableGroup:
        for field in ("rows", "pooling"):
            v = getattr(self, field)
            if isinstance(v, list) and len(v) != self.count:
                raise ValueError(f"{field} has {len(v)} entries but count is {self.count}")
        return self

    def expand(self) -> list[TableSpec]:
        out = []
        for i in range(self.count):
            rows = self.rows[i] if isinstance(self.rows, list) else self.rows
            pool = self.pooling[i] if isinstance(self.pooling, list) else self.pooling
            name = self.name if self.count == 1 else f"{self.name}_{i}"
            out.append(
                TableSpec(
                    name=name, rows=rows, dim=self.dim, pooling=pool,
                    pooling_dist=self.pooling_dist, zipf=self.zipf, dtype=self.dtype,
                )
            )
        return out


class ModelSpec(_Strict):
    """A recommendation model.

    Common parts: `dense_features` inputs through `bottom_mlp` (hidden sizes; empty means
    the dense features pass through unchanged), one sum-pooled embedding bag per table,
    an `interaction`, and `top_mlp` (hidden sizes ending in the output width).
    Family-specific parts are ignored by families that do not use them:
    - dcn: `dcn_layers`, `dcn_low_rank` (DCNv2 cross layers before the top MLP)
    - mtwnd: `num_tasks` task towers of sizes `task_tower` (+1 output each)
    - din: `behaviour_tables` (names or group prefixes) form the behaviour sequence,
      `attention_mlp` sizes the attention unit
    - dien: same behaviour tables, `gru_hidden` sizes the interest-extractor GRU
    - ncf: `ncf_mf_tables` are used by the matrix-factorisation branch
    """

    name: str
    family: Family = "dlrm"
    description: str = ""
    dense_features: int = Field(ge=0)
    bottom_mlp: list[int] = Field(default_factory=list)
    top_mlp: list[int]
    interaction: Interaction = "dot"
    tables: list[TableSpec]
    dcn_layers: int = Field(default=3, ge=0)
    dcn_low_rank: int = Field(default=512, gt=0)
    num_tasks: int = Field(default=1, gt=0)
    task_tower: list[int] = Field(default_factory=list)
    behaviour_tables: list[str] = Field(default_factory=list)
    attention_mlp: list[int] = Field(default_factory=lambda: [80, 40])
    gru_hidden: int = Field(default=64, gt=0)
    ncf_mf_tables: list[str] = Field(default_factory=list)
    source: str = Field(default="", description="where the figures come from")

    @model_validator(mode="before")
    @classmethod
    def _expand_groups(cls, data: object) -> object:
        if isinstance(data, dict) and "table_groups" in data:
            data = dict(data)
            groups = data.pop("table_groups")
            tables = list(data.get("tables", []))
            for i, g in enumerate(groups):
                grp = g if isinstance(g, TableGroup) else TableGroup.model_validate(g)
                tables.extend(t.model_dump() for t in grp.expand())
                del i
            data["tables"] = tables
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if not self.tables:
            raise ValueError("tables: a model needs at least one embedding table")
        names = [t.name for t in self.tables]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tables: duplicate table names {sorted(dup)}")
        if not self.top_mlp:
            raise ValueError("top_mlp: needs at least the output layer")
        if self.family == "dlrm" and self.interaction == "dot":
            d = self.bottom_out
            bad = [t.name for t in self.tables if t.dim != d]
            if bad:
                raise ValueError(
                    f"tables: dot interaction needs every table dim == bottom MLP output {d}; "
                    f"{bad[0]} has dim {self.table(bad[0]).dim}"
                )
        for t in self.behaviour_tables + self.ncf_mf_tables:
            if not self.tables_matching(t):
                raise ValueError(f"table {t!r} named in the spec is not among its tables")
        return self

    # ----- derived figures (pure arithmetic; no torch) -----
    @property
    def bottom_out(self) -> int:
        return self.bottom_mlp[-1] if self.bottom_mlp else self.dense_features

    @property
    def num_tables(self) -> int:
        return len(self.tables)

    def table(self, name: str) -> TableSpec:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    def tables_matching(self, name_or_prefix: str) -> list[TableSpec]:
        """Tables named exactly `name_or_prefix`, or the members `{prefix}_{i}` of a group."""
        exact = [t for t in self.tables if t.name == name_or_prefix]
        if exact:
            return exact
        return [t for t in self.tables if t.name.rsplit("_", 1)[0] == name_or_prefix]

    @property
    def embedding_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def embedding_params(self) -> int:
        return sum(t.rows * t.dim for t in self.tables)

    @property
    def embedding_bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    @property
    def lookups_per_sample(self) -> float:
        return sum(t.pooling for t in self.tables)

    @property
    def embedding_read_bytes_per_sample(self) -> float:
        """Bytes of embedding rows read per sample (forward), the quantity behind emb GB/s."""
        return sum(t.pooling * t.dim * DTYPE_BYTES[t.dtype] for t in self.tables)

    @property
    def uniform_pooling(self) -> bool:
        return all(t.pooling_dist == "fixed" for t in self.tables)

    def scaled(self, scale: float) -> ModelSpec:
        """Copy with every table's rows multiplied by `scale` (at least 1 row)."""
        if scale <= 0 or not math.isfinite(scale):
            from recstack.errors import ConfigError

            raise ConfigError(f"--scale must be a positive number, got {scale}")
        if scale == 1.0:
            return self.model_copy(deep=True)
        tables = [t.model_copy(update={"rows": max(1, round(t.rows * scale))}) for t in self.tables]
        return self.model_copy(update={"tables": tables}, deep=True)
