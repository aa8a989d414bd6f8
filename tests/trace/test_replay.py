"""Replay of a captured iteration, and the loader's errors for broken inputs."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch

from recstack.errors import DataError
from recstack.trace import CaptureOptions, capture, load_trace
from recstack.trace.replay import Replayer, replay

try:
    from train.helpers import tiny_spec, tiny_train_spec
except ImportError:  # run as a package from the repository root
    from tests.train.helpers import tiny_spec, tiny_train_spec

OPTS = {"iterations": 2, "timing_iterations": 3, "warmup": 2}


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    out = tmp_path_factory.mktemp("cap") / "tiny"
    spec = tiny_spec(tables=4, rows=200, dim=8)
    meta = capture("tiny", spec, tiny_train_spec(batch_size=64), out, CaptureOptions(save_indices=True, **OPTS))
    return out, meta


def test_capture_writes_traces_and_measured_overhead(cap):
    out, meta = cap
    assert {"capture.json", "rank0.et.json", "rank0.kineto.json", "rank0.indices.npz"} <= {p.name for p in out.iterdir()}
    assert any((out / "rank0.et_resources").glob("nid_*_tid_*.dat"))
    r = meta["ranks"][0]
    assert r["iteration_ms"] > 0 and r["observer_ms"] > 0 and r["profiled_ms"] > 0
    assert meta["observer_overhead"] == pytest.approx(r["observer_ms"] / r["iteration_ms"] - 1)
    g = load_trace(out)
    assert [n.name for n in g.iterations()] == ["ProfilerStep#0", "ProfilerStep#1"]
    ops = g.top_level_ops()
    assert ops and all(o.duration_us is not None for o in ops)
    assert any(o.name == "aten::embedding_bag" for o in ops)
    # integral inputs carry their recorded value ranges (what replay draws indices from)
    eb = next(o for o in ops if o.name == "aten::embedding_bag")
    lo, hi = eb.tensor_ranges()[1]
    assert 0 <= lo <= hi < 4 * 200


def test_replay_rebuilds_every_operator_of_the_iteration(cap):
    out, _ = cap
    r = replay(out, iterations=3, warmup=1)
    assert r.replayed_ops == r.ops and not r.not_rebuilt
    assert r.coverage == pytest.approx(1.0)
    assert r.captured_ms is not None and r.replayed_ms > 0
    assert r.leaves["recorded"] >= 2  # indices and offsets of the embedding operator
    names = {row["name"] for row in r.per_op}
    assert "aten::embedding_bag" in names and all(row["replayed"] == row["count"] for row in r.per_op)


def test_replay_without_recorded_indices_draws_valid_ones(cap):
    out, _ = cap
    r = replay(out, iterations=2, warmup=1, use_indices=False, per_op=False)
    assert r.replayed_ops == r.ops and r.leaves["recorded"] == 0
    assert r.leaves["sorted_int"] >= 1  # the batch offsets: sorted, so bags stay valid


def test_replayed_embedding_uses_the_recorded_indices(cap):
    out, _ = cap
    g = load_trace(out)
    rp = Replayer(g, resources=out / "rank0.et_resources")
    op = next(o for o in rp.ops if o.node.name == "aten::embedding_bag")
    slots = [s for idx, _, s in op.tensor_pos if idx in (1, 2)]  # indices, offsets
    assert len(slots) == 2 and all(s in rp.pinned for s in slots)
    for i, s in zip((1, 2), slots):
        saved = rp._saved[(op.node.id, i)]
        assert rp.pinned[s] is saved and saved.dtype == torch.int64
        assert saved.numel() == op.node.inputs[i].tensors()[0].numel


def test_unrebuildable_operators_are_listed_not_dropped(cap, tmp_path):
    out, _ = cap
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    et = json.loads((bad / "rank0.et.json").read_text())
    g = load_trace(out)
    victim = next(o for o in g.top_level_ops() if o.name == "aten::embedding_bag")
    for n in et["nodes"]:
        if n["id"] == victim.id:
            for a in n["attrs"]:
                if a["name"] == "op_schema":
                    a["value"] = a["value"].replace("aten::embedding_bag", "aten::no_such_op", 1)
    (bad / "rank0.et.json").write_text(json.dumps(et))
    r = replay(bad, iterations=1, warmup=0, per_op=False)
    assert [x["id"] for x in r.not_rebuilt] == [victim.id]
    assert "no operator aten::no_such_op" in r.not_rebuilt[0]["reason"]
    assert r.replayed_ops == r.ops - 1 and r.coverage < 1.0


# ---------------------------------------------------------------- broken inputs: one line, exit 2
def _broken(cap, tmp_path, name, mutate):
    out, _ = cap
    d = tmp_path / name
    shutil.copytree(out, d)
    mutate(d)
    return d


@pytest.mark.parametrize("name,mutate,needle", [
    ("corrupt", lambda d: (d / "rank0.et.json").write_text('{"schema": "1.1.1-chakra.0.0.4", "nodes": [{'),
     "invalid JSON"),
    ("gzip", lambda d: (d / "rank0.et.json").unlink() or (d / "rank0.et.json.gz").write_bytes(
        gzip.compress(b'{"schema": "1.1.1", "nodes": []}' * 50)[:40]), "truncated or corrupt gzip"),
    ("schema", lambda d: (d / "rank0.et.json").write_text(
        (d / "rank0.et.json").read_text().replace('"schema": "1.1.1-chakra.0.0.4"', '"schema": "2.0.0"', 1)),
     "unsupported execution trace schema '2.0.0'"),
    ("noids", lambda d: (d / "rank0.kineto.json").write_text(
        (d / "rank0.kineto.json").read_text().replace('"Record function id"', '"Something else"')),
     "no record-function ids"),
])
def test_broken_traces_exit_2_in_one_line(run_cli, cap, tmp_path, name, mutate, needle):
    d = _broken(cap, tmp_path, name, mutate)
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_trace(d)
    r = run_cli("trace", "replay", d)
    assert r.code == 2, r.err
    assert needle in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


def test_gzipped_traces_load(cap, tmp_path):
    out, _ = cap
    d = tmp_path / "gz"
    shutil.copytree(out, d)
    for f in ("rank0.et.json", "rank0.kineto.json"):
        (d / f"{f}.gz").write_bytes(gzip.compress((d / f).read_bytes()))
        (d / f).unlink()
    assert len(load_trace(d).top_level_ops()) == len(load_trace(out).top_level_ops())


def test_replay_cli_json(run_cli, cap):
    out, _ = cap
    r = run_cli("trace", "replay", out, "--iterations", "2", "--warmup", "1", "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert {"captured_ms", "replayed_ms", "coverage"} <= set(d) and d["coverage"] > 0.95
    assert (out / "replay.rank0.json").is_file()
