"""Sharding plans as files: the `recstack-sharding-plan/1` JSON format, checks against a task, summaries.

A plan (`recstack.spec.ShardingPlan`) says, per table, its sharding type, the ranks holding its
shards, and each shard's [rows, cols] size and [row, col] offset into the table:

    {"format": "recstack-sharding-plan/1", "planner": "size-greedy", "task": 3, "devices": 4,
     "tables": {"t_0": {"sharding_type": "table_wise", "ranks": [2],
                        "shard_sizes": [[100000, 64]], "shard_offsets": [[0, 0]],
                        "compute_kernel": "fused"}, ...},
     "meta": {"planning_s": 0.0004, "seed": 0}}

`check_plan` verifies a plan against its task: the same tables, shards that tile each table
exactly, and every device's bytes within the task's memory cap. A data-parallel table is a full
replica on every rank (its shard_sizes list the replicas). Sizes and offsets may be left out
where they are implied (`filled`: whole tables, even column blocks, TorchRec's row blocks); every
consumer of a plan (checks, memory, measurement) reads it through `filled`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from recstack.errors import ConfigError
from recstack.io import atomic_write_json, read_json
from recstack.spec import ShardingPlan, ShardTable, ShardTask, TableSharding, validate
from recstack.spec.sharding import DTYPE_BYTES

PLAN_FORMAT = "recstack-sharding-plan/1"


# ---------------------------------------------------------------- formatting
def fmt_bytes(n: float) -> str:
    """Bytes in decimal units with 3 significant digits: 5.00 GB, 23.4 GB, 812 MB, 12.0 kB."""
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            v = n / f
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}" if v >= 10 else f"{v:.2f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------- tasks
def load_task(path: str | Path, task_id: int) -> ShardTask:
    """Task `task_id` (its `id` field) of a TaskSet JSON (`recstack shard tasks`)."""
    from recstack.shard.tasks import load_tasks

    p = Path(path)
    ts = load_tasks(p)
    for t in ts.tasks:
        if t.id == task_id:
            return t
    ids = [t.id for t in ts.tasks]
    have = f"{min(ids)}..{max(ids)}" if ids == list(range(min(ids), max(ids) + 1)) else ", ".join(map(str, ids))
    raise ConfigError(f"{p}: --task {task_id}: no such task (ids: {have})")


def task_label(task: ShardTask) -> str:
    return f"task {task.id}"


def check_fits(task: ShardTask, whole_tables: bool = True) -> None:
    """ConfigError when the task cannot fit at all: total bytes over the devices' total capacity,
    or (`whole_tables`, for table-wise planners) a single table larger than one device."""
    need = sum(t.bytes for t in task.tables)
    have = task.devices * task.mem_bytes
    if need > have:
        raise ConfigError(
            f"{task_label(task)}: {len(task.tables)} tables need {fmt_bytes(need)}, {task.devices} devices x "
            f"{fmt_bytes(task.mem_bytes)} = {fmt_bytes(have)}: {fmt_bytes(need - have)} short")
    if whole_tables:
        big = max(task.tables, key=lambda t: t.bytes)
        if big.bytes > task.mem_bytes:
            raise ConfigError(
                f"{task_label(task)}: table {big.name!r} needs {fmt_bytes(big.bytes)}, more than one device's "
                f"{fmt_bytes(task.mem_bytes)} (table-wise placement keeps a table whole; the torchrec planner "
                f"can split it)")


# ---------------------------------------------------------------- building plans
def whole_table(table: ShardTable, rank: int) -> TableSharding:
    """A table-wise sharding of `table` on `rank`, with its full size as the one shard."""
    return TableSharding(sharding_type="table_wise", ranks=[rank], shard_sizes=[[table.rows, table.dim]],
                         shard_offsets=[[0, 0]])


def table_wise_plan(task: ShardTask, ranks: Sequence[int], planner: str, meta: dict | None = None) -> ShardingPlan:
    """The plan placing task table i whole on ranks[i]."""
    if len(ranks) != len(task.tables):
        raise ValueError(f"{len(ranks)} ranks for {len(task.tables)} tables")
    return ShardingPlan(planner=planner, task=task.id, devices=task.devices,
                        tables={t.name: whole_table(t, int(r)) for t, r in zip(task.tables, ranks)},
                        meta=dict(meta or {}))


def even_split(total: int, n: int, block: int = 1) -> list[int]:
    """`total` split into n parts as evenly as possible, in multiples of `block` where it can."""
    if total % block or total // block < n:
        block = 1
    units, extra = divmod(total // block, n)
    return [(units + (1 if i < extra else 0)) * block for i in range(n)]


def filled(sh: TableSharding, table: ShardTable) -> TableSharding:
    """`sh` with shard sizes and offsets filled in where the plan left them out: table-wise the
    whole table; data-parallel one full replica per rank; column-wise even column blocks
    (multiples of 4 where possible); row-wise and table-row-wise TorchRec's blocks of
    ceil(rows / n) rows; offsets of given sizes stacked along the split axis."""
    st, n = sh.sharding_type, len(sh.ranks)
    whole = st in ("table_wise", "data_parallel")
    if sh.shard_sizes:
        if sh.shard_offsets:
            return sh
        if whole:
            offs = [[0, 0] for _ in sh.shard_sizes]
        else:
            col, acc, offs = st == "column_wise", 0, []
            for size in sh.shard_sizes:
                offs.append([0, acc] if col else [acc, 0])
                acc += size[1 if col else 0] if len(size) == 2 else 0
        return sh.model_copy(update={"shard_offsets": offs})
    if whole:
        sizes, offs = [[table.rows, table.dim] for _ in range(n)], [[0, 0] for _ in range(n)]
    elif st == "column_wise":
        widths = even_split(table.dim, n, 4)
        sizes, offs = [[table.rows, w] for w in widths], [[0, sum(widths[:i])] for i in range(n)]
    else:  # row_wise / table_row_wise
        blk = -(-table.rows // n)
        sizes = [[max(0, min(blk, table.rows - i * blk)), table.dim] for i in range(n)]
        offs = [[min(i * blk, table.rows), 0] for i in range(n)]
    return sh.model_copy(update={"shard_sizes": sizes, "shard_offsets": offs})


# ---------------------------------------------------------------- checks
def _check_geometry(name: str, sh: TableSharding, table: ShardTable, where: str) -> None:
    full = [table.rows, table.dim]
    st = sh.sharding_type
    sizes, offs = sh.shard_sizes, sh.shard_offsets  # filled: both present
    if len(sizes) != len(sh.ranks) or len(offs) != len(sh.ranks):
        raise ConfigError(f"{where}: tables.{name}: {len(sh.ranks)} ranks but {len(sizes)} shard sizes and "
                          f"{len(offs)} offsets")
    for s, o in zip(sizes, offs):
        if len(s) != 2 or len(o) != 2 or min(s) < 0 or min(o) < 0:
            raise ConfigError(f"{where}: tables.{name}: shard size {s} / offset {o} must be [rows, cols] >= 0")
    if st in ("table_wise", "data_parallel"):
        for s, o in zip(sizes, offs):
            if s != full or o != [0, 0]:
                raise ConfigError(f"{where}: tables.{name}: {st} shard {s} at {o} is not the whole table {full}")
        if st == "data_parallel" and len(set(sh.ranks)) != len(sh.ranks):
            raise ConfigError(f"{where}: tables.{name}: data_parallel replicas on repeated ranks {sh.ranks}")
        return
    # split types: shards must tile the table exactly, without overlap
    axis = 1 if st == "column_wise" else 0  # row_wise and table_row_wise split rows
    other = 1 - axis
    pos = 0
    for s, o in sorted(zip(sizes, offs), key=lambda so: so[1][axis]):
        if s[other] != full[other] or o[other] != 0:
            raise ConfigError(f"{where}: tables.{name}: {st} shard {s} at {o} must span all "
                              f"{full[other]} {'columns' if other else 'rows'}")
        if o[axis] != pos:
            raise ConfigError(f"{where}: tables.{name}: {st} shard at {o} leaves a gap or overlap "
                              f"(expected offset {pos} along {'columns' if axis else 'rows'})")
        pos += s[axis]
    if pos != full[axis]:
        raise ConfigError(f"{where}: tables.{name}: {st} shards cover {pos} of {full[axis]} "
                          f"{'columns' if axis else 'rows'}")


def device_bytes(plan: ShardingPlan, task: ShardTask) -> list[int]:
    """Bytes of table storage per device under `plan` (data-parallel tables count on every replica)."""
    by_name = {t.name: t for t in task.tables}
    out = [0] * plan.devices
    for name, sh in plan.tables.items():
        t = by_name[name]
        sh = filled(sh, t)
        for r, s in zip(sh.ranks, sh.shard_sizes):
            out[r] += s[0] * s[1] * DTYPE_BYTES[t.dtype]
    return out


def check_plan(plan: ShardingPlan, task: ShardTask, where: str = "plan") -> None:
    """ConfigError unless `plan` places exactly the task's tables, shards tile each table, and every
    device stays within the task's memory cap."""
    if plan.devices != task.devices:
        raise ConfigError(f"{where}: devices: plan has {plan.devices}, {task_label(task)} has {task.devices}")
    names = [t.name for t in task.tables]
    missing = [n for n in names if n not in plan.tables]
    if missing:
        raise ConfigError(f"{where}: tables: {task_label(task)}'s table {missing[0]!r} is not in the plan"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [n for n in plan.tables if n not in set(names)]
    if extra:
        raise ConfigError(f"{where}: tables.{extra[0]}: not a table of {task_label(task)}")
    by_name = {t.name: t for t in task.tables}
    for name, sh in plan.tables.items():
        bad = [r for r in sh.ranks if not 0 <= r < task.devices]
        if bad:
            raise ConfigError(f"{where}: tables.{name}.ranks: rank {bad[0]} is not a device of {task_label(task)} "
                              f"(0..{task.devices - 1})")
        _check_geometry(name, filled(sh, by_name[name]), by_name[name], where)
    used = device_bytes(plan, task)
    for r, b in enumerate(used):
        if b > task.mem_bytes:
            on = [n for n, sh in plan.tables.items() if r in sh.ranks]
            raise ConfigError(f"{where}: device {r} holds {fmt_bytes(b)} ({len(on)} tables), over the "
                              f"{fmt_bytes(task.mem_bytes)} cap of {task_label(task)} by {fmt_bytes(b - task.mem_bytes)}")


# ---------------------------------------------------------------- heuristic costs
def cost_dim(t: ShardTable) -> float:
    return float(t.dim)


def cost_size(t: ShardTable) -> float:
    return float(t.bytes)


def cost_lookup(t: ShardTable) -> float:
    return float(t.dim) * t.pooling


def cost_size_lookup(t: ShardTable) -> float:
    return float(t.dim) * t.pooling * math.log10(t.rows)


COSTS = {"dim": cost_dim, "size": cost_size, "lookup": cost_lookup, "size-lookup": cost_size_lookup}


def device_summary(plan: ShardingPlan, task: ShardTask) -> list[dict]:
    """Per device: tables (shards) held, bytes, cap, and the summed heuristic costs of COSTS.

    A shard carries its fraction of the table's cost (shard elements / table elements); a
    data-parallel replica carries 1/devices of it (each rank looks up its own batch slice).
    """
    by_name = {t.name: t for t in task.tables}
    rows = [{"device": r, "tables": [], "bytes": 0, "cap": task.mem_bytes, **{k: 0.0 for k in COSTS}}
            for r in range(plan.devices)]
    used = device_bytes(plan, task)
    for name, sh in plan.tables.items():
        t = by_name[name]
        sh = filled(sh, t)
        for r, s in zip(sh.ranks, sh.shard_sizes):
            frac = 1.0 / plan.devices if sh.sharding_type == "data_parallel" else s[0] * s[1] / (t.rows * t.dim)
            rows[r]["tables"].append(name)
            for k, f in COSTS.items():
                rows[r][k] += f(t) * frac
    for r, b in enumerate(used):
        rows[r]["bytes"] = b
    return rows


# ---------------------------------------------------------------- files
def save_plan(plan: ShardingPlan, path: str | Path) -> Path:
    """Write `plan` as JSON (atomically)."""
    p = Path(path)
    atomic_write_json(p, plan.model_dump(mode="json"))
    return p


def load_plan(path: str | Path, task: ShardTask | None = None) -> ShardingPlan:
    """Read a plan JSON; errors name the file and the field. With `task`, also `check_plan` it."""
    p = Path(path)
    data = read_json(p, "plan file")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a plan is a JSON object with format {PLAN_FORMAT!r}")
    if data.get("format") != PLAN_FORMAT:
        got = data.get("format")
        raise ConfigError(f"{p}: format: expected {PLAN_FORMAT!r}, got {got!r}"
                          + (" (a {table: rank} placement? the trainer's --plan takes those)" if got is None else ""))
    plan = validate(ShardingPlan, data, str(p))
    if task is not None:
        check_plan(plan, task, str(p))
    return plan
