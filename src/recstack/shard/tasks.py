"""Sharding tasks drawn from a table pool, the way the published benchmarks draw them.

DreamShard (tools/gen_tasks.py): the pool's tables are shuffled by a seeded permutation and split
into disjoint halves, train and test; each task samples N distinct tables from its half; D devices,
each with a memory cap. NeuroShard adds per-table dims drawn from {4, 8, ..., 128} and redraws a
task whose tables do not fit in the devices' memory. Here:

- the train/test split is a permutation seeded by `split_seed` (default: the pool's seed), so
  train and test task sets made with different `seed`s are still disjoint; `split="all"` draws
  from the whole pool;
- dims: fixed (`dims=[16]`, DreamShard) or drawn uniformly per (task, table) from a set
  (`dims=[4, 8, 16, 32, 64, 128]`, NeuroShard);
- a task fits when the sum of its tables' bytes (rows x dim x dtype bytes) is at most
  devices x mem_gb GiB and every table fits on one device (table-wise placement is possible
  memory-wise); draws that do not fit are redrawn (up to 200 times per task), and settings where
  even the smallest tables cannot fit are refused with the shortfall;
- each task table's `reuse` is the expected 17-bin histogram at the task's batch size (what
  cost measurement will draw with `generate_indices(table, task.batch_size)`), not the pool's
  batch-65,536 one;
- batch size: DEFAULT_TASK_BATCH = 4096 (the published benchmarks measure at 65,536 on GPUs; on a
  2-core CPU a 50-table task at 4096 is about 3M lookups per step, tens of milliseconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import ConfigError
from recstack.spec.sharding import DTYPE_BYTES, ShardTable, ShardTask, TablePool, TaskSet

DEFAULT_TASK_BATCH = 4096
DEFAULT_DIMS = (16,)
GIB = 1 << 30
MAX_DRAWS = 200


def parse_dims(text: str | list[int] | tuple[int, ...]) -> list[int]:
    """`"16"` or `"4,8,16"` (or a list) -> sorted distinct positive dims."""
    if isinstance(text, list | tuple):
        vals = [int(v) for v in text]
    else:
        try:
            vals = [int(v) for v in str(text).replace(" ", "").split(",") if v]
        except ValueError:
            raise ConfigError(f"--dims: expected one dim or a comma list like 4,8,16, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ConfigError(f"--dims: dims must be positive integers, got {text!r}")
    return sorted(set(vals))


def split_tables(pool: TablePool, split: str, split_seed: int | None = None) -> np.ndarray:
    """Indices of the pool tables in `split`: "train" (first half of a seeded permutation),
    "test" (the rest) or "all"."""
    n = len(pool.tables)
    if split == "all":
        return np.arange(n)
    if split not in ("train", "test"):
        raise ConfigError(f"--split must be train, test or all, got {split!r}")
    if n < 2:
        raise ConfigError(f"pool {pool.name} has {n} table; a train/test split needs at least 2 (use --split all)")
    perm = np.random.default_rng([pool.seed if split_seed is None else split_seed, 0x5B11]).permutation(n)
    return np.sort(perm[: n // 2] if split == "train" else perm[n // 2 :])


def task_reuse(tables: list[ShardTable], batch_size: int) -> list[list[float]]:
    """Expected reuse bins of each table at `batch_size` (rows, mean bag size, zipf)."""
    from recstack.data.stats import NUM_BINS
    from recstack.shard.pool import expected_bag_moments, expected_reuse

    bm, _ = expected_bag_moments([t.pooling for t in tables], [t.pooling_cv for t in tables])
    ex = expected_reuse([t.rows for t in tables], batch_size * bm, [t.zipf for t in tables])
    return [[round(float(x), 6) for x in r] if look > 0 else [0.0] * NUM_BINS for r, look in zip(ex["reuse_bins"], bm)]


def _gb(b: float) -> str:
    return f"{b / GIB:.2f} GiB"


def generate_tasks(pool: TablePool, n_tables: int = 50, devices: int = 4, count: int = 50, split: str = "train",
                   mem_gb: float = 5.0, dims: Any = DEFAULT_DIMS, seed: int = 0,
                   batch_size: int = DEFAULT_TASK_BATCH, split_seed: int | None = None,
                   dtype: str | None = None) -> tuple[TaskSet, dict[str, Any]]:
    """(TaskSet, report): `count` tasks of `n_tables` tables from the `split` half of `pool` on
    `devices` devices of `mem_gb` GiB each. Deterministic in the arguments. The report holds the
    split's table names, the draws made and rejected for memory, and task size statistics."""
    for opt, v, lo in (("--tables", n_tables, 1), ("--devices", devices, 1), ("--count", count, 1),
                       ("--batch-size", batch_size, 1)):
        if v < lo:
            raise ConfigError(f"{opt} must be >= {lo}, got {v}")
    if not mem_gb > 0:
        raise ConfigError(f"--mem-gb must be > 0, got {mem_gb}")
    if dtype is not None and dtype not in DTYPE_BYTES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    dl = parse_dims(dims)
    names = [t.name for t in pool.tables]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"pool {pool.name}: table name {dup!r} appears twice; task tables need distinct names")
    idx = split_tables(pool, split, split_seed)
    if n_tables > idx.size:
        raise ConfigError(f"--tables {n_tables}: the {split} split of pool {pool.name} has only {idx.size} tables")
    cap = int(mem_gb * GIB)
    total_cap = devices * cap
    rows = np.array([pool.tables[i].rows for i in idx], np.float64)
    elt = np.array([DTYPE_BYTES[dtype or pool.tables[i].dtype] for i in idx], np.float64)
    # refuse settings no draw can meet: the n smallest tables at the smallest dim
    smallest = np.sort(rows * elt * dl[0])
    need = smallest[:n_tables].sum()
    dim_txt = f"dim {dl[0]}" if len(dl) == 1 else f"the smallest dim {dl[0]}"
    if need > total_cap:
        raise ConfigError(
            f"--tables {n_tables} --devices {devices} --mem-gb {mem_gb:g}: even the {n_tables} smallest tables of "
            f"the {split} split need {_gb(need)} at {dim_txt}, {_gb(need - total_cap)} "
            f"({need / total_cap - 1:.0%}) more than {devices} x {mem_gb:g} GiB; raise --mem-gb to at least "
            f"{need / devices / GIB:.2f} or use fewer --tables, more --devices or smaller --dims")
    fits_one = int((smallest <= cap).sum())
    if fits_one < n_tables:
        raise ConfigError(
            f"--mem-gb {mem_gb:g}: only {fits_one} tables of the {split} split fit on one device at {dim_txt} "
            f"(largest of the {n_tables} smallest needs {_gb(smallest[n_tables - 1])}); raise --mem-gb to at least "
            f"{smallest[n_tables - 1] / GIB:.2f}")
    rng = np.random.default_rng([seed, 0x7A5C, {"train": 1, "test": 2, "all": 3}[split]])
    tasks, draws, totals = [], 0, []
    rejected: list[float] = []
    reuse: dict[str, list[float]] = {}  # per table name, computed when first drawn
    for k in range(count):
        for _ in range(MAX_DRAWS):
            draws += 1
            pick = rng.choice(idx.size, size=n_tables, replace=False)
            d = np.full(n_tables, dl[0]) if len(dl) == 1 else rng.choice(dl, size=n_tables)
            b = rows[pick] * elt[pick] * d
            if b.sum() <= total_cap and b.max() <= cap:
                break
            rejected.append(float(b.sum()))
        else:
            med = float(np.median(rejected[-MAX_DRAWS:]))
            raise ConfigError(
                f"--tables {n_tables} --devices {devices} --mem-gb {mem_gb:g}: {MAX_DRAWS} draws for task {k} all "
                f"exceed {devices} x {mem_gb:g} GiB = {_gb(total_cap)} (or one table exceeds {mem_gb:g} GiB); the "
                f"median draw needs {_gb(med)} ({med / total_cap:.1f}x the total); raise --mem-gb or use fewer "
                f"--tables or smaller --dims")
        totals.append(float(b.sum()))
        tabs = []
        for j, dim in zip(pick, d):
            src = pool.tables[int(idx[j])]
            upd: dict[str, Any] = {"dim": int(dim)}
            if dtype is not None:
                upd["dtype"] = dtype
            tabs.append(src.model_copy(update=upd))
        new = [t for t in tabs if t.name not in reuse]  # reuse depends on the table, not its drawn dim
        if new:
            reuse.update(zip((t.name for t in new), task_reuse(new, batch_size)))
        tabs = [t.model_copy(update={"reuse": reuse[t.name]}) for t in tabs]
        tasks.append(ShardTask(id=k, tables=tabs, devices=devices, mem_bytes=cap, batch_size=batch_size,
                               split=split))  # type: ignore[arg-type]
    ts = TaskSet(pool=pool.name, seed=seed, tasks=tasks)
    tot = np.array(totals)
    report = {
        "split": split,
        "split_tables": [names[i] for i in idx],
        "draws": draws,
        "rejected": len(rejected),
        "rejected_share": round(len(rejected) / draws, 4),
        "dims": dl,
        "mem_bytes_per_device": cap,
        "task_bytes": {"min": float(tot.min()), "median": float(np.median(tot)), "max": float(tot.max())},
        "task_fill": {k: round(float(v / total_cap), 4)
                      for k, v in (("min", tot.min()), ("median", np.median(tot)), ("max", tot.max()))},
        "batch_size": batch_size,
    }
    return ts, report


def make_tasks(pool: TablePool, n_tables: int = 50, devices: int = 4, count: int = 50, split: str = "train",
               mem_gb: float = 5.0, dims: Any = DEFAULT_DIMS, seed: int = 0, batch_size: int = DEFAULT_TASK_BATCH,
               split_seed: int | None = None, dtype: str | None = None) -> TaskSet:
    """`count` tasks drawn from `pool` (see `generate_tasks`)."""
    return generate_tasks(pool, n_tables, devices, count, split, mem_gb, dims, seed, batch_size, split_seed,
                          dtype)[0]


def load_tasks(path: str | Path) -> TaskSet:
    """A `TaskSet` JSON (what `recstack shard tasks` writes); errors name the file and field."""
    from recstack.spec.loader import load_json_model

    return load_json_model(TaskSet, path, "tasks file")


def save_tasks(tasks: TaskSet, path: str | Path) -> Path:
    from recstack.io import atomic_write_json

    atomic_write_json(path, tasks.model_dump())
    return Path(path)
