"""`recstack trace stats`: where the time of a captured iteration goes, per rank.

Holistic-Trace-Analysis style: small analyzers over the shared `TraceGraph`, one per question.

- `op_category(node, graph)`: embedding, GEMM, elementwise, communication, optimizer or other
  (by operator name and by enclosing context; the replay and the performance model reuse it).
- `iteration_ops(graph, marker)`: the operators whose times add up: the top-level operators of an
  iteration, plus the collective ranges that gloo/NCCL record on their worker threads.
- `critical_path(graph, ops)`: longest duration-weighted path through the data dependencies and
  (by default) same-thread program order.
- `iteration_breakdown(graph, marker)`: one iteration: per-operator and per-category times,
  critical path, gaps (iteration time not inside any main-thread operator) and how much of the gaps
  the main thread spent waiting on collectives running on other threads.
- `rank_stats(graph)`, `capture_stats(dir)`: averaged over the captured iterations, per rank,
  next to the iteration time that capture.json measured without the profiler.
- `plot_stats(result, path)`: stacked category bars per rank plus the top operators.

Times are Kineto's CPU-side durations in microseconds (device kernels are in `gpu_us`, not here).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recstack.errors import DataError
from recstack.io import read_json
from recstack.trace.graph import OpNode, TraceGraph

CATEGORIES = ("embedding", "GEMM", "elementwise", "communication", "optimizer", "other")

# Operator base names (namespace, overload and in-place "_" stripped), by category.
EMBEDDING_OPS = frozenset({
    "embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only", "_embedding_bag_backward",
    "_embedding_bag_sparse_backward", "_embedding_bag_dense_backward", "_embedding_bag_per_sample_weights_backward",
    "embedding_backward", "embedding_dense_backward", "embedding_sparse_backward", "embedding_renorm",
})
EMBEDDING_FORWARD_OPS = frozenset({"embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only"})
GEMM_OPS = frozenset({
    "mm", "addmm", "_addmm_activation", "bmm", "baddbmm", "addbmm", "matmul", "linear", "_linear_pointwise",
    "mkldnn_linear", "mkldnn_linear_backward_input", "mkldnn_linear_backward_weights", "addmv", "mv", "dot",
    "einsum", "_scaled_mm", "_int_mm", "fbgemm_linear_fp16_weight",
})
ELEMENTWISE_OPS = frozenset({
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "relu", "_add_relu", "threshold", "threshold_backward",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "pow",
    "reciprocal", "clamp", "clamp_min", "clamp_max", "where", "maximum", "minimum", "fill", "zero", "copy",
    "addcmul", "addcdiv", "lerp", "gelu", "gelu_backward", "silu", "silu_backward", "leaky_relu",
    "leaky_relu_backward", "hardtanh", "hardtanh_backward", "softplus", "softplus_backward", "elu",
    "elu_backward", "log_sigmoid", "log_sigmoid_forward", "log_sigmoid_backward", "masked_fill", "eq", "ne",
    "gt", "ge", "lt", "le", "logical_and", "logical_or", "logical_not", "sign", "square", "erf", "floor",
    "ceil", "round", "fmod", "remainder", "_foreach_add", "_foreach_mul", "_foreach_div", "_foreach_sub",
    "_foreach_addcmul", "_foreach_addcdiv", "_foreach_sqrt", "_foreach_lerp", "_foreach_zero", "dropout",
    "native_dropout", "native_dropout_backward", "bernoulli", "_to_copy", "to",
})
COMM_PREFIXES = ("c10d::", "gloo:", "nccl:", "nccl::", "record_param_comms", "c10d_functional::",
                 "_c10d_functional::")
OPTIMIZER_SCOPES = ("Optimizer.step#", "Optimizer.zero_grad#")
_EMBEDDING_SCOPE = re.compile(r"embedding", re.IGNORECASE)


def op_base(name: str) -> str:
    """'aten::add_.Tensor' -> 'add'; 'mkldnn::_linear_pointwise' -> '_linear_pointwise'."""
    base = name.split("::", 1)[1] if "::" in name else name
    base = base.split(".", 1)[0]
    if base.endswith("_") and not base.endswith("__") and len(base) > 1:
        base = base[:-1]
    return base


def name_category(name: str) -> str | None:
    """The category an operator name alone decides (None: it needs context, or is 'other')."""
    if name.startswith(COMM_PREFIXES):
        return "communication"
    if name.startswith("fbgemm::"):
        return "embedding"
    base = op_base(name)
    if base in EMBEDDING_OPS:
        return "embedding"
    if base in GEMM_OPS:
        return "GEMM"
    if base in ELEMENTWISE_OPS:
        return "elementwise"
    return None


def embedding_weight_storages(graph: TraceGraph) -> frozenset[int]:
    """Storage ids of the embedding weights (first input of the embedding forward operators)."""
    cached = graph.__dict__.get("_embedding_weight_storages")
    if cached is None:
        ids = set()
        for n in graph.nodes.values():
            if n.is_op and op_base(n.name) in EMBEDDING_FORWARD_OPS and n.inputs:
                ts = n.inputs[0].tensors()
                if ts:
                    ids.add(ts[0].storage_id)
        cached = frozenset(ids)
        graph.__dict__["_embedding_weight_storages"] = cached
    return cached


def op_category(node: OpNode, graph: TraceGraph | None = None) -> str:
    """Category of an operator (one of CATEGORIES).

    In order: communication (a collective: `comm` set, c10d::/gloo:/nccl: names); optimizer (inside
    an `Optimizer.step#...`/`Optimizer.zero_grad#...` range, or an in-place update of an embedding
    weight outside the embedding operators, which is what sparse optimizers do); embedding
    (embedding/embedding_bag operators and their backward, fbgemm::*, or anything inside an
    autograd or module range named like *embedding*); GEMM (mm, addmm, bmm, matmul, linear,
    mkldnn::_linear_pointwise, baddbmm, ...); elementwise (pointwise aten operators); other.
    Without `graph` only the name decides.
    """
    by_name = name_category(node.name)
    if node.comm is not None or by_name == "communication":
        return "communication"
    anc = list(graph.ancestors(node.id)) if graph is not None and node.id in graph.nodes else []
    if any(a.name.startswith(OPTIMIZER_SCOPES) for a in anc):
        return "optimizer"
    if by_name == "embedding" or any(_EMBEDDING_SCOPE.search(a.name) for a in anc):
        return "embedding"
    if graph is not None and node.name.endswith("_") and node.inputs:
        ts = node.inputs[0].tensors()
        if ts and ts[0].storage_id in embedding_weight_storages(graph):
            return "optimizer"
    return by_name or "other"


# ---------------------------------------------------------------- which operators count
def _tid(n: OpNode) -> Any:
    return n.kineto_tid if n.kineto_tid is not None else f"et{n.tid}"


def iteration_ops(graph: TraceGraph, marker: OpNode | None) -> list[OpNode]:
    """The operators an iteration's time is made of: its top-level operators (the outermost
    dispatcher ops below record-function ranges; see TraceGraph.top_level_ops) plus collective
    ranges (gloo:*, nccl:*) that run on a communication thread. The execution trace nests such a
    range under whatever the main thread had open, and main-thread operators recorded while it ran
    under it; those are still counted, as operators of their own thread."""
    if marker is None:
        starts = [n.id for n in graph.nodes.values() if n.parent not in graph.nodes]
    else:
        starts = [marker.id]
    out: list[OpNode] = []
    stack = [(c, None) for s in reversed(starts) for c in reversed(graph.nodes[s].children)]
    while stack:
        nid, comm_tid = stack.pop()
        n = graph.nodes[nid]
        if comm_tid is not None and _tid(n) == comm_tid:
            continue  # part of the collective range already counted
        if n.is_op or n.comm is not None:
            out.append(n)
            # a collective op's gloo/NCCL range, recorded on the communication thread
            out.extend(d for d in graph.subtree(n.id) if d.id != n.id and d.duration_us is not None
                       and name_category(d.name) == "communication" and not d.is_op and _tid(d) != _tid(n))
        elif name_category(n.name) == "communication" and n.duration_us is not None:
            out.append(n)
            stack.extend((c, _tid(n)) for c in reversed(n.children))
        else:
            stack.extend((c, comm_tid) for c in reversed(n.children))
    return sorted(out, key=lambda n: n.id)


# ---------------------------------------------------------------- critical path
def critical_path(graph: TraceGraph, ops: list[OpNode], program_order: bool = True) -> tuple[float, list[OpNode]]:
    """Longest path through `ops` weighted by duration: edges are the data dependencies
    (TraceGraph.data_deps) and, with `program_order`, each op's predecessor on its own thread.
    Returns (length in us, the ops on the path in order)."""
    if not ops:
        return 0.0, []
    ops = sorted(ops, key=lambda n: n.id)
    preds = {k: list(v) for k, v in graph.data_deps(ops).items()}
    if program_order:
        last: dict[Any, int] = {}
        for n in ops:
            t = _tid(n)
            if t in last:
                preds[n.id].append(last[t])
            last[t] = n.id
    dist: dict[int, float] = {}
    back: dict[int, int | None] = {}
    for n in ops:
        best, arg = 0.0, None
        for p in preds.get(n.id, []):
            if p in dist and dist[p] > best:
                best, arg = dist[p], p
        dist[n.id] = best + graph.duration_us(n)
        back[n.id] = arg
    end = max(dist, key=lambda k: (dist[k], -k))
    path = []
    cur: int | None = end
    while cur is not None:
        path.append(graph.nodes[cur])
        cur = back[cur]
    return dist[end], path[::-1]


# ---------------------------------------------------------------- one iteration
def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    tot, j = 0.0, 0
    for a, b in xs:
        while j < len(ys) and ys[j][1] <= a:
            j += 1
        k = j
        while k < len(ys) and ys[k][0] < b:
            tot += min(b, ys[k][1]) - max(a, ys[k][0])
            k += 1
    return tot


def iteration_breakdown(graph: TraceGraph, marker: OpNode | None) -> dict[str, Any]:
    """Times of one iteration (marker = its ProfilerStep node; None: the whole trace)."""
    ops = iteration_ops(graph, marker)
    timed = [o for o in ops if o.duration_us is not None]
    main_tid = _tid(marker) if marker is not None else (_tid(timed[0]) if timed else None)
    by_cat: dict[str, list[float]] = {c: [0.0, 0] for c in CATEGORIES}
    by_name: dict[str, dict[str, Any]] = {}
    cats = {}
    for o in ops:
        cat = op_category(o, graph)
        cats[o.id] = cat
        d = graph.duration_us(o)
        by_cat[cat][0] += d
        by_cat[cat][1] += 1
        row = by_name.setdefault(o.name, {"name": o.name, "category": cat, "count": 0, "total_us": 0.0})
        row["count"] += 1
        row["total_us"] += d
    main = [o for o in timed if _tid(o) == main_tid]
    if marker is not None and marker.duration_us is not None:
        start, iter_us = float(marker.start_us or 0.0), float(marker.duration_us)
    elif timed:
        start = min(float(o.start_us or 0.0) for o in timed)
        iter_us = max(float(o.start_us or 0.0) + float(o.duration_us or 0.0) for o in timed) - start
    else:
        start, iter_us = 0.0, 0.0
    main_us = sum(graph.duration_us(o) for o in main)
    # main-thread gaps that a collective on another thread covers: waiting on communication
    busy = _union([(o.start_us, o.start_us + o.duration_us) for o in main if o.start_us is not None])
    gaps = []
    cur = start
    for a, b in busy:
        if a > cur:
            gaps.append((cur, a))
        cur = max(cur, b)
    if start + iter_us > cur:
        gaps.append((cur, start + iter_us))
    comm_other = _union([(o.start_us, o.start_us + o.duration_us) for o in timed
                         if _tid(o) != main_tid and cats[o.id] == "communication" and o.start_us is not None])
    cp_us, cp_ops = critical_path(graph, timed)
    df_us, df_ops = critical_path(graph, timed, program_order=False)
    return {
        "iteration": marker.name if marker is not None else None,
        "iteration_us": iter_us,
        "ops": len(ops),
        "untimed_ops": len(ops) - len(timed),
        "op_us": sum(graph.duration_us(o) for o in ops),
        "main_thread_op_us": main_us,
        "gaps_us": iter_us - main_us,
        "comm_wait_us": _overlap(gaps, comm_other),
        "threads": len({_tid(o) for o in timed}),
        "categories": {c: {"us": v[0], "count": int(v[1])} for c, v in by_cat.items()},
        "operators": by_name,
        "critical_path_us": cp_us,
        "critical_path": [_op_ref(o, cats) for o in cp_ops],
        "dataflow_path_us": df_us,
        "dataflow_path": [_op_ref(o, cats) for o in df_ops],
    }


def _op_ref(o: OpNode, cats: dict[int, str]) -> dict[str, Any]:
    return {"id": o.id, "name": o.name, "category": cats.get(o.id, "other"), "duration_us": o.duration_us or 0.0}


# ---------------------------------------------------------------- per rank, per capture
def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def rank_stats(graph: TraceGraph, top: int = 10) -> dict[str, Any]:
    """Per-iteration averages over every captured iteration of one rank's trace."""
    markers: list[OpNode | None] = list(graph.iterations()) or [None]
    its = [iteration_breakdown(graph, m) for m in markers]
    n = len(its)
    op_us = _mean([i["op_us"] for i in its])
    cats = {}
    for c in CATEGORIES:
        us = _mean([i["categories"][c]["us"] for i in its])
        cats[c] = {"us": us, "count": sum(i["categories"][c]["count"] for i in its) / n,
                   "share": us / op_us if op_us > 0 else 0.0}
    names: dict[str, dict[str, Any]] = {}
    for i in its:
        for name, row in i["operators"].items():
            agg = names.setdefault(name, {"name": name, "category": row["category"], "count": 0.0, "total_us": 0.0})
            agg["count"] += row["count"] / n
            agg["total_us"] += row["total_us"] / n
    operators = sorted(names.values(), key=lambda r: (-r["total_us"], r["name"]))
    for r in operators:
        r["mean_us"] = r["total_us"] / r["count"] if r["count"] else 0.0
        r["share"] = r["total_us"] / op_us if op_us > 0 else 0.0
    last = its[-1]
    return {
        "rank": graph.rank,
        "world_size": graph.world_size,
        "iterations": n,
        "iteration_us": _mean([i["iteration_us"] for i in its]),
        "op_us": op_us,
        "main_thread_op_us": _mean([i["main_thread_op_us"] for i in its]),
        "gaps_us": _mean([i["gaps_us"] for i in its]),
        "comm_wait_us": _mean([i["comm_wait_us"] for i in its]),
        "critical_path_us": _mean([i["critical_path_us"] for i in its]),
        "dataflow_path_us": _mean([i["dataflow_path_us"] for i in its]),
        "ops_per_iteration": _mean([i["ops"] for i in its]),
        "untimed_ops": sum(i["untimed_ops"] for i in its),
        "categories": cats,
        "top_operators": operators[:top],
        "operators": operators,
        "per_iteration": [{k: i[k] for k in ("iteration", "iteration_us", "op_us", "main_thread_op_us", "gaps_us",
                                              "comm_wait_us", "critical_path_us", "dataflow_path_us")}
                          | {"categories_us": {c: i["categories"][c]["us"] for c in CATEGORIES}} for i in its],
        "critical_path": last["critical_path"],
        "dataflow_path": last["dataflow_path"],
    }


def _read_capture_meta(path: Path) -> dict[str, Any]:
    f = path / "capture.json"
    if not f.exists():
        return {}
    meta = read_json(f, "capture settings")
    return meta if isinstance(meta, dict) else {}


def capture_stats(path: str | Path, rank: int | None = None, top: int = 10) -> dict[str, Any]:
    """Statistics of every rank of a capture directory (or of `rank` only), with capture.json's
    iteration time measured without the profiler next to the profiled one."""
    from recstack.trace.load import load_ranks, load_trace

    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p}: not a capture directory (see `recstack trace capture`)")
    if rank is not None:
        if rank < 0:
            raise DataError(f"--rank must be >= 0, got {rank}")
        graphs = [load_trace(p, rank)]
    else:
        graphs = load_ranks(p)
    meta = _read_capture_meta(p)
    measured = {int(r["rank"]): r for r in meta.get("ranks", []) if isinstance(r, dict) and "rank" in r}
    ranks = []
    for g in graphs:
        s = rank_stats(g, top)
        m = measured.get(g.rank, {})
        s["measured_iteration_ms"] = m.get("iteration_ms")
        s["measured_profiled_ms"] = m.get("profiled_ms")
        s["profiled_iteration_ms"] = s["iteration_us"] / 1e3
        ranks.append(s)
    return {
        "dir": str(p),
        "model": meta.get("model"),
        "batch_size": meta.get("batch_size"),
        "world_size": meta.get("world_size", graphs[0].world_size if graphs else 1),
        "mode": (meta.get("options") or {}).get("mode"),
        "synth": meta.get("synth"),
        "categories": list(CATEGORIES),
        "ranks": ranks,
    }


# ---------------------------------------------------------------- plot
CATEGORY_COLORS = {"embedding": "#4c72b0", "GEMM": "#dd8452", "elementwise": "#55a868", "communication": "#c44e52",
                   "optimizer": "#8172b3", "other": "#937860", "gaps": "#d9d9d9"}


def plot_stats(result: dict[str, Any], path: str | Path, top: int = 10) -> Path:
    """Left: per rank, the mean iteration's operator time by category (stacked) plus the main
    thread's gaps, with the iteration time measured without the profiler; right: top operators."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recstack.io import save_figure

    ranks = result["ranks"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [max(2, len(ranks)), 5]})
    xs = list(range(len(ranks)))
    bottom = [0.0] * len(ranks)
    for c in CATEGORIES:
        vals = [r["categories"][c]["us"] / 1e3 for r in ranks]
        if any(v > 0 for v in vals):
            ax.bar(xs, vals, bottom=bottom, color=CATEGORY_COLORS[c], label=c, width=0.6)
            bottom = [b + v for b, v in zip(bottom, vals)]
    gaps = [max(0.0, r["gaps_us"]) / 1e3 for r in ranks]
    ax.bar(xs, gaps, bottom=bottom, color=CATEGORY_COLORS["gaps"], label="gaps (main thread)", width=0.6,
           hatch="//", edgecolor="white")
    for x, r in zip(xs, ranks):
        if r.get("measured_iteration_ms") is not None:
            ax.plot([x - 0.35, x + 0.35], [r["measured_iteration_ms"]] * 2, color="black", lw=1.5, ls="--")
    if any(r.get("measured_iteration_ms") is not None for r in ranks):
        ax.plot([], [], color="black", lw=1.5, ls="--", label="measured, no profiler")
    ax.set_xticks(xs, [f"rank {r['rank']}" for r in ranks])
    ax.set_ylabel("ms per iteration (profiled)")
    ax.set_title("operator time by category", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(0, -0.08), ncol=2, frameon=False)
    r0 = ranks[0]
    rows = r0["operators"][:top][::-1]
    bx.barh(range(len(rows)), [r["total_us"] / 1e3 for r in rows],
            color=[CATEGORY_COLORS.get(r["category"], "#999999") for r in rows])
    bx.set_yticks(range(len(rows)), [f"{r['name'][:48]} (x{r['count']:g})" for r in rows], fontsize=7.5)
    bx.set_xlabel("ms per iteration")
    bx.set_title(f"top {len(rows)} operators, rank {r0['rank']}", fontsize=10)
    bx.grid(axis="x", alpha=0.3)
    title = f"{result.get('model') or Path(result['dir']).name}: trace stats"
    if result.get("batch_size"):
        title += f", batch {result['batch_size']}"
    if result.get("synth"):
        title += " (synthesized)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
