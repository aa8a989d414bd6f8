"""Chakra execution-trace export: one protobuf ET file per rank, `<prefix>.<rank>.et`, the input
ASTRA-sim and the other Chakra tools read; and a reader for round trips and inspection.

File format (mlcommons/chakra `schema/protobuf/et_def.proto`, shipped unchanged in
`chakra_schema/`): a sequence of protobuf messages, each preceded by its length as a varint32;
first one `GlobalMetadata`, then one `Node` per operator.

Schema without generated code: the message classes are built at run time from the shipped
.proto. A small parser reads its proto3 subset (package, messages, nested messages, enums,
scalar / message / enum fields, `repeated`, `oneof`) into a `descriptor_pb2.FileDescriptorProto`,
the same descriptor protoc produces (the tests compare them byte for byte), which a private
`DescriptorPool` and `message_factory.GetMessageClass` turn into classes. Enum numbers
(`NodeType`, `CollectiveCommType`) are read from the same descriptor, so the .proto is the
single source of truth and the only run-time dependency is the `protobuf` package.

Mapping from a `TraceGraph` (one rank):

- Kept: the top-level operators (`TraceGraph.top_level_ops`) of every captured iteration by
  default (so a simulator sees several steps; `iterations=` picks some), each iteration's
  marker (`ProfilerStep#<i>`), and the ET's `## process_group:init ##` node. Without
  iteration markers, the top-level operators of the whole trace. Node ids are the ET ids.
  An operator belongs to the iteration whose marker id range holds its id, not to the marker
  the ET nests it under (`iteration_ops`: gloo captures sometimes nest a step inside the
  previous one).
- Types: an operator whose `comm` (CommInfo) is set is `COMM_COLL_NODE` (`COMM_SEND_NODE` /
  `COMM_RECV_NODE` for point-to-point), every other operator and every iteration marker is
  `COMP_NODE`, the process-group node is `METADATA_NODE` (ASTRA-sim reads the communicator
  groups from its `inputs.values`, so the `pg_name` of the comm nodes resolves; when the ET
  lacks it, one is made from the Kineto trace's `pg_config`, with a fresh id).
- Dependencies, with Chakra's meaning (its PyTorch converter and its feeder): `data_deps` are
  what a simulator waits for before it issues a node, so they carry execution order plus data
  flow: the previous kept node on the same thread (the iteration marker for an iteration's
  first operator on a thread; for a marker, the last node of each thread in the previous kept
  iteration, or the METADATA node), plus every earlier kept operator that produced one of its
  input tensors (`TraceGraph.data_deps`, over all kept operators, so an iteration's reads of
  weights the previous optimizer step wrote count). `ctrl_deps` are the caller/callee relation
  the converter records (the parent, when kept): an operator's iteration marker.
- Timing: `duration_micros` is the Kineto duration rounded to whole microseconds;
  `start_time_micros` the Kineto start (absolute, the profiler's clock). A marker's duration is
  its exclusive time, as the converter does for record-function nodes: the iteration's
  duration less its top-level operators on the marker's thread (Python and framework time
  between operators), so the per-thread chain of an iteration adds up to its measured time.
- `inputs`/`outputs`: IOInfo with `str()` of the ET's values, shapes and types lists, as the
  converter writes them.
- Attributes: `rf_id`, `fw_parent`, `seq_id`, `scope`, `tid`, `fw_tid` (int64) and `op_schema`
  (string) when the ET has them, `is_cpu_op` (bool; true for operators and markers, false for
  communication nodes, as ASTRA-sim requires), `iteration` (int64, the index of the captured
  iteration). COMP operators: `num_ops` (int64, FLOPs of mm / addmm / bmm / baddbmm /
  matmul / linear / _linear_pointwise as 2 x output elements x contraction length, 0 for
  other operators) and `tensor_size` (uint64, bytes of the distinct input and output tensors);
  `device_micros` (int64) when CUDA kernels were joined; `collective_name` (string) on an
  operator whose collective has no CollectiveCommType. Communication nodes: `comm_type`
  (int64, the `CollectiveCommType` number), `comm_size` (int64, this rank's payload in bytes:
  its input tensors), `pg_name` (string), `comm_out_size` (int64), `in_split` / `out_split`
  (int64 lists, all-to-all), `pg_inferred` (bool: gloo does not record the group, the default
  one is assumed), and `comm_src` / `comm_dst` / `comm_tag` (int32) for send / recv.
  Types follow Chakra's feeder: num_ops, comm_type and comm_size int64, tensor_size uint64.
- GlobalMetadata: `version` = the schema version shipped (`SCHEMA_VERSION`), attributes
  `schema`, `pid`, `time`, `start_ts`, `finish_ts` (the source ET's, as the converter keeps
  them), `rank`, `world_size`, `backend`, `pg_config` (JSON string), `iterations` and
  `producer`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from recstack.errors import ConfigError, DataError
from recstack.io import read_bytes
from recstack.trace.graph import OpNode, TraceGraph

SCHEMA_FILE = "et_def.proto"
# Chakra's schema version of et_def.proto as shipped (unchanged since tag v0.0.4; PyTorch ETs
# name it in their schema string, "1.1.1-chakra.0.0.4")
SCHEMA_VERSION = "0.0.4"
PG_INIT_NAME = "## process_group:init ##"

# ---------------------------------------------------------------------------------------------
# .proto (proto3 subset) -> FileDescriptorProto
# ---------------------------------------------------------------------------------------------

_SCALARS = {
    "double": "TYPE_DOUBLE", "float": "TYPE_FLOAT", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "sint32": "TYPE_SINT32", "sint64": "TYPE_SINT64",
    "fixed32": "TYPE_FIXED32", "fixed64": "TYPE_FIXED64", "sfixed32": "TYPE_SFIXED32",
    "sfixed64": "TYPE_SFIXED64", "bool": "TYPE_BOOL", "string": "TYPE_STRING", "bytes": "TYPE_BYTES",
}
_TOKEN = re.compile(r'\s+|//[^\n]*|/\*.*?\*/|(?P<tok>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|'
                    r'-?\d+|[A-Za-z_][\w.]*|\.[A-Za-z_][\w.]*|[{}=;<>,\[\]()])', re.DOTALL)


class ProtoSyntaxError(ValueError):
    """The .proto uses something outside the subset this parser knows."""


class _Tokens:
    def __init__(self, text: str, name: str) -> None:
        self.name = name
        self.toks: list[tuple[str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ProtoSyntaxError(f"{name}: line {text.count(chr(10), 0, pos) + 1}: "
                                       f"unexpected character {text[pos]!r}")
            if m.group("tok") is not None:
                self.toks.append((m.group("tok"), text.count("\n", 0, pos) + 1))
            pos = m.end()
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def next(self) -> str:
        if self.i >= len(self.toks):
            raise ProtoSyntaxError(f"{self.name}: unexpected end of file")
        self.i += 1
        return self.toks[self.i - 1][0]

    def expect(self, tok: str) -> None:
        got = self.next()
        if got != tok:
            self.fail(f"expected {tok!r}, got {got!r}", back=1)

    def fail(self, msg: str, back: int = 0) -> None:
        line = self.toks[max(0, min(self.i - back, len(self.toks) - 1))][1] if self.toks else 0
        raise ProtoSyntaxError(f"{self.name}: line {line}: {msg}")

    def ident(self) -> str:
        t = self.next()
        if not re.fullmatch(r"\.?[A-Za-z_][\w.]*", t):
            self.fail(f"expected a name, got {t!r}", back=1)
        return t

    def number(self) -> int:
        t = self.next()
        if not re.fullmatch(r"-?\d+", t):
            self.fail(f"expected a number, got {t!r}", back=1)
        return int(t)


def parse_proto(text: str, name: str = SCHEMA_FILE) -> Any:
    """A proto3 schema (the subset et_def.proto uses) as a `descriptor_pb2.FileDescriptorProto`,
    equal to the one protoc writes for it."""
    from google.protobuf import descriptor_pb2 as d

    tk = _Tokens(text, name)
    fdp = d.FileDescriptorProto(name=name)
    pending: list[tuple[Any, str, str]] = []  # (field, type as written, scope) to resolve
    known: dict[str, str] = {}  # full name (no leading dot) -> "message" | "enum"

    def parse_enum(container: Any, scope: str) -> None:
        ename = tk.ident()
        e = container.add(name=ename)
        known[f"{scope}.{ename}".lstrip(".")] = "enum"
        tk.expect("{")
        while tk.peek() != "}":
            t = tk.next()
            if t == ";":
                continue
            if t in ("option", "reserved"):
                tk.fail(f"'{t}' in enum {ename} is not supported", back=1)
            tk.expect("=")
            e.value.add(name=t, number=tk.number())
            if tk.peek() == "[":
                tk.fail(f"enum value options in {ename} are not supported")
            tk.expect(";")
        tk.expect("}")

    def parse_message(container: Any, scope: str) -> None:
        mname = tk.ident()
        m = container.add(name=mname)
        full = f"{scope}.{mname}".lstrip(".")
        known[full] = "message"
        tk.expect("{")
        while tk.peek() != "}":
            t = tk.next()
            if t == ";":
                continue
            if t == "message":
                parse_message(m.nested_type, "." + full)
            elif t == "enum":
                parse_enum(m.enum_type, "." + full)
            elif t == "oneof":
                oname = tk.ident()
                index = len(m.oneof_decl)
                m.oneof_decl.add(name=oname)
                tk.expect("{")
                while tk.peek() != "}":
                    parse_field(m, "." + full, tk.next(), oneof=index)
                tk.expect("}")
            elif t in ("option", "reserved", "extensions", "extend", "map", "optional", "required", "group"):
                tk.fail(f"'{t}' in message {mname} is not supported", back=1)
            else:
                parse_field(m, "." + full, t, oneof=None)
        tk.expect("}")

    def parse_field(m: Any, scope: str, first: str, oneof: int | None) -> None:
        repeated = first == "repeated"
        ftype = tk.ident() if repeated else first
        if ftype in ("map", "optional", "required", "group"):
            tk.fail(f"'{ftype}' fields are not supported")
        fname = tk.ident()
        tk.expect("=")
        number = tk.number()
        if tk.peek() == "[":
            tk.fail(f"field options on {fname} are not supported")
        tk.expect(";")
        f = m.field.add(name=fname, number=number,
                        label=d.FieldDescriptorProto.LABEL_REPEATED if repeated
                        else d.FieldDescriptorProto.LABEL_OPTIONAL)
        if oneof is not None:
            f.oneof_index = oneof
        if ftype in _SCALARS:
            f.type = d.FieldDescriptorProto.Type.Value(_SCALARS[ftype])
        else:
            pending.append((f, ftype, scope))

    while tk.peek() is not None:
        t = tk.next()
        if t == ";":
            continue
        if t == "syntax":
            tk.expect("=")
            syntax = tk.next().strip("\"'")
            tk.expect(";")
            if syntax != "proto3":
                tk.fail(f"syntax {syntax!r}: only proto3 is supported")
            fdp.syntax = syntax
        elif t == "package":
            fdp.package = tk.ident()
            tk.expect(";")
        elif t == "message":
            parse_message(fdp.message_type, "." + fdp.package if fdp.package else "")
        elif t == "enum":
            parse_enum(fdp.enum_type, "." + fdp.package if fdp.package else "")
        else:
            tk.fail(f"'{t}' at file level is not supported", back=1)

    for f, written, scope in pending:  # protobuf scoping: innermost scope outwards
        if written.startswith("."):
            candidates = [written[1:]]
        else:
            parts = scope.lstrip(".").split(".") if scope else []
            candidates = [".".join(parts[:k] + [written]) for k in range(len(parts), -1, -1)]
        full = next((c for c in candidates if c in known), None)
        if full is None:
            raise ProtoSyntaxError(f"{name}: field {f.name}: unknown type {written!r}")
        f.type = d.FieldDescriptorProto.TYPE_MESSAGE if known[full] == "message" else d.FieldDescriptorProto.TYPE_ENUM
        f.type_name = "." + full
    return fdp


@dataclass(frozen=True)
class Schema:
    """Message classes and enum numbers made from the shipped et_def.proto."""

    file: Any  # FileDescriptorProto
    messages: dict[str, type]
    enums: dict[str, dict[str, int]]

    def __getattr__(self, name: str) -> type:
        if name.startswith("_") or name in ("file", "messages", "enums"):
            raise AttributeError(name)
        try:
            return self.messages[name]
        except KeyError:
            raise AttributeError(name) from None

    def enum_name(self, enum: str, number: int) -> str:
        return next((k for k, v in self.enums[enum].items() if v == number), str(number))


def schema_text() -> str:
    return resources.files("recstack.trace").joinpath("chakra_schema", SCHEMA_FILE).read_text()


@lru_cache(maxsize=1)
def schema() -> Schema:
    """The Chakra schema as protobuf classes (built once per process, in a private pool)."""
    from google.protobuf import descriptor_pool, message_factory

    fdp = parse_proto(schema_text())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    pkg = fdp.package
    messages = {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{pkg}.{m.name}"))
                for m in fdp.message_type}
    enums = {e.name: {v.name: v.number for v in e.value} for e in fdp.enum_type}
    return Schema(fdp, messages, enums)


# ---------------------------------------------------------------------------------------------
# framing: varint32 length, message
# ---------------------------------------------------------------------------------------------

def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint length must be >= 0")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _decode_varint32(buf: bytes, pos: int, path: Path, index: int) -> tuple[int, int]:
    value = shift = 0
    start = pos
    while True:
        if pos >= len(buf):
            raise DataError(f"{path}: truncated: message {index}'s length prefix at byte {start} is cut off")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift >= 35:
            raise DataError(f"{path}: corrupt: message {index}'s length prefix at byte {start} is not a varint32")


def encode_messages(messages: Iterable[Any]) -> bytes:
    parts = []
    for m in messages:
        raw = m.SerializeToString()
        parts += [encode_varint(len(raw)), raw]
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# TraceGraph -> Chakra
# ---------------------------------------------------------------------------------------------

_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_linear_pointwise"}
_ET_INT_ATTRS = ("rf_id", "fw_parent", "seq_id", "scope", "tid", "fw_tid")


def _int_shape(shape: Any) -> list[int] | None:
    if isinstance(shape, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in shape):
        return shape
    return None


def estimate_flops(node: OpNode) -> int:
    """FLOPs of a matrix-multiply operator from its recorded shapes (2 x output elements x
    contraction length); 0 for other operators or when the shapes are missing."""
    op = node.name.rsplit("::", 1)[-1]
    if op not in _MATMUL_OPS:
        return 0
    mats = [s for a in node.inputs if a.is_tensor and (s := _int_shape(a.shape)) is not None and len(s) >= 1]
    if op in ("addmm", "baddbmm"):
        mats = mats[1:]  # (bias/input, mat1, mat2)
    out = next((s for a in node.outputs if a.is_tensor and (s := _int_shape(a.shape)) is not None), None)
    if not mats or out is None:
        return 0
    return 2 * math.prod(out) * mats[0][-1]


def tensor_bytes(node: OpNode) -> int:
    """Bytes of the distinct tensors an operator reads and writes."""
    seen: dict[tuple, int] = {}
    for t in node.input_tensors() + node.output_tensors():
        seen[t.key] = t.nbytes
    return sum(seen.values())


def _us(x: float | None) -> int:
    return max(0, round(x)) if x is not None else 0


class _Attrs:
    def __init__(self, s: Schema) -> None:
        self.s = s
        self.out: list[Any] = []

    def add(self, name: str, kind: str, value: Any) -> _Attrs:
        A = self.s.AttributeProto
        if kind.endswith("_list"):
            cls = self.s.messages[kind.replace("_list", "").capitalize() + "List"]
            self.out.append(A(name=name, **{kind: cls(values=list(value))}))
        else:
            self.out.append(A(name=name, **{f"{kind}_val": value}))
        return self


def _io(s: Schema, args: list) -> Any:
    return s.IOInfo(values=str([a.value for a in args]), shapes=str([a.shape for a in args]),
                    types=str([a.type for a in args]))


def iteration_ops(graph: TraceGraph) -> list[tuple[OpNode, list[OpNode]]]:
    """Each iteration marker with its top-level operators. `TraceGraph.top_level_ops` assigns
    operators to iterations by id range (ET ids are handed out in start order), not by nesting:
    some captures record `ProfilerStep#1`, and part of its operators, as children of
    `ProfilerStep#0`."""
    return [(m, graph.top_level_ops(m.id)) for m in graph.iterations()]


def _select(graph: TraceGraph, iterations: Sequence[int] | None
            ) -> list[tuple[int | None, OpNode | None, list[OpNode]]]:
    groups = iteration_ops(graph)
    if not groups:
        if iterations:
            raise ConfigError(f"--iteration: {graph.meta.get('et_file', 'the trace')} has no iteration markers")
        return [(None, None, graph.top_level_ops())]
    picked = range(len(groups))
    if iterations is not None:
        for i in iterations:
            if not -len(groups) <= i < len(groups):
                raise ConfigError(f"--iteration {i}: the trace has {len(groups)} iterations (0..{len(groups) - 1})")
        picked = sorted({i % len(groups) for i in iterations})
    return [(i, *groups[i]) for i in picked]


def _metadata_node(s: Schema, graph: TraceGraph) -> Any | None:
    """The ET's process-group node as a METADATA node, or one made from the Kineto pg_config."""
    NT = s.enums["NodeType"]
    pg = next((n for n in sorted(graph.nodes.values(), key=lambda n: n.id) if n.name == PG_INIT_NAME), None)
    if pg is not None:
        node = s.Node(id=pg.id, name=pg.name, type=NT["METADATA_NODE"], inputs=_io(s, pg.inputs),
                      outputs=_io(s, pg.outputs), start_time_micros=_us(pg.start_us),
                      duration_micros=_us(pg.duration_us))
        a = _Attrs(s)
        for k in _ET_INT_ATTRS:
            if isinstance(pg.attrs.get(k), int):
                a.add(k, "int64", int(pg.attrs[k]))
        node.attr.extend(a.out)
        return node
    cfg = graph.meta.get("pg_config") or []
    if not cfg:
        return None
    values = str([json.dumps([{"pg_name": str(g.get("pg_name")), "pg_desc": g.get("pg_desc", ""),
                               "backend_config": g.get("backend_config", ""), "ranks": list(g.get("ranks", []))}
                              for g in cfg])])
    return s.Node(id=max(graph.nodes, default=0) + 1, name=PG_INIT_NAME, type=NT["METADATA_NODE"],
                  inputs=s.IOInfo(values=values, shapes="[[]]", types="['String']"),
                  outputs=s.IOInfo(values="[]", shapes="[]", types="[]"))


def _op_node(s: Schema, graph: TraceGraph, op: OpNode, iteration: int | None) -> Any:
    NT, CT = s.enums["NodeType"], s.enums["CollectiveCommType"]
    node = s.Node(id=op.id, name=op.name, start_time_micros=_us(op.start_us), duration_micros=_us(op.duration_us),
                  inputs=_io(s, op.inputs), outputs=_io(s, op.outputs))
    a = _Attrs(s)
    for k in _ET_INT_ATTRS:
        if isinstance(op.attrs.get(k), int):
            a.add(k, "int64", int(op.attrs[k]))
    a.add("op_schema", "string", op.schema)
    if iteration is not None:
        a.add("iteration", "int64", iteration)
    c = op.comm
    if c is not None and (c.collective in CT or c.collective in ("SEND", "RECV")):
        a.add("is_cpu_op", "bool", False)
        if c.collective in CT:
            node.type = NT["COMM_COLL_NODE"]
            a.add("comm_type", "int64", CT[c.collective])
        else:
            node.type = NT["COMM_SEND_NODE"] if c.collective == "SEND" else NT["COMM_RECV_NODE"]
            ints = [int(x.value) for x in op.inputs if x.type == "Int" and isinstance(x.value, int)]
            if ints:  # c10d::send_(tensors, pg, dstRank, tag) / recv_(tensors, pg, srcRank, tag)
                src, dst = (graph.rank, ints[0]) if c.collective == "SEND" else (ints[0], graph.rank)
                a.add("comm_src", "int32", src).add("comm_dst", "int32", dst)
                if len(ints) > 1:
                    a.add("comm_tag", "int32", ints[1])
        a.add("comm_size", "int64", int(c.bytes)).add("comm_out_size", "int64", int(c.out_bytes))
        a.add("pg_name", "string", str(c.pg_name))
        if c.pg_inferred:
            a.add("pg_inferred", "bool", True)
        for name, split in (("in_split", c.in_split), ("out_split", c.out_split)):
            if isinstance(split, list) and all(isinstance(x, int) for x in split):
                a.add(name, "int64_list", split)
    else:
        node.type = NT["COMP_NODE"]
        a.add("is_cpu_op", "bool", True)
        a.add("num_ops", "int64", estimate_flops(op)).add("tensor_size", "uint64", tensor_bytes(op))
        if op.gpu_us is not None:
            a.add("device_micros", "int64", _us(op.gpu_us))
        if c is not None:
            a.add("collective_name", "string", c.collective)
    node.attr.extend(a.out)
    return node


def graph_to_chakra(graph: TraceGraph, iterations: Sequence[int] | None = None) -> tuple[Any, list[Any]]:
    """One rank's trace as Chakra (GlobalMetadata, [Node, ...]) messages, METADATA node first,
    then by id. `iterations`: indices into the captured iterations (default all)."""
    s = schema()
    NT = s.enums["NodeType"]
    groups = _select(graph, iterations)
    tensor_deps = graph.data_deps([op for _, _, ops in groups for op in ops])
    out: list[Any] = []
    meta_node = _metadata_node(s, graph)
    entry = [meta_node.id] if meta_node is not None else []
    last: dict[int, int] = {}  # thread -> last kept node of the previous group
    for index, marker, ops in groups:
        in_iter: dict[int, int] = {}
        if marker is not None:
            own = sum(_us(op.duration_us) for op in ops if op.tid == marker.tid)
            m = s.Node(id=marker.id, name=marker.name, type=NT["COMP_NODE"],
                       start_time_micros=_us(marker.start_us),
                       duration_micros=max(0, _us(marker.duration_us) - own),
                       data_deps=sorted(set(last.values())) or entry,
                       inputs=_io(s, marker.inputs), outputs=_io(s, marker.outputs))
            a = _Attrs(s)
            for k in _ET_INT_ATTRS:
                if isinstance(marker.attrs.get(k), int):
                    a.add(k, "int64", int(marker.attrs[k]))
            a.add("is_cpu_op", "bool", True).add("iteration", "int64", index)
            a.add("iteration_micros", "int64", _us(marker.duration_us))
            m.attr.extend(a.out)
            out.append(m)
            in_iter[marker.tid] = marker.id
        for op in ops:
            node = _op_node(s, graph, op, index)
            deps = set(tensor_deps.get(op.id, []))
            prev = in_iter.get(op.tid)
            if prev is not None:  # the previous kept node on this thread
                deps.add(prev)
            elif marker is not None:  # an iteration's first operator on another thread
                deps.add(marker.id)
            else:
                deps.update(entry)
            node.data_deps.extend(sorted(deps))
            if marker is not None:
                node.ctrl_deps.append(marker.id)
            in_iter[op.tid] = op.id
            out.append(node)
        last = in_iter
    out.sort(key=lambda n: n.id)
    if meta_node is not None:
        out.insert(0, meta_node)
    return _global_metadata(s, graph, len([g for g in groups if g[1] is not None])), out


def _global_metadata(s: Schema, graph: TraceGraph, iterations: int) -> Any:
    from recstack import __version__ as version

    m = graph.meta
    a = _Attrs(s)
    if m.get("schema"):
        a.add("schema", "string", str(m["schema"]))
    if isinstance(m.get("pid"), int):
        a.add("pid", "uint64", m["pid"])
    if m.get("time"):
        a.add("time", "string", str(m["time"]))
    for k in ("start_ts", "finish_ts"):
        if isinstance(m.get(k), int) and m[k] >= 0:
            a.add(k, "uint64", m[k])
    a.add("rank", "int64", graph.rank).add("world_size", "int64", graph.world_size)
    if m.get("backend"):
        a.add("backend", "string", str(m["backend"]))
    if m.get("pg_config"):
        a.add("pg_config", "string", json.dumps(m["pg_config"]))
    a.add("iterations", "int64", iterations).add("producer", "string", f"recstack {version}")
    return s.GlobalMetadata(version=SCHEMA_VERSION, attr=a.out)


def write_chakra(path: str | Path, metadata: Any, nodes: Sequence[Any]) -> Path:
    """One .et file, written to a temporary name and renamed into place."""
    from recstack.io import atomic_open

    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(encode_messages([metadata, *nodes]))
    return path


def chakra_path(prefix: str | Path, rank: int) -> Path:
    return Path(f"{prefix}.{rank}.et")


def export_chakra(graphs: Sequence[TraceGraph], prefix: str | Path,
                  iterations: Sequence[int] | None = None) -> list[Path]:
    """Write `<prefix>.<rank>.et` for every rank's graph (the naming ASTRA-sim reads)."""
    if not graphs:
        raise DataError("no traces to export")
    ranks = [g.rank for g in graphs]
    dup = sorted({r for r in ranks if ranks.count(r) > 1})
    if dup:
        raise DataError(f"rank {dup[0]} appears in more than one trace")
    if Path(prefix).is_dir() or str(prefix).endswith(("/", "\\")):
        raise ConfigError(f"--out {prefix}: is a directory; give a file prefix such as {Path(prefix) / 'trace'}")
    return [write_chakra(chakra_path(prefix, g.rank), *graph_to_chakra(g, iterations)) for g in graphs]


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

def _check_known(msg: Any, path: Path, what: str) -> None:
    from google.protobuf import unknown_fields

    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        nums = sorted({f.field_number for f in unknown})
        raise DataError(f"{path}: corrupt: {what} has fields {nums} the Chakra schema does not define")


def read_chakra(path: str | Path) -> tuple[Any, list[Any]]:
    """(GlobalMetadata, [Node, ...]) of a Chakra ET file; DataError names the file and byte."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    buf = read_bytes(path, "Chakra ET file")
    if not buf:
        raise DataError(f"{path}: empty file: no GlobalMetadata")
    s = schema()
    n_types = set(s.enums["NodeType"].values())
    pos, index = 0, 0
    metadata = None
    nodes: list[Any] = []
    ids: set[int] = set()
    while pos < len(buf):
        at = pos
        size, pos = _decode_varint32(buf, pos, path, index)
        if pos + size > len(buf):
            raise DataError(f"{path}: truncated: message {index} at byte {at} needs {size} bytes, "
                            f"{len(buf) - pos} left")
        cls = s.GlobalMetadata if index == 0 else s.Node
        what = "GlobalMetadata" if index == 0 else f"node {index} (byte {at})"
        msg = cls()
        try:
            msg.ParseFromString(buf[pos:pos + size])
        except DecodeError as e:
            raise DataError(f"{path}: corrupt: {what} does not parse as a Chakra message ({e})") from None
        _check_known(msg, path, what)
        if index == 0:
            if not msg.version:
                raise DataError(f"{path}: not a Chakra ET file: the first message has no GlobalMetadata version")
            metadata = msg
        else:
            if msg.type not in n_types:
                raise DataError(f"{path}: corrupt: {what} has node type {msg.type}, not a Chakra NodeType")
            if msg.id in ids:
                raise DataError(f"{path}: corrupt: node id {msg.id} appears twice ({what})")
            ids.add(msg.id)
            nodes.append(msg)
        pos += size
        index += 1
    return metadata, nodes


def attr_value(attr: Any) -> Any:
    """The Python value of an AttributeProto (lists as lists, bytes as hex)."""
    kind = attr.WhichOneof("value")
    if kind is None:
        return None
    v = getattr(attr, kind)
    if kind.endswith("_list"):
        vals = list(v.values)
        return [x.hex() for x in vals] if kind == "bytes_list" else vals
    return v.hex() if kind == "bytes_val" else v


def attrs(msg: Any) -> dict[str, Any]:
    return {a.name: attr_value(a) for a in msg.attr}


def node_to_dict(node: Any) -> dict[str, Any]:
    s = schema()
    return {
        "id": node.id, "name": node.name, "type": s.enum_name("NodeType", node.type),
        "ctrl_deps": list(node.ctrl_deps), "data_deps": list(node.data_deps),
        "start_time_micros": node.start_time_micros, "duration_micros": node.duration_micros,
        "inputs": {"values": node.inputs.values, "shapes": node.inputs.shapes, "types": node.inputs.types},
        "outputs": {"values": node.outputs.values, "shapes": node.outputs.shapes, "types": node.outputs.types},
        "attrs": attrs(node),
    }


def summarize(nodes: Sequence[Any]) -> dict[str, Any]:
    """Node counts by type, and communicated bytes by collective (from comm_size)."""
    s = schema()
    by_type: dict[str, int] = {}
    colls: dict[str, dict[str, int]] = {}
    for n in nodes:
        t = s.enum_name("NodeType", n.type).removesuffix("_NODE")
        by_type[t] = by_type.get(t, 0) + 1
        if t.startswith("COMM_"):
            a = attrs(n)
            kind = s.enum_name("CollectiveCommType", int(a.get("comm_type", 0))) if t == "COMM_COLL" else t
            c = colls.setdefault(kind, {"count": 0, "bytes": 0})
            c["count"] += 1
            c["bytes"] += int(a.get("comm_size", 0))
    return {"nodes": len(nodes), "by_type": by_type, "collectives": colls,
            "comm_bytes": sum(c["bytes"] for c in colls.values()),
            "duration_micros": sum(n.duration_micros for n in nodes)}


def chakra_to_json(path: str | Path, limit: int | None = None) -> dict[str, Any]:
    """A Chakra ET file as a JSON-able dict: metadata, a summary and the nodes (first `limit`)."""
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {limit}")
    meta, nodes = read_chakra(path)
    shown = nodes if limit is None else nodes[:limit]
    return {
        "file": str(path),
        "metadata": {"version": meta.version, "attrs": attrs(meta)},
        "summary": summarize(nodes),
        "nodes_total": len(nodes),
        "nodes": [node_to_dict(n) for n in shown],
    }
