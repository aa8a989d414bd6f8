"""`recstack trace synth`: a what-if capture directory made from a captured one.

The performance model, Chakra export and simulators read capture directories; this writes one
for a configuration that was never run: another batch size, bigger or smaller tables, another
pooling factor, another number of ranks. Every rank gets an execution trace (same schema, same
node ids unless collectives are inserted, same tensor ids) and a Kineto trace whose operator
durations follow the rules below; capture.json gets a "synth" section saying what changed.

Scaling rules (also written to capture.json["synth"]["rules"]):

- Batch (--batch-size B', global). The captured global batch B is capture.json `batch_size`;
  rank r's dense part works on its slice (slice_sizes(B, world): B_loc), its embedding operators
  look up the tables it owns for the global batch (model-parallel tables). In every tensor that
  is not a parameter, optimizer state or constant buffer (storages that are leaf inputs of every
  captured iteration), a dimension equal to B_loc becomes B'_loc and one equal to B becomes B'.
  Embedding-path sizes follow exactly: bags T*B -> T*B', offsets T*B+1 -> T*B'+1, indices
  n -> n*B'/B (integer tensors: any dimension; floating-point tensors: the leading dimension, when
  the tensor is connected through operators to an embedding operator or an index tensor). Integer
  arguments in the same operators (slice bounds and steps, view sizes) that equal, or are
  multiples of, a scaled size are scaled with it; a size list equal to a scaled tensor's shape
  becomes its new shape. numel, bytes and contiguous strides follow the shapes.
  Parameters, gradients (what AccumulateGrad and the optimizer read) and their views and copies
  are never batch-scaled. A tensor with several dimensions equal to the batch size (a layer width
  equal to the batch) follows a same-shaped tensor of its operator (transposed for t/transpose),
  else keeps the dimensions a parameter of the operator has at the same position; what stays
  ambiguous is scaled in every such dimension and counted in the summary's warnings.
  FBGEMM's fused lookup is recognised by its indices and offsets (batch and pooling only).
- Rows (--scale-rows X): every embedding weight (first input of the embedding operators), its
  views and its gradients (tensors of the weight's exact shape) get round(rows*X) rows, as does
  optimizer state whose leading dimension is the row count; `num_weights` arguments and the
  recorded index ranges (tensor_range) follow. Lookups do not depend on rows: durations of
  lookups are kept, while operators that touch whole weights (dense updates) scale with bytes.
- Pooling (--pooling X): indices per bag x X: every index-count dimension (and its offsets'
  last value range) n -> round(n*X); bags are unchanged.
- Ranks (--ranks N): tables are read from the captured embedding operators (T = bags / batch
  tables per operator, rows split evenly among them, pooling = indices / bags) and re-assigned
  with recstack.train.place_tables' greedy cost (bytes x pooling, largest first, to the least
  loaded rank). New rank r is a copy of captured rank r mod world (one that has embedding operators
  of the dims it needs); its embedding operators stand for the tables assigned to it; its dense
  part gets slice_sizes(B', N)[r]. The pooled-embedding all-to-all is recomputed exactly
  (forward: input B' x W_r, in_split[j] = b_j x W_r, output b_r x sum(W), out_split[j] = b_r x W_j;
  backward reversed; W_j = embedding width of rank j, b_j its batch slice); all-reduce and other
  parameter collectives keep their sizes (dense gradients do not depend on ranks). A single-rank
  capture has no collectives: for N > 1 a forward all-to-all (after the embedding lookups), a
  backward all-to-all (before the embedding backward) and an all-reduce of the dense gradients
  (before the optimizer step; its size is the dense gradients AccumulateGrad received) are
  inserted with duration 0 (no measurement exists; a performance model or simulator prices
  them); the forward one reads the pooled output of the lookup (a data dependency). Node ids are
  renumbered to keep id order = execution order. Tensors that glue the exchange (per-table slices, concatenation, split) keep
  their captured per-rank widths.
- Durations: each operator's own (exclusive) time is multiplied by a factor; record-function
  ranges keep their own time; enclosing ranges and the iteration grow by what their children
  gained; gaps between operators are kept. Factor: GEMMs (mm, addmm, bmm, linear, ...): FLOPs
  ratio (output elements x contraction length); embedding operators: ratio of index counts;
  collectives: ratio of payload bytes; view/metadata operators (view, slice, t, expand, ...): 1;
  all others (memory-bound): ratio of the bytes of the distinct tensors read and written.
  Scaled nodes carry an attribute `synth` = "scaled x<factor>". Threads are warped separately.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recstack.errors import ConfigError, DataError
from recstack.io import read_json
from recstack.trace.graph import ITERATION_RE, OpNode, TraceGraph
from recstack.trace.stats import (
    EMBEDDING_FORWARD_OPS,
    EMBEDDING_OPS,
    embedding_weight_storages,
    name_category,
    op_base,
)

SYNTH_ATTR = "synth"
METADATA_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "slice", "select", "narrow",
    "as_strided", "unsqueeze", "squeeze", "expand", "expand_as", "detach", "alias", "_indices", "_values", "indices",
    "values", "split", "split_with_sizes", "chunk", "unbind", "flatten", "unflatten", "empty", "empty_like",
    "empty_strided", "new_empty", "new_empty_strided", "resize", "lift_fresh", "view_as", "numpy_T", "item",
    "_local_scalar_dense", "size", "stride", "set", "contiguous", "_nnz", "sparse_dim", "dense_dim", "is_coalesced",
    "coalesce", "_coalesced",
})
UNCHANGED_COLLECTIVES = ("ALL_REDUCE", "REDUCE", "BROADCAST", "BARRIER")
INT_MAX = 2**31

RULES = {
    "batch": "non-parameter tensors: dims == per-rank dense batch b -> b', == global batch B -> B'; bags T*B -> "
             "T*B', offsets T*B+1 -> T*B'+1, indices n -> n*B'/B (integer tensors any dim, float tensors the "
             "leading dim when connected to an embedding op); integer args equal to / multiples of a scaled size "
             "follow; numel, bytes, strides follow the shapes; parameters, gradients and their views/copies "
             "are kept; several dims equal to a batch size: follow a same-shaped (or transposed) tensor of the "
             "op, else keep dims a parameter of the op shares",
    "rows": "embedding weights, their views and weight-shaped gradients: rows -> round(rows*X); optimizer state "
            "with leading dim == rows likewise; num_weights args and recorded index ranges follow",
    "pooling": "index counts n -> round(n*X) (indices, offset2bag, sparse-gradient rows, their consumers); bags kept",
    "ranks": "tables inferred from the embedding ops (bags/batch tables each, rows split evenly, pooling = "
             "indices/bags), re-placed with recstack.train.place_tables' greedy cost; rank r copies captured rank "
             "r mod world; all-to-all recomputed (fwd in = B' x W_r, in_split[j] = b_j x W_r, out = b_r x sum W, "
             "out_split[j] = b_r x W_j; bwd reversed); all-reduce sizes kept; single-rank captures get inserted "
             "all-to-all / all-reduce nodes of duration 0",
    "durations": "own time x factor: GEMM FLOPs ratio; embedding ops index-count ratio; collectives payload-bytes "
                 "ratio; view/metadata ops 1; others bytes-read-and-written ratio; ranges keep their own time and "
                 "grow with their children; gaps kept; nodes carry attr synth='scaled x<f>'",
}


@dataclass
class SynthOptions:
    batch_size: int | None = None  # new global batch size
    scale_rows: float | None = None  # embedding rows x this
    pooling: float | None = None  # indices per bag x this
    ranks: int | None = None  # number of ranks

    def validate(self) -> None:
        if all(v is None for v in asdict(self).values()):
            raise ConfigError("nothing to synthesize: give --batch-size, --scale-rows, --pooling or --ranks")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ConfigError(f"--batch-size must be an integer >= 1, got {self.batch_size!r}")
        if self.ranks is not None and (isinstance(self.ranks, bool) or not isinstance(self.ranks, int)
                                       or self.ranks < 1):
            raise ConfigError(f"--ranks must be an integer >= 1, got {self.ranks!r}")
        for name in ("scale_rows", "pooling"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int | float) or not math.isfinite(v) or v <= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a number > 0, got {v!r}")


def slice_sizes(batch_size: int, world_size: int) -> list[int]:
    """Samples of a global batch per rank (as recstack.train does: remainder to the low ranks)."""
    q, r = divmod(batch_size, world_size)
    return [q + (1 if k < r else 0) for k in range(world_size)]


# ---------------------------------------------------------------------------------------------
# analysis of a captured rank
# ---------------------------------------------------------------------------------------------
@dataclass
class EmbGroup:
    """One embedding weight of a captured rank and its forward operator (in the last iteration)."""

    storage: int
    dim: int
    rows: int
    bags: int
    indices: int
    tables: int | None  # bags / batch, when that divides
    dtype_bytes: int = 4

    @property
    def pooling(self) -> float:
        return self.indices / self.bags if self.bags else 0.0


@dataclass
class GroupPlan:
    old: EmbGroup
    tables: int | None
    rows: int
    bags: int
    indices: int

    def size_map(self) -> dict[int, int]:
        o = self.old
        m: dict[int, int] = {}
        for a, b in ((o.bags, self.bags), (o.bags + 1, self.bags + 1), (o.indices, self.indices)):
            if a >= 2 and a != b:
                m.setdefault(a, b)
        if o.bags - 1 >= 2 and o.bags != self.bags:
            m.setdefault(o.bags - 1, max(0, self.bags - 1))
        return m


@dataclass
class RankPlan:
    rank: int
    template: int
    batch_loc: tuple[int, int]  # (captured dense batch of the template, new)
    batch_emb: tuple[int, int]  # (batch the embedding ops look up, new)
    groups: list[GroupPlan]
    tables: list[int] = field(default_factory=list)  # global table indices (placement)
    width: int = 0  # embedding width (sum of dims) owned


def _arg_tensors(arg_val: Any, ty: str) -> list[list]:
    if ty.startswith("Tensor(") and _is_tv(arg_val):
        return [arg_val]
    if ty.startswith("GenericList[Tensor") and isinstance(arg_val, list):
        return [v for v in arg_val if _is_tv(v)]
    return []


def _is_tv(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 6 and all(isinstance(x, int) and not isinstance(x, bool) for x in v[:5])


def _int_shape(s: Any) -> list[int] | None:
    if isinstance(s, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in s):
        return s
    return None


def _is_int_dtype(ty: str) -> bool:
    return "int" in ty.split("(", 1)[-1]


def _last_iteration_ops(g: TraceGraph) -> list[OpNode]:
    it = g.iteration()
    nodes = list(g.subtree(it.id)) if it is not None else list(g.nodes.values())
    return sorted((n for n in nodes if n.is_op), key=lambda n: n.id)


def _fwd_emb_ops(g: TraceGraph) -> list[OpNode]:
    return sorted((n for n in g.nodes.values() if n.is_op and op_base(n.name) in EMBEDDING_FORWARD_OPS),
                  key=lambda n: n.id)


def _emb_layout(n: OpNode) -> tuple[int, int] | None:
    """(bags, indices) of a forward embedding operator from its recorded shapes."""
    if len(n.inputs) < 2:
        return None
    ind = _int_shape(n.inputs[1].shape)
    if ind is None:
        return None
    if op_base(n.name) == "embedding" or len(n.inputs) < 3 or not n.inputs[2].is_tensor:
        return (ind[0] if ind else 0), math.prod(ind)
    offs = _int_shape(n.inputs[2].shape)
    if offs is None or len(ind) != 1 or len(offs) != 1:
        if len(ind) == 2:
            return ind[0], math.prod(ind)
        return None
    last = len(n.inputs) > 7 and n.inputs[7].type == "Bool" and n.inputs[7].value is True
    return offs[0] - (1 if last else 0), ind[0]


def _groups(g: TraceGraph, batch_emb: int) -> list[EmbGroup]:
    last_ids = {n.id for n in _last_iteration_ops(g)}
    out: dict[int, EmbGroup] = {}
    for n in _fwd_emb_ops(g):
        if n.id not in last_ids and g.iteration() is not None:
            continue
        w = n.inputs[0].tensors()
        shp = _int_shape(n.inputs[0].shape)
        lay = _emb_layout(n)
        if not w or shp is None or len(shp) != 2 or lay is None or w[0].storage_id in out:
            continue
        bags, ind = lay
        tables = bags // batch_emb if batch_emb and bags % batch_emb == 0 else None
        out[w[0].storage_id] = EmbGroup(w[0].storage_id, shp[1], shp[0], bags, ind, tables, w[0].elem_bytes)
    # FBGEMM's fused lookup: flat weights (rows and dims are not in the shapes), indices then offsets
    for n in _last_iteration_ops(g):
        if not n.name.startswith("fbgemm::split_embedding_codegen_lookup"):
            continue
        ints = [(i, a.shape[0]) for i, a in enumerate(n.inputs) if a.is_tensor and _is_int_dtype(a.type)
                and (sh := _int_shape(a.shape)) is not None and len(sh) == 1]
        for j, (i, size) in enumerate(ints):
            if j > 0 and size > 1 and batch_emb and (size - 1) % batch_emb == 0 and ints[j - 1][0] == i - 1:
                bags = size - 1
                out[-n.id] = EmbGroup(-n.id, 0, 0, bags, ints[j - 1][1], bags // batch_emb)
                break
    return list(out.values())


def state_storages(g: TraceGraph) -> set[int]:
    """Storages that are leaf inputs (read before anything in the iteration writes them) of every
    captured iteration: parameters, optimizer state, constant buffers. With one iteration: its
    leaf inputs that are embedding weights or are updated in place (parameters)."""
    its = g.iterations()
    per_it = []
    for m in its or [None]:
        nodes = g.subtree(m.id) if m is not None else g.nodes.values()
        seen, leaf = set(), set()
        for n in sorted((x for x in nodes if x.is_op), key=lambda x: x.id):
            for t in n.input_tensors():
                if t.storage_id not in seen:
                    leaf.add(t.storage_id)
            for t in n.output_tensors():
                seen.add(t.storage_id)
        per_it.append(leaf)
    if len(per_it) >= 2:
        return set.intersection(*per_it)
    inplace = {t.storage_id for n in g.nodes.values() if n.is_op and n.name.endswith("_") and n.inputs
               for t in n.inputs[0].tensors()}
    return per_it[0] & (inplace | set(embedding_weight_storages(g)))


_COPY_VIEW_OPS = frozenset({"t", "transpose", "permute", "numpy_T", "adjoint", "contiguous", "clone", "detach",
                            "alias", "view", "_unsafe_view", "reshape", "_to_copy", "to", "copy", "expand",
                            "as_strided"})


def param_keys(g: TraceGraph, state: set[int]) -> set[tuple]:
    """Tensors (full ET keys) shaped like parameters rather than activations: what AccumulateGrad
    receives and what the operators inside Optimizer.step/zero_grad ranges read (gradients), then
    through views and copies: forward from parameters (W.t().contiguous()), backward from
    gradients (the GEMM whose output is transposed into a weight gradient)."""
    out: set[tuple] = set()
    for n in g.nodes.values():
        if n.name == "torch::autograd::AccumulateGrad" and n.inputs:
            out.update(tuple(t.key) for t in n.inputs[0].tensors())
        elif n.is_op and any(a.name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")) for a in g.ancestors(n.id)):
            out.update(tuple(t.key) for t in n.input_tensors())
    ops = sorted((n for n in g.nodes.values() if n.is_op and op_base(n.name) in _COPY_VIEW_OPS), key=lambda n: n.id)
    for n in ops:
        srcs = n.input_tensors()[1:2] if op_base(n.name) == "copy" else n.input_tensors()
        if any(t.storage_id in state or tuple(t.key) in out for t in srcs):
            out.update(tuple(t.key) for t in n.output_tensors())
    for n in reversed(ops):
        if any(tuple(t.key) in out for t in n.output_tensors()):
            out.update(tuple(t.key) for t in n.input_tensors())
    return out


# ---------------------------------------------------------------------------------------------
# the rewriter: one template rank's raw ET -> one new rank's raw ET
# ---------------------------------------------------------------------------------------------
def _contig(shape: list[int]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= max(d, 1)
    return out[::-1]


def _new_strides(old_shape: list[int], new_shape: list[int], stride: Any) -> Any:
    st = _int_shape(stride)
    if st is None or len(st) != len(old_shape):
        return stride
    if st == _contig(old_shape):
        return _contig(new_shape)
    order = sorted((i for i in range(len(st)) if st[i] != 0 and old_shape[i] != 1), key=lambda i: -st[i])
    acc, ok = 1, True
    for i in reversed(order):
        if st[i] != acc:
            ok = False
            break
        acc *= old_shape[i]
    if not ok:
        return stride
    out, acc = list(st), 1
    for i in reversed(order):
        out[i] = acc
        acc *= max(new_shape[i], 1)
    return out


class _Rewriter:
    def __init__(self, g: TraceGraph, plan: RankPlan, ctx: _Context) -> None:
        self.g, self.plan, self.ctx = g, plan, ctx
        self.memo: dict[tuple, tuple[list, list, Any]] = {}
        self.changed_nodes: set[int] = set()
        self.ambiguous = 0
        self.warnings: list[str] = []
        bl_old, bl_new = plan.batch_loc
        be_old, be_new = plan.batch_emb
        # batch maps: integer / embedding-connected tensors see the embedding batch first
        self.batch_int: dict[int, int] = {}
        self.batch_float: dict[int, int] = {}
        for m, order in ((self.batch_int, ((be_old, be_new), (bl_old, bl_new))),
                         (self.batch_float, ((bl_old, bl_new), (be_old, be_new)))):
            for a, b in order:
                if a >= 2 and a not in m:
                    m[a] = b
        for m in (self.batch_int, self.batch_float):
            for k in [k for k, v in m.items() if k == v]:
                del m[k]
        self.batch_values = {bl_old, be_old}
        # embedding size maps: per weight storage, and their union for operators elsewhere
        self.group_of: dict[int, GroupPlan] = {gp.old.storage: gp for gp in plan.groups}
        self.emb_map: dict[int, int] = {}
        for gp in plan.groups:
            for a, b in gp.size_map().items():
                if a in self.emb_map and self.emb_map[a] != b:
                    self.warnings.append(f"size {a} is used by two embedding operators that scale differently; "
                                         f"{a} -> {self.emb_map[a]} kept")
                    continue
                self.emb_map[a] = b
        self.rows_ratio: dict[int, float] = {}
        self.rows_map: dict[int, int] = {}
        self.weight_shapes: dict[tuple[int, int], int] = {}
        for gp in plan.groups:
            o = gp.old
            if gp.rows != o.rows:
                self.rows_ratio[o.storage] = gp.rows / o.rows if o.rows else 1.0
                self.rows_map.setdefault(o.rows, gp.rows)
                self.weight_shapes[(o.rows, o.dim)] = gp.rows
        self.state = ctx.state[plan.template]
        self.paramlike = ctx.paramlike[plan.template]
        self.connected = ctx.connected[plan.template]
        self._shapes_seen: list = []
        self._state_shapes: list[list[int]] = []
        self._op_base = ""

    # -------------------------------------------------------------- tensors
    def _generic_shape(self, tv: list, shape: list[int], is_int: bool) -> list[int]:
        sid = tv[1]
        if not shape:
            return shape
        if sid in self.rows_ratio:  # an embedding weight or a view of it
            return [max(0, round(shape[0] * self.rows_ratio[sid]))] + shape[1:]
        if sid in self.state or tuple(tv) in self.paramlike:
            if shape[0] in self.rows_map and not is_int:
                return [self.rows_map[shape[0]]] + shape[1:]
            return shape
        if len(shape) == 2 and (shape[0], shape[1]) in self.weight_shapes and not is_int:
            return [self.weight_shapes[(shape[0], shape[1])], shape[1]]
        connected = not is_int and (tv[0], tv[1]) in self.connected
        bm = self.batch_int if (is_int or connected) else self.batch_float
        new = list(shape)
        nb = 0
        for i, d in enumerate(shape):
            if is_int and d in self.emb_map:
                new[i] = self.emb_map[d]
            elif d in bm:
                new[i] = bm[d]
                nb += 1
            elif i == 0 and connected and d in self.emb_map:
                new[i] = self.emb_map[d]
        if nb >= 2:
            return self._disambiguate(shape, new, bm)
        return new

    def _disambiguate(self, shape: list[int], new: list[int], bm: dict[int, int]) -> list[int]:
        """Several dims equal a batch size: follow a tensor of the same operator with the same
        shape (elementwise ops, copies) or the transposed shape (t, transpose); else leave the dims
        that a parameter of the operator has at the same position (a layer width); else scale all."""
        if len(shape) == 2 and self._op_base in ("t", "transpose", "numpy_T", "permute", "adjoint"):
            for old, nw in self._shapes_seen:
                if old == shape[::-1] and isinstance(nw, list) and len(nw) == 2:
                    return nw[::-1]
        for old, nw in self._shapes_seen:
            if old == shape and isinstance(nw, list):
                return list(nw)
        keep = {i for st in self._state_shapes if len(st) == len(shape) for i, d in enumerate(shape) if st[i] == d}
        out = [d if i in keep else new[i] for i, d in enumerate(shape)]
        if sum(1 for i, d in enumerate(shape) if d in bm and i not in keep) >= 1 and keep:
            return out
        self.ambiguous += 1
        return new

    def tensor(self, tv: list, shape: Any, stride: Any, is_int: bool,
               decide: Any = None) -> tuple[list, Any, Any]:
        sh = _int_shape(shape)
        if sh is None:
            return tv, shape, stride
        key = (tuple(tv), tuple(sh))
        hit = self.memo.get(key)
        if hit is not None:
            return hit[0], hit[1], _new_strides(sh, hit[1], stride) if hit[1] != sh else stride
        new_sh = decide(sh) if decide is not None else self._generic_shape(tv, sh, is_int)
        new_tv = list(tv)
        if new_sh != sh:
            old_n, new_n = math.prod(sh), math.prod(new_sh)
            if tv[3] == old_n:
                new_tv[3] = new_n
            elif old_n:
                new_tv[3] = round(tv[3] * new_n / old_n)
            if old_n and tv[2]:
                new_tv[2] = round(tv[2] * new_n / old_n)
        self.memo[key] = (new_tv, new_sh, None)
        return new_tv, new_sh, (_new_strides(sh, new_sh, stride) if new_sh != sh else stride)

    # -------------------------------------------------------------- one side of a node
    def _rewrite_side(self, d: dict, decide_at: dict[int, Any], changed: list) -> None:
        types, vals = d.get("types", []), d.get("values", [])
        shapes, strides = d.get("shapes", []), d.get("strides", [])
        for i, ty in enumerate(types):
            if i >= len(vals) or i >= len(shapes):
                break
            v, s = vals[i], shapes[i]
            st = strides[i] if i < len(strides) else None
            is_int = _is_int_dtype(ty)
            if ty.startswith("Tensor(") and _is_tv(v):
                nv, ns, nst = self.tensor(v, s, st, is_int, decide_at.get(i))
                if isinstance(s, list):
                    self._shapes_seen.append((list(s), list(ns) if isinstance(ns, list) else ns))
                if ns != s:
                    changed.append((s, ns))
                    vals[i], shapes[i] = nv, ns
                    if i < len(strides):
                        strides[i] = nst
                elif nv != v:
                    vals[i] = nv
            elif ty.startswith("GenericList[Tensor") and isinstance(v, list) and isinstance(s, list):
                el_types = ty[len("GenericList["):-1].split(",") if ty.endswith("]") else []
                for j, tv in enumerate(v):
                    if not _is_tv(tv) or j >= len(s):
                        continue
                    el_int = _is_int_dtype(el_types[j]) if j < len(el_types) else is_int
                    sst = st[j] if isinstance(st, list) and j < len(st) else None
                    nv, ns, nst = self.tensor(tv, s[j], sst, el_int)
                    if ns != s[j]:
                        changed.append((s[j], ns))
                        v[j], s[j] = nv, ns
                        if isinstance(st, list) and j < len(st):
                            st[j] = nst

    def _rewrite_ints(self, node: dict, changed: list, op: OpNode, skip: set[int]) -> None:
        pairs: dict[int, int] = {}
        bad: set[int] = set()
        for old, new in changed:
            for a, b in zip(old, new):
                if a != b:
                    if a in pairs and pairs[a] != b:
                        bad.add(a)
                    pairs.setdefault(a, b)
        for a in bad:
            pairs.pop(a, None)
        has_int = any(_is_int_dtype(a.type) and (a.is_tensor or a.is_tensor_list) for a in op.inputs + op.outputs)
        is_emb = op_base(op.name) in EMBEDDING_OPS
        if is_emb:
            for a, b in self.rows_map.items():
                pairs.setdefault(a, b)
        if not pairs:
            return
        bm = self.batch_int if (has_int or is_emb) else self.batch_float
        full = {**bm, **pairs}
        shapes_old: dict[tuple, Any] = {}
        for o, n in self._shapes_seen + changed:  # unchanged tensors too: a size list of one stays put
            if isinstance(o, list):
                shapes_old.setdefault(tuple(o), n)

        def f(x: Any) -> Any:
            if isinstance(x, bool) or not isinstance(x, int) or x < 2 or x >= INT_MAX:
                return x
            if x in full:
                return full[x]
            for bo, bn in bm.items():
                if x >= 2 * bo and x % bo == 0:
                    return x // bo * bn
            return x

        d = node.get("inputs", {})
        types, vals = d.get("types", []), d.get("values", [])
        for i, ty in enumerate(types):
            if i in skip or i >= len(vals):
                continue
            v = vals[i]
            if ty == "Int":
                vals[i] = f(v)
            elif ty.startswith("GenericList[Int") and isinstance(v, list) and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v):
                if tuple(v) in shapes_old:
                    vals[i] = list(shapes_old[tuple(v)])
                else:
                    vals[i] = [f(x) for x in v]

    # -------------------------------------------------------------- per operator kind
    def _emb_decisions(self, op: OpNode) -> dict[str, dict[int, Any]]:
        """Positional decisions for the embedding operators' inputs/outputs."""
        base = op_base(op.name)
        gp = None
        if base in EMBEDDING_FORWARD_OPS and op.inputs:
            w = op.inputs[0].tensors()
            gp = self.group_of.get(w[0].storage_id) if w else None
        else:
            gp = self.ctx.bwd_group[self.plan.template].get(op.id)
            gp = self.group_of.get(gp) if gp is not None else None
        if gp is None:
            return {"inputs": {}, "outputs": {}}
        o = gp.old
        local = {**self.batch_int, **gp.size_map()}

        def lead(sh: list[int]) -> list[int]:
            if not sh:
                return sh
            if sh[0] == o.bags:
                return [gp.bags] + sh[1:]
            return [local.get(sh[0], sh[0])] + sh[1:]

        def ints(sh: list[int]) -> list[int]:
            return [local.get(x, x) for x in sh]

        def weight(sh: list[int]) -> list[int]:
            return [gp.rows] + sh[1:] if sh else sh

        def indices(sh: list[int]) -> list[int]:
            if len(sh) == 1:
                return [gp.indices]
            return ints(sh)

        def offsets(sh: list[int]) -> list[int]:
            if len(sh) == 1 and sh[0] in (o.bags, o.bags + 1):
                return [gp.bags + (sh[0] - o.bags)]
            return ints(sh)

        if base in EMBEDDING_FORWARD_OPS:
            ins = {0: weight, 1: indices, 2: offsets, 6: indices}
            outs = {0: lead, 1: ints, 2: ints, 3: ints}
        else:  # backward: (grad, indices, offsets, offset2bag, bag_size, max_indices, ...)
            ins = {0: lead, 1: indices, 2: offsets, 3: ints, 4: ints, 5: ints}
            outs = {0: weight} if base in ("embedding_dense_backward", "_embedding_bag_dense_backward") else {}
        return {"inputs": ins, "outputs": outs}

    def _a2a(self, op: OpNode, node: dict) -> bool:
        """Recompute a pooled-embedding all-to-all; False when its layout is not recognised."""
        c = self.ctx
        k = self.plan.template
        comm = op.comm
        if comm is None or comm.in_split is None or comm.out_split is None:
            return False
        ins = op.input_tensors()
        if len(ins) < 2:
            return False
        w_old = c.width_old
        sz_old = slice_sizes(c.batch_old, c.world_old)
        in_n, out_n = ins[1].numel, ins[0].numel
        bwd = any("Backward" in a.name for a in self.g.ancestors(op.id))
        fwd_ok = (list(comm.in_split) == [sz_old[j] * w_old[k] for j in range(c.world_old)]
                  and list(comm.out_split) == [sz_old[k] * w_old[j] for j in range(c.world_old)]
                  and in_n == sum(comm.in_split) and out_n == sum(comm.out_split))
        bwd_ok = (list(comm.in_split) == [sz_old[k] * w_old[j] for j in range(c.world_old)]
                  and list(comm.out_split) == [sz_old[j] * w_old[k] for j in range(c.world_old)]
                  and in_n == sum(comm.in_split) and out_n == sum(comm.out_split))
        if not (fwd_ok if not bwd else bwd_ok):
            return False
        in_split, out_split = a2a_splits(c.batch_new, c.widths_new, self.plan.rank, backward=bwd)
        d = node["inputs"]
        for pos, n_new in ((0, sum(out_split)), (1, sum(in_split))):
            tv, sh = d["values"][pos], d["shapes"][pos]
            key = (tuple(tv), tuple(sh))
            new_tv = list(tv)
            new_tv[3] = n_new
            new_sh = [n_new] if len(sh) == 1 else [n_new // max(1, math.prod(sh[1:]))] + sh[1:]
            self.memo[key] = (new_tv, new_sh, None)
        lists = [i for i, t in enumerate(d["types"]) if t.startswith("GenericList[Int")]
        old_lists = [list(comm.out_split), list(comm.in_split)]
        new_lists = [out_split, in_split]
        for i, nl in zip(lists[:2], new_lists):
            d["values"][i] = list(nl)
            d["shapes"][i] = [[] for _ in nl]
            if i < len(d.get("strides", [])):
                d["strides"][i] = [[] for _ in nl]
        self.a2a_lists[op.id] = (old_lists, new_lists)
        return True

    # -------------------------------------------------------------- the whole trace
    def run(self, raw: dict) -> dict[int, dict]:
        """Rewrite raw ET nodes in place; returns {node id: info} for the changed ones."""
        g = self.g
        by_id = {int(n["id"]): n for n in raw["nodes"]}
        self.a2a_lists: dict[int, tuple[list, list]] = {}
        changes: dict[int, list] = defaultdict(list)
        skip_ints: dict[int, set[int]] = defaultdict(set)
        pinned: set[int] = set()
        seen_shapes: dict[int, list] = defaultdict(list)
        # 1. collectives: the exchange recomputed, parameter collectives pinned
        for op in sorted((n for n in g.nodes.values() if n.comm is not None), key=lambda n: n.id):
            node = by_id[op.id]
            if op.comm.collective == "ALL_TO_ALL" and self.ctx.exchange_known:
                if self._a2a(op, node):
                    skip_ints[op.id].update(i for i, t in enumerate(node["inputs"]["types"])
                                            if t.startswith("GenericList[Int"))
                    changes[op.id].append(("a2a", None))
                    continue
                self.warnings.append(f"node {op.id} ({op.name}): all-to-all layout not recognised; sizes follow "
                                     "the batch rules")
            elif op.comm.collective in UNCHANGED_COLLECTIVES:
                for a in op.inputs + op.outputs:
                    for tv, sh in _tensor_shapes(a):
                        self.memo.setdefault((tuple(tv), tuple(sh)), (list(tv), list(sh), None))
                pinned.add(op.id)
        # the exchange's enclosing range (autograd function) records the same split lists
        for nid, (old_lists, new_lists) in self.a2a_lists.items():
            for anc in self.g.ancestors(nid):
                if anc.is_op:
                    break
                d = by_id[anc.id]["inputs"]
                li = [i for i, t in enumerate(d["types"]) if t.startswith("GenericList[Int")]
                if len(li) >= 2 and [d["values"][i] for i in li[:2]] == old_lists:
                    for i, nl in zip(li[:2], new_lists):
                        d["values"][i] = list(nl)
                        d["shapes"][i] = [[] for _ in nl]
                    skip_ints[anc.id].update(li[:2])
                    changes[anc.id].append(("a2a", None))
                break
        # 2. embedding operators, positionally
        emb_ops = [n for n in g.nodes.values() if op_base(n.name) in EMBEDDING_OPS and n.is_op]
        for op in sorted(emb_ops, key=lambda n: n.id):
            dec = self._emb_decisions(op)
            node = by_id[op.id]
            self._shapes_seen = seen_shapes[op.id]
            self._state_shapes = self._param_shapes(op)
            for side in ("inputs", "outputs"):
                self._rewrite_side(node[side], dec[side], changes[op.id])
            if self.rows_ratio or self.ctx.pooling != 1.0 or self.ctx.batch_new != self.ctx.batch_old:
                self._tensor_range(op, node)
            pinned.add(op.id)
        # 3. everything else, in id order; then integer arguments
        for op in sorted(g.nodes.values(), key=lambda n: n.id):
            node = by_id.get(op.id)
            if node is None:
                continue
            self._shapes_seen = seen_shapes[op.id]
            self._state_shapes = self._param_shapes(op)
            if op.id not in pinned:
                for side in ("inputs", "outputs"):
                    self._rewrite_side(node[side], {}, changes[op.id])
            tensor_changes = [c for c in changes[op.id] if c[0] != "a2a"]
            if tensor_changes and self.emb_map and op_base(op.name) not in EMBEDDING_FORWARD_OPS:
                self._value_ranges(op, node)
            if tensor_changes or (op_base(op.name) in EMBEDDING_OPS and self.rows_map):
                before = [list(v) if isinstance(v, list) else v for v in node["inputs"]["values"]]
                self._rewrite_ints(node, tensor_changes, op, skip_ints[op.id])
                if node["inputs"]["values"] != before:
                    changes[op.id].append(("ints", None))
        return {k: v for k, v in changes.items() if v}

    def _param_shapes(self, op: OpNode) -> list[list[int]]:
        self._op_base = op_base(op.name)
        return [list(sh) for a in op.inputs + op.outputs for tv, sh in _tensor_shapes(a)
                if tv[1] in self.state or tuple(tv) in self.paramlike]

    def _value_ranges(self, op: OpNode, node: dict) -> None:
        """Recorded value ranges of scaled integer inputs: an index count (offsets' last value) follows."""
        for a in node.get("attrs", []):
            if a.get("name") != "tensor_range" or not a.get("value"):
                continue
            try:
                rng = json.loads(a["value"])
                new_shapes = node["inputs"]["shapes"]
                for p, (lo, hi) in list(rng.items()):
                    i = int(p)
                    if i < len(op.inputs) and _is_int_dtype(op.inputs[i].type) and op.inputs[i].shape != new_shapes[i]:
                        rng[p] = [self.emb_map.get(lo, lo), self.emb_map.get(hi, hi)]
            except (TypeError, ValueError, IndexError):
                return
            a["value"] = json.dumps(rng, separators=(",", ":"))

    def _tensor_range(self, op: OpNode, node: dict) -> None:
        if op_base(op.name) not in EMBEDDING_FORWARD_OPS or not op.inputs:
            return
        w = op.inputs[0].tensors()
        gp = self.group_of.get(w[0].storage_id) if w else None
        if gp is None:
            return
        for a in node.get("attrs", []):
            if a.get("name") != "tensor_range" or not a.get("value"):
                continue
            try:
                rng = json.loads(a["value"])
            except (TypeError, ValueError):
                return
            if "1" in rng and gp.rows != gp.old.rows and gp.old.rows:
                lo, hi = rng["1"]
                rng["1"] = [min(lo, max(0, gp.rows - 1)), max(0, min(gp.rows - 1, round((hi + 1) * gp.rows
                                                                                        / gp.old.rows) - 1))]
            if "2" in rng and rng["2"][1] == gp.old.indices:
                rng["2"] = [rng["2"][0], gp.indices]
            a["value"] = json.dumps(rng, separators=(",", ":"))


def _tensor_shapes(a: Any) -> list[tuple[list, list]]:
    if a.is_tensor and _int_shape(a.shape) is not None:
        return [(a.value, a.shape)]
    if a.is_tensor_list and isinstance(a.shape, list):
        return [(v, s) for v, s in zip(a.value, a.shape) if _is_tv(v) and _int_shape(s) is not None]
    return []


def a2a_splits(batch: int, widths: list[int], rank: int, backward: bool = False) -> tuple[list[int], list[int]]:
    """(in_split, out_split) in elements of rank `rank`'s pooled-embedding all-to-all: forward,
    every rank sends its tables' pooled rows of each rank's batch slice and receives its slice of
    every rank's tables; backward the reverse. widths[j] = embedding width of rank j."""
    sizes = slice_sizes(batch, len(widths))
    send = [sizes[j] * widths[rank] for j in range(len(widths))]
    recv = [sizes[rank] * widths[j] for j in range(len(widths))]
    return (recv, send) if backward else (send, recv)


# ---------------------------------------------------------------------------------------------
# duration factors
# ---------------------------------------------------------------------------------------------
def _side_tensors(d: dict) -> list[tuple[tuple, int]]:
    out = []
    for i, ty in enumerate(d.get("types", [])):
        v = d["values"][i] if i < len(d.get("values", [])) else None
        for tv in _arg_tensors(v, ty):
            out.append((tuple(tv), tv[3] * tv[4]))
    return out


def _bytes(node: dict) -> int:
    seen: dict[tuple, int] = {}
    for k, b in _side_tensors(node["inputs"]) + _side_tensors(node["outputs"]):
        seen[k] = b
    return sum(seen.values())


def _tensor_arg_shapes(d: dict) -> list[list[int]]:
    out = []
    for i, t in enumerate(d.get("types", [])):
        if t.startswith("Tensor(") and i < len(d.get("shapes", [])) and _is_tv(d["values"][i]):
            s = _int_shape(d["shapes"][i])
            if s is not None:
                out.append(s)
    return out


def _flops(node: dict, base: str) -> int:
    """Output elements x contraction length (the first matrix operand's last dim)."""
    mats = _tensor_arg_shapes(node["inputs"])
    if base in ("addmm", "baddbmm", "addbmm", "_addmm_activation", "addmv"):
        mats = mats[1:]
    outs = _tensor_arg_shapes(node["outputs"])
    if not mats or not outs:
        return 0
    return math.prod(outs[0]) * (mats[0][-1] if mats[0] else 1)


def _indices_count(node: dict) -> int | None:
    d = node["inputs"]
    if len(d["types"]) > 1 and d["types"][1].startswith("Tensor(") and _is_int_dtype(d["types"][1]) \
            and _is_tv(d["values"][1]):
        return int(d["values"][1][3])
    ints = [d["values"][i][3] for i, t in enumerate(d["types"])
            if t.startswith("Tensor(") and _is_int_dtype(t) and _is_tv(d["values"][i])]
    return max(ints) if ints else None


def duration_factor(op: OpNode, old: dict, new: dict) -> float:
    """Factor on an operator's own time from its old and new recorded arguments (module rules)."""
    base = op_base(op.name)
    cat = name_category(op.name)

    def ratio(a: float | None, b: float | None) -> float:
        if a is None or b is None or a <= 0:
            return 1.0
        return b / a

    if op.comm is not None or cat == "communication":
        return ratio(sum(b for _, b in _side_tensors(old["inputs"])), sum(b for _, b in _side_tensors(new["inputs"])))
    if cat == "GEMM":
        return ratio(_flops(old, base), _flops(new, base))
    if cat == "embedding":
        return ratio(_indices_count(old), _indices_count(new))
    if base in METADATA_OPS or not op.is_op:
        return 1.0
    return ratio(_bytes(old), _bytes(new))


# ---------------------------------------------------------------------------------------------
# Kineto: durations scaled, timeline rebuilt
# ---------------------------------------------------------------------------------------------
_CPU_CATS = ("cpu_op", "user_annotation", "python_function", "cuda_runtime", "cuda_driver", "cpu_instant_event")


def _rf_factor(e: dict, factors: dict[int, float]) -> float:
    rf = (e.get("args") or {}).get("Record function id")
    return factors.get(int(rf), 1.0) if rf is not None else 1.0


def _warp_thread(evs: list[dict], factors: dict[int, float]) -> tuple[dict[int, float], dict[int, float]]:
    """New start and duration of each event of one thread (indices into `evs`, sorted by start)."""
    eps = 1e-6
    kids: dict[int, list[int]] = defaultdict(list)
    roots: list[int] = []
    stack: list[int] = []
    for i, e in enumerate(evs):
        ts, end = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))
        while stack:
            p = evs[stack[-1]]
            if ts >= float(p["ts"]) - eps and end <= float(p["ts"]) + float(p.get("dur", 0.0)) + eps:
                break
            stack.pop()
        (kids[stack[-1]] if stack else roots).append(i)
        stack.append(i)
    new_dur: dict[int, float] = {}
    for i in reversed(range(len(evs))):  # children start after their parent: bottom-up by index
        e = evs[i]
        child_old = sum(float(evs[c].get("dur", 0.0)) for c in kids[i])
        own = max(0.0, float(e.get("dur", 0.0)) - child_old)
        new_dur[i] = own * _rf_factor(e, factors) + sum(new_dur[c] for c in kids[i])
    new_ts: dict[int, float] = {}
    todo: list[tuple[int, float]] = []
    cur_old = cur_new = None
    for r in roots:
        e = evs[r]
        st = float(e["ts"]) if cur_old is None or cur_new is None else cur_new + (float(e["ts"]) - cur_old)
        todo.append((r, st))
        cur_old, cur_new = float(e["ts"]) + float(e.get("dur", 0.0)), st + new_dur[r]
    while todo:
        j, st = todo.pop()
        new_ts[j] = st
        e = evs[j]
        f = _rf_factor(e, factors)
        c_old, c_new = float(e["ts"]), st
        for c in kids[j]:
            gap = float(evs[c]["ts"]) - c_old
            cst = c_new + (gap * f if gap > 0 else gap)
            todo.append((c, cst))
            c_old = float(evs[c]["ts"]) + float(evs[c].get("dur", 0.0))
            c_new = cst + new_dur[c]
    return new_ts, new_dur


def warp_kineto(k: dict, factors: dict[int, float]) -> dict:
    """Rebuild every CPU thread's timeline: an event's own time (not covered by its children) is
    multiplied by its factor (looked up by "Record function id"), children move with it, gaps
    between top-level events are kept. Device events follow their launching operator
    ("External id"): shifted with it and scaled by its factor. Returns `k` (modified)."""
    ev = k.get("traceEvents", [])
    threads: dict[tuple, list[dict]] = defaultdict(list)
    for e in ev:
        if isinstance(e, dict) and e.get("ph") == "X" and e.get("cat") in _CPU_CATS and "ts" in e:
            threads[(e.get("pid"), e.get("tid"))].append(e)
    shift_of_ext: dict[int, tuple[float, float]] = {}
    for evs in threads.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e.get("dur", 0.0))))
        new_ts, new_dur = _warp_thread(evs, factors)
        for i, e in enumerate(evs):
            old_ts = float(e["ts"])
            e["ts"] = round(new_ts.get(i, old_ts), 3)
            if "dur" in e:
                e["dur"] = round(new_dur.get(i, float(e["dur"])), 3)
            x = (e.get("args") or {}).get("External id")
            if x is not None and e.get("cat") == "cpu_op":
                shift_of_ext[int(x)] = (e["ts"] - old_ts, _rf_factor(e, factors))
    for e in ev:
        if isinstance(e, dict) and e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            x = (e.get("args") or {}).get("External id")
            if x is not None and int(x) in shift_of_ext:
                d, f = shift_of_ext[int(x)]
                e["ts"] = round(float(e["ts"]) + d, 3)
                e["dur"] = round(float(e.get("dur", 0.0)) * f, 3)
    return k


# ---------------------------------------------------------------------------------------------
# the capture as a whole
# ---------------------------------------------------------------------------------------------
@dataclass
class _Context:
    batch_old: int
    batch_new: int
    world_old: int
    world_new: int
    rows_x: float
    pooling: float
    width_old: list[int]
    widths_new: list[int]
    exchange_known: bool
    state: dict[int, set[int]]
    paramlike: dict[int, set[tuple]]
    connected: dict[int, set[tuple[int, int]]]
    bwd_group: dict[int, dict[int, int]]


def _read_meta(src: Path) -> dict[str, Any]:
    f = src / "capture.json"
    if not f.exists():
        raise DataError(f"{f}: not found: synth needs the capture settings (batch_size, world_size) of "
                        "`recstack trace capture`")
    meta = read_json(f, "capture settings")
    b = meta.get("batch_size") if isinstance(meta, dict) else None
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise DataError(f"{f}: 'batch_size' missing or not a positive integer")
    return meta


def _bwd_groups(g: TraceGraph, groups: list[EmbGroup]) -> dict[int, int]:
    """Embedding backward op id -> weight storage of its forward op (matched by indices tensor)."""
    by_idx: dict[tuple, int] = {}
    for n in _fwd_emb_ops(g):
        w = n.inputs[0].tensors() if n.inputs else []
        idx = n.inputs[1].tensors() if len(n.inputs) > 1 else []
        if w and idx:
            by_idx[idx[0].key] = w[0].storage_id
    by_bags = {gr.bags: gr.storage for gr in groups}
    out = {}
    for n in g.nodes.values():
        if not n.is_op or op_base(n.name) not in EMBEDDING_OPS or op_base(n.name) in EMBEDDING_FORWARD_OPS:
            continue
        idx = n.inputs[1].tensors() if len(n.inputs) > 1 else []
        if idx and idx[0].key in by_idx:
            out[n.id] = by_idx[idx[0].key]
        elif n.inputs and (s := _int_shape(n.inputs[0].shape)) and s[0] in by_bags:
            out[n.id] = by_bags[s[0]]
    return out


def _connected(g: TraceGraph, values: set[int], weights: set[int], weight_shapes: set[tuple[int, int]]) -> set:
    """Floating-point tensors (tensor id, storage id) whose leading dim is an embedding size and
    that are linked through operators to an embedding operator or an index tensor."""
    if not values:
        return set()
    ops = []
    for n in g.nodes.values():
        if not n.is_op:
            continue
        cand, seed = [], op_base(n.name) in EMBEDDING_OPS
        for a in n.inputs + n.outputs:
            is_int = _is_int_dtype(a.type)
            for tv, sh in _tensor_shapes(a):
                if is_int and any(d in values for d in sh):
                    seed = True
                elif not is_int and sh and sh[0] in values:
                    cand.append((tv[0], tv[1]))
                if tv[1] in weights or (len(sh) == 2 and (sh[0], sh[1]) in weight_shapes):
                    seed = True
        if cand:
            ops.append((seed, cand))
    conn: set = set()
    for seed, cand in ops:
        if seed:
            conn.update(cand)
    grew = True
    while grew:
        grew = False
        for _seed, cand in ops:
            if any(c in conn for c in cand) and not all(c in conn for c in cand):
                conn.update(cand)
                grew = True
    return conn


def synthesize(src: str | Path, out: str | Path, opts: SynthOptions) -> dict[str, Any]:
    """Write a synthesized capture directory `out` from the capture `src`; returns its
    capture.json (with the "synth" summary)."""
    from recstack.io import atomic_dir, atomic_write_json, atomic_write_text
    from recstack.trace.load import load_trace

    opts.validate()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: not a capture directory (see `recstack trace capture`)")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out}: must differ from the source capture directory")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "capture.json").exists())):
        raise ConfigError(f"--out {out}: exists and is not a capture directory; refusing to replace it")
    meta = _read_meta(src)
    rank_files = sorted(int(p.name[4:].split(".", 1)[0]) for p in src.glob("rank*.et.json*")
                        if p.name[4:].split(".", 1)[0].isdigit())
    if not rank_files:
        raise DataError(f"{src}: no rank<R>.et.json files: not a capture directory")
    W = len(rank_files)
    if rank_files != list(range(W)):
        raise DataError(f"{src}: rank files {rank_files} are not ranks 0..{W - 1}")
    if int(meta.get("world_size", W) or W) != W:
        raise DataError(f"{src / 'capture.json'}: world_size {meta.get('world_size')} but {W} rank traces")
    graphs = [load_trace(src, r) for r in range(W)]
    B = int(meta["batch_size"])
    N = opts.ranks or W
    B2 = opts.batch_size or B
    X = float(opts.scale_rows or 1.0)
    P = float(opts.pooling or 1.0)
    if B2 < N:
        raise ConfigError(f"--batch-size {B2} is smaller than the number of ranks {N}: a rank would get no samples")
    loc_old = slice_sizes(B, W)
    loc_new = slice_sizes(B2, N)
    warnings: list[str] = []
    if min(loc_old) < 2:
        warnings.append(f"captured per-rank batch {min(loc_old)} < 2: batch dimensions cannot be told from others")

    # tables, per captured rank
    groups: list[list[EmbGroup]] = []
    emb_batch_is_global = True
    for k, g in enumerate(graphs):
        gs = _groups(g, B)
        if gs and any(x.tables is None for x in gs):
            gl = _groups(g, loc_old[k])
            if all(x.tables is not None for x in gl):
                gs, emb_batch_is_global = gl, False
        groups.append(gs)
    need_tables = N != W
    if (need_tables or X != 1.0) and any(x.dim == 0 for gs in groups for x in gs):
        raise ConfigError("--scale-rows/--ranks: FBGEMM's fused embedding operators do not record table rows and "
                          "dims; capture with --backend fused or torch (--batch-size and --pooling work)")
    if (need_tables or X != 1.0) and not any(groups):
        raise ConfigError("--scale-rows/--ranks need aten::embedding_bag/embedding operators in the trace (capture "
                          "with --backend fused or torch); none found")
    if need_tables and any(x.tables is None for gs in groups for x in gs):
        raise ConfigError(f"--ranks: cannot tell tables apart: embedding bag counts are not multiples of the batch "
                          f"size {B}")
    tables: list[tuple[int, int, float, int, int]] = []  # (rows, dim, pooling, captured rank, group index)
    for k, gs in enumerate(groups):
        for gi, gr in enumerate(gs):
            t = gr.tables or 1
            for i in range(t):
                tables.append((gr.rows // t + (1 if i < gr.rows % t else 0), gr.dim, gr.pooling, k, gi))
    if need_tables:
        from recstack.spec import TableSpec
        from recstack.train import place_tables

        specs = [TableSpec(name=f"t{i}", rows=max(1, round(r * X)), dim=d, pooling=max(p * P, 1e-6))
                 for i, (r, d, p, _, _) in enumerate(tables)]
        placement = place_tables(specs, N)
    else:
        placement = [t[3] for t in tables]
    tables_of = [[i for i, r in enumerate(placement) if r == j] for j in range(N)]
    width_old = [sum((x.tables or 0) * x.dim for x in gs) for gs in groups]
    widths_new = [sum(tables[i][1] for i in tables_of[j]) for j in range(N)]

    # per new rank: template and group plans
    plans: list[RankPlan] = []
    for r in range(N):
        dims = {tables[i][1] for i in tables_of[r]}
        pref = [r % W] + [k for k in range(W) if k != r % W]
        tmpl = next((k for k in pref if dims <= {x.dim for x in groups[k]}), None)
        if tmpl is None:
            raise ConfigError(f"--ranks {N}: rank {r} gets tables of dim {sorted(dims)}, but no captured rank has "
                              "embedding operators of all those dims")
        be_old = B if emb_batch_is_global else loc_old[tmpl]
        be_new = B2 if emb_batch_is_global else loc_new[r]
        gps = []
        if need_tables:
            by_dim: dict[int, list[int]] = defaultdict(list)
            for i in tables_of[r]:
                by_dim[tables[i][1]].append(i)
            slots: dict[int, list[EmbGroup]] = defaultdict(list)
            for x in groups[tmpl]:
                slots[x.dim].append(x)
            assigned: dict[int, list[int]] = {x.storage: [] for x in groups[tmpl]}
            for d, ids in by_dim.items():
                for j, i in enumerate(ids):
                    assigned[slots[d][j % len(slots[d])].storage].append(i)
            for x in groups[tmpl]:
                ids = assigned[x.storage]
                gps.append(GroupPlan(x, len(ids), sum(max(1, round(tables[i][0] * X)) for i in ids), len(ids) * be_new,
                                     round(be_new * P * sum(tables[i][2] for i in ids))))
        else:
            for gi, x in enumerate(groups[tmpl]):
                if x.tables is not None:
                    bags = x.tables * be_new
                    ind = round(be_new * P * x.pooling * x.tables)
                else:
                    bags = round(x.bags * be_new / be_old)
                    ind = round(x.indices * P * be_new / be_old)
                rows = sum(max(1, round(t[0] * X)) for t in tables if (t[3], t[4]) == (tmpl, gi))
                gps.append(GroupPlan(x, x.tables, rows if X != 1.0 else x.rows, bags, ind))
        plans.append(RankPlan(r, tmpl, (loc_old[tmpl], loc_new[r]), (be_old, be_new), gps, tables_of[r],
                              widths_new[r]))

    # per template: analyses shared by its copies
    state, paramlike, connected, bwd = {}, {}, {}, {}
    for k in sorted({p.template for p in plans}):
        g = graphs[k]
        state[k] = state_storages(g)
        paramlike[k] = param_keys(g, state[k])
        vals: set[int] = set()
        for x in groups[k]:
            vals |= {v for v in (x.bags, x.bags + 1, x.indices) if v >= 2}
        vals -= {B, loc_old[k]}
        connected[k] = _connected(g, vals, {x.storage for x in groups[k]}, {(x.rows, x.dim) for x in groups[k]})
        bwd[k] = _bwd_groups(g, groups[k])
    exchange_known = emb_batch_is_global and all(x.tables is not None for gs in groups for x in gs)
    ctx = _Context(B, B2, W, N, X, P, width_old, widths_new, exchange_known, state, paramlike, connected, bwd)
    mode = (meta.get("options") or {}).get("mode", "train")

    rank_rows = []
    raw_cache: dict[int, tuple[bytes, bytes]] = {}
    total_changed = total_scaled = total_inserted = 0
    with atomic_dir(out) as tmp:
        for plan in plans:
            k = plan.template
            g = graphs[k]
            if k not in raw_cache:  # parsed once per template, copied per new rank
                kp = g.meta.get("kineto_file")
                raw_cache[k] = (pickle.dumps(read_json(Path(g.meta["et_file"]), "execution trace")),
                                pickle.dumps(read_json(Path(kp), "Kineto trace") if kp else {"traceEvents": []}))
            raw = pickle.loads(raw_cache[k][0])
            rw = _Rewriter(g, plan, ctx)
            changed = rw.run(raw)
            warnings.extend(f"rank {plan.rank}: {w}" for w in rw.warnings if f"rank {plan.rank}: {w}" not in warnings)
            factors: dict[int, float] = {}
            by_id = {int(n["id"]): n for n in raw["nodes"]}
            for nid, node in by_id.items():
                op = g.nodes.get(nid)
                if op is None:
                    continue
                f = duration_factor(op, _as_raw(op), node) if nid in changed else 1.0
                if nid in changed or abs(f - 1.0) > 1e-9:
                    label = f"scaled x{f:.4g}" if abs(f - 1.0) > 1e-9 else "shapes scaled, duration kept"
                    _set_attr(node, SYNTH_ATTR, label)
                    if op.rf_id is not None and abs(f - 1.0) > 1e-9:
                        factors[op.rf_id] = f
                        total_scaled += 1
            total_changed += len(changed)
            kin = pickle.loads(raw_cache[k][1])
            if W == 1 and N > 1:
                n_ins, inserted_events = _insert_collectives(raw, g, plan, ctx, mode, kin)
                kin.setdefault("traceEvents", []).extend(inserted_events)
                total_inserted += n_ins
            warp_kineto(kin, factors)
            _set_distributed(kin, raw, plan.rank, N, g)
            atomic_write_text(tmp / f"rank{plan.rank}.et.json", json.dumps(raw))
            atomic_write_text(tmp / f"rank{plan.rank}.kineto.json", json.dumps(kin))
            its = sorted((float(e["ts"]), float(e.get("dur", 0.0))) for e in kin.get("traceEvents", [])
                         if isinstance(e, dict) and e.get("ph") == "X" and ITERATION_RE.match(str(e.get("name", ""))))
            a2a = [n["inputs"]["values"][1] for n in sorted(raw["nodes"], key=lambda n: int(n["id"]))
                   if n.get("name") == "c10d::alltoall_base_" and len(n["inputs"]["values"]) > 1
                   and _is_tv(n["inputs"]["values"][1])]
            rank_rows.append({"plan": plan, "changed": len(changed), "ambiguous": rw.ambiguous,
                              "iterations_us": [d for _, d in its], "a2a_bytes": [v[3] * v[4] for v in a2a]})
        # iteration times of the synthesized traces, against the source
        summary_ranks = []
        new_meta_ranks = []
        measured = {int(x["rank"]): x for x in meta.get("ranks", []) if isinstance(x, dict) and "rank" in x}
        for row in rank_rows:
            plan = row["plan"]
            old_it = [m.duration_us or 0.0 for m in graphs[plan.template].iterations()]
            new_it = row["iterations_us"]
            ratio = (sum(new_it) / sum(old_it)) if old_it and sum(old_it) > 0 else 1.0
            src_ms = measured.get(plan.template, {}).get("iteration_ms")
            summary_ranks.append({
                "rank": plan.rank, "template_rank": plan.template, "tables": len(plan.tables),
                "rows": sum(gp.rows for gp in plan.groups), "lookups": sum(gp.indices for gp in plan.groups),
                "bags": sum(gp.bags for gp in plan.groups), "embedding_width": plan.width,
                "dense_batch": plan.batch_loc[1], "embedding_batch": plan.batch_emb[1],
                "a2a_bytes_per_iteration": row["a2a_bytes"][: 2 if mode == "train" else 1],
                "profiled_ms_source": (sum(old_it) / len(old_it) / 1e3) if old_it else None,
                "profiled_ms": (sum(new_it) / len(new_it) / 1e3) if new_it else None,
                "nodes_changed": row["changed"], "ambiguous_tensors": row["ambiguous"],
            })
            new_meta_ranks.append({
                "rank": plan.rank, "template_rank": plan.template,
                "iteration_ms": src_ms * ratio if src_ms is not None else None,
                "profiled_ms": summary_ranks[-1]["profiled_ms"], "estimated": True,
                "source_iteration_ms": src_ms,
            })
            if row["ambiguous"]:
                warnings.append(f"rank {plan.rank}: {row['ambiguous']} tensors have several dims equal to a batch "
                                "size (a layer width equal to the batch?); all of them were scaled")
        fields = _fields(B, B2, W, N, loc_old, loc_new, X, P, groups, plans, emb_batch_is_global)
        synth = {
            "source": str(src), "source_batch_size": B, "source_world_size": W,
            "options": asdict(opts), "fields": fields, "rules": RULES,
            "ranks": summary_ranks, "nodes_changed": total_changed, "durations_scaled": total_scaled,
            "nodes_inserted": total_inserted, "warnings": warnings,
            "not_carried": [p.name for p in sorted(src.iterdir()) if p.name.startswith("rank")
                            and (p.name.endswith(".indices.npz") or p.name.endswith(".et_resources"))],
        }
        new_meta = {k: v for k, v in meta.items() if k not in ("ranks", "files", "observer_overhead",
                                                                "profiled_overhead")}
        new_meta.update({
            "batch_size": B2, "world_size": N,
            "options": {**(meta.get("options") or {}), "nproc": N},
            "iteration_ms": max((x["iteration_ms"] for x in new_meta_ranks if x["iteration_ms"] is not None),
                                default=None),
            "ranks": new_meta_ranks,
            "files": {r: {"et": f"rank{r}.et.json", "kineto": f"rank{r}.kineto.json"} for r in range(N)},
            "synth": synth,
        })
        atomic_write_json(tmp / "capture.json", new_meta)
    return new_meta


def _fields(B: int, B2: int, W: int, N: int, loc_old: list[int], loc_new: list[int], X: float, P: float,
            groups: list[list[EmbGroup]], plans: list[RankPlan], emb_global: bool) -> list[str]:
    out = []
    if B2 != B or N != W:
        out.append(f"batch_size: {B} -> {B2} (global); dense batch per rank {loc_old} -> {loc_new}; embedding "
                   f"operators look up the {'global batch' if emb_global else 'rank batch'}")
    if X != 1.0:
        r_old = sum(x.rows for gs in groups for x in gs)
        r_new = sum(gp.rows for p in plans for gp in p.groups)
        out.append(f"embedding rows x{X:g}: {r_old} -> {r_new} rows in all (weights, their gradients and "
                   "row-wise optimizer state)")
    if P != 1.0:
        out.append(f"pooling x{P:g}: indices per bag {_pool(groups)} -> {_pool(groups, P)}")
    if N != W:
        out.append(f"ranks: {W} -> {N}; tables re-placed with place_tables (per rank: "
                   f"{[len(p.tables) for p in plans]} tables); all-to-all recomputed, all-reduce kept"
                   + ("; collectives inserted (duration 0)" if W == 1 and N > 1 else ""))
    out.append("durations: GEMM x FLOPs ratio, embedding x index-count ratio, collectives x bytes ratio, views x1, "
               "other ops x bytes ratio (attr 'synth' on every changed node)")
    return out


def _pool(groups: list[list[EmbGroup]], x: float = 1.0) -> str:
    vals = sorted({round(g.pooling * x, 2) for gs in groups for g in gs})
    return ", ".join(f"{v:g}" for v in vals) if vals else "-"


def _as_raw(op: OpNode) -> dict:
    """An OpNode's recorded arguments in the raw ET layout (for the duration rules)."""
    return {side: {"types": [a.type for a in args], "values": [a.value for a in args],
                   "shapes": [a.shape for a in args]} for side, args in (("inputs", op.inputs), ("outputs", op.outputs))}


def _set_attr(node: dict, name: str, value: str) -> None:
    attrs = node.setdefault("attrs", [])
    for a in attrs:
        if a.get("name") == name:
            a["value"] = value
            return
    attrs.append({"name": name, "type": "string", "value": value})


def _set_distributed(kin: dict, raw: dict, rank: int, world: int, g: TraceGraph) -> None:
    di = kin.get("distributedInfo")
    if world == 1 and not di:
        return
    if not di:
        di = {"backend": "gloo", "rank": rank, "world_size": world,
              "pg_count": 1, "pg_config": [{"pg_name": "0", "pg_desc": "default_pg", "backend_config": "cpu:gloo",
                                            "pg_size": world, "ranks": list(range(world))}]}
    di = dict(di)
    di["rank"], di["world_size"] = rank, world
    pgs = []
    for pg in di.get("pg_config", []) or []:
        pg = dict(pg)
        pg["pg_size"] = world
        if "ranks" in pg:
            pg["ranks"] = list(range(world))
        pgs.append(pg)
    di["pg_config"] = pgs
    kin["distributedInfo"] = di
    for n in raw["nodes"]:
        if n.get("name") == "## process_group:init ##":
            vals = n.get("inputs", {}).get("values", [])
            if vals and isinstance(vals[0], str):
                try:
                    groups = json.loads(vals[0])
                    for x in groups:
                        if "group_size" in x:
                            x["group_size"] = world
                    vals[0] = json.dumps(groups)
                except (ValueError, TypeError):
                    pass


# ---------------------------------------------------------------------------------------------
# single-rank capture -> N ranks: inserted collectives
# ---------------------------------------------------------------------------------------------
_A2A_SCHEMA = ("c10d::alltoall_base_(Tensor output, Tensor input, __torch__.torch.classes.c10d.ProcessGroup "
               "process_group, int[] output_split_sizes, int[] input_split_sizes, bool async_op=True, int "
               "timeout=-1) -> __torch__.torch.classes.c10d.Work")
_AR_SCHEMA = ("c10d::allreduce_(Tensor[] tensors, __torch__.torch.classes.c10d.ProcessGroup process_group, "
              "__torch__.torch.classes.c10d.ReduceOp reduce_op, Tensor? sparse_indices, bool async_op=True, "
              "int timeout=-1) -> (Tensor[], __torch__.torch.classes.c10d.Work)")


def _insert_collectives(raw: dict, g: TraceGraph, plan: RankPlan, ctx: _Context, mode: str,
                        kin: dict) -> tuple[int, list[dict]]:
    """Add the exchange and the dense-gradient all-reduce that an N-rank run would have; renumber
    node ids so that id order stays execution order. Returns (nodes added, Kineto events)."""
    by_id = {int(n["id"]): n for n in raw["nodes"]}
    all_ids = sorted(by_id)
    emb_w = embedding_weight_storages(g)
    weight_shapes = {(gp.old.rows, gp.old.dim) for gp in plan.groups}
    tids = [tv for n in raw["nodes"] for side in ("inputs", "outputs")
            for i, t in enumerate(n[side].get("types", []))
            for tv in _arg_tensors(n[side]["values"][i] if i < len(n[side].get("values", [])) else None, t)]
    next_tensor = max([max(tv[0], tv[1]) for tv in tids] + [0]) + 1
    next_rf = max([n.rf_id for n in g.nodes.values() if n.rf_id is not None] + [0]) + 1
    bwd_in, bwd_out = a2a_splits(ctx.batch_new, ctx.widths_new, plan.rank, backward=True)
    fwd_in, fwd_out = a2a_splits(ctx.batch_new, ctx.widths_new, plan.rank)
    elem = next((gp.old.dtype_bytes for gp in plan.groups), 4)
    plan_ins: list[tuple[int, int, dict]] = []  # (anchor: insert before this old id, parent id, node)
    events: list[dict] = []
    k_events = [e for e in kin.get("traceEvents", []) if isinstance(e, dict) and e.get("ph") == "X"]
    ev_by_rf = {int(e["args"]["Record function id"]): e for e in k_events
                if (e.get("args") or {}).get("Record function id") is not None}

    def end_of(nid: int) -> int:
        return max(n.id for n in g.subtree(nid))

    def anchor_after(nid: int) -> int:
        last = end_of(nid)
        return next((i for i in all_ids if i > last), all_ids[-1] + 1)

    def time_at(nid: int, after: bool) -> tuple[float, Any, Any]:
        n = g.nodes[nid]
        e = ev_by_rf.get(n.rf_id) if n.rf_id is not None else None
        if e is None:
            return 0.0, None, None
        # just outside the neighbour, so that the timeline rebuild does not nest it inside
        ts = float(e["ts"]) + (float(e.get("dur", 0.0)) + 0.001 if after else -0.001)
        return ts, e.get("pid"), e.get("tid")

    def tensor(numel: int) -> list:
        nonlocal next_tensor
        tv = [next_tensor, next_tensor + 1, 0, numel, elem, "cpu"]
        next_tensor += 2
        return tv

    def make(name: str, schema: str, inputs: dict, outputs: dict, tid: int) -> dict:
        nonlocal next_rf
        node = {"id": 0, "name": name, "ctrl_deps": 0, "inputs": inputs, "outputs": outputs, "attrs": [
            {"name": "rf_id", "type": "uint64", "value": next_rf}, {"name": "fw_parent", "type": "uint64", "value": 0},
            {"name": "seq_id", "type": "int64", "value": -1}, {"name": "scope", "type": "uint64", "value": 0},
            {"name": "tid", "type": "uint64", "value": tid}, {"name": "fw_tid", "type": "uint64", "value": 0},
            {"name": "op_schema", "type": "string", "value": schema},
            {"name": "kernel_backend", "type": "string", "value": ""},
            {"name": "kernel_file", "type": "string", "value": ""},
            {"name": "tensor_range", "type": "string", "value": ""},
            {"name": SYNTH_ATTR, "type": "string",
             "value": "inserted: an N-rank run's collective; no measured duration (single-process capture)"},
        ]}
        next_rf += 1
        return node

    def a2a(in_split: list[int], out_split: list[int], tid: int, src: list | None = None) -> dict:
        o = tensor(sum(out_split))
        i = list(src) if src is not None and src[3] == sum(in_split) else tensor(sum(in_split))
        return make("c10d::alltoall_base_", _A2A_SCHEMA, {
            "values": [o, i, "<Object>", list(out_split), list(in_split), False, -1],
            "shapes": [[o[3]], [i[3]], [], [[] for _ in out_split], [[] for _ in in_split], [], []],
            "types": ["Tensor(float)", "Tensor(float)", "Object", "GenericList[" + ",".join(["Int"] * len(out_split))
                      + "]", "GenericList[" + ",".join(["Int"] * len(in_split)) + "]", "Bool", "Int"],
            "strides": [[1], [1], [], [[] for _ in out_split], [[] for _ in in_split], [], []]},
            {"values": ["<Object>"], "shapes": [[]], "types": ["Object"], "strides": [[]]}, tid)

    for m in g.iterations():
        tops = g.top_level_ops(m.id)
        tid = m.tid
        fwd = [n for n in tops if op_base(n.name) in EMBEDDING_FORWARD_OPS]
        if fwd:
            last = fwd[-1]
            out0 = by_id[last.id]["outputs"]["values"][:1]  # the pooled rows it sends (a data dependency)
            src = out0[0] if out0 and _is_tv(out0[0]) and len(plan.groups) == 1 else None
            plan_ins.append((anchor_after(last.id), last.parent, a2a(fwd_in, fwd_out, tid, src)))
            events.append(time_at(last.id, after=True))
        if mode != "train":
            continue
        bwd = [n for n in tops if op_base(n.name) in EMBEDDING_OPS and op_base(n.name) not in EMBEDDING_FORWARD_OPS]
        if bwd:
            unit = bwd[0]
            chain = [unit] + list(g.ancestors(unit.id))
            unit = next((c for c in chain if c.parent == m.id), unit)
            plan_ins.append((unit.id, unit.parent, a2a(bwd_in, bwd_out, tid)))
            events.append(time_at(unit.id, after=False))
        grads = 0
        for n in g.subtree(m.id):
            if n.name == "torch::autograd::AccumulateGrad" and n.inputs:
                arg = n.inputs[0]
                sh = _int_shape(arg.shape)
                for t in arg.tensors():
                    if t.storage_id in emb_w or (sh and tuple(sh) in weight_shapes):
                        continue
                    grads += t.numel
        if grads:
            opt = next((c for c in g.children(m.id) if c.name.startswith("Optimizer.step")), None)
            t = tensor(grads)
            node = make("c10d::allreduce_", _AR_SCHEMA, {
                "values": [[t], "<Object>", "<Object>", "<None>", True, -1],
                "shapes": [[[grads]], [], [], [], [], []],
                "types": ["GenericList[Tensor(float)]", "Object", "Object", "None", "Bool", "Int"],
                "strides": [[[1]], [], [], [], [], []]},
                {"values": [[t], "<Object>"], "shapes": [[[grads]], []],
                 "types": ["GenericList[Tensor(float)]", "Object"], "strides": [[[1]], []]}, tid)
            if opt is not None:
                plan_ins.append((opt.id, m.id, node))
                events.append(time_at(opt.id, after=False))
            else:
                plan_ins.append((anchor_after(m.id), m.id, node))
                events.append(time_at(m.id, after=True))
    if not plan_ins:
        return 0, []
    # renumber: an inserted node takes the ids just before its anchor
    by_anchor: dict[int, list[int]] = defaultdict(list)
    for j, (anchor, _, _) in enumerate(plan_ins):
        by_anchor[anchor].append(j)
    new_id: dict[int, int] = {}
    ins_id: dict[int, int] = {}
    shift = 0
    anchors = sorted(by_anchor)
    ai = 0
    for old in all_ids + [all_ids[-1] + 10**9]:
        while ai < len(anchors) and anchors[ai] <= old:
            for j in by_anchor[anchors[ai]]:
                ins_id[j] = anchors[ai] + shift
                shift += 1
            ai += 1
        if old in by_id:
            new_id[old] = old + shift
    for n in raw["nodes"]:
        old = int(n["id"])
        n["id"] = new_id[old]
        if n.get("ctrl_deps") in new_id:
            n["ctrl_deps"] = new_id[n["ctrl_deps"]]
        for a in n.get("attrs", []):
            if a.get("name") == "fw_parent" and a.get("value") in new_id and a.get("value"):
                a["value"] = new_id[a["value"]]
    kevents = []
    for j, (_anchor, parent, node) in enumerate(plan_ins):
        node["id"] = ins_id[j]
        node["ctrl_deps"] = new_id.get(parent, parent) if parent is not None else 0
        raw["nodes"].append(node)
        ts, pid, ktid = events[j]
        rf = next(a["value"] for a in node["attrs"] if a["name"] == "rf_id")
        kevents.append({"ph": "X", "cat": "cpu_op", "name": node["name"], "pid": pid, "tid": ktid, "ts": round(ts, 3),
                        "dur": 0.0, "args": {"Record function id": rf, "synth": "inserted"}})
    raw["nodes"].sort(key=lambda n: int(n["id"]))
    return len(plan_ins), kevents
