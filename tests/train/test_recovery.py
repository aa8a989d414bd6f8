"""Emulated failures during training: full recovery replays exactly, CPR loses measured updates."""

from __future__ import annotations

import pytest

from recstack.errors import ConfigError
from recstack.spec import TrainSpec
from recstack.train import train
from recstack.train.recovery import node_shards

from .helpers import make_store, tiny_spec

STEPS = 240
REC = {"emb_nodes": 8, "job_hours": 48.0, "mtbf_s": 4 * 3600.0, "target_pls": 0.02, "seed": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    spec = tiny_spec(rows=400)
    root = tmp_path_factory.mktemp("recovery")
    path = make_store(root / "store", spec, n=4000)
    ts = TrainSpec(optimizer="adagrad", lr=0.05, batch_size=64, steps=STEPS, seed=3, eval_every=1000)
    out = {}
    for policy in ("none", "full", "cpr", "cpr-mfu", "cpr-ssu"):
        out[policy] = train(spec, ts, path, None, progress=False, recovery={**REC, "policy": policy})
    return out


def test_node_shards_cover_every_row_once():
    shards = node_shards([10, 3, 7], 4)
    assert len(shards) == 4
    seen = {(t, r) for node in shards for t, lo, hi in node for r in range(lo, hi)}
    assert len(seen) == 20 and sum(hi - lo for node in shards for _, lo, hi in node) == 20
    sizes = [sum(hi - lo for _, lo, hi in node) for node in shards]
    assert max(sizes) - min(sizes) <= 1


def test_full_recovery_replays_to_the_failure_free_result(runs):
    none, full = runs["none"], runs["full"]
    rep = full["recovery"]
    assert rep["failures"] >= 5 and rep["replayed_steps"] > 0 and rep["pls"] == 0.0
    assert full["auc"] == pytest.approx(none["auc"], abs=1e-6)
    assert full["logloss"] == pytest.approx(none["logloss"], abs=1e-6)
    assert rep["overhead_fraction"] > 0.05  # saves every 2 steps plus reload, reschedule and recompute
    assert "recovery" not in none


def test_partial_recovery_loses_updates_and_mfu_ssu_lose_fewer(runs):
    cpr, mfu, ssu, full = (runs[p]["recovery"] for p in ("cpr", "cpr-mfu", "cpr-ssu", "full"))
    assert cpr["mode"] == "cpr" and cpr["estimates"]["partial"] < cpr["estimates"]["full"]
    assert cpr["failure_steps"] == full["failure_steps"]  # the same failure sequence for every policy
    assert cpr["lost_updates"] > 0 and 0 < cpr["pls"] < 0.2
    assert mfu["lost_updates"] < cpr["lost_updates"] and ssu["lost_updates"] < cpr["lost_updates"]
    assert mfu["partial_saves"] > 0 and ssu["partial_saves"] > 0
    assert cpr["overhead_fraction"] < full["overhead_fraction"] / 3  # no recompute, fewer saves
    for p in ("cpr", "cpr-mfu", "cpr-ssu"):
        assert abs(runs[p]["auc"] - runs["none"]["auc"]) < 0.05


def test_bad_recovery_options(tmp_path):
    spec = tiny_spec()
    path = make_store(tmp_path / "s", spec, n=800)
    ts = TrainSpec(optimizer="sgd", lr=0.05, batch_size=64, steps=5, seed=3)
    with pytest.raises(ConfigError, match="--recovery: 'half'"):
        train(spec, ts, path, None, progress=False, recovery={"policy": "half"})
    with pytest.raises(ConfigError, match="--emb-nodes"):
        train(spec, ts, path, None, progress=False, recovery={"policy": "cpr", "emb_nodes": 0})


def test_two_processes_restore_only_the_failed_nodes_rows(tmp_path):
    """With 2 ranks each holding half the tables, a node's failure restores rows on its rank only;
    the result equals the single-process run with the same failures."""
    spec = tiny_spec(rows=400)  # 4 tables x 400 rows over 4 emulated nodes: node k = table k
    path = make_store(tmp_path / "s", spec, n=3000)
    trace = tmp_path / "fails.txt"
    trace.write_text("30000 0\n70000 3\n100000 1\n")
    ts = TrainSpec(optimizer="adagrad", lr=0.05, batch_size=64, steps=80, seed=3, eval_every=1000)
    rec = {"policy": "cpr", "emb_nodes": 4, "job_hours": 40.0, "failures_file": str(trace), "target_pls": 0.05}
    one = train(spec, ts, path, None, progress=False, recovery=rec)
    two = train(spec, ts, path, tmp_path / "two", progress=False, nproc=2, recovery=rec)
    r1, r2 = one["recovery"], two["recovery"]
    assert r1["failures"] == r2["failures"] == 3 and r1["mode"] == "cpr"
    assert r1["lost_updates"] == r2["lost_updates"] > 0 and r1["restored_rows"] == r2["restored_rows"] == 3 * 400
    assert two["auc"] == pytest.approx(one["auc"], abs=1e-5)
    assert two["logloss"] == pytest.approx(one["logloss"], abs=1e-5)
    full = train(spec, ts, path, tmp_path / "full", progress=False, nproc=2, recovery={**rec, "policy": "full"})
    none = train(spec, ts, path, tmp_path / "none", progress=False, nproc=2)
    assert full["recovery"]["replayed_steps"] > 0
    assert full["auc"] == pytest.approx(none["auc"], abs=1e-6)
