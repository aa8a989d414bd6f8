"""`recstack trace synth`: what-if capture directories (batch, rows, pooling, ranks)."""

from __future__ import annotations

import json

import pytest

from recstack.errors import ConfigError
from recstack.trace import CaptureOptions, capture, load_ranks, load_trace
from recstack.trace.stats import capture_stats
from recstack.trace.synth import SynthOptions, a2a_splits, slice_sizes, synthesize

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from train.helpers import tiny_spec, tiny_train_spec
except ModuleNotFoundError:  # pragma: no cover
    from tests.train.helpers import tiny_spec, tiny_train_spec

OPTS = {"iterations": 2, "timing_iterations": 2, "warmup": 1}


@pytest.fixture(scope="module")
def cap1(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "one"
    capture("tiny", tiny_spec(tables=4, rows=60, dim=4), tiny_train_spec(batch_size=64), out, CaptureOptions(**OPTS))
    return out


@pytest.fixture(scope="module")
def cap2(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "two"
    capture("tiny", tiny_spec(tables=4, rows=60, dim=4), tiny_train_spec(batch_size=64), out,
            CaptureOptions(nproc=2, **OPTS))
    return out


def _by_rf(g):
    return {n.rf_id: n for n in g.nodes.values() if n.rf_id is not None}


def _emb(g, name="aten::embedding_bag"):
    return [n for n in g.nodes.values() if n.name == name]


def test_batch_x2_scales_batch_tensors_and_keeps_weights(cap1, tmp_path):
    meta = synthesize(cap1, tmp_path / "b128", SynthOptions(batch_size=128))
    assert meta["batch_size"] == 128 and meta["synth"]["source_batch_size"] == 64
    assert any(f.startswith("batch_size: 64 -> 128") for f in meta["synth"]["fields"])
    a, b = load_trace(cap1), load_trace(tmp_path / "b128")
    assert sorted(a.nodes) == sorted(b.nodes)  # same ids, same nesting
    assert all(a.nodes[i].parent == b.nodes[i].parent for i in a.nodes)
    for ea in _emb(a):
        eb = b.nodes[ea.id]
        assert eb.inputs[0].shape == ea.inputs[0].shape == [240, 4]  # the fused weight: 4 tables x 60 rows
        assert eb.inputs[1].shape == [2 * ea.inputs[1].shape[0]]  # indices
        assert eb.inputs[2].shape == [2 * (ea.inputs[2].shape[0] - 1) + 1]  # offsets (include_last_offset)
        assert eb.outputs[0].shape == [512, 4] and ea.outputs[0].shape == [256, 4]
        ia, ib = ea.inputs[1].tensors()[0], eb.inputs[1].tensors()[0]
        assert ib.nbytes == 2 * ia.nbytes and ib.tensor_id == ia.tensor_id
        assert eb.attrs["synth"].startswith("scaled x")
    state = {t.storage_id for n in a.nodes.values() if n.name == "aten::add_" and
             any(x.name.startswith("Optimizer.step") for x in a.ancestors(n.id)) for t in n.inputs[0].tensors()}
    assert state
    ra, rb = _by_rf(a), _by_rf(b)
    for rf, na in ra.items():
        nb = rb[rf]
        for x, y in zip(na.inputs, nb.inputs):
            if x.is_tensor and x.tensors()[0].storage_id in state:
                assert x.shape == y.shape and x.value == y.value  # dense parameters untouched
        if na.name == "mkldnn::_linear_pointwise" and 64 in na.inputs[1].shape:
            assert nb.inputs[1].shape == [128 if d == 64 else d for d in na.inputs[1].shape]
            assert nb.attrs["synth"] == "scaled x2"  # FLOPs linear in the batch
            own_a = na.duration_us - sum(c.duration_us or 0 for c in a.children(na.id))
            own_b = nb.duration_us - sum(c.duration_us or 0 for c in b.children(nb.id))
            assert own_b == pytest.approx(2 * own_a, abs=0.01)  # its own time; children have their own factor
    # gaps between operators are kept: the iteration grows only by what the operators gained
    sa, sb = capture_stats(cap1)["ranks"][0], capture_stats(tmp_path / "b128")["ranks"][0]
    assert sb["gaps_us"] == pytest.approx(sa["gaps_us"], abs=1.0)
    assert sa["op_us"] < sb["op_us"] < 2 * sa["op_us"] and sb["iteration_us"] > sa["iteration_us"]
    assert meta["ranks"][0]["estimated"] and meta["ranks"][0]["iteration_ms"] > 0


def test_scale_rows_and_pooling(cap1, tmp_path):
    synthesize(cap1, tmp_path / "rows", SynthOptions(scale_rows=2.5))
    a, b = load_trace(cap1), load_trace(tmp_path / "rows")
    for ea in _emb(a):
        eb = b.nodes[ea.id]
        assert eb.inputs[0].shape == [600, 4] and eb.inputs[0].tensors()[0].nbytes == 600 * 4 * 4
        assert eb.inputs[1].shape == ea.inputs[1].shape and eb.outputs[0].shape == ea.outputs[0].shape
        _lo, hi = eb.tensor_ranges()[1]
        assert hi >= ea.tensor_ranges()[1][1] and hi < 600  # replay draws indices from the new range
    for na in _emb(a, "aten::_embedding_bag_backward"):
        nb = b.nodes[na.id]
        assert 240 in [x.value for x in na.inputs if x.type == "Int"]
        assert 600 in [x.value for x in nb.inputs if x.type == "Int"]  # num_weights
    changed = [n for n in b.nodes.values() if "synth" in n.attrs]
    assert changed and all(any(600 in (x.shape or []) for x in n.inputs + n.outputs if x.is_tensor)
                           or "embedding" in n.name for n in changed)  # only the tables (and their users)
    synthesize(cap1, tmp_path / "pool", SynthOptions(pooling=2))
    c = load_trace(tmp_path / "pool")
    for ea in _emb(a):
        ec = c.nodes[ea.id]
        assert ec.inputs[1].shape == [2 * ea.inputs[1].shape[0]]
        assert ec.inputs[2].shape == ea.inputs[2].shape and ec.outputs[0].shape == ea.outputs[0].shape


def _a2a(graphs):
    """Per rank: the all-to-all nodes of the last iteration, in order (forward, backward)."""
    out = []
    for g in graphs:
        it = g.iteration()
        out.append([n for n in g.top_level_ops(it.id) if n.comm is not None and n.comm.collective == "ALL_TO_ALL"])
    return out


def _check_exchange(graphs, batch, widths):
    a2a = _a2a(graphs)
    n = len(graphs)
    assert all(len(x) == 2 for x in a2a)  # forward and backward
    for k in range(2):
        for i in range(n):
            ci = a2a[i][k].comm
            assert ci.bytes == sum(ci.in_split) * 4 and ci.out_bytes == sum(ci.out_split) * 4
            for j in range(n):
                assert ci.in_split[j] == a2a[j][k].comm.out_split[i]  # what i sends j, j receives from i
        assert [x[k].comm.in_split for x in a2a] == [a2a_splits(batch, widths, r, backward=k == 1)[0]
                                                     for r in range(n)]


def test_ranks_4_from_2_rank_capture_recomputes_the_exchange(cap2, tmp_path):
    meta = synthesize(cap2, tmp_path / "r4", SynthOptions(ranks=4, batch_size=96))
    assert meta["world_size"] == 4 and sorted(meta["files"]) == [0, 1, 2, 3]
    gs = load_ranks(tmp_path / "r4")
    assert [g.rank for g in gs] == [0, 1, 2, 3] and all(g.world_size == 4 for g in gs)
    ranks = meta["synth"]["ranks"]
    assert sum(r["tables"] for r in ranks) == 4 and [r["dense_batch"] for r in ranks] == slice_sizes(96, 4)
    _check_exchange(gs, 96, [r["embedding_width"] for r in ranks])
    src = load_ranks(cap2)
    ar = [n.comm.bytes for n in src[0].top_level_ops() if n.comm and n.comm.collective == "ALL_REDUCE"]
    assert ar and ar == [n.comm.bytes for n in gs[3].top_level_ops() if n.comm and n.comm.collective == "ALL_REDUCE"]
    for g, r in zip(gs, ranks):
        e = next(n for n in g.top_level_ops() if n.name == "aten::embedding_bag")
        assert e.outputs[0].shape == [r["tables"] * 96, 4] and e.inputs[0].shape == [60 * r["tables"], 4]
    assert not meta["synth"]["warnings"]  # the captured exchange was recognised and recomputed


def test_ranks_4_from_1_rank_capture_inserts_collectives(cap1, tmp_path):
    meta = synthesize(cap1, tmp_path / "r4", SynthOptions(ranks=4))
    assert meta["synth"]["nodes_inserted"] == 4 * 2 * 3  # per rank and iteration: 2 all-to-all, 1 all-reduce
    gs = load_ranks(tmp_path / "r4")
    _check_exchange(gs, 64, [4, 4, 4, 4])
    for g in gs:
        ids = sorted(g.nodes)
        assert len(ids) == len(set(ids)) and all(n.parent is None or n.parent in g.nodes for n in g.nodes.values())
        ops = g.top_level_ops()
        names = [n.name for n in ops]
        fwd, bwd = [i for i, n in enumerate(names) if n == "c10d::alltoall_base_"]
        assert names.index("aten::embedding_bag") < fwd < bwd < names.index("aten::_embedding_bag_backward")
        ar = [n for n in ops if n.comm is not None and n.comm.collective == "ALL_REDUCE"]
        assert len(ar) == 1 and ar[0].comm.bytes == 421 * 4  # the dense gradients of tiny_spec
        assert all(n.duration_us == 0.0 for n in ops if n.comm is not None)
        dense = next(n for n in ops if n.name == "mkldnn::_linear_pointwise")
        assert 16 in dense.inputs[1].shape  # the dense part runs on the rank's 16 samples
    s = capture_stats(tmp_path / "r4")
    assert all(r["categories"]["communication"]["count"] == 3 for r in s["ranks"])


def test_options_are_validated(cap1, tmp_path):
    for opts, msg in ((SynthOptions(), "nothing to synthesize"), (SynthOptions(batch_size=0), "--batch-size"),
                      (SynthOptions(scale_rows=-1.0), "--scale-rows"), (SynthOptions(pooling=float("nan")), "--pooling"),
                      (SynthOptions(ranks=0), "--ranks"), (SynthOptions(ranks=8, batch_size=4), "smaller than")):
        with pytest.raises(ConfigError, match=msg):
            synthesize(cap1, tmp_path / "x", opts)
    with pytest.raises(ConfigError, match="must differ"):
        synthesize(cap1, cap1, SynthOptions(batch_size=8))
    assert not (tmp_path / "x").exists()


def test_cli(cap1, tmp_path, run_cli):
    res = run_cli("trace", "synth", cap1, "--out", tmp_path / "s", "--batch-size", "32")
    assert res.code == 0, res.err
    assert "batch_size: 64 -> 32" in res.out and "scaled:" in res.out
    meta = json.loads((tmp_path / "s" / "capture.json").read_text())
    assert meta["synth"]["options"]["batch_size"] == 32 and "rules" in meta["synth"]
    for args, msg in (((), "nothing to synthesize"), (("--ranks", "0"), "--ranks"),
                      (("--scale-rows", "0"), "--scale-rows")):
        res = run_cli("trace", "synth", cap1, "--out", tmp_path / "e", *args)
        assert res.code == 2 and msg in res.err, (args, res.err)
    res = run_cli("trace", "synth", tmp_path / "missing", "--out", tmp_path / "e", "--batch-size", "8")
    assert res.code == 2 and "not a capture directory" in res.err
