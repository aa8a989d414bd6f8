"""Planners: the greedy baselines' exact placements, memory caps, determinism, TorchRec's planner."""

from __future__ import annotations

import pytest

from recstack.errors import ConfigError
from recstack.shard.plan import check_plan, device_bytes
from recstack.shard.planners import PLANNERS, Planner, get_planner, make_plan, register_planner
from recstack.spec import ShardTable, ShardTask


def _t(name: str, rows: int, dim: int, pooling: float = 1.0, dtype: str = "fp32") -> ShardTable:
    return ShardTable(name=name, rows=rows, dim=dim, pooling=pooling, dtype=dtype)


# bytes (fp32): a 3,200  b 16,000  c 640  d 80,000  e 1,600  (total 101,440)
# dim:          a 8      b 4       c 16   d 2       e 4
# dim x pool:   a 8      b 40      c 32   d 2       e 20
# x log10 rows: a 16     b 120     c 32   d 8       e 40
TABLES = [_t("a", 100, 8, 1), _t("b", 1000, 4, 10), _t("c", 10, 16, 2), _t("d", 10_000, 2, 1), _t("e", 100, 4, 5)]
TASK = ShardTask(id=3, tables=TABLES, devices=2, mem_bytes=90_000, batch_size=1024)


def _ranks(plan) -> dict[str, int]:
    return plan.rank_of()


def test_registry_and_protocol():
    for name in ("random", "round-robin", "dim-greedy", "size-greedy", "lookup-greedy", "size-lookup-greedy",
                 "torchrec", "torchrec-cpu", "torchrec-table-wise"):
        assert name in PLANNERS
    p = get_planner("size-greedy")
    assert isinstance(p, Planner) and p.name == "size-greedy"
    with pytest.raises(ConfigError, match="unknown planner 'nope'.*size-greedy"):
        get_planner("nope")

    class Everything0:  # a learned planner of part 2 registers the same way
        name = "all-on-0"

        def plan(self, task, seed=0):
            from recstack.shard.plan import table_wise_plan

            return table_wise_plan(task, [0] * len(task.tables), self.name)

    register_planner("all-on-0", Everything0)
    try:
        with pytest.raises(ConfigError, match=r"device 0 holds 101 kB .* over the 90.0 kB cap of task 3"):
            make_plan(TASK, "all-on-0")  # make_plan checks every planner's plan against the cap
    finally:
        del PLANNERS["all-on-0"]


@pytest.mark.parametrize("name, expected", [
    # dim: c(16) a(8) b(4, more bytes than e) e(4) d(2). c->0, a->1, b->1 (8<16), e->1 (12<16),
    # d: loads tie at 16, device 0 uses fewer bytes -> 0.
    ("dim-greedy", {"a": 1, "b": 1, "c": 0, "d": 0, "e": 1}),
    # size: d->0, then everything else on the lighter device 1.
    ("size-greedy", {"a": 1, "b": 1, "c": 1, "d": 0, "e": 1}),
    # lookup: b(40)->0, c(32)->1, e(20)->1 (32<40), a(8)->0 (40<52); d(2): device 0 is lighter
    # (48 < 52) but 19,200 + 80,000 B > 90,000 B cap, so d goes to device 1 (82,240 B).
    ("lookup-greedy", {"a": 0, "b": 0, "c": 1, "d": 1, "e": 1}),
    # size-lookup: b(120)->0, e(40)->1, c(32)->1, a(16)->1, d(8)->1 (88 < 120, 85,440 B fits).
    ("size-lookup-greedy", {"a": 1, "b": 0, "c": 1, "d": 1, "e": 1}),
])
def test_greedy_exact_placement(name, expected):
    plan = make_plan(TASK, name)
    assert _ranks(plan) == expected
    assert plan.planner == name and plan.task == 3 and plan.devices == 2
    assert plan.meta["planning_s"] >= 0 and plan.meta["seed"] == 0
    assert all(b <= TASK.mem_bytes for b in device_bytes(plan, TASK))
    sh = plan.tables["d"]
    assert sh.sharding_type == "table_wise" and sh.shard_sizes == [[10_000, 2]] and sh.shard_offsets == [[0, 0]]


def test_greedy_ignores_memory_when_it_does_not_bind():
    """lookup-greedy with room for everything puts d on the lighter device 0."""
    roomy = TASK.model_copy(update={"mem_bytes": 200_000})
    assert _ranks(make_plan(roomy, "lookup-greedy")) == {"a": 0, "b": 0, "c": 1, "d": 0, "e": 1}


def test_round_robin_order_and_memory():
    # 25 x 1 fp32 = 100 B fills device 0; the 20 B tables cycle 1, 2, then skip full device 0.
    task = ShardTask(id=0, devices=3, mem_bytes=100,
                     tables=[_t("big", 25, 1)] + [_t(f"s{i}", 5, 1) for i in range(4)])
    assert _ranks(make_plan(task, "round-robin")) == {"big": 0, "s0": 1, "s1": 2, "s2": 1, "s3": 2}
    six = ShardTask(id=0, devices=4, mem_bytes=10**6, tables=[_t(f"t{i}", 10, 4) for i in range(6)])
    assert list(_ranks(make_plan(six, "round-robin")).values()) == [0, 1, 2, 3, 0, 1]


def test_random_is_seeded_and_respects_memory():
    task = ShardTask(id=0, devices=4, mem_bytes=10**6, tables=[_t(f"t{i}", 10 * (i + 1), 4) for i in range(12)])
    a, b = make_plan(task, "random", seed=7), make_plan(task, "random", seed=7)
    assert a.tables == b.tables
    assert len({tuple(make_plan(task, "random", seed=s).rank_of().values()) for s in range(5)}) > 1
    # 4 tables of 60 B, 2 devices of 120 B: every seed must put exactly two on each device.
    tight = ShardTask(id=0, devices=2, mem_bytes=120, tables=[_t(f"t{i}", 15, 1) for i in range(4)])
    for s in range(20):
        assert sorted(make_plan(tight, "random", seed=s).rank_of().values()) == [0, 0, 1, 1]


def test_memory_exceeded_messages():
    # the brief's example: 50 tables of 468 MB on 4 x 5 GB
    big = ShardTask(id=3, devices=4, mem_bytes=5 * 10**9,
                    tables=[_t(f"t{i}", 1_828_125, 64) for i in range(50)])
    import importlib.util

    with_torchrec = ("torchrec",) if importlib.util.find_spec("torchrec") else ()
    for name in ("size-greedy", "random", "round-robin", *with_torchrec):
        with pytest.raises(ConfigError) as e:
            make_plan(big, name)
        assert str(e.value) == "task 3: 50 tables need 23.4 GB, 4 devices x 5.00 GB = 20.0 GB: 3.40 GB short"
    # fits in total, but no two 60 B tables share a 100 B device: names the table and the free memory
    three = ShardTask(id=7, devices=2, mem_bytes=100, tables=[_t(f"t{i}", 15, 1) for i in range(3)])
    with pytest.raises(ConfigError) as e:
        make_plan(three, "size-greedy")
    assert str(e.value) == ("task 7: size-greedy could not place table 't2' (60 B): the most free memory left is "
                            "40 B on device 0 (free per device: 40 B, 40 B; 2 of 3 tables placed)")
    for name in ("random", "round-robin", "dim-greedy"):
        with pytest.raises(ConfigError, match=f"task 7: {name} could not place table"):
            make_plan(three, name)
    # one table larger than a device: table-wise planners refuse up front
    wide = ShardTask(id=1, devices=4, mem_bytes=1000, tables=[_t("huge", 500, 1), _t("s", 10, 1)])
    with pytest.raises(ConfigError, match=r"task 1: table 'huge' needs 2.00 kB, more than one device's 1.00 kB"):
        make_plan(wide, "lookup-greedy")


# ---------------------------------------------------------------- TorchRec's planner
def _mixed_task(devices: int = 4, mem_gb: float = 1.0) -> ShardTask:
    dims = [16, 32, 64, 128, 32, 16, 64, 128, 32, 16]
    rows = [200_000, 500_000, 300_000, 150_000, 800_000, 1_000_000, 50_000, 400_000, 100_000, 600_000]
    pools = [1, 5, 20, 3, 10, 2, 30, 8, 15, 4]
    return ShardTask(id=5, devices=devices, mem_bytes=int(mem_gb * 1e9), batch_size=8192,
                     tables=[_t(f"t{i}", r, d, p) for i, (r, d, p) in enumerate(zip(rows, dims, pools))])


@pytest.fixture(scope="module")
def torchrec_ok():
    pytest.importorskip("torchrec")


@pytest.mark.parametrize("name", ["torchrec", "torchrec-cpu"])
def test_torchrec_planner_small_task(torchrec_ok, name):
    task = _mixed_task()  # 10 tables, 0.84 GB in all, 4 devices x 1 GB
    plan = make_plan(task, name)
    check_plan(plan, task)
    assert set(plan.tables) == {t.name for t in task.tables}
    assert max(device_bytes(plan, task)) <= task.mem_bytes
    m = plan.meta
    assert m["compute_device"] == ("cpu" if name == "torchrec-cpu" else "cuda")
    assert m["torchrec_batch_size"] == 8192 // 4
    assert 0 < m["torchrec_plan_s"] <= m["planning_s"] < 30
    print(f"{name}: planned 10 tables on 4 devices in {m['planning_s'] * 1e3:.1f} ms "
          f"(planner.plan {m['torchrec_plan_s'] * 1e3:.1f} ms): {m['sharding_types']}")
    # deterministic (TorchRec's own option order; see _sharder)
    assert make_plan(task, name).tables == plan.tables


def test_torchrec_splits_a_table_larger_than_a_device(torchrec_ok):
    # t4 (100k x 256 fp32 = 102 MB) exceeds a 100 MB device; the others shrunk: 291 MB in all.
    # (dim 256: TorchRec's column-wise shards are at least 128 wide, MIN_CW_DIM)
    task = _mixed_task(devices=4, mem_gb=0.1)
    tables = [t.model_copy(update={"rows": t.rows // 4}) if t.name != "t5" else t for t in task.tables]
    tables[4] = _t("t4", 100_000, 256, 10)
    task = task.model_copy(update={"tables": tables})
    with pytest.raises(ConfigError, match="table 't4' needs 102 MB, more than one device's 100 MB"):
        make_plan(task, "size-greedy")
    with pytest.raises(ConfigError, match="table 't4'"):
        make_plan(task, "torchrec-table-wise")
    gpu = make_plan(task, "torchrec")
    assert gpu.tables["t4"].sharding_type in ("row_wise", "column_wise", "table_row_wise")
    assert len(gpu.tables["t4"].ranks) > 1
    assert max(device_bytes(gpu, task)) <= task.mem_bytes
    cpu = make_plan(task, "torchrec-cpu")  # on CPU TorchRec offers table/column-wise and data-parallel only
    assert cpu.tables["t4"].sharding_type == "column_wise" and len(cpu.tables["t4"].ranks) > 1
    assert set(cpu.meta["sharding_types"]) <= {"table_wise", "column_wise", "data_parallel"}


def test_torchrec_planner_failure_is_a_config_error(torchrec_ok):
    """t4 (800k x 32 = 102 MB) exceeds a 100 MB device and, 32 wide, cannot be split column-wise
    (TorchRec's MIN_CW_DIM is 128); on CPU TorchRec has no row-wise, so it finds no plan."""
    task = _mixed_task(devices=4, mem_gb=0.1)
    task = task.model_copy(update={"tables": [t.model_copy(update={"rows": t.rows // 4}) if t.name not in
                                              ("t4", "t5") else t for t in task.tables]})
    with pytest.raises(ConfigError, match=r"task 5: TorchRec's planner found no plan within 4 devices x 100 MB "
                                          r"\(0.291 GB of tables; .*\): Unable to find a plan"):
        make_plan(task, "torchrec-cpu")
