"""The trace loader: NCCL-style communication records, and capture under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import yaml

from recstack.trace import load_ranks, load_trace


def _node(i, name, parent, schema="", inputs=None, attrs=None):
    base = [{"name": "rf_id", "type": "uint64", "value": i}, {"name": "tid", "type": "uint64", "value": 1},
            {"name": "op_schema", "type": "string", "value": schema}]
    base += [{"name": k, "type": "string", "value": v} for k, v in (attrs or {}).items()]
    ins = inputs or {"values": [], "shapes": [], "types": [], "strides": []}
    return {"id": i, "name": name, "ctrl_deps": parent, "inputs": ins,
            "outputs": {"values": [], "shapes": [], "types": [], "strides": []}, "attrs": base}


def test_nccl_record_param_comms_gives_the_collective_its_group_and_size(tmp_path):
    t = [[10, 11, 0, 1000, 4, "cuda:0"]]
    nodes = [
        _node(1, "[pytorch|profiler|execution_trace|process]", 1),
        _node(2, "ProfilerStep#0", 1),
        _node(3, "c10d::allreduce_", 2,
              "c10d::allreduce_(Tensor[] tensors, __torch__.torch.classes.c10d.ProcessGroup process_group, "
              "__torch__.torch.classes.c10d.ReduceOp reduce_op, Tensor? sparse_indices, bool async_op=True, "
              "int timeout=-1) -> (Tensor[], __torch__.torch.classes.c10d.Work)",
              {"values": [t, "<Object>", "<Object>", "<None>", True, -1],
               "shapes": [[[1000]], [], [], [], [], []], "types": ["GenericList[Tensor(float)]", "Object", "Object",
                                                                   "None", "Bool", "Int"],
               "strides": [[[1]], [], [], [], [], []]}),
        _node(4, "record_param_comms", 3, "", None,
              {"collective_name": "allreduce", "in_msg_nelems": 1000, "out_msg_nelems": 1000, "dtype": "Half",
               "pg_name": "7", "pg_desc": "dense"}),
        _node(5, "aten::relu", 2, "aten::relu(Tensor self) -> Tensor",
              {"values": [[12, 13, 0, 8, 4, "cuda:0"]], "shapes": [[8]], "types": ["Tensor(float)"],
               "strides": [[1]]}),
    ]
    (tmp_path / "rank0.et.json").write_text(json.dumps({"schema": "1.1.1-chakra.0.0.4", "pid": 1, "nodes": nodes}))
    events = [{"ph": "X", "cat": "cpu_op" if n["name"] != "ProfilerStep#0" else "user_annotation",
               "name": n["name"], "ts": 100.0 + n["id"], "dur": 10.0, "tid": 1,
               "args": {"Record function id": n["id"], "External id": n["id"]}} for n in nodes[1:]]
    (tmp_path / "rank0.kineto.json").write_text(json.dumps({
        "traceEvents": events, "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 2,
                                                   "pg_config": [{"pg_name": "0", "ranks": [0, 1]}]}}))
    g = load_trace(tmp_path)
    top = g.top_level_ops()
    assert [n.name for n in top] == ["c10d::allreduce_", "aten::relu"]
    c = g.nodes[3].comm
    assert (c.collective, c.bytes, c.pg_name, c.backend, c.pg_inferred) == ("ALL_REDUCE", 2000, "7", "nccl", False)
    assert g.nodes[4].comm is None  # counted once, on the operator
    assert g.world_size == 2 and g.nodes[3].duration_us == 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_capture_under_torchrun_writes_one_trace_per_rank(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tiny-dlrm", "dense_features": 5, "bottom_mlp": [16, 8], "top_mlp": [16, 1], "interaction": "dot",
        "table_groups": [{"name": "t", "count": 3, "rows": 100, "dim": 8, "pooling": 2}],
        "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "steps": 10}}))
    out = tmp_path / "cap"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(_free_port()), "-m", "recstack", "trace", "capture", str(cfg),
                        "--out", str(out), "--iterations", "2", "--timing-iterations", "2"],
                       capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("trace capture: tiny-dlrm") == 1  # rank 0 reports
    meta = json.loads((out / "capture.json").read_text())
    assert meta["world_size"] == 2 and [x["rank"] for x in meta["ranks"]] == [0, 1]
    graphs = load_ranks(out)
    assert [g.rank for g in graphs] == [0, 1] and all(g.world_size == 2 for g in graphs)
    for g in graphs:
        kinds = {n.comm.collective for n in g.top_level_ops() if n.comm}
        assert kinds == {"ALL_TO_ALL", "ALL_REDUCE"}
