"""Chakra ET export: the shipped schema, round trips through our reader and through protoc's
generated classes, collective sizes of a 2-process gloo capture, and the CLI's errors."""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import json
import math
import subprocess
import sys
from importlib import resources

import pytest

from recstack.errors import ConfigError, DataError
from recstack.spec import ModelSpec, TrainSpec
from recstack.trace import CaptureOptions, capture, chakra, load_ranks
from recstack.trace.graph import Arg, CommInfo, OpNode, TraceGraph
from recstack.train.dist import place_tables

TABLES, DIM, BATCH, WORLD = 3, 4, 16, 2  # 3 tables on 2 ranks: uneven all-to-all sizes per rank
# tests/train/helpers.py's tiny_spec / tiny_train_spec, inline: `.venv/bin/pytest FILE` does not put
# the repository root on sys.path, so `tests.train.helpers` is importable only under `python -m pytest`
SPEC = ModelSpec.model_validate({
    "name": "tiny-dlrm", "dense_features": 5, "bottom_mlp": [16, DIM], "top_mlp": [16, 1], "interaction": "dot",
    "table_groups": [{"name": "t", "count": TABLES, "rows": 60, "dim": DIM, "pooling": 2}],
})
TS = TrainSpec.model_validate({"optimizer": "sgd", "lr": 0.2, "batch_size": BATCH, "steps": 20,
                               "eval_batch_size": 256})
PROTO_SHA256 = "46b67392c6192561c146c14718cae5336c644d43cf5f96a1466028a89f3ab890"  # mlcommons/chakra@21585d8


@pytest.fixture(scope="module")
def cap2(tmp_path_factory):
    """A 2-process gloo capture of a tiny DLRM (2 iterations), its graphs and their export."""
    root = tmp_path_factory.mktemp("chakra")
    out = root / "cap"
    capture("tiny", SPEC, TS, out, CaptureOptions(iterations=2, timing_iterations=2, warmup=1, nproc=WORLD))
    graphs = load_ranks(out)
    paths = chakra.export_chakra(graphs, root / "et" / "tiny")
    return out, graphs, paths


@pytest.fixture(scope="module")
def pb2(tmp_path_factory):
    """The shipped et_def.proto compiled by protoc (grpcio-tools), imported as a module."""
    pytest.importorskip("grpc_tools")
    d = tmp_path_factory.mktemp("protoc")
    proto_dir = resources.files("recstack.trace").joinpath("chakra_schema")
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={d}",
                        str(proto_dir.joinpath("et_def.proto"))], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sys.path.insert(0, str(d))
    try:
        return importlib.import_module("et_def_pb2")
    finally:
        sys.path.remove(str(d))


def read_with_generated(pb2, path):
    """Frame with protobuf's own varint decoder, parse with protoc's classes."""
    from google.protobuf.internal.decoder import _DecodeVarint32

    buf = path.read_bytes()
    pos, msgs = 0, []
    while pos < len(buf):
        n, pos = _DecodeVarint32(buf, pos)
        cls = pb2.GlobalMetadata if not msgs else pb2.Node
        msgs.append(cls.FromString(buf[pos:pos + n]))
        pos += n
    return msgs[0], msgs[1:]


def by_time(graph: TraceGraph):
    """Each iteration marker with the top-level operators that started inside its Kineto window
    (the ET's nesting across iterations is not reliable; the exporter goes by id ranges)."""
    its = graph.iterations()
    ops = {op.id: op for m in its for op in graph.top_level_ops(m.id)}.values()
    return [(m, sorted((op for op in ops if m.start_us <= op.start_us < m.start_us + m.duration_us),
                       key=lambda o: o.id)) for m in its]


def expected(graph: TraceGraph):
    """What the export should hold, derived from the graph independently of the exporter."""
    groups = by_time(graph)
    ops = [op for _, o in groups for op in o]
    tensor = graph.data_deps(ops)
    meta = next(n for n in graph.nodes.values() if n.name == "## process_group:init ##")
    exp = {meta.id: ("METADATA_NODE", [], [])}
    prev_iter_last = [meta.id]
    for m, o in groups:
        exp[m.id] = ("COMP_NODE", [], sorted(prev_iter_last))
        last = {m.tid: m.id}
        for op in o:
            kind = "COMM_COLL_NODE" if op.comm is not None else "COMP_NODE"
            deps = set(tensor[op.id]) | {last.get(op.tid, m.id)}
            exp[op.id] = (kind, [m.id], sorted(deps))
            last[op.tid] = op.id
        prev_iter_last = list(last.values())
    return exp


def test_shipped_schema_is_upstream_and_parses_like_protoc(pb2):
    from google.protobuf import descriptor_pb2

    text = chakra.schema_text()
    assert hashlib.sha256(text.encode()).hexdigest() == PROTO_SHA256  # shipped unchanged
    notice = resources.files("recstack.trace").joinpath("chakra_schema", "NOTICE").read_text()
    assert "mlcommons/chakra" in notice and "21585d8f2d65603d791d2121e3d4632351120262" in notice
    lic = resources.files("recstack.trace").joinpath("chakra_schema", "LICENSE").read_text()
    assert "Apache License" in lic and "Version 2.0" in lic
    protoc = descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)
    ours = chakra.schema().file
    assert ours == protoc
    assert ours.SerializeToString() == pb2.DESCRIPTOR.serialized_pb
    s = chakra.schema()
    assert s.enums["NodeType"]["COMM_COLL_NODE"] == pb2.COMM_COLL_NODE == 7
    assert s.enums["CollectiveCommType"]["ALL_TO_ALL"] == pb2.ALL_TO_ALL == 6


def test_proto_parser_scoping_and_unsupported():
    fdp = chakra.parse_proto("""syntax = "proto3"; package p.q;
        /* block */ message A { message B { int32 x = 1; } enum E { Z = 0; O = 1; }
          B b = 1; E e = 2; repeated .p.q.C c = 3; oneof v { string s = 4; A a = 5; } }
        message C { A.B ab = 1; }""", "t.proto")
    a = fdp.message_type[0]
    assert [f.type_name for f in a.field] == [".p.q.A.B", ".p.q.A.E", ".p.q.C", "", ".p.q.A"]
    assert [f.oneof_index for f in a.field if f.HasField("oneof_index")] == [0, 0]
    assert fdp.message_type[1].field[0].type_name == ".p.q.A.B"
    for bad in ('syntax = "proto2";', 'syntax = "proto3"; message M { map<string, int32> m = 1; }',
                'syntax = "proto3"; message M { Missing m = 1; }',
                'syntax = "proto3"; message M { int32 m = 1 [packed = false]; }'):
        with pytest.raises(chakra.ProtoSyntaxError):
            chakra.parse_proto(bad, "bad.proto")


def test_varint_framing_matches_protobuf():
    from google.protobuf.internal.encoder import _VarintBytes

    for n in (0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**31 - 1, 2**32 - 1):
        assert chakra.encode_varint(n) == _VarintBytes(n)


def test_round_trip_matches_graph_with_both_readers(cap2, pb2):
    _, graphs, paths = cap2
    assert [p.name for p in paths] == ["tiny.0.et", "tiny.1.et"]
    NT = chakra.schema().enums["NodeType"]
    for g, path in zip(graphs, paths):
        meta, nodes = chakra.read_chakra(path)
        gmeta, gnodes = read_with_generated(pb2, path)
        assert len(nodes) == len(gnodes)
        assert [n.SerializeToString() for n in nodes] == [n.SerializeToString() for n in gnodes]
        assert gmeta.version == meta.version == chakra.SCHEMA_VERSION
        ma = chakra.attrs(meta)
        assert (ma["rank"], ma["world_size"], ma["backend"], ma["iterations"]) == (g.rank, WORLD, "gloo", 2)
        assert ma["schema"] == g.meta["schema"] and json.loads(ma["pg_config"]) == g.meta["pg_config"]

        exp = expected(g)
        assert len(gnodes) == len(exp)  # METADATA + 2 markers + every top-level operator of both iterations
        assert gnodes[0].type == pb2.METADATA_NODE
        for n in gnodes:
            kind, ctrl, data = exp[n.id]
            assert pb2.NodeType.Name(n.type) == kind, n.name
            assert list(n.ctrl_deps) == ctrl and list(n.data_deps) == data, (n.id, n.name)
            assert n.name == g.nodes[n.id].name
        # every dependency points at a node in the file (a simulator would wait forever otherwise)
        ids = {n.id for n in gnodes}
        assert all(set(n.data_deps) | set(n.ctrl_deps) <= ids for n in gnodes)
        assert all(d < n.id for n in gnodes for d in n.data_deps)  # ids follow execution: a DAG

        by_id = {n.id: n for n in gnodes}
        for op_id, n in by_id.items():
            op = g.nodes[op_id]
            a = {x.name: x for x in n.attr}
            if n.type == pb2.COMM_COLL_NODE:
                assert a["comm_size"].int64_val == op.comm.bytes > 0
                assert a["comm_type"].int64_val == pb2.CollectiveCommType.Value(op.comm.collective)
                assert a["pg_name"].string_val == op.comm.pg_name and a["is_cpu_op"].bool_val is False
            elif n.type == pb2.COMP_NODE and not op.name.startswith("ProfilerStep#"):
                assert n.duration_micros == round(op.duration_us)
                assert a["tensor_size"].uint64_val == chakra.tensor_bytes(op)
                assert a["is_cpu_op"].bool_val is True and a["op_schema"].string_val == op.schema
                assert n.inputs.types == str([x.type for x in op.inputs])
        # steady state: both iterations run the same model operators (autograd may order others apart)
        (_, ops0), (_, ops1) = by_time(g)
        key = ("c10d::", "aten::embedding_bag", "aten::_embedding_bag_backward", "mkldnn::", "aten::bmm")
        assert [o.name for o in ops0 if o.name.startswith(key)] == [o.name for o in ops1 if o.name.startswith(key)]
        assert len(ops0) > 50 and abs(len(ops0) - len(ops1)) <= 5
        # each iteration's chain (marker's exclusive time + its operators) adds up to its measured time
        for i, (m, ops) in enumerate(by_time(g)):
            chain = [by_id[m.id]] + [by_id[o.id] for o in ops if o.tid == m.tid]
            assert {x.name: x.int64_val for x in by_id[m.id].attr}["iteration"] == i
            assert sum(x.duration_micros for x in chain) == round(m.duration_us)
        assert nodes[0].type == NT["METADATA_NODE"]


def test_collectives_carry_model_sizes(cap2, pb2):
    """All-to-all: rank r sends (tables it owns) x global batch x dim x 4 bytes forward and
    (all tables) x local batch x dim x 4 backward; all-reduce (DDP buckets) adds up to the dense
    parameters' bytes per iteration."""
    from recstack.train.trainer import Trainer

    _, graphs, paths = cap2
    placement = place_tables(SPEC.tables, WORLD)
    dense_bytes = sum(p.numel() * p.element_size() for p in Trainer(SPEC, TS).model.dense_parameters())
    sizes = set()
    for g, path in zip(graphs, paths):
        _, nodes = read_with_generated(pb2, path)
        owned = placement.count(g.rank)
        fwd = owned * BATCH * DIM * 4
        bwd = TABLES * (BATCH // WORLD) * DIM * 4
        a2a = {"fwd": [], "bwd": []}
        allreduce: dict[int, int] = {}
        seen_a2a: list[int] = []
        for n in nodes:
            if n.type != pb2.COMM_COLL_NODE:
                continue
            a = {x.name: x for x in n.attr}
            kind = pb2.CollectiveCommType.Name(a["comm_type"].int64_val)
            if kind == "ALL_TO_ALL":  # per iteration: the forward exchange, then the backward one
                # (by order: the ET's scopes around gloo collectives are not reliable enough to tell)
                it = a["iteration"].int64_val
                a2a["fwd" if sum(1 for x in seen_a2a if x == it) == 0 else "bwd"].append(
                    (a["comm_size"].int64_val, a["comm_out_size"].int64_val, list(a["in_split"].int64_list.values)))
                seen_a2a.append(it)
            else:
                assert kind == "ALL_REDUCE"
                it = a["iteration"].int64_val
                allreduce[it] = allreduce.get(it, 0) + a["comm_size"].int64_val
        per = (BATCH // WORLD) * owned * DIM  # elements this rank sends each peer forward
        assert a2a["fwd"] == [(fwd, bwd, [per] * WORLD)] * 2  # one per iteration
        owners = [placement.count(r) * (BATCH // WORLD) * DIM for r in range(WORLD)]
        assert a2a["bwd"] == [(bwd, fwd, owners)] * 2  # gradients of each peer's tables, local batch
        assert allreduce == {0: dense_bytes, 1: dense_bytes}
        sizes.add(fwd)
    assert len(sizes) == 2  # the ranks own different numbers of tables: 512 and 256 bytes


def test_num_ops_from_shapes(cap2, pb2):
    _, _, paths = cap2
    _, nodes = read_with_generated(pb2, paths[0])
    seen = set()
    for n in nodes:
        a = {x.name: x for x in n.attr}
        shapes = ast.literal_eval(n.inputs.shapes)
        op = n.name.rsplit("::", 1)[-1]
        if op == "bmm":
            (b, m, k), (_, _, nn) = shapes[0], shapes[1]
            assert a["num_ops"].int64_val == 2 * b * m * k * nn
        elif op == "_linear_pointwise":
            x, w = shapes[0], shapes[1]
            assert a["num_ops"].int64_val == 2 * math.prod(x[:-1]) * x[-1] * w[0]
        elif op == "mm":  # the MLP's logit layer (a GEMV)
            (m, k), (_, nn) = shapes[0], shapes[1]
            assert a["num_ops"].int64_val == 2 * m * k * nn
        elif n.type == pb2.COMP_NODE and "num_ops" in a:
            assert a["num_ops"].int64_val == 0
            continue
        else:
            continue
        seen.add(op)
        assert a["num_ops"].int64_val > 0
    assert seen == {"bmm", "_linear_pointwise", "mm"}


def _op(i, name, parent, tid=1, ins=(), outs=(), comm=None, dur=10.0, schema="x"):
    return OpNode(i, name, parent, list(ins), list(outs), {"tid": tid, "rf_id": i, "op_schema": schema},
                  start_us=100.0 * i, duration_us=dur, comm=comm)


def test_graph_without_iterations_send_and_made_up_metadata():
    t = [7, 7, 0, 8, 4, "cpu"]
    ins = [Arg("Tensor(float)", t, [8])]
    nodes = {
        1: _op(1, "[pytorch|profiler|execution_trace|thread]", None, schema=""),
        2: _op(2, "aten::relu", 1, outs=ins),
        3: _op(3, "c10d::send", 1, ins=[ins[0], Arg("Object", "<Object>"), Arg("Int", 1), Arg("Int", 9)],
               comm=CommInfo("SEND", 32, 32, "0", "gloo")),
        4: _op(4, "aten::mul", 1, tid=2, ins=ins),
        5: _op(5, "c10d::fancy_", 1, comm=CommInfo("UNKNOWN", 4, 4, "0", "nccl")),
    }
    for n in nodes.values():
        if n.parent is not None:
            nodes[n.parent].children.append(n.id)
    g = TraceGraph({"rank": 0, "world_size": 2, "pg_config": [{"pg_name": "0", "ranks": [0, 1]}]}, nodes)
    meta, out = chakra.graph_to_chakra(g)
    assert chakra.attrs(meta)["iterations"] == 0
    d = {n.id: chakra.node_to_dict(n) for n in out}
    m = out[0]
    assert m.id == 6 and d[6]["type"] == "METADATA_NODE"  # a fresh id
    # ASTRA-sim reads the groups as inputs.values[2:-2]
    assert json.loads(m.inputs.values[2:-2]) == [{"pg_name": "0", "pg_desc": "", "backend_config": "",
                                                  "ranks": [0, 1]}]
    assert [d[i]["type"] for i in (2, 3, 4, 5)] == ["COMP_NODE", "COMM_SEND_NODE", "COMP_NODE", "COMP_NODE"]
    assert d[2]["data_deps"] == [6] and d[3]["data_deps"] == [2] and d[5]["data_deps"] == [3]
    assert d[4]["data_deps"] == [2, 6]  # another thread: made-up metadata first, plus the tensor it reads
    assert all(not x["ctrl_deps"] for x in d.values())
    s = d[3]["attrs"]
    assert (s["comm_src"], s["comm_dst"], s["comm_tag"], s["comm_size"], s["is_cpu_op"]) == (0, 1, 9, 32, False)
    assert d[5]["attrs"]["collective_name"] == "UNKNOWN"
    with pytest.raises(ConfigError, match="no iteration markers"):
        chakra.graph_to_chakra(g, iterations=[0])


def test_iteration_selection(cap2, tmp_path):
    _, graphs, _ = cap2
    g = graphs[1]
    meta, nodes = chakra.graph_to_chakra(g, iterations=[-1])
    last = g.iterations()[-1]
    assert chakra.attrs(meta)["iterations"] == 1
    assert len(nodes) == 2 + len(by_time(g)[-1][1])
    assert nodes[1].id == last.id and list(nodes[1].data_deps) == [nodes[0].id]
    with pytest.raises(ConfigError, match="--iteration 2: the trace has 2 iterations"):
        chakra.graph_to_chakra(g, iterations=[2])
    with pytest.raises(DataError, match="rank 1 appears in more than one trace"):
        chakra.export_chakra([g, g], tmp_path / "x")
    with pytest.raises(ConfigError, match="is a directory"):
        chakra.export_chakra([g], tmp_path)


def test_cli_export_and_json(cap2, run_cli, tmp_path):
    out, _, _ = cap2
    r = run_cli("trace", "export-chakra", out, "--out", tmp_path / "sim" / "dlrm")
    assert r.code == 0, r.err
    for rank in (0, 1):
        assert (tmp_path / "sim" / f"dlrm.{rank}.et").exists()
        assert f"dlrm.{rank}.et" in r.out
    assert "ALL_TO_ALL x4" in r.out and "ALL_REDUCE x2" in r.out
    r = run_cli("trace", "chakra-json", tmp_path / "sim" / "dlrm.1.et", "--limit", "3")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert len(doc["nodes"]) == 3 and doc["nodes_total"] == doc["summary"]["nodes"] > 3
    assert doc["metadata"]["attrs"]["rank"] == 1 and doc["nodes"][0]["type"] == "METADATA_NODE"
    assert doc["summary"]["by_type"]["COMM_COLL"] == 6


def test_cli_errors_are_one_line(cap2, run_cli, tmp_path):
    out, _, paths = cap2
    good = paths[0].read_bytes()
    cases = {
        "truncated.et": (good[: len(good) // 2], "truncated: message"),
        "cut_prefix.et": (good[:1] + b"\xff", "truncated"),
        "garbage.et": (good[:3000] + b"\xff" * 64 + good[3064:], "corrupt"),
        "json.et": ((out / "rank0.et.json").read_bytes()[:4000], "corrupt|not a Chakra"),
        "empty.et": (b"", "empty file"),
    }
    for name, (data, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DataError, match=msg):
            chakra.read_chakra(p)
        r = run_cli("trace", "chakra-json", p)
        assert r.code == 2 and r.err.startswith("error: ") and r.err.strip().count("\n") == 0, (name, r.err)
        assert str(p) in r.err and not r.out
    (tmp_path / "empty_dir").mkdir()
    for args, msg in (
        (("chakra-json", tmp_path / "missing.et"), "not found"),
        (("export-chakra", tmp_path / "nope", "--out", tmp_path / "x"), "no such capture directory"),
        (("export-chakra", tmp_path / "empty_dir", "--out", tmp_path / "x"), "not a capture directory"),
        (("export-chakra", out, "--out", tmp_path / "x", "--iteration", "7"), "--iteration 7"),
        (("chakra-json", paths[0], "--limit", "-1"), "--limit"),
    ):
        r = run_cli("trace", *args)
        assert r.code == 2 and msg in r.err and r.err.strip().count("\n") == 0, (args, r.err)


def test_misnested_iteration_is_split_by_id_range(cap2):
    """Some gloo captures record ProfilerStep#1 (and part of its operators) as a child of
    ProfilerStep#0; the export must not depend on that nesting."""
    _, graphs, _ = cap2
    g = copy.deepcopy(graphs[0])
    before = {n.id: n.SerializeToString() for n in chakra.graph_to_chakra(g)[1]}
    m0, m1 = g.iterations()
    moved = [m1.id] + g.nodes[m1.id].children[:10]
    for i in moved:
        g.nodes[g.nodes[i].parent].children.remove(i)
        g.nodes[i].parent = m0.id
        g.nodes[m0.id].children.append(i)
    g.nodes[m0.id].children.sort()
    # the graph itself assigns operators to iterations by id range, whatever the nesting says
    assert len(g.top_level_ops(m0.id)) == len(by_time(g)[0][1])
    after = {n.id: n.SerializeToString() for n in chakra.graph_to_chakra(g)[1]}
    assert after == before
