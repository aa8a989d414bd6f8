"""Measured placement cost: shards, index splits, per-device/max structure, cache, comm curves, errors."""

from __future__ import annotations

import json
import os
import statistics

import pytest
import torch

from recstack.errors import ConfigError
from recstack.shard import comm as comm_mod
from recstack.shard import measure as M
from recstack.shard.comm import AlphaBeta, fit_alpha_beta, measured_curve, topology_curve
from recstack.shard.measure import (
    Shard,
    device_shards,
    measure_plan,
    measure_plans,
    measure_shard,
    row_cap_for,
    shard_indices,
)
from recstack.shard.plan import device_bytes
from recstack.spec.sharding import ShardingPlan, ShardTable, ShardTask, TableSharding, TaskSet

FAST = {"reps": 6, "blocks": 3, "warmup": 1, "min_sample_ms": 2.0, "batches": 2}
COMM = AlphaBeta(alpha_ms=0.1, bandwidth=1e9, kind="measured", source="test curve")


def _tables(n: int = 4, rows: int = 3000) -> list[ShardTable]:
    return [ShardTable(name=f"t{i}", rows=rows + 500 * i, dim=[8, 16][i % 2], pooling=[4, 8][i % 2], zipf=0.8)
            for i in range(n)]


def _task(n: int = 4, devices: int = 2, batch: int = 256, mem: int = 1 << 30, rows: int = 3000) -> ShardTask:
    return ShardTask(id=7, tables=_tables(n, rows), devices=devices, mem_bytes=mem, batch_size=batch)


def _plan(devices: int = 2, **types: TableSharding) -> ShardingPlan:
    return ShardingPlan(devices=devices, task=7, tables=types)


def _tw(rank: int) -> TableSharding:
    return TableSharding(sharding_type="table_wise", ranks=[rank])


def _mixed_plan() -> ShardingPlan:
    return _plan(t0=_tw(0), t1=_tw(1), t2=TableSharding(sharding_type="column_wise", ranks=[0, 1]),
                 t3=TableSharding(sharding_type="row_wise", ranks=[0, 1]))


# ----------------------------------------------------------------------------- shards


def test_device_shards_cover_each_sharding_type():
    task = _task(5)
    plan = _plan(t0=_tw(0), t1=_tw(1), t2=TableSharding(sharding_type="column_wise", ranks=[0, 1]),
                 t3=TableSharding(sharding_type="row_wise", ranks=[1, 0]),
                 t4=TableSharding(sharding_type="data_parallel", ranks=[0, 1]))
    d0, d1 = device_shards(task, plan)
    lab0, lab1 = [s.label for s in d0], [s.label for s in d1]
    assert lab0 == ["t0", "t2[cols 0:4]", "t3[rows 2250:4500]", "t4[dp 1/2]"]
    assert lab1 == ["t1", "t2[cols 4:8]", "t3[rows 0:2250]", "t4[dp 2/2]"]
    by = {t.name: t for t in task.tables}
    # memory: every element stored once, data-parallel replicas on both devices
    assert sum(s.bytes for s in d0 + d1) == sum(t.bytes for t in task.tables) + by["t4"].bytes
    assert device_bytes(plan, task) == [sum(s.bytes for s in d0), sum(s.bytes for s in d1)]


def test_explicit_shard_sizes_and_coverage_errors():
    task = _task(2)
    ok = _plan(t0=_tw(0), t1=TableSharding(sharding_type="row_wise", ranks=[0, 1], shard_sizes=[[1000, 16], [2500, 16]]))
    _, d1 = device_shards(task, ok)
    assert [s.label for s in d1] == ["t1[rows 1000:3500]"]
    bad = _plan(t0=_tw(0), t1=TableSharding(sharding_type="row_wise", ranks=[0, 1], shard_sizes=[[1000, 16], [2000, 16]]))
    with pytest.raises(ConfigError, match=r"tables.t1: row_wise shards cover 3000 of 3500 rows"):
        device_shards(task, bad)
    # shards that cover as many elements as the table but overlap (both at row 0) are rejected too
    overlap = _plan(t0=_tw(0), t1=TableSharding(sharding_type="row_wise", ranks=[0, 1],
                                                shard_sizes=[[1750, 16], [1750, 16]], shard_offsets=[[0, 0], [0, 0]]))
    with pytest.raises(ConfigError, match=r"tables.t1: row_wise shard at \[0, 0\] leaves a gap or overlap"):
        device_shards(task, overlap)


def test_row_wise_split_partitions_every_bag():
    t = ShardTable(name="r", rows=1000, dim=8, pooling=6, zipf=1.0)
    idx, off = M.generate_indices(t, 128, 3)
    lens = off[1:] - off[:-1]
    parts = [Shard(t, "row_wise", 0, 300, 0, 8), Shard(t, "row_wise", 300, 700, 0, 8)]
    got = [shard_indices(s, 128, 3) for s in parts]
    assert all(g[1].numel() == 128 for g in got)  # one bag per sample on every shard
    assert torch.equal(got[0][1] + got[1][1], lens)  # each bag's indices split between the shards
    assert got[0][0].max() < 300 and got[1][0].max() < 700 and min(g[0].min() for g in got) >= 0
    back = torch.cat([got[0][0], got[1][0] + 300])
    assert torch.equal(back.sort().values, idx.sort().values)
    # data-parallel: this rank's half of the bags, unchanged
    i2, l2 = shard_indices(Shard(t, "data_parallel", 0, 1000, 0, 8, part=1, parts=2), 128, 3)
    assert torch.equal(l2, lens[64:]) and torch.equal(i2, idx[int(off[64]):])


def test_row_cap_rule():
    big = [Shard.whole(ShardTable(name=f"b{i}", rows=4_000_000, dim=64, pooling=4)) for i in range(2)]
    small = Shard.whole(ShardTable(name="s", rows=1000, dim=64, pooling=4))
    assert row_cap_for([small], 1 << 30, lambda s: 4) is None
    cap = row_cap_for(big + [small], 1 << 30, lambda s: 4)
    assert cap is not None and M.MIN_ROW_CAP <= cap < 4_000_000
    used = sum(min(s.rows, cap) * s.cols * 4 for s in big + [small])
    assert used <= 1 << 30 < used + 2 * 64 * 4 * 2  # the largest cap that fits
    idx, _ = shard_indices(big[0], 64, 0, row_cap=cap)
    assert int(idx.max()) < cap


# ----------------------------------------------------------------------------- measurement


def test_plan_cost_is_max_over_devices_with_comm_per_device():
    task = _task()
    pc = measure_plan(task, _mixed_plan(), comm=COMM, **FAST)
    assert len(pc.devices) == 2 and pc.task == 7
    for d in pc.devices:
        assert d.fwd_ms > 0 and d.bwd_ms > 0
        send = 256 * d.out_cols * 4 * (2 - 1) / 2
        assert d.send_bytes == send
        assert d.comm_fwd_ms == pytest.approx(0.1 + send / 1e9 * 1e3)
        assert d.comm_bwd_ms == pytest.approx(d.comm_fwd_ms)
        assert d.total_ms == pytest.approx(d.fwd_ms + d.bwd_ms + d.comm_fwd_ms + d.comm_bwd_ms)
        assert d.mem_cap == 1 << 30
    assert [d.mem_bytes for d in pc.devices] == device_bytes(_mixed_plan(), task)
    assert [d.out_cols for d in pc.devices] == [8 + 4 + 16, 16 + 4 + 16]
    assert pc.cost_ms == max(d.total_ms for d in pc.devices)
    assert pc.devices[pc.bottleneck].total_ms == pc.cost_ms
    d = pc.to_dict()
    assert d["cost_ms"] == pc.cost_ms and len(d["devices"]) == 2 and d["comm"]["kind"] == "measured"
    assert {"fwd_ms", "bwd_ms", "comm_ms", "total_ms", "mem_bytes", "mem_cap"} <= set(d["devices"][0])
    assert d["method"]["backend"] == M.resolve_backend("auto") and d["method"]["reference"]["baseline_ms"] > 0
    json.dumps(d)


def test_single_device_and_empty_device_have_no_comm():
    task = _task(2, devices=1)
    pc = measure_plan(task, _plan(devices=1, t0=_tw(0), t1=_tw(0)), comm=COMM, **FAST)
    assert pc.devices[0].comm_ms == 0.0
    task2 = _task(2, devices=3)
    pc2 = measure_plan(task2, _plan(devices=3, t0=_tw(0), t1=_tw(2)), comm=COMM, **FAST)
    assert pc2.devices[1].shards == [] and pc2.devices[1].total_ms == 0.0
    assert pc2.cost_ms == max(pc2.devices[0].total_ms, pc2.devices[2].total_ms)


def test_cache_hit_returns_identical_values_without_measuring(tmp_path, monkeypatch):
    task, plan = _task(), _mixed_plan()
    first = measure_plan(task, plan, comm=COMM, cache=tmp_path, **FAST)
    assert not any(d.cached for d in first.devices)
    assert len(list(tmp_path.glob("kernel-*.json"))) == 2 and (tmp_path / "reference-speed.json").exists()

    def boom(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(M, "_measure_devices", boom)
    again = measure_plan(task, plan, comm=COMM, cache=tmp_path, **FAST)
    assert all(d.cached for d in again.devices)
    assert [(d.fwd_ms, d.bwd_ms) for d in again.devices] == [(d.fwd_ms, d.bwd_ms) for d in first.devices]
    assert again.cost_ms == first.cost_ms
    # the same device content in another plan (other rank, other table order) hits the cache too
    swapped = _plan(t3=TableSharding(sharding_type="row_wise", ranks=[1, 0]), t1=_tw(0),
                    t2=TableSharding(sharding_type="column_wise", ranks=[1, 0]), t0=_tw(1))
    sw = measure_plan(task, swapped, comm=COMM, cache=tmp_path, **FAST)
    assert sw.devices[0].fwd_ms == first.devices[1].fwd_ms and sw.devices[1].fwd_ms == first.devices[0].fwd_ms
    # anything that changes the measurement misses: here the batch size
    with pytest.raises(AssertionError, match="measured again"):
        measure_plan(task.model_copy(update={"batch_size": 128}), plan, comm=COMM, cache=tmp_path, **FAST)


def test_measure_shard_fused_backend_and_cache(tmp_path):
    tables = _tables(2)
    f, b = measure_shard(tables, 128, backend="fused", cache=tmp_path, reps=4, blocks=2, warmup=1, min_sample_ms=1)
    assert f > 0 and b > 0
    assert measure_shard(tables, 128, backend="fused", cache=tmp_path, reps=4, blocks=2, warmup=1,
                         min_sample_ms=1) == (f, b)


def test_large_device_rows_capped_and_reported():
    t = ShardTable(name="huge", rows=600_000, dim=16, pooling=4)
    task = ShardTask(id=1, tables=[t], devices=1, mem_bytes=1 << 30, batch_size=64)
    pc = measure_plan(task, ShardingPlan(devices=1, tables={"huge": _tw(0)}), comm=COMM,
                      max_device_bytes=M.MIN_ROW_CAP * 16 * 4, **FAST)
    assert pc.devices[0].row_cap == M.MIN_ROW_CAP
    assert pc.devices[0].mem_bytes == 600_000 * 16 * 4  # memory is reported at full size
    assert any("capped at 262144 for huge" in n for n in pc.notes)


def test_fused_shard_is_not_additive():
    """A fused operator over two tables costs less than the two tables' operators summed (one
    launch, one output, one backward sort instead of two); measured interleaved."""
    a, b = ShardTable(name="a", rows=2000, dim=16, pooling=4), ShardTable(name="b", rows=3000, dim=16, pooling=4)
    tasks = [ShardTask(id=i, tables=ts, devices=1, mem_bytes=1 << 30, batch_size=128)
             for i, ts in enumerate([[a, b], [a], [b]])]
    plans = [ShardingPlan(devices=1, tables={t.name: _tw(0) for t in task.tables}) for task in tasks]
    both, only_a, only_b = measure_plans(list(zip(tasks, plans)), comm=COMM, reps=12, blocks=4, warmup=2,
                                         min_sample_ms=3)
    k = [p.devices[0].fwd_ms + p.devices[0].bwd_ms for p in (both, only_a, only_b)]
    assert k[0] < 0.9 * (k[1] + k[2]), k


def _load_per_core() -> float:
    try:
        return os.getloadavg()[0] / len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return 0.0


@pytest.mark.benchmark  # timing on shared cores: run alone with `pytest -m benchmark`, not in make test's parallel run
def test_reproducible_within_5_percent():
    """The same plan measured twice without a cache agrees within 5%: two independent measurements
    (each builds its own operators and picks its own statistic), interleaved block by block so that
    both see the same machine; the median over up to 5 trials (decided after 3 of one kind).

    Timing cannot be reproducible on a machine with more runnable work than cores (every step is
    time-sliced with other processes): a miss there is reported as a skip naming the load."""
    task, plan = _task(batch=512), _mixed_plan()
    diffs: list[float] = []
    while sum(d < 0.05 for d in diffs) < 3 and sum(d >= 0.05 for d in diffs) < 3:
        x, y = measure_plans([(task, plan), (task, plan)], comm=COMM, reps=48, blocks=16, warmup=2, min_sample_ms=5)
        assert x.method["interleaved"] and x.devices[0].fwd_ms != y.devices[0].fwd_ms  # measured, not copied
        diffs.append(abs(x.cost_ms - y.cost_ms) / min(x.cost_ms, y.cost_ms))
    if statistics.median(diffs) >= 0.05 and _load_per_core() > 1.5:
        pytest.skip(f"machine overloaded (load {_load_per_core():.1f} per core): differences "
                    f"{[round(d, 3) for d in diffs]}")
    assert statistics.median(diffs) < 0.05, diffs


# ----------------------------------------------------------------------------- communication


def test_alpha_beta_fit_recovers_synthetic_curve():
    sizes = [2.0**k for k in range(10, 25, 2)]
    true_alpha, true_bw = 0.05, 2.5e9
    noise = [1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0]
    times = [(true_alpha + s / true_bw * 1e3) * n for s, n in zip(sizes, noise)]
    alpha, bw = fit_alpha_beta(sizes, times)
    assert alpha == pytest.approx(true_alpha, rel=0.05) and bw == pytest.approx(true_bw, rel=0.05)
    # latency cannot come out negative
    a2, bw2 = fit_alpha_beta([1e3, 1e6, 1e7], [0.0004, 0.4, 4.1])
    assert a2 >= 0 and bw2 == pytest.approx(2.45e9, rel=0.05)
    with pytest.raises(ValueError):
        fit_alpha_beta([1e3, 1e3], [1.0, 1.0])
    curve = AlphaBeta(alpha, bw, kind="measured")
    assert curve.all_to_all_ms(0, 4) == 0.0 and curve.all_to_all_ms(1e6, 1) == 0.0
    assert curve.all_to_all_ms(1e6, 4) == pytest.approx(3 * alpha + 1e6 / bw * 1e3)
    assert AlphaBeta.from_dict(curve.to_dict()) == curve


def test_modelled_comm_is_labelled_and_uses_topology():
    task, plan = _task(), _mixed_plan()
    pc = measure_plan(task, plan, comm="model", topology="cpu-2core", **FAST)
    assert pc.comm["kind"] == "modelled" and "cpu-2core" in pc.comm["source"]
    assert pc.comm["bandwidth_bytes_per_s"] == 1.25e9  # 2 ranks > 1 device per host: inter-host bandwidth
    h = topology_curve("h100", world=2)
    assert h.kind == "modelled" and h.bandwidth == 450e9 and "intra" in h.source
    assert topology_curve("h100", world=16).bandwidth == 50e9


def test_auto_comm_falls_back_to_model_with_a_note(monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("no processes here\nsecond line")

    monkeypatch.setattr(comm_mod, "measure_gloo_all_to_all", fail)
    monkeypatch.setattr(comm_mod, "_memo", {})
    pc = measure_plan(_task(), _mixed_plan(), comm="auto", **FAST)
    assert pc.comm["kind"] == "modelled"
    assert any("measuring the gloo all-to-all failed (no processes here)" in n for n in pc.notes)
    with pytest.raises(ConfigError, match="--comm measured"):
        measure_plan(_task(), _mixed_plan(), comm="measured", **FAST)


def test_measured_gloo_curve_is_fitted_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(comm_mod, "_memo", {})
    path = tmp_path / "comm.json"
    curve = measured_curve(path, sizes=(1024, 65536, 1 << 20), reps=3)
    assert curve.kind == "measured" and curve.alpha_ms >= 0 and curve.bandwidth > 0
    assert [p[0] for p in curve.points] == [1024, 65536, 1 << 20] and all(p[1] > 0 for p in curve.points)
    saved = json.loads(path.read_text())
    assert saved["curve"]["alpha_ms"] == curve.alpha_ms

    def boom(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(comm_mod, "measure_gloo_all_to_all", boom)
    monkeypatch.setattr(comm_mod, "_memo", {})
    assert measured_curve(path) == curve


# ----------------------------------------------------------------------------- errors and CLI


def test_plan_errors_name_the_table_or_device():
    task = _task(2)
    with pytest.raises(ConfigError, match=r"plan for task 7: tables.zz: not a table of task 7"):
        measure_plan(task, _plan(t0=_tw(0), t1=_tw(1), zz=_tw(0)), comm=COMM, **FAST)
    with pytest.raises(ConfigError, match=r"tables: task 7's table 't1' is not in the plan"):
        measure_plan(task, _plan(t0=_tw(0)), comm=COMM, **FAST)
    with pytest.raises(ConfigError, match=r"devices: plan has 3, task 7 has 2"):
        measure_plan(task, _plan(devices=3, t0=_tw(0), t1=_tw(2)), comm=COMM, **FAST)
    bad_rank = ShardingPlan.model_construct(devices=2, task=7, tables={"t0": _tw(0), "t1": _tw(5)}, meta={})
    with pytest.raises(ConfigError, match=r"tables.t1.ranks: rank 5 is not a device of task 7"):
        measure_plan(task, bad_rank, comm=COMM, **FAST)
    small = _task(2, mem=60_000)  # t0 is 3000 x 8 x 4 = 96 kB
    with pytest.raises(ConfigError, match=r"device 0 holds 96.0 kB \(1 tables\), over the 60.0 kB cap of task 7"):
        measure_plan(small, _plan(t0=_tw(0), t1=_tw(1)), comm=COMM, **FAST)
    with pytest.raises(ConfigError, match="--reps"):
        measure_plan(task, _plan(t0=_tw(0), t1=_tw(1)), comm=COMM, reps=0)
    with pytest.raises(ConfigError, match="--backend"):
        measure_plan(task, _plan(t0=_tw(0), t1=_tw(1)), comm=COMM, backend="cuda")


def _files(tmp_path, task: ShardTask, plan: dict) -> tuple[str, str]:
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps(TaskSet(pool="p", tasks=[task]).model_dump(mode="json")))
    pf = tmp_path / "plan.json"
    pf.write_text(json.dumps(plan))
    return str(tasks), str(pf)


CLI_FAST = ("--reps", "6", "--blocks", "3", "--warmup", "1", "--batches", "2", "--comm", "model")


def test_cli_json_output_and_cache_dir(tmp_path, shard_cli):
    tasks, pf = _files(tmp_path, _task(), _mixed_plan().model_dump(mode="json"))
    out = tmp_path / "cost.json"
    r = shard_cli("measure", tasks, "--task", "7", "--plan", pf, "--json", "--out", str(out), *CLI_FAST)
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["cost_ms"] == max(x["total_ms"] for x in d["devices"]) and len(d["devices"]) == 2
    assert d["comm"]["kind"] == "modelled" and json.loads(out.read_text())["cost_ms"] == d["cost_ms"]
    cache = tmp_path / "tasks.json.costcache"
    assert len(list(cache.glob("kernel-*.json"))) == 2
    r = shard_cli("measure", tasks, "--task", "7", "--plan", pf, *CLI_FAST)
    assert r.code == 0 and "MODELLED" in r.out and "cached" in r.out and "max over devices" in r.out


def test_cli_errors_exit_2(tmp_path, shard_cli):
    def error(*args):
        r = shard_cli("measure", *args, *CLI_FAST)
        assert r.code == 2 and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
        return r.err

    task = _task(2, mem=60_000)
    tasks, pf = _files(tmp_path, task, _plan(t0=_tw(0), t1=_tw(1)).model_dump(mode="json"))
    assert "over the 60.0 kB cap of task 7" in error(tasks, "--task", "7", "--plan", pf, "--no-cache")
    plan = _plan(t0=_tw(0), t1=_tw(1)).model_dump(mode="json")
    plan["tables"]["t1"]["ranks"] = [2]
    tasks, pf = _files(tmp_path, _task(2), plan)
    assert "rank 2" in error(tasks, "--task", "7", "--plan", pf)
    assert "no such task" in error(tasks, "--task", "8", "--plan", pf)
    tasks, pf = _files(tmp_path, _task(2), _plan(t0=_tw(0), t1=_tw(1)).model_dump(mode="json"))
    assert "--threads" in error(tasks, "--task", "7", "--plan", pf, "--clock", "wall", "--threads", "0")


def test_cli_bench_writes_results_and_shares_measure_cache(tmp_path, shard_cli):
    tasks, _ = _files(tmp_path, _task(2), {})
    out = tmp_path / "bench"
    r = shard_cli("bench", tasks, "--out", out, "--planners", "round-robin,size-greedy", "--reference", "size-greedy",
                  "--reps", "3", "--comm", "model")
    assert r.code == 0, r.err
    rows = json.loads((out / "results.json").read_text())
    assert [(x["task"], x["planner"]) for x in rows] == [(7, "round-robin"), (7, "size-greedy")]
    assert all(x["cost_ms"] > 0 for x in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["planners"]["size-greedy"]["geomean_vs_reference"] == pytest.approx(1.0)
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "tasks.json.costcache").glob("kernel-*.json"))  # measure's default cache folder
    r = shard_cli("bench", tasks, "--out", out, "--planners", "no-such-planner", "--reference", "size-greedy")
    assert r.code == 2 and "no-such-planner" in r.err


def test_cli_defaults_match_the_library_defaults():
    """The CLI modules import torch-heavy code lazily, so their option defaults are literals: keep them equal."""
    import inspect

    from recstack.shard import cli_measure, cli_pool
    from recstack.shard.tasks import DEFAULT_TASK_BATCH

    opts = inspect.signature(cli_measure.measure_cmd).parameters
    assert (opts["reps"].default, opts["warmup"].default, opts["blocks"].default, opts["batches"].default,
            opts["threads"].default) == (M.DEFAULT_REPS, M.DEFAULT_WARMUP, M.DEFAULT_BLOCKS, M.DEFAULT_BATCHES,
                                         M.DEFAULT_THREADS)
    assert opts["max_device_gb"].default * (1 << 30) == M.DEFAULT_MAX_DEVICE_BYTES
    assert inspect.signature(cli_pool.tasks_cmd).parameters["batch_size"].default == DEFAULT_TASK_BATCH
