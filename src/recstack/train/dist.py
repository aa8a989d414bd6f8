"""Hybrid parallelism pieces: table placement, the pooled-embedding all-to-all, process groups.

The scheme is DLRM's: MLPs are data-parallel (DDP, each rank runs its slice of the global
batch), embedding tables are model-parallel table-wise (each rank holds whole tables and looks
them up for the whole global batch). An all-to-all then hands every rank the pooled vectors of
all tables for its own batch slice; its backward sends the gradients back to the owners.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from recstack.errors import ConfigError
from recstack.io import read_json
from recstack.spec import TableSpec


# ---------------------------------------------------------------- placement
def table_cost(t: TableSpec) -> float:
    """Balance weight of a table: bytes (memory) times pooling (lookup traffic)."""
    return float(t.bytes) * max(t.pooling, 1.0)


def place_tables(tables: list[TableSpec], world_size: int, plan: dict[str, int] | None = None) -> list[int]:
    """Rank of each table (in table order).

    Tables named in `plan` go where it says; the rest are placed greedily, largest cost first,
    on the rank with the least cost so far (ties to the lower rank), which is deterministic.
    """
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    names = [t.name for t in tables]
    ranks: list[int | None] = [None] * len(tables)
    load = [0.0] * world_size
    if plan:
        unknown = sorted(set(plan) - set(names))
        if unknown:
            raise ConfigError(f"plan: table {unknown[0]!r} is not a table of the model")
        for i, t in enumerate(tables):
            if t.name in plan:
                r = plan[t.name]
                if not isinstance(r, int) or not 0 <= r < world_size:
                    raise ConfigError(
                        f"plan: table {t.name!r} on rank {r!r}, but ranks are 0..{world_size - 1}"
                    )
                ranks[i] = r
                load[r] += table_cost(t)
    free = [i for i in range(len(tables)) if ranks[i] is None]
    order = sorted(free, key=lambda i: (-table_cost(tables[i]), i))
    for i in order:
        r = min(range(world_size), key=lambda k: (load[k], k))
        ranks[i] = r
        load[r] += table_cost(tables[i])
    return [int(r) for r in ranks]  # type: ignore[arg-type]


def _sharding_plan_ranks(data: dict, p: Path) -> dict[str, int]:
    """Table -> rank of a `recstack-sharding-plan/1` plan whose tables are each whole on one rank."""
    from recstack.spec import ShardingPlan, validate

    plan = validate(ShardingPlan, data, str(p))
    out: dict[str, int] = {}
    split = []
    for name, t in plan.tables.items():
        # table_wise, or any type with a single shard at the origin (TorchRec may call a whole table on
        # one rank column_wise): the table lives whole on that rank.
        whole = t.sharding_type == "table_wise" or (
            t.sharding_type != "data_parallel" and len(t.ranks) == 1
            and all(o == [0, 0] for o in t.shard_offsets))
        if whole:
            out[name] = t.ranks[0]
        else:
            split.append(f"{name!r} is {t.sharding_type} over ranks {t.ranks}")
    if split:
        more = f" (and {len(split) - 1} more)" if len(split) > 1 else ""
        raise ConfigError(f"{p}: table {split[0]}{more}: the trainer places whole tables on ranks, so it "
                          f"takes table-wise plans only (plan with a table-wise planner, e.g. "
                          f"size-lookup-greedy or torchrec-table-wise)")
    return out


def load_plan(path: str | Path) -> dict[str, int]:
    """Read a table placement: a sharding plan (`{"format": "recstack-sharding-plan/1", ...}`, as
    `recstack shard plan` writes; table-wise tables only), or a `{table_name: rank}` JSON (also
    accepted under a top-level "placement" key)."""
    p = Path(path)
    data = read_json(p, "plan file")
    if isinstance(data, dict) and "format" in data:
        return _sharding_plan_ranks(data, p)
    if isinstance(data, dict) and isinstance(data.get("placement"), dict):
        data = data["placement"]
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise ConfigError(f"{p}: plan must map table names to integer ranks")
    return {str(k): int(v) for k, v in data.items()}


def slice_sizes(batch_size: int, world_size: int) -> list[int]:
    """Samples of a global batch per rank: as even as possible, the remainder to the low ranks."""
    q, r = divmod(batch_size, world_size)
    return [q + (1 if k < r else 0) for k in range(world_size)]


# ---------------------------------------------------------------- the exchange
class _AllToAll(torch.autograd.Function):
    """all_to_all_single with the reverse exchange (times `grad_scale`) as its backward."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, grad_scale, group):  # type: ignore[override]
        ctx.splits = (out_splits, in_splits)
        ctx.grad_scale = grad_scale
        ctx.group = group
        out = x.new_empty(sum(out_splits))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        out_splits, in_splits = ctx.splits
        gin = g.new_empty(sum(in_splits))
        dist.all_to_all_single(gin, g.contiguous(), in_splits, out_splits, group=ctx.group)
        if ctx.grad_scale != 1.0:
            gin.mul_(ctx.grad_scale)
        return gin, None, None, None, None


@dataclass
class Exchange:
    """Static description of one rank's view of the pooled-embedding all-to-all.

    `owned` are the global indices of this rank's tables (in order), `owners[r]` those of rank r;
    `dims` the embedding width of every table.
    """

    rank: int
    world_size: int
    owners: list[list[int]]
    dims: list[int]
    group: object = None

    @property
    def owned(self) -> list[int]:
        return self.owners[self.rank]

    def width(self, r: int) -> int:
        return sum(self.dims[t] for t in self.owners[r])

    def __call__(self, pooled: list[torch.Tensor], sizes: list[int], grad_scale: float) -> list[torch.Tensor]:
        """Pooled [B_global, dim_t] of the owned tables -> pooled [B_local, dim_t] of all tables.

        `sizes` are the per-rank slice sizes of the global batch (rank r gets rows
        sum(sizes[:r]) .. sum(sizes[:r+1])).
        """
        me, w = self.rank, self.world_size
        ref = pooled[0] if pooled else None
        if ref is None:
            dtype, device = torch.float32, torch.device("cpu")
        else:
            dtype, device = ref.dtype, ref.device
        my_w = self.width(me)
        if pooled:
            x = torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]  # [B, my_w]
        else:
            # A rank without tables still takes part in the backward exchange: its (empty) input
            # must require grad so autograd records the collective here too.
            x = torch.zeros(sum(sizes), 0, dtype=dtype, device=device, requires_grad=torch.is_grad_enabled())
        # Row slices are contiguous in x, so the flattened tensor is already in send order.
        in_splits = [sizes[r] * my_w for r in range(w)]
        out_splits = [sizes[me] * self.width(r) for r in range(w)]
        y = _AllToAll.apply(x.reshape(-1), out_splits, in_splits, grad_scale, self.group)
        out: list[torch.Tensor | None] = [None] * len(self.dims)
        for r, chunk in enumerate(torch.split(y, out_splits)):
            if not self.owners[r]:
                continue
            block = chunk.view(sizes[me], self.width(r))
            for t, col in zip(self.owners[r], torch.split(block, [self.dims[t] for t in self.owners[r]], 1)):
                out[t] = col
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------- process groups
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    """True when started by torchrun / torch.distributed.run (which sets these variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def init_group(device: str, rank: int | None = None, world_size: int | None = None,
               init_method: str | None = None) -> DistInfo:
    """Join (or create) the default process group; env:// when rank/world come from torchrun."""
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if rank is None:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        init_method = "env://"
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    assert world_size is not None
    kw = {}
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        kw["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(
        backend_for(device), init_method=init_method, rank=rank, world_size=world_size, **kw
    )
    return DistInfo(rank, world_size, local_rank)


def shutdown_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
