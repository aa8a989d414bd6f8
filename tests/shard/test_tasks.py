"""Sharding tasks: train/test halves, determinism, table counts, dims, memory fit and refusals,
per-task reuse at the task batch, files and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recstack.errors import ConfigError, DataError
from recstack.shard.pool import expected_bag_moments, expected_reuse, save_pool
from recstack.shard.tasks import (
    DEFAULT_TASK_BATCH,
    GIB,
    generate_tasks,
    load_tasks,
    make_tasks,
    parse_dims,
    save_tasks,
    split_tables,
)
from recstack.spec.sharding import ShardTable, TablePool


def _pool(n: int = 100, seed: int = 0, rows=None) -> TablePool:
    rng = np.random.default_rng(seed)
    rows = rows if rows is not None else np.round(10 ** rng.uniform(3, 7, n)).astype(int)
    tables = [ShardTable(name=f"t{i:03d}", rows=int(r), dim=16, pooling=float(rng.uniform(1, 30)),
                         zipf=float(rng.uniform(0.2, 1.3)), pooling_cv=0.8, reuse=[1.0] + [0.0] * 16)
              for i, r in enumerate(rows)]
    return TablePool(name=f"hand{n}", seed=seed, tables=tables)


def test_split_halves_are_disjoint_and_cover_the_pool():
    pool = _pool(101)
    tr, te = split_tables(pool, "train"), split_tables(pool, "test")
    assert len(tr) == 50 and len(te) == 51
    assert not set(tr) & set(te)
    assert sorted([*tr, *te]) == list(range(101))
    assert list(split_tables(pool, "all")) == list(range(101))
    assert not np.array_equal(split_tables(pool, "train", split_seed=7), tr)
    # tasks drawn with different seeds still come from disjoint halves
    a = make_tasks(pool, 20, 4, 5, "train", mem_gb=100, seed=1)
    b = make_tasks(pool, 20, 4, 5, "test", mem_gb=100, seed=2)
    names_a = {t.name for task in a.tasks for t in task.tables}
    names_b = {t.name for task in b.tasks for t in task.tables}
    assert names_a <= {pool.tables[i].name for i in tr}
    assert names_b <= {pool.tables[i].name for i in te}
    with pytest.raises(ConfigError, match="--split must be train, test or all"):
        split_tables(pool, "dev")


def test_tasks_are_deterministic_by_seed():
    pool = _pool()
    a = make_tasks(pool, 10, 2, 4, "train", mem_gb=100, dims="4,8,16", seed=3)
    b = make_tasks(pool, 10, 2, 4, "train", mem_gb=100, dims="4,8,16", seed=3)
    c = make_tasks(pool, 10, 2, 4, "train", mem_gb=100, dims="4,8,16", seed=4)
    assert a.model_dump() == b.model_dump()
    assert a.model_dump() != c.model_dump()


def test_task_tables_dims_and_memory():
    pool = _pool()
    mem = 1.0
    ts, rep = generate_tasks(pool, 12, 3, 20, "train", mem_gb=mem, dims=[16], seed=0)
    split = {pool.tables[i].name for i in split_tables(pool, "train")}
    assert ts.pool == pool.name and ts.seed == 0 and [t.id for t in ts.tasks] == list(range(20))
    for task in ts.tasks:
        names = [t.name for t in task.tables]
        assert len(names) == 12 and len(set(names)) == 12 and set(names) <= split
        assert {t.dim for t in task.tables} == {16}
        assert task.devices == 3 and task.mem_bytes == int(mem * GIB) and task.split == "train"
        assert task.batch_size == DEFAULT_TASK_BATCH == 4096
        sizes = [t.bytes for t in task.tables]
        assert sum(sizes) <= 3 * task.mem_bytes and max(sizes) <= task.mem_bytes
    assert rep["draws"] == 20 + rep["rejected"]
    assert rep["task_fill"]["max"] <= 1.0
    # NeuroShard-style dims: drawn per table from the set
    ts = make_tasks(pool, 12, 3, 20, "test", mem_gb=50, dims="4,8,16,32,64,128", seed=0, dtype="fp16")
    dims = [t.dim for task in ts.tasks for t in task.tables]
    assert set(dims) == {4, 8, 16, 32, 64, 128}
    assert {t.dtype for task in ts.tasks for t in task.tables} == {"fp16"}
    assert parse_dims("16") == [16] and parse_dims("8, 4,8") == [4, 8]


def test_task_reuse_is_at_the_task_batch():
    pool = _pool(40)
    ts = make_tasks(pool, 5, 2, 2, "all", mem_gb=100, seed=0, batch_size=2048)
    t = ts.tasks[0].tables[0]
    bm, _ = expected_bag_moments(t.pooling, t.pooling_cv)
    want = expected_reuse(t.rows, 2048 * bm, t.zipf)["reuse_bins"][0]
    assert np.allclose(t.reuse, want, atol=1e-6)
    at_dataset_batch = expected_reuse(t.rows, 65536 * bm, t.zipf)["reuse_bins"][0]
    assert np.abs(np.subtract(t.reuse, at_dataset_batch)).max() > 0.01  # the batch matters: not the pool's 65536
    assert ts.tasks[0].batch_size == 2048


def test_impossible_settings_are_refused_with_the_shortfall():
    pool = _pool(100, rows=[10**6] * 100)  # every table 64 MB (0.0596 GiB) at dim 16 fp32
    with pytest.raises(ConfigError, match=r"need 2\.98 GiB at dim 16, 1\.98 GiB \(198%\) more than 4 x 0\.25 GiB; "
                                          r"raise --mem-gb to at least 0\.75"):
        make_tasks(pool, 50, 4, 3, "train", mem_gb=0.25)
    with pytest.raises(ConfigError, match="only 0 tables of the train split fit on one device"):
        make_tasks(pool, 5, 64, 3, "train", mem_gb=0.05)
    with pytest.raises(ConfigError, match="the train split of pool hand100 has only 50 tables"):
        make_tasks(pool, 60, 4, 3, "train", mem_gb=100)
    # the 45 smallest fit, but a random 45 of 50 almost surely holds a big table: redraws run out
    big = _pool(50, rows=[10**6] * 45 + [10**7] * 5)
    with pytest.raises(ConfigError, match=r"200 draws for task 0 all exceed 1 x 3 GiB .* median draw needs"):
        make_tasks(big, 45, 1, 1, "all", mem_gb=3)
    for kw, msg in [({"devices": 0}, "--devices must be >= 1"), ({"count": 0}, "--count must be >= 1"),
                    ({"mem_gb": 0}, "--mem-gb must be > 0"), ({"dims": "4,x"}, "--dims: expected"),
                    ({"dims": "0"}, "--dims: dims must be positive"), ({"dtype": "fp64"}, "--dtype must be one of"),
                    ({"batch_size": 0}, "--batch-size must be >= 1")]:
        with pytest.raises(ConfigError, match=msg):
            make_tasks(pool, 5, **{"devices": 2, "count": 1, "mem_gb": 100, **kw})


def test_tasks_file_round_trip_and_errors(tmp_path):
    ts = make_tasks(_pool(30), 4, 2, 3, "all", mem_gb=100)
    p = save_tasks(ts, tmp_path / "tasks.json")
    assert load_tasks(p) == ts
    with pytest.raises(DataError, match="missing.json: tasks file not found"):
        load_tasks(tmp_path / "missing.json")
    data = json.loads(p.read_text())
    data["tasks"][1]["devices"] = 0
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"tasks.json: tasks.1.devices: Input should be greater than 0"):
        load_tasks(p)
    p.write_text("{")
    with pytest.raises(DataError, match="tasks.json: line 1: invalid JSON"):
        load_tasks(p)


def test_cli_tasks(shard_cli, tmp_path):
    pool = save_pool(_pool(), tmp_path / "pool.json")
    out = tmp_path / "train.json"
    r = shard_cli("tasks", pool, "--tables", "10", "--devices", "4", "--count", "6", "--split", "train",
                  "--mem-gb", "2", "--dims", "4,8,16,32", "--seed", "5", "--out", out)
    assert r.code == 0, r.err
    assert "task GiB" in r.out and "redrawn for memory" in r.out
    ts = load_tasks(out)
    assert len(ts.tasks) == 6 and all(len(t.tables) == 10 for t in ts.tasks)
    assert ts.model_dump() == make_tasks(_pool(), 10, 4, 6, "train", 2, "4,8,16,32", 5).model_dump()
    r = shard_cli("tasks", pool, "--tables", "50", "--mem-gb", "0.001", "--out", tmp_path / "x.json")
    assert r.code == 2 and "more than 4 x 0.001 GiB" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "x.json").exists()
    r = shard_cli("tasks", tmp_path / "nope.json", "--out", tmp_path / "y.json")
    assert r.code == 2 and "nope.json: file not found" in r.err
    r = shard_cli("tasks", pool, "--split", "dev", "--out", tmp_path / "y.json")
    assert r.code == 2 and "--split must be train, test or all" in r.err
