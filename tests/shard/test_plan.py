"""Plan files: JSON format and its errors, checks against a task, TorchRec export/import, the CLI
commands, and the trainer taking a plan for its table placement."""

from __future__ import annotations

import json

import pytest

from recstack.errors import ConfigError, DataError
from recstack.shard.plan import PLAN_FORMAT, check_plan, device_summary, load_plan, save_plan, table_wise_plan
from recstack.shard.planners import make_plan
from recstack.spec import ShardingPlan, ShardTable, ShardTask, TableSharding, TaskSet

try:
    from train.helpers import make_store, tiny_spec, tiny_train_spec, write_config
except ImportError:  # run as a package from the repository root
    from tests.train.helpers import make_store, tiny_spec, tiny_train_spec, write_config


def _t(name: str, rows: int, dim: int, pooling: float = 1.0) -> ShardTable:
    return ShardTable(name=name, rows=rows, dim=dim, pooling=pooling)


# a 100x8 (3.2 kB), b 100x8, c 100x8, d 100x8: 12.8 kB on 2 devices of 10 kB
TASK = ShardTask(id=2, devices=2, mem_bytes=10_000, batch_size=64,
                 tables=[_t("a", 100, 8, 2), _t("b", 100, 8, 4), _t("c", 100, 8, 1), _t("d", 100, 8, 3)])


def _sh(st: str, ranks, sizes, offs) -> TableSharding:
    return TableSharding(sharding_type=st, ranks=ranks, shard_sizes=sizes, shard_offsets=offs)


def _mixed() -> ShardingPlan:
    """One table of each kind TorchRec's construct_module_sharding_plan makes on 2 ranks."""
    return ShardingPlan(planner="hand", task=2, devices=2, tables={
        "a": _sh("table_wise", [1], [[100, 8]], [[0, 0]]),
        "b": TableSharding(sharding_type="data_parallel", ranks=[0, 1], compute_kernel="dense"),
        "c": _sh("column_wise", [0, 1], [[100, 4], [100, 4]], [[0, 0], [0, 4]]),
        "d": _sh("row_wise", [0, 1], [[50, 8], [50, 8]], [[0, 0], [50, 0]]),
    })


def _write_tasks(path, *tasks: ShardTask):
    path.write_text(json.dumps(TaskSet(pool="hand", tasks=list(tasks)).model_dump()))
    return path


# ---------------------------------------------------------------- JSON format
def test_save_load_round_trip(tmp_path):
    plan = make_plan(TASK, "lookup-greedy")
    p = save_plan(plan, tmp_path / "plan.json")
    raw = json.loads(p.read_text())
    assert raw["format"] == PLAN_FORMAT and raw["planner"] == "lookup-greedy" and raw["task"] == 2
    assert raw["tables"]["b"] == {"sharding_type": "table_wise", "ranks": [0], "shard_sizes": [[100, 8]],
                                  "shard_offsets": [[0, 0]], "compute_kernel": "fused"}
    assert "planning_s" in raw["meta"]
    assert load_plan(p, TASK) == plan
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(format="other/2"), ["format", "recstack-sharding-plan/1", "'other/2'"]),
    (lambda d: d.pop("format"), ["format", "{table: rank}"]),
    (lambda d: d["tables"]["a"].update(ranks=[5]), ["rank 5 outside 0..1"]),
    (lambda d: d["tables"]["a"].update(ranks=[0, 1]), ["tables.a", "exactly one rank"]),
    (lambda d: d["tables"]["a"].update(sharding_type="diagonal"), ["tables.a.sharding_type"]),
    (lambda d: d["tables"]["a"].update(colour="red"), ["tables.a.colour", "unknown field"]),
    (lambda d: d.pop("devices"), ["devices", "required"]),
])
def test_plan_json_errors_name_file_and_field(tmp_path, mutate, words):
    d = make_plan(TASK, "size-greedy").model_dump(mode="json")
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError) as e:
        load_plan(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_unreadable_plan_files(tmp_path):
    with pytest.raises(DataError, match="nope.json: plan file not found"):
        load_plan(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="x.json: line 1: invalid JSON"):
        load_plan(tmp_path / "x.json")


def test_check_plan_against_task():
    ok = _mixed()
    check_plan(ok, TASK)  # b replicated: 3.2 kB on each rank; 16 kB in all on 2 x 10 kB
    assert [r["bytes"] for r in device_summary(ok, TASK)] == [1600 + 3200 + 1600, 3200 + 3200 + 1600 + 1600]

    def broken(name, sh, words):
        bad = ok.model_copy(update={"tables": {**ok.tables, name: sh}})
        with pytest.raises(ConfigError) as e:
            check_plan(bad, TASK, "p.json")
        for w in words:
            assert w in str(e.value), str(e.value)

    broken("d", _sh("row_wise", [0, 1], [[50, 8], [40, 8]], [[0, 0], [50, 0]]), ["tables.d", "cover 90 of 100 rows"])
    broken("d", _sh("row_wise", [0, 1], [[50, 8], [50, 8]], [[0, 0], [60, 0]]), ["tables.d", "gap or overlap"])
    broken("c", _sh("column_wise", [0, 1], [[100, 4], [90, 4]], [[0, 0], [0, 4]]), ["tables.c", "all 100 rows"])
    broken("a", _sh("table_wise", [1], [[100, 4]], [[0, 0]]), ["tables.a", "not the whole table"])
    heavy = table_wise_plan(TASK, [0, 0, 0, 0], "hand")
    with pytest.raises(ConfigError, match=r"p.json: device 0 holds 12.8 kB \(4 tables\), over the 10.0 kB cap "
                                          r"of task 2 by 2.80 kB"):
        check_plan(heavy, TASK, "p.json")
    fewer = ok.model_copy(update={"tables": {k: v for k, v in ok.tables.items() if k != "c"}})
    with pytest.raises(ConfigError, match="task 2's table 'c' is not in the plan"):
        check_plan(fewer, TASK)
    with pytest.raises(ConfigError, match="devices: plan has 2, task 2 has 3"):
        check_plan(ok, TASK.model_copy(update={"devices": 3}))


def test_implied_shard_sizes_are_filled_the_same_way_everywhere():
    """Split plans without sizes: TorchRec's row blocks / even column blocks, for checks and memory alike."""
    from recstack.shard.plan import device_bytes, filled

    t = _t("x", 10, 8)
    rw = filled(TableSharding(sharding_type="row_wise", ranks=[0, 1, 2]), t)
    assert rw.shard_sizes == [[4, 8], [4, 8], [2, 8]] and rw.shard_offsets == [[0, 0], [4, 0], [8, 0]]
    cw = filled(TableSharding(sharding_type="column_wise", ranks=[1, 0]), t)
    assert cw.shard_sizes == [[10, 4], [10, 4]] and cw.shard_offsets == [[0, 0], [0, 4]]
    few = filled(TableSharding(sharding_type="row_wise", ranks=[0, 1, 2, 3]), _t("y", 2, 8))  # fewer rows than ranks
    assert few.shard_sizes == [[1, 8], [1, 8], [0, 8], [0, 8]] and few.shard_offsets == [[0, 0], [1, 0], [2, 0], [2, 0]]
    stacked = filled(TableSharding(sharding_type="row_wise", ranks=[0, 1], shard_sizes=[[7, 8], [3, 8]]), t)
    assert stacked.shard_offsets == [[0, 0], [7, 0]]
    plan = ShardingPlan(devices=2, tables={"a": TableSharding(sharding_type="row_wise", ranks=[0, 1]),
                                           "b": TableSharding(sharding_type="column_wise", ranks=[0, 1]),
                                           "c": TableSharding(sharding_type="table_wise", ranks=[0]),
                                           "d": TableSharding(sharding_type="table_wise", ranks=[1])})
    check_plan(plan, TASK)
    assert device_bytes(plan, TASK) == [1600 + 1600 + 3200, 1600 + 1600 + 3200]
    with pytest.raises(ConfigError, match=r"tables.a: 2 ranks but 1 shard sizes and 1 offsets"):
        check_plan(plan.model_copy(update={"tables": {**plan.tables, "a": TableSharding.model_construct(
            sharding_type="row_wise", ranks=[0, 1], shard_sizes=[[100, 8]], shard_offsets=[[0, 0]])}}), TASK)


# ---------------------------------------------------------------- TorchRec export / import
@pytest.fixture(scope="module")
def tr():
    return pytest.importorskip("torchrec")


def test_to_torchrec_matches_construct_module_sharding_plan(tr):
    """Our export equals what TorchRec's own helpers build for the same placement."""
    import torch
    from torchrec.distributed.sharding_plan import (
        column_wise,
        construct_module_sharding_plan,
        data_parallel,
        row_wise,
        table_wise,
    )

    from recstack.shard.torchrec_plan import to_torchrec

    ebc = tr.EmbeddingBagCollection(tables=[tr.EmbeddingBagConfig(name=n, embedding_dim=8, num_embeddings=100,
                                                                  feature_names=[n]) for n in "abcd"],
                                    device=torch.device("meta"))
    ref = construct_module_sharding_plan(ebc, {
        "a": table_wise(rank=1, compute_kernel="fused"), "b": data_parallel(),
        "c": column_wise(ranks=[0, 1], compute_kernel="fused"), "d": row_wise(compute_kernel="fused")},
        local_size=2, world_size=2, device_type="cuda")
    ours = to_torchrec(_mixed(), TASK, module_path="sparse.ebc")
    assert list(ours.plan) == ["sparse.ebc"]
    assert dict(ours.plan["sparse.ebc"]) == dict(ref)


def test_torchrec_round_trip_and_files(tr, tmp_path):
    from recstack.shard.torchrec_plan import (
        from_torchrec,
        load_torchrec_plan,
        rendered_path,
        save_torchrec_plan,
        to_torchrec,
    )

    trw = _mixed().tables["d"].model_copy(update={"sharding_type": "table_row_wise"})
    plans = [_mixed(), _mixed().model_copy(update={"tables": {**_mixed().tables, "d": trw}}),
             make_plan(TASK, "size-lookup-greedy")]
    for plan in plans:
        back = from_torchrec(to_torchrec(plan, TASK), TASK, planner=plan.planner)
        assert back.tables == {n: plan.tables[n] if plan.tables[n].shard_sizes else
                               back.tables[n] for n in plan.tables}
        assert back.tables["b"].shard_sizes == [[100, 8]] * len(back.tables["b"].ranks)  # replicas filled in
    plan = _mixed()
    trp = to_torchrec(plan, TASK, device="cpu")
    assert str(trp.plan[""]["a"].sharding_spec.shards[0].placement) == "rank:1/cpu"
    pt, js = save_torchrec_plan(trp, tmp_path / "tr.pt")
    assert js == rendered_path(pt) == tmp_path / "tr.torchrec.json"
    rendered = json.loads(js.read_text())
    assert rendered["modules"][""]["c"]["shards"][1] == {"offsets": [0, 4], "sizes": [100, 4],
                                                        "placement": "rank:1/cpu"}
    for f in (pt, js):
        loaded = load_torchrec_plan(f)
        assert dict(loaded.plan[""]) == dict(trp.plan[""])
        assert from_torchrec(loaded, TASK).tables["d"] == plan.tables["d"]


def test_from_torchrec_errors(tr):
    from recstack.shard.torchrec_plan import from_torchrec, to_torchrec

    trp = to_torchrec(_mixed(), TASK, module_path="m")
    with pytest.raises(ConfigError, match="no module 'x'"):
        from_torchrec(trp, TASK, "x")
    small = TASK.model_copy(update={"tables": TASK.tables[:3]})
    with pytest.raises(ConfigError, match="table 'd' is not a table of task 2"):
        from_torchrec(trp, small)
    trp.plan["m"]["a"].sharding_type = "grid_shard"
    with pytest.raises(ConfigError, match="'a': TorchRec sharding type grid_shard has no equivalent"):
        from_torchrec(trp, TASK)
    over = to_torchrec(table_wise_plan(TASK, [0, 0, 0, 0], "hand"), None)
    with pytest.raises(ConfigError, match="device 0 holds 12.8 kB"):
        from_torchrec(over, TASK)


# ---------------------------------------------------------------- the commands
def test_plan_export_import_commands(tr, tmp_path, capsys):
    from recstack.shard.cli_plan import export_torchrec_cmd, import_torchrec_cmd, plan_cmd

    tasks = _write_tasks(tmp_path / "tasks.json", TASK.model_copy(update={"id": 0}), TASK)
    plan_cmd(tasks, task=2, out=tmp_path / "plan.json", planner="lookup-greedy", seed=0)
    out = capsys.readouterr().out
    assert "plan: lookup-greedy for task 2 (4 tables, 2 devices x 10.0 kB)" in out
    assert "6.40 kB" in out and "64%" in out and "planning time:" in out and "plan.json" in out
    plan = load_plan(tmp_path / "plan.json", TASK)
    # dim x pool: a 16, b 32, c 8, d 24 -> b to 0, d to 1, a to 1 (24 < 32), c to 0 (32 < 40)
    assert plan.rank_of() == {"a": 1, "b": 0, "c": 0, "d": 1}

    export_torchrec_cmd(tmp_path / "plan.json", out=tmp_path / "tr.pt", tasks=tasks, task=None, module_path="",
                        device=None)
    assert "table_wise" in capsys.readouterr().out
    assert (tmp_path / "tr.pt").is_file() and (tmp_path / "tr.torchrec.json").is_file()
    import_torchrec_cmd(tmp_path / "tr.torchrec.json", tasks=tasks, task=2, out=tmp_path / "back.json",
                        module_path=None)
    back = load_plan(tmp_path / "back.json", TASK)
    assert back.tables == plan.tables and back.planner == "torchrec-import"

    with pytest.raises(ConfigError, match=r"tasks.json: --task 9: no such task \(ids: 0, 2\)"):
        plan_cmd(tasks, task=9, out=tmp_path / "p.json", planner="size-greedy", seed=0)
    with pytest.raises(ConfigError, match="unknown planner 'best'"):
        plan_cmd(tasks, task=2, out=tmp_path / "p.json", planner="best", seed=0)
    with pytest.raises(ConfigError, match="give the torch.save file"):
        export_torchrec_cmd(tmp_path / "plan.json", out=tmp_path / "x.torchrec.json", tasks=None, task=None,
                            module_path="", device=None)
    assert not (tmp_path / "p.json").exists()


# ---------------------------------------------------------------- the trainer's --plan
def test_trainer_load_plan_reads_sharding_plans(tmp_path):
    from recstack.train.dist import load_plan as trainer_plan

    p = save_plan(make_plan(TASK, "size-greedy"), tmp_path / "plan.json")
    assert trainer_plan(p) == make_plan(TASK, "size-greedy").rank_of()
    (tmp_path / "old.json").write_text('{"a": 1, "b": 0}')
    assert trainer_plan(tmp_path / "old.json") == {"a": 1, "b": 0}  # the old {table: rank} form still works
    # a whole table on one rank under another name (TorchRec's one-shard column_wise) is a placement too
    one = _mixed().model_copy(update={"tables": {"a": _sh("column_wise", [1], [[100, 8]], [[0, 0]])}})
    assert trainer_plan(save_plan(one, tmp_path / "one.json")) == {"a": 1}
    save_plan(_mixed(), tmp_path / "mixed.json")
    with pytest.raises(ConfigError) as e:
        trainer_plan(tmp_path / "mixed.json")
    assert str(e.value).startswith(f"{tmp_path / 'mixed.json'}: table 'b' is data_parallel over ranks [0, 1] "
                                   "(and 2 more): the trainer places whole tables on ranks, so it takes "
                                   "table-wise plans only")
    d = json.loads(p.read_text())
    d["tables"]["a"]["ranks"] = [-1]
    (tmp_path / "neg.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"neg.json: tables.a: ranks must be >= 0"):
        trainer_plan(tmp_path / "neg.json")


def test_two_process_training_uses_the_plan(run_cli, tmp_path):
    """`recstack train ... --nproc 2 --plan PLAN.json` places the tables where the plan says (the
    default greedy placement of these 5 equal tables would be 0, 1, 0, 1, 0)."""
    spec = tiny_spec(tables=5)
    store = make_store(tmp_path / "store", spec, n=600)
    cfg = write_config(tmp_path / "tiny.yaml", spec, tiny_train_spec(steps=3, batch_size=32))
    task = ShardTask(id=0, devices=2, mem_bytes=10**6,
                     tables=[_t(t.name, t.rows, t.dim, t.pooling) for t in spec.tables])
    placement = {"t_0": 1, "t_1": 1, "t_2": 1, "t_3": 0, "t_4": 0}
    plan = table_wise_plan(task, list(placement.values()), "hand")
    save_plan(plan, tmp_path / "plan.json")
    r = run_cli("train", cfg, "--data", store, "--out", tmp_path / "run", "--nproc", "2",
                "--plan", tmp_path / "plan.json", "--no-progress")
    assert r.code == 0, r.err
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 3
    assert s["placement"] == placement
