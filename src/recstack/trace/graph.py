"""One graph type for a captured iteration: operators, their tensors, nesting, data dependencies,
durations and communication attributes. Stats, Chakra export, replay and synthesis all read it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

ROOT_NAMES = ("[pytorch|profiler|execution_trace|process]", "[pytorch|profiler|execution_trace|thread]")
ITERATION_RE = re.compile(r"^(ProfilerStep#\d+|## iteration.*##)$")

# collective type by operator name (c10d ops, gloo record functions, NCCL record_param_comms names)
COLLECTIVES = {
    "all_to_all": "ALL_TO_ALL", "alltoall": "ALL_TO_ALL", "alltoall_base": "ALL_TO_ALL",
    "all_reduce": "ALL_REDUCE", "allreduce": "ALL_REDUCE", "allreduce_coalesced": "ALL_REDUCE",
    "all_gather": "ALL_GATHER", "allgather": "ALL_GATHER", "_allgather_base": "ALL_GATHER",
    "allgather_into_tensor_coalesced": "ALL_GATHER",
    "reduce_scatter": "REDUCE_SCATTER", "reduce_scatter_": "REDUCE_SCATTER", "_reduce_scatter_base": "REDUCE_SCATTER",
    "reduce_scatter_tensor_coalesced": "REDUCE_SCATTER",
    "broadcast": "BROADCAST", "reduce": "REDUCE", "gather": "GATHER", "scatter": "SCATTER", "barrier": "BARRIER",
    "send": "SEND", "recv": "RECV", "recv_any_source": "RECV",
}


@dataclass(frozen=True)
class TensorRef:
    """A tensor as the ET records it: [tensor_id, storage_id, offset, numel, elem_bytes, device]."""

    tensor_id: int
    storage_id: int
    offset: int
    numel: int
    elem_bytes: int
    device: str

    @property
    def key(self) -> tuple:
        return (self.tensor_id, self.storage_id, self.offset, self.numel, self.elem_bytes, self.device)

    @property
    def nbytes(self) -> int:
        return self.numel * self.elem_bytes


def _is_tensor_value(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 6 and all(isinstance(x, int) for x in v[:5])


@dataclass(frozen=True)
class Arg:
    """One input or output: ET type string ('Tensor(float)', 'Int', 'GenericList[Int]', ...), value, shape, stride."""

    type: str
    value: Any
    shape: Any = None
    stride: Any = None

    @property
    def is_tensor(self) -> bool:
        return self.type.startswith("Tensor(") and _is_tensor_value(self.value)

    @property
    def is_tensor_list(self) -> bool:
        return self.type.startswith("GenericList[Tensor") and isinstance(self.value, list)

    @property
    def dtype(self) -> str | None:
        m = re.match(r"Tensor\((.*)\)", self.type)
        return m.group(1) if m else None

    def tensors(self) -> list[TensorRef]:
        if self.is_tensor:
            return [TensorRef(*self.value)]
        if self.is_tensor_list:
            return [TensorRef(*v) for v in self.value if _is_tensor_value(v)]
        return []


@dataclass(frozen=True)
class CommInfo:
    collective: str  # Chakra CollectiveCommType name: ALL_TO_ALL, ALL_REDUCE, ...
    bytes: int  # this rank's payload: the input tensor(s)
    out_bytes: int
    pg_name: str
    backend: str
    in_split: list[int] | None = None
    out_split: list[int] | None = None
    pg_inferred: bool = False  # gloo ops do not name their group: the default group is assumed


@dataclass
class OpNode:
    id: int
    name: str
    parent: int | None
    inputs: list[Arg]
    outputs: list[Arg]
    attrs: dict[str, Any]
    children: list[int] = field(default_factory=list)
    start_us: float | None = None  # from the Kineto trace (absolute, microseconds)
    duration_us: float | None = None
    gpu_us: float | None = None  # summed device kernels launched by this op (CUDA captures)
    kineto_tid: int | None = None
    comm: CommInfo | None = None

    @property
    def schema(self) -> str:
        return str(self.attrs.get("op_schema") or "")

    @property
    def is_op(self) -> bool:
        """A dispatcher operator (has a schema), as opposed to a record_function range."""
        return bool(self.schema)

    @property
    def rf_id(self) -> int | None:
        v = self.attrs.get("rf_id")
        return int(v) if v is not None else None

    @property
    def tid(self) -> int:
        return int(self.attrs.get("tid", 0))

    def input_tensors(self) -> list[TensorRef]:
        return [t for a in self.inputs for t in a.tensors()]

    def output_tensors(self) -> list[TensorRef]:
        return [t for a in self.outputs for t in a.tensors()]

    def tensor_ranges(self) -> dict[int, tuple[int, int]]:
        """Recorded min/max of integral input tensors, by input position (capture sets the env flag)."""
        raw = self.attrs.get("tensor_range")
        if not raw:
            return {}
        try:
            return {int(k): (int(v[0]), int(v[1])) for k, v in json.loads(raw).items()}
        except (ValueError, TypeError, IndexError):
            return {}


@dataclass
class TraceGraph:
    meta: dict[str, Any]  # schema, pid, rank, world_size, backend, pg_config, files
    nodes: dict[int, OpNode]

    @property
    def rank(self) -> int:
        return int(self.meta.get("rank", 0))

    @property
    def world_size(self) -> int:
        return int(self.meta.get("world_size", 1))

    def children(self, node_id: int) -> list[OpNode]:
        return [self.nodes[c] for c in self.nodes[node_id].children]

    def ancestors(self, node_id: int) -> Iterator[OpNode]:
        p = self.nodes[node_id].parent
        while p is not None and p in self.nodes:
            yield self.nodes[p]
            p = self.nodes[p].parent

    def iterations(self) -> list[OpNode]:
        """Iteration markers (ProfilerStep#N or '## iteration ##'), in order."""
        return sorted((n for n in self.nodes.values() if ITERATION_RE.match(n.name)), key=lambda n: n.id)

    def iteration(self, index: int | None = None) -> OpNode | None:
        """One iteration marker: the given one, else the last (warm caches), None when unmarked."""
        its = self.iterations()
        if not its:
            return None
        return its[index] if index is not None else its[-1]

    def iteration_range(self, marker: OpNode) -> tuple[int, int]:
        """Node ids [lo, hi) of an iteration: from its marker to the next marker (ids follow start
        order). Membership goes by id, not nesting: in multi-process captures the ET sometimes
        nests a later iteration, or some of its operators, under the previous marker."""
        its = self.iterations()
        later = [m.id for m in its if m.id > marker.id]
        hi = later[0] if later else max(self.nodes) + 1
        return marker.id, hi

    def top_level_ops(self, root: int | None = None) -> list[OpNode]:
        """The outermost operators of one iteration (default: the last, else the whole trace):
        record_function ranges (autograd nodes, module scopes, optimizer steps) are looked
        through down to the first node that is a dispatcher operator or a collective; that
        operator's own children run inside it."""
        if root is None:
            it = self.iteration()
            if it is None:
                starts = [n.id for n in self.nodes.values() if n.parent not in self.nodes]
                return self._outermost(starts)
            root = it.id
        node = self.nodes[root]
        if not ITERATION_RE.match(node.name):
            return self._outermost([root], skip_root=True)
        lo, hi = self.iteration_range(node)
        out = []
        for n in self.nodes.values():
            if not lo < n.id < hi or not (n.is_op or n.comm is not None):
                continue
            p, inside = n.parent, False
            while p is not None and p in self.nodes:
                a = self.nodes[p]
                if lo < a.id < hi and (a.is_op or a.comm is not None):
                    inside = True
                    break
                p = a.parent
            if not inside:
                out.append(n)
        return sorted(out, key=lambda n: n.id)

    def _outermost(self, starts: list[int], skip_root: bool = False) -> list[OpNode]:
        out: list[OpNode] = []
        stack = [c for s in reversed(starts) for c in reversed(self.nodes[s].children)] if skip_root else list(
            reversed(starts))
        while stack:
            n = self.nodes[stack.pop()]
            if n.is_op or n.comm is not None:
                out.append(n)
            else:
                stack.extend(reversed(n.children))
        return sorted(out, key=lambda n: n.id)

    def subtree(self, node_id: int) -> Iterator[OpNode]:
        stack = [node_id]
        while stack:
            n = self.nodes[stack.pop()]
            yield n
            stack.extend(n.children)

    @cached_property
    def producers(self) -> dict[tuple, int]:
        """Tensor key -> the id of the last node (by id order) that output it."""
        prod: dict[tuple, int] = {}
        for n in sorted(self.nodes.values(), key=lambda n: n.id):
            if n.is_op:
                for t in n.output_tensors():
                    prod[t.key] = n.id
        return prod

    def data_deps(self, ops: list[OpNode]) -> dict[int, list[int]]:
        """For each op, the earlier ops in `ops` that produced one of its input tensors."""
        last: dict[tuple, int] = {}
        deps: dict[int, list[int]] = {}
        for n in sorted(ops, key=lambda n: n.id):
            d = sorted({last[t.key] for t in n.input_tensors() if t.key in last})
            deps[n.id] = d
            for t in n.output_tensors():
                last[t.key] = n.id
            for t in n.input_tensors():  # in-place ops: a later reader depends on this writer
                if n.name.endswith("_") and t.key in last:
                    last[t.key] = n.id
        return deps

    def duration_us(self, node: OpNode) -> float:
        return float(node.duration_us or 0.0)
