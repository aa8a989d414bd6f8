"""Read a PyTorch execution trace (schemas 1.0.x and 1.1.x, gzip or not) and join the Kineto
profiler trace's durations by record-function id, into a `TraceGraph`.

A capture directory holds one ET and one Kineto trace per rank (`rank<R>.et.json`,
`rank<R>.kineto.json`); `load_trace(DIR, rank=R)` reads one rank, `load_ranks(DIR)` all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recstack.errors import DataError
from recstack.io import read_json
from recstack.trace.graph import COLLECTIVES, Arg, CommInfo, OpNode, TraceGraph

SUPPORTED_SCHEMAS = ("1.0", "1.1")


def _args(d: Any, path: Path, node_id: Any) -> list[Arg]:
    if not isinstance(d, dict):
        raise DataError(f"{path}: node {node_id}: inputs/outputs must be objects")
    vals, types = d.get("values", []), d.get("types", [])
    shapes, strides = d.get("shapes", []), d.get("strides", [])
    if len(vals) != len(types):
        raise DataError(f"{path}: node {node_id}: {len(vals)} values but {len(types)} types")
    return [Arg(str(types[i]), vals[i], shapes[i] if i < len(shapes) else None,
                strides[i] if i < len(strides) else None) for i in range(len(vals))]


def _check_schema(et: dict[str, Any], path: Path) -> str:
    schema = et.get("schema")
    if not isinstance(schema, str):
        raise DataError(f"{path}: no 'schema' field: not a PyTorch execution trace")
    m = re.match(r"^(\d+)\.(\d+)\.\d+", schema)
    if m is None or f"{m.group(1)}.{m.group(2)}" not in SUPPORTED_SCHEMAS:
        raise DataError(f"{path}: unsupported execution trace schema {schema!r} "
                        f"(supported: {', '.join(s + '.x' for s in SUPPORTED_SCHEMAS)})")
    return schema


def read_et(path: str | Path) -> tuple[dict[str, Any], dict[int, OpNode]]:
    path = Path(path)
    et = read_json(path, "execution trace")
    if not isinstance(et, dict):
        raise DataError(f"{path}: expected a JSON object with 'schema' and 'nodes'")
    schema = _check_schema(et, path)
    raw_nodes = et.get("nodes")
    if not isinstance(raw_nodes, list):
        raise DataError(f"{path}: no 'nodes' list")
    nodes: dict[int, OpNode] = {}
    for i, n in enumerate(raw_nodes):
        if not isinstance(n, dict) or "id" not in n or "name" not in n:
            raise DataError(f"{path}: nodes[{i}]: a node needs 'id' and 'name'")
        attrs = {a.get("name"): a.get("value") for a in n.get("attrs", []) if isinstance(a, dict)}
        nid = int(n["id"])
        parent = n.get("ctrl_deps", n.get("parent"))
        nodes[nid] = OpNode(nid, str(n["name"]), int(parent) if parent not in (None, nid) else None,
                            _args(n.get("inputs", {}), path, nid), _args(n.get("outputs", {}), path, nid), attrs)
    for n in nodes.values():
        if n.parent is not None and n.parent in nodes:
            nodes[n.parent].children.append(n.id)
    for n in nodes.values():
        n.children.sort()
    meta = {k: v for k, v in et.items() if k != "nodes"}
    meta["schema"] = schema
    meta["et_file"] = str(path)
    return meta, nodes


def join_kineto(nodes: dict[int, OpNode], path: str | Path) -> dict[str, Any]:
    """Give every ET node its Kineto start and duration (matched by record-function id); returns
    the Kineto trace's distributedInfo (rank, world size, backend, process groups) if any."""
    path = Path(path)
    k = read_json(path, "Kineto trace")
    events = k.get("traceEvents") if isinstance(k, dict) else None
    if not isinstance(events, list):
        raise DataError(f"{path}: no 'traceEvents' list: not a Kineto (PyTorch profiler) trace")
    by_rf: dict[int, dict] = {}
    ext_gpu: dict[int, float] = {}
    cpu_events = 0
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat = e.get("cat", "")
        a = e.get("args") or {}
        if cat in ("cpu_op", "user_annotation", "cpu_instant_event"):
            cpu_events += 1
            rf = a.get("Record function id")
            if rf is not None:
                by_rf[int(rf)] = e
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset") and a.get("External id") is not None:
            x = int(a["External id"])
            ext_gpu[x] = ext_gpu.get(x, 0.0) + float(e.get("dur", 0.0))
    if cpu_events and not by_rf:
        raise DataError(f"{path}: the Kineto trace has no record-function ids ('Record function id' in event "
                        "args), so durations cannot be joined to the execution trace; capture with "
                        "`recstack trace capture` or torch.profiler with execution_trace_observer set")
    for n in nodes.values():
        e = by_rf.get(n.rf_id) if n.rf_id is not None else None
        if e is not None and e.get("name") == n.name:
            n.start_us, n.duration_us = float(e.get("ts", 0.0)), float(e.get("dur", 0.0))
            n.kineto_tid = e.get("tid")
            x = (e.get("args") or {}).get("External id")
            if x is not None and int(x) in ext_gpu:
                n.gpu_us = ext_gpu[int(x)]
    return k.get("distributedInfo") or {}


_DTYPE_BYTES = {"Float": 4, "Double": 8, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                "Byte": 1, "Bool": 1, "Float8_e4m3fn": 1, "Float8_e5m2": 1}


def _comm(n: OpNode, backend: str, default_pg: str) -> CommInfo | None:
    """Communication attributes of a collective node: c10d::<op>, record_param_comms (NCCL), gloo:<op>."""
    name = n.name
    attrs = n.attrs
    if name == "record_param_comms" or "collective_name" in attrs:
        coll = str(attrs.get("collective_name", ""))
        elem = (int(attrs.get("dtype_size", 0) or 0) or _DTYPE_BYTES.get(str(attrs.get("dtype", "")), 0)
                or next((t.elem_bytes for t in n.input_tensors()), 4))
        in_b = int(attrs.get("in_msg_nelems", 0) or 0) * elem
        out_b = int(attrs.get("out_msg_nelems", 0) or 0) * elem
        kind = COLLECTIVES.get(coll.lower().lstrip("_").removesuffix("_"), coll.upper() or "UNKNOWN")
        return CommInfo(kind, in_b, out_b, str(attrs.get("pg_name", default_pg)), backend,
                        attrs.get("in_split_size"), attrs.get("out_split_size"), "pg_name" not in attrs)
    if not name.startswith("c10d::"):
        return None
    op = name.split("::", 1)[1].rstrip("_")
    kind = COLLECTIVES.get(op)
    if kind is None:
        return None
    ins = n.input_tensors()
    if op in ("alltoall_base", "_allgather_base", "_reduce_scatter_base", "allgather_into_tensor_coalesced",
              "reduce_scatter_tensor_coalesced"):
        out_t, in_t = ins[:1], ins[1:2]  # (output, input, ...)
    elif op in ("allgather", "reduce_scatter"):
        out_t, in_t = ins[:0], ins[-1:]
    else:
        out_t, in_t = ins, ins  # in-place collectives: the tensors are both
    splits = [a.value for a in n.inputs if a.type.startswith("GenericList[Int")]
    in_split = splits[1] if op == "alltoall_base" and len(splits) > 1 else None
    out_split = splits[0] if op == "alltoall_base" and splits else None
    return CommInfo(kind, sum(t.nbytes for t in in_t), sum(t.nbytes for t in out_t) or sum(t.nbytes for t in in_t),
                    default_pg, backend, in_split, out_split, True)


def load_trace(path: str | Path, rank: int = 0, kineto: str | Path | None = None) -> TraceGraph:
    """A capture directory (rank `rank`'s files) or an ET file (with `kineto`, or a sibling
    `<stem>.kineto.json`), into a TraceGraph with durations and communication attributes."""
    p = Path(path)
    if p.is_dir():
        et_path = next((q for q in (p / f"rank{rank}.et.json", p / f"rank{rank}.et.json.gz") if q.exists()), None)
        if et_path is None:
            raise DataError(f"{p}: no rank{rank}.et.json: not a capture directory (see `recstack trace capture`)")
        kin = kineto or next((q for q in (p / f"rank{rank}.kineto.json", p / f"rank{rank}.kineto.json.gz")
                              if q.exists()), None)
    else:
        et_path = p
        stem = p.name.split(".et.json")[0] if ".et.json" in p.name else p.stem
        kin = kineto or next((q for q in (p.with_name(f"{stem}.kineto.json"), p.with_name(f"{stem}.kineto.json.gz"))
                              if q.exists()), None)
    meta, nodes = read_et(et_path)
    dinfo = join_kineto(nodes, kin) if kin is not None else {}
    meta["kineto_file"] = str(kin) if kin is not None else None
    meta["rank"] = int(dinfo.get("rank", rank))
    meta["world_size"] = int(dinfo.get("world_size", 1))
    meta["backend"] = dinfo.get("backend", "")
    meta["pg_config"] = dinfo.get("pg_config", [])
    default_pg = str(meta["pg_config"][0]["pg_name"]) if meta["pg_config"] else "0"
    for n in nodes.values():
        n.comm = _comm(n, meta["backend"], default_pg)
    # NCCL (and newer gloo) runs record a record_param_comms range inside the c10d op: it names the
    # process group and the message sizes, so the op takes its attributes and the range drops its own
    for n in nodes.values():
        if n.comm is None or not n.name.startswith("c10d::"):
            continue
        stack = list(n.children)
        while stack:
            c = nodes[stack.pop()]
            if c.name == "record_param_comms" and c.comm is not None:
                n.comm, c.comm = c.comm, None
                break
            stack.extend(c.children)
    return TraceGraph(meta, nodes)


def load_ranks(path: str | Path) -> list[TraceGraph]:
    p = Path(path)
    ranks = sorted(int(m.group(1)) for q in p.glob("rank*.et.json*") if (m := re.match(r"rank(\d+)\.et\.json", q.name)))
    if not ranks:
        raise DataError(f"{p}: no rank<R>.et.json files: not a capture directory")
    return [load_trace(p, r) for r in ranks]
