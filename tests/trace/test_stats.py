"""`recstack trace stats`: operator categories, per-rank breakdown, critical path, CLI."""

from __future__ import annotations

import itertools
import json

import pytest

from recstack.trace import CaptureOptions, capture, load_trace
from recstack.trace.graph import Arg, OpNode, TraceGraph
from recstack.trace.stats import (
    CATEGORIES,
    capture_stats,
    critical_path,
    iteration_breakdown,
    iteration_ops,
    name_category,
    op_category,
)

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from train.helpers import tiny_spec, tiny_train_spec
except ModuleNotFoundError:  # pragma: no cover
    from tests.train.helpers import tiny_spec, tiny_train_spec


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "tiny"
    capture("tiny", tiny_spec(tables=4, rows=60, dim=4), tiny_train_spec(batch_size=64), out,
            CaptureOptions(iterations=2, timing_iterations=2, warmup=1))
    return out


def _node(i: int, name: str, parent: int | None, schema: str = "x", inputs: list[Arg] | None = None) -> OpNode:
    return OpNode(i, name, parent, inputs or [], [], {"op_schema": schema} if schema else {})


def test_categories_by_name_and_context():
    w = Arg("Tensor(float)", [1, 7, 0, 8, 4, "cpu"], [4, 2])
    nodes = [
        _node(1, "ProfilerStep#0", None, schema=""),
        _node(2, "Optimizer.step#SGD.step", 1, schema=""),
        _node(3, "aten::add_", 2),
        _node(4, "autograd::engine::evaluate_function: EmbeddingBagBackward0", 1, schema=""),
        _node(5, "aten::index_select", 4),
        _node(6, "aten::embedding_bag", 1, inputs=[w]),
        _node(7, "aten::scatter_add_", 1, inputs=[w]),  # a sparse optimizer writing the table
        _node(8, "mkldnn::_linear_pointwise", 1),
        _node(9, "aten::threshold_backward", 1),
        _node(10, "c10d::allreduce_", 1),
        _node(11, "aten::cat", 1),
        _node(12, "aten::add_", 1, inputs=[Arg("Tensor(float)", [2, 9, 0, 8, 4, "cpu"], [4, 2])]),
    ]
    for n in nodes:
        if n.parent is not None:
            nodes[n.parent - 1].children.append(n.id)
    g = TraceGraph({}, {n.id: n for n in nodes})
    got = {n.id: op_category(n, g) for n in nodes[2:] if n.is_op}
    assert got == {3: "optimizer", 5: "embedding", 6: "embedding", 7: "optimizer", 8: "GEMM", 9: "elementwise",
                   10: "communication", 11: "other", 12: "elementwise"}
    assert name_category("aten::addmm") == "GEMM" and name_category("fbgemm::split_embedding_x") == "embedding"
    assert name_category("gloo:all_to_all") == "communication" and name_category("aten::cat") is None
    assert op_category(nodes[2]) == "elementwise"  # without the graph only the name decides


def test_breakdown_adds_up_and_critical_path_is_bounded(cap):
    r = capture_stats(cap)
    assert r["model"] == "tiny-dlrm" and r["batch_size"] == 64 and len(r["ranks"]) == 1
    s = r["ranks"][0]
    assert s["iterations"] == 2 and set(s["categories"]) == set(CATEGORIES)
    assert sum(c["us"] for c in s["categories"].values()) == pytest.approx(s["op_us"])
    assert sum(o["total_us"] for o in s["operators"]) == pytest.approx(s["op_us"])
    assert sum(c["share"] for c in s["categories"].values()) == pytest.approx(1.0)
    totals = [o["total_us"] for o in s["top_operators"]]
    assert totals == sorted(totals, reverse=True) and len(totals) == 10
    assert s["categories"]["embedding"]["us"] > 0 and s["categories"]["GEMM"]["us"] > 0
    assert s["categories"]["optimizer"]["us"] > 0
    assert s["measured_iteration_ms"] > 0  # capture.json, timed without the profiler
    g = load_trace(cap)
    for m, it in zip(g.iterations(), s["per_iteration"]):
        ops = [o for o in iteration_ops(g, m) if o.duration_us is not None]
        total = sum(o.duration_us for o in ops)
        assert it["iteration_us"] == pytest.approx(m.duration_us)
        assert it["gaps_us"] == pytest.approx(m.duration_us - total)  # one thread on CPU
        assert max(o.duration_us for o in ops) <= it["dataflow_path_us"] <= it["critical_path_us"] <= total + 1e-6
        length, path = critical_path(g, ops, program_order=False)
        assert length == pytest.approx(sum(o.duration_us for o in path))
        deps = g.data_deps(ops)
        assert all(a.id in deps[b.id] for a, b in itertools.pairwise(path))  # the path follows data dependencies
    one = iteration_breakdown(g, g.iteration())
    assert one["critical_path"] and one["critical_path_us"] == pytest.approx(s["per_iteration"][-1]["critical_path_us"])


def test_cli_table_json_and_plot(cap, run_cli):
    res = run_cli("trace", "stats", cap, "--top", "5")
    assert res.code == 0, res.err
    assert "operator time by category" in res.out and "top 5 operators" in res.out
    data = json.loads((cap / "stats.json").read_text())
    assert data["ranks"][0]["rank"] == 0
    # which operators are the top 5 depends on timing; that the table prints the JSON's top 5 does not
    table = res.out.split("top 5 operators", 1)[1]
    top = [o["name"] for o in data["ranks"][0]["top_operators"]]
    assert all(name in table for name in top[:5])
    emb = data["ranks"][0]["categories"]["embedding"]
    assert emb["us"] > 0 and f"{emb['us'] / 1e3:.2f} ({emb['share']:.0%})" in res.out  # its row in the category table
    assert (cap / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = run_cli("trace", "stats", cap, "--json", "--rank", "0", "--out", cap / "other.png")
    assert res.code == 0 and json.loads(res.out)["ranks"][0]["iterations"] == 2
    assert (cap / "other.png").exists()


def test_cli_errors_exit_2(cap, run_cli, tmp_path):
    for args, msg in (((cap, "--rank", "3"), "rank3.et.json"), ((tmp_path / "nope",), "not a capture directory"),
                      ((cap, "--out", tmp_path / "x.txt"), ".png"), ((cap, "--top", "0"), "--top")):
        res = run_cli("trace", "stats", *args)
        assert res.code == 2 and msg in res.err, (args, res.err)
