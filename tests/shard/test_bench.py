"""`shard bench`: rows per task x planner, failures kept, the summary's ratios, files written."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from recstack.errors import ConfigError
from recstack.shard.bench import memory_balance, run_bench, summarise, write_results
from recstack.spec.sharding import ShardTable, ShardTask, TableSharding, TaskSet


@dataclass
class _Cost:
    cost_ms: float
    per: list[float]

    def to_dict(self):
        return {"cost_ms": self.cost_ms, "devices": [{"total_ms": x} for x in self.per], "comm": {"kind": "fake"}}


def _fake_measure(items):
    """Cost = the largest number of tables on one device (a stand-in for a real measurement)."""
    out = []
    for task, plan in items:
        per = [0.0] * plan.devices
        for s in plan.tables.values():
            for r in s.ranks:
                per[r] += 1.0
        out.append(_Cost(max(per), per))
    return out


def _tasks(big: bool = False) -> TaskSet:
    tables = [ShardTable(name=f"t{i}", rows=100 * (i + 1), dim=8, pooling=1 + i) for i in range(6)]
    mem = 6 * 100 * 8 * 4 if not big else 100 * 6 * 8 * 4  # big: the 600-row table just fits one device
    tasks = [ShardTask(id=0, tables=tables, devices=2, mem_bytes=mem * 4),
             ShardTask(id=1, tables=tables, devices=3, mem_bytes=mem)]
    return TaskSet(pool="test", tasks=tasks)


def test_rows_summary_and_files(tmp_path):
    planners = ["round-robin", "dim-greedy", "size-lookup-greedy"]
    calls = []

    def spy(items):
        calls.append([(task.id, plan.planner) for task, plan in items])
        return _fake_measure(items)

    rows = run_bench(_tasks(), planners, measure=spy)
    assert [(r["task"], r["planner"]) for r in rows] == [(t, p) for t in (0, 1) for p in planners]
    # one measurement call per task with every planner's plan (measured together, same conditions);
    # task 1 (67.2 kB of tables on 3 x 19.2 kB) fits no plan, so nothing of it is measured
    assert calls == [[(0, p) for p in planners]]
    assert all(r["cost_ms"] is None and "task 1" in r["error"] for r in rows if r["task"] == 1)
    rr = next(r for r in rows if (r["task"], r["planner"]) == (0, "round-robin"))
    assert (rr["cost_ms"], rr["devices_ms"]) == (3.0, [3.0, 3.0])  # 6 tables over 2 devices, 3 each
    s = summarise(rows, reference="dim-greedy")
    ref = {r["task"]: r["cost_ms"] for r in rows if r["planner"] == "dim-greedy"}
    for p in planners:
        mine = [r for r in rows if r["planner"] == p and r.get("cost_ms") is not None]
        want = math.exp(sum(math.log(r["cost_ms"] / ref[r["task"]]) for r in mine) / len(mine))
        assert s["planners"][p]["geomean_vs_reference"] == pytest.approx(want)
        assert s["planners"][p]["measured"] + s["planners"][p]["failed"] == 2
    assert s["planners"]["dim-greedy"]["geomean_vs_reference"] == pytest.approx(1.0)
    write_results(tmp_path, rows, s)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(rows))
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_planner_failures_are_rows_not_crashes():
    ts = _tasks()
    tiny = ts.tasks[1].model_copy(update={"mem_bytes": 100 * 8 * 4 * 3})  # cannot hold the largest tables
    rows = run_bench(TaskSet(pool="t", tasks=[tiny]), ["dim-greedy"], measure=_fake_measure)
    assert rows[0]["cost_ms"] is None and "task 1" in rows[0]["error"]
    s = summarise(rows, reference="dim-greedy")
    assert s["planners"]["dim-greedy"]["failed"] == 1 and s["planners"]["dim-greedy"]["median_cost_ms"] is None


def test_bad_names_and_ids_fail_before_work():
    with pytest.raises(ConfigError):
        run_bench(_tasks(), ["no-such-planner"], measure=_fake_measure)
    with pytest.raises(ConfigError, match="no task 7"):
        run_bench(_tasks(), ["dim-greedy"], measure=_fake_measure, task_ids=[0, 7])


def test_memory_balance_counts_bytes_per_device():
    from recstack.shard.planners import make_plan

    task = _tasks().tasks[0]
    plan = make_plan(task, "round-robin")
    m = memory_balance(task, plan)
    # t0..t5 are 100..600 rows x 8 fp32 (3.2..19.2 kB); round-robin: t0, t2, t4 on 0 and t1, t3, t5 on 1
    assert m["bytes"] == [3200 + 9600 + 16000, 6400 + 12800 + 19200]
    assert m["max_over_mean"] == pytest.approx(38400 / 33600)
    assert m["max_of_cap"] == pytest.approx(38400 / task.mem_bytes)
    dp = plan.model_copy(update={"tables": {**plan.tables, "t0": TableSharding(sharding_type="data_parallel",
                                                                                 ranks=[0, 1])}})
    assert memory_balance(task, dp)["bytes"] == [28800, 38400 + 3200]  # a replica on each device
