"""Replay one captured iteration as a benchmark that needs neither the model code nor the data.

Mystique's recipe: keep the top-level operators of one iteration, rebuild each from its op
schema (`torch.ops.<ns>.<op>.<overload>`), allocate the tensors nobody in the iteration produced
(weights, gradients, the batch) once, feed every later operator the tensors the replayed
operators produce, and run them in trace order with warm-up and timing.

Leaf tensors: floating point ones are random; integral ones are drawn within the range the
capture recorded for them (`tensor_range`), sorted with their recorded end points kept when they
feed offsets or repeat counts (so bag boundaries stay valid and the total lookups match); with
`--save-indices` captures the embedding operators get the recorded index and offset tensors.
Leaves that share a storage are views of one buffer, so aliasing (flat parameter buffers,
in-place updates) behaves as captured. Operators that cannot be rebuilt (unknown schema, process
group arguments, a failure on the rebuilt inputs) are listed with the reason, never dropped
silently, and their outputs are allocated with the recorded shapes so the rest still runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack.errors import DataError
from recstack.io import read_json
from recstack.trace.graph import Arg, OpNode, TensorRef, TraceGraph

_DTYPES = {
    "float": torch.float32, "double": torch.float64, "c10::Half": torch.float16, "c10::BFloat16": torch.bfloat16,
    "long int": torch.int64, "int": torch.int32, "short int": torch.int16, "signed char": torch.int8,
    "unsigned char": torch.uint8, "bool": torch.bool,
}
# c10::ScalarType enum order (what the ET records for dtype arguments)
_SCALAR_TYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32,
                 torch.float64, torch.complex32, torch.complex64, torch.complex128, torch.bool, torch.qint8,
                 torch.quint8, torch.qint32, torch.bfloat16]
_LAYOUTS = [torch.strided, torch.sparse_coo]
_MEMORY_FORMATS = [torch.contiguous_format, torch.preserve_format, torch.channels_last, torch.channels_last_3d]
OFFSET_ARGS = {"offsets", "repeats", "lengths", "crow_indices", "boundaries", "indptr", "cu_seqlens"}
INDEX_ARGS = {"indices", "index", "offsets"}  # arguments whose values must be valid for the consumer


class _Unsupported(Exception):
    pass


@dataclass
class _Op:
    node: OpNode
    fn: Callable[..., Any]
    args: list[Any]
    kwargs: dict[str, Any]
    tensor_pos: list[tuple[str | int, int | None, int]]  # (arg index or kwarg name, list index, slot)
    out_slots: list[list[int] | int | None]  # per returned value: slot, list of slots, or None


@dataclass
class ReplayResult:
    captured_ms: float | None  # the captured iteration, timed without the profiler (capture.json)
    captured_profiled_ms: float | None  # the iteration marker's Kineto duration
    replayed_ms: float
    replayed_ms_all: list[float]
    coverage: float  # share of the iteration's top-level operator time that the replay re-runs
    ops: int
    replayed_ops: int
    not_rebuilt: list[dict[str, Any]]
    per_op: list[dict[str, Any]]  # by operator name: captured vs replayed microseconds
    leaves: dict[str, int]  # how leaf tensors were filled

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _dtype_of(arg: Arg | str) -> torch.dtype:
    s = arg if isinstance(arg, str) else (arg.dtype or "")
    if s not in _DTYPES:
        raise _Unsupported(f"tensor dtype {s!r}")
    return _DTYPES[s]


def _resolve(schema_str: str) -> tuple[Any, Callable[..., Any]]:
    schema = torch._C.parse_schema(schema_str)
    ns, name = schema.name.split("::", 1)
    if ns == "fbgemm":
        try:
            import fbgemm_gpu  # noqa: F401  (registers the fbgemm operators)
        except ImportError as e:
            raise _Unsupported(f"fbgemm operators need fbgemm_gpu ({e})") from None
    try:
        packet = getattr(getattr(torch.ops, ns), name)
        op = getattr(packet, schema.overload_name or "default")
    except (AttributeError, RuntimeError):
        raise _Unsupported(f"no operator {schema.name}.{schema.overload_name or 'default'} in this PyTorch") from None
    return schema, getattr(op, "_op", op)


class Replayer:
    """Rebuild the top-level operators of one iteration of `graph` and run them."""

    def __init__(self, graph: TraceGraph, *, iteration: int | None = None, device: str = "cpu",
                 resources: Path | None = None, seed: int = 0) -> None:
        self.graph = graph
        self.device = torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        it = graph.iteration(iteration)
        self.iteration_node = it
        self.top = graph.top_level_ops(it.id if it is not None else None)
        if not self.top:
            raise DataError(f"{graph.meta.get('et_file')}: no operators to replay in the selected iteration")
        self.resources = resources
        self.slots: list[Any] = []
        self._slot_of: dict[tuple, int] = {}
        self.ops: list[_Op] = []
        self.not_rebuilt: list[dict[str, Any]] = []
        self.leaves = {"random_float": 0, "range_int": 0, "sorted_int": 0, "zero_int": 0, "bool": 0, "recorded": 0,
                       "pinned_index": 0}
        self._build()

    # ------------------------------------------------------------ building
    def _slot(self, t: TensorRef) -> int:
        s = self._slot_of.get(t.key)
        if s is None:
            s = self._slot_of[t.key] = len(self.slots)
            self.slots.append(None)
        return s

    def _value(self, a: Arg, typ: str, pos: list, idx: str | int, op_ref: dict) -> Any:
        v = a.value
        if v == "<None>" or a.type == "None" or a.type.startswith("Tensor(nullptr"):
            return None
        if typ in ("Tensor", "Optional[Tensor]"):
            if not a.is_tensor:
                raise _Unsupported(f"argument {idx}: expected a tensor, the trace has {a.type}")
            t = a.tensors()[0]
            pos.append((idx, None, self._slot(t)))
            op_ref.setdefault("in", []).append((t, a))
            return None
        if typ in ("List[Tensor]", "List[Optional[Tensor]]"):
            out = []
            for j, t in enumerate(a.tensors()):
                pos.append((idx, j, self._slot(t)))
                op_ref.setdefault("in", []).append((t, Arg(a.type.split("[", 1)[1].split(",")[0].rstrip("]"), list(t.key),
                                                           a.shape[j] if isinstance(a.shape, list) else None,
                                                           a.stride[j] if isinstance(a.stride, list) else None)))
                out.append(None)
            return out
        if "ScalarType" in typ or (typ in ("int", "Optional[int]") and op_ref.get("argname") == "dtype"):
            return _SCALAR_TYPES[int(v)]
        if op_ref.get("argname") == "layout":
            return _LAYOUTS[int(v)]
        if op_ref.get("argname") == "memory_format":
            return _MEMORY_FORMATS[int(v)]
        if "Device" in typ or op_ref.get("argname") == "device":
            return torch.device(self.device.type if str(v).startswith(("cpu", "cuda")) else str(v))
        if typ.startswith("__torch__") or a.type == "Object":
            raise _Unsupported(f"argument {idx} is a {typ} object (process groups and other script objects)")
        if typ in ("Generator", "Optional[Generator]"):
            return None
        return v

    def _build(self) -> None:
        produced: set[tuple] = set()
        first_use: dict[tuple, tuple[OpNode, Arg, int]] = {}
        self._saved = self._saved_indices()
        for n in self.top:
            try:
                schema, fn = _resolve(n.schema) if n.schema else (None, None)
                if schema is None:
                    raise _Unsupported("no op schema (a record_function range)")
                if len(n.inputs) != len(schema.arguments):
                    raise _Unsupported(f"{len(n.inputs)} recorded inputs for {len(schema.arguments)} schema arguments")
                args: list[Any] = []
                kwargs: dict[str, Any] = {}
                pos: list[tuple] = []
                ref: dict[str, Any] = {}
                for i, (sa, a) in enumerate(zip(schema.arguments, n.inputs)):
                    ref["argname"] = sa.name
                    idx: str | int = sa.name if sa.kwarg_only else len(args)
                    val = self._value(a, str(sa.type), pos, idx, ref)
                    if sa.kwarg_only:
                        kwargs[sa.name] = val
                    else:
                        args.append(val)
                    for t in a.tensors():
                        if t.key not in produced and t.key not in first_use:
                            first_use[t.key] = (n, a, i)
                outs: list[Any] = []
                for o in n.outputs:
                    ts = o.tensors()
                    if o.is_tensor:
                        outs.append(self._slot(ts[0]))
                    elif o.is_tensor_list:
                        outs.append([self._slot(t) for t in ts])
                    else:
                        outs.append(None)
                    produced.update(t.key for t in ts)
                self.ops.append(_Op(n, fn, args, kwargs, pos, outs))
            except (_Unsupported, RuntimeError) as e:
                self.not_rebuilt.append({"id": n.id, "name": n.name, "reason": str(e).splitlines()[0],
                                         "captured_us": n.duration_us or 0.0})
                for o in n.outputs:  # later operators still get tensors of the recorded shape
                    for t in o.tensors():
                        produced.discard(t.key)
        self._allocate_leaves(first_use)
        self._pin_indices()
        self._dry_run()

    def _saved_indices(self) -> dict[tuple[int, int], torch.Tensor]:
        """Recorded integral inputs of embedding operators: rank<R>.et_resources/nid_<node>_tid_<input>.dat."""
        out: dict[tuple[int, int], torch.Tensor] = {}
        if self.resources is None or not self.resources.is_dir():
            return out
        by_id = {n.id: n for n in self.top}
        for f in self.resources.glob("nid_*_tid_*.dat"):
            try:
                _, nid, _, inp = f.stem.split("_")
                node = by_id.get(int(nid))
            except ValueError:
                continue
            if node is None or int(inp) >= len(node.inputs):
                continue
            a = node.inputs[int(inp)]
            if not a.is_tensor:
                continue
            t = a.tensors()[0]
            dt = _dtype_of(a)
            data = torch.from_numpy(np.fromfile(f, dtype=torch.empty(0, dtype=dt).numpy().dtype))
            if data.numel() != t.numel:
                continue
            out[(node.id, int(inp))] = data.reshape(a.shape).to(self.device)
        return out

    def _feeds_offsets(self, key: tuple, depth: int = 4) -> bool:
        """Does this tensor reach an offsets / repeats / lengths argument within `depth` operators?"""
        frontier, seen = {key}, set()
        for _ in range(depth):
            nxt: set[tuple] = set()
            for op in self.ops:
                n = op.node
                names = self._argnames(n)
                for i, a in enumerate(n.inputs):
                    if any(t.key in frontier for t in a.tensors()):
                        if i < len(names) and names[i] in OFFSET_ARGS:
                            return True
                        nxt.update(t.key for t in n.output_tensors())
            nxt -= seen
            seen |= nxt
            frontier = nxt
            if not frontier:
                break
        return False

    @staticmethod
    def _argnames(n: OpNode) -> list[str]:
        try:
            return [a.name for a in torch._C.parse_schema(n.schema).arguments]
        except RuntimeError:
            return []

    def _allocate_leaves(self, first_use: dict[tuple, tuple[OpNode, Arg, int]]) -> None:
        # group leaves by storage so views of one buffer stay views of one buffer
        by_storage: dict[tuple, list[tuple[TensorRef, Arg, OpNode, int]]] = {}
        for key, (n, a, i) in first_use.items():
            for t in a.tensors():
                if t.key == key:
                    dt = a.dtype if a.is_tensor else a.type.split("[", 1)[1].split(",")[0].rstrip("]").removeprefix(
                        "Tensor(").rstrip(")")
                    by_storage.setdefault((t.storage_id, t.elem_bytes, t.device, dt), []).append((t, a, n, i))
        for (sid, _eb, _dev, dts), items in by_storage.items():
            try:
                dtype = _dtype_of(dts)
            except _Unsupported:
                continue
            shapes = []
            for t, a, _n, _i in items:
                shape, stride = self._shape_stride(t, a)
                shapes.append((shape, stride))
            span = max(t.offset + (1 + sum((s - 1) * st for s, st in zip(shape, stride)) if all(shape) else 0)
                       for (t, *_), (shape, stride) in zip(items, shapes))
            span = max(span, max(t.offset + t.numel for t, *_ in items))
            base = self._fill(dtype, span, items)
            for (t, _a, _n, _i), (shape, stride) in zip(items, shapes):
                self.slots[self._slot(t)] = torch.as_strided(base, shape, stride, t.offset)

    @staticmethod
    def _shape_stride(t: TensorRef, a: Arg) -> tuple[list[int], list[int]]:
        shape = a.shape if a.is_tensor else None
        stride = a.stride if a.is_tensor else None
        if a.is_tensor_list:
            j = [x.key for x in a.tensors()].index(t.key)
            shape, stride = a.shape[j], a.stride[j]
        shape = [int(s) for s in (shape if isinstance(shape, list) else [t.numel])]
        if not isinstance(stride, list) or len(stride) != len(shape):
            stride, acc = [], 1
            for s in reversed(shape):
                stride.insert(0, acc)
                acc *= max(s, 1)
        return shape, [int(s) for s in stride]

    def _fill(self, dtype: torch.dtype, span: int, items: list) -> torch.Tensor:
        if dtype.is_floating_point:
            self.leaves["random_float"] += len(items)
            return (torch.rand(span, generator=self.gen, dtype=torch.float32) * 0.2 - 0.1).to(dtype).to(self.device)
        if dtype == torch.bool:
            self.leaves["bool"] += len(items)
            return (torch.rand(span, generator=self.gen) < 0.5).to(self.device)
        # integral: within the recorded range of the first consumer
        lo = hi = None
        for t, _a, n, i in items:
            r = n.tensor_ranges().get(i)
            if r is not None:
                lo = r[0] if lo is None else min(lo, r[0])
                hi = r[1] if hi is None else max(hi, r[1])
        if lo is None:
            self.leaves["zero_int"] += len(items)
            return torch.zeros(span, dtype=dtype, device=self.device)
        vals = self.rng.integers(lo, hi + 1, size=span, dtype=np.int64)
        if any(self._feeds_offsets(t.key) for t, *_ in items):
            vals.sort()
            vals[0], vals[-1] = lo, hi
            self.leaves["sorted_int"] += len(items)
        else:
            self.leaves["range_int"] += len(items)
        return torch.from_numpy(vals).to(dtype).to(self.device)

    def _pin_indices(self) -> None:
        """Recorded index and offset tensors (--save-indices) replace whatever produced them.

        The slot is fixed ("pinned"): producers still run (their cost counts) but never
        overwrite it, so every consumer of that tensor sees the recorded values.
        """
        self.pinned: dict[int, torch.Tensor] = {}
        for op in self.ops:
            for i, a in enumerate(op.node.inputs):
                data = self._saved.get((op.node.id, i))
                if data is not None and a.is_tensor:
                    self._pin(self._slot(a.tensors()[0]), data)
                    self.leaves["recorded"] += 1

    def _pin(self, slot: int, data: torch.Tensor) -> None:
        self.pinned[slot] = data
        self.slots[slot] = data
        for op in self.ops:
            op.out_slots = [None if s == slot else ([x if x != slot else -1 for x in s] if isinstance(s, list) else s)
                            for s in op.out_slots]

    def _repair(self, op: _Op) -> bool:
        """An operator failed on replayed inputs (typically ids past a table's end, computed from
        drawn data): pin its index and offset arguments to values drawn within the ranges
        recorded at this operator (offsets sorted, end points kept) and try once more."""
        n = op.node
        names = self._argnames(n)
        ranges = n.tensor_ranges()
        pinned = 0
        for i, a in enumerate(n.inputs):
            if i >= len(names) or names[i] not in INDEX_ARGS or not a.is_tensor or i not in ranges:
                continue
            try:
                dtype = _dtype_of(a)
            except _Unsupported:
                continue
            if dtype.is_floating_point or dtype == torch.bool:
                continue
            t = a.tensors()[0]
            lo, hi = ranges[i]
            shape, _ = self._shape_stride(t, a)
            vals = self.rng.integers(lo, hi + 1, size=t.numel, dtype=np.int64)
            if names[i] == "offsets" and vals.size:
                vals.sort()
                vals[0], vals[-1] = lo, hi
            self._pin(self._slot(t), torch.from_numpy(vals).to(dtype).reshape(shape).to(self.device))
            pinned += 1
        if not pinned:
            return False
        try:
            self._call(op)
        except Exception:  # noqa: BLE001  (still failing: the caller lists it)
            return False
        self.leaves["pinned_index"] += pinned
        return True

    def _dry_run(self) -> None:
        """Run once: operators that fail on the rebuilt inputs are listed and their outputs allocated."""
        keep = []
        with torch.no_grad():
            for op in self.ops:
                try:
                    self._call(op)
                    keep.append(op)
                except Exception as e:  # noqa: BLE001  (any operator error: list it, keep going)
                    if self._repair(op):
                        keep.append(op)
                        continue
                    self.not_rebuilt.append({"id": op.node.id, "name": op.node.name,
                                             "reason": f"failed on rebuilt inputs: {str(e).splitlines()[0][:200]}",
                                             "captured_us": op.node.duration_us or 0.0})
                    for o in op.node.outputs:
                        for t in o.tensors():
                            s = self._slot(t)
                            if self.slots[s] is None:
                                shape, stride = self._shape_stride(t, o)
                                try:
                                    self.slots[s] = torch.empty_strided(shape, stride, dtype=_dtype_of(o),
                                                                        device=self.device)
                                except _Unsupported:
                                    pass
        self.ops = keep
        self.not_rebuilt.sort(key=lambda r: r["id"])

    # ------------------------------------------------------------ running
    def _call(self, op: _Op) -> None:
        slots = self.slots
        args = list(op.args)
        kwargs = dict(op.kwargs) if op.kwargs else op.kwargs
        for idx, j, s in op.tensor_pos:
            v = slots[s]
            if j is None:
                if isinstance(idx, str):
                    kwargs[idx] = v
                else:
                    args[idx] = v
            else:
                lst = kwargs[idx] if isinstance(idx, str) else args[idx]
                lst = list(lst)
                lst[j] = v
                if isinstance(idx, str):
                    kwargs[idx] = lst
                else:
                    args[idx] = lst
        res = op.fn(*args, **kwargs)
        outs = op.out_slots
        if not outs:
            return
        if len(outs) == 1:
            res = (res,)
        for s, r in zip(outs, res):
            if s is None:
                continue
            if isinstance(s, list):
                for si, ri in zip(s, r):
                    if si >= 0:
                        slots[si] = ri
            else:
                slots[s] = r

    def run_once(self) -> None:
        call = self._call
        with torch.no_grad():
            for op in self.ops:
                call(op)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time(self, iterations: int = 20, warmup: int = 5) -> list[float]:
        for _ in range(warmup):
            self.run_once()
        out = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            self.run_once()
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    def time_per_op(self, iterations: int = 5) -> dict[int, float]:
        """Microseconds per replayed operator (median over iterations), timed one by one."""
        acc: dict[int, list[float]] = {op.node.id: [] for op in self.ops}
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        with torch.no_grad():
            for _ in range(iterations):
                for op in self.ops:
                    t0 = time.perf_counter()
                    self._call(op)
                    sync()
                    acc[op.node.id].append((time.perf_counter() - t0) * 1e6)
        return {k: statistics.median(v) for k, v in acc.items() if v}

    # ------------------------------------------------------------ report
    def coverage(self) -> float:
        total = sum(n.duration_us or 0.0 for n in self.top)
        done = sum(op.node.duration_us or 0.0 for op in self.ops)
        return done / total if total > 0 else (len(self.ops) / len(self.top))


def replay(path: str | Path, *, rank: int = 0, iterations: int = 20, warmup: int = 5, device: str = "cpu",
           use_indices: bool = True, iteration: int | None = None, per_op: bool = True) -> ReplayResult:
    """Replay one iteration of a capture directory's rank `rank`; compare with the captured time."""

    from recstack.trace.load import load_trace

    p = Path(path)
    g = load_trace(p, rank)
    res_dir = p / f"rank{rank}.et_resources" if p.is_dir() and use_indices else None
    rp = Replayer(g, iteration=iteration, device=device, resources=res_dir)
    times = rp.time(iterations, warmup)
    captured = None
    cap_file = p / "capture.json" if p.is_dir() else None
    if cap_file is not None and cap_file.is_file():
        meta = read_json(cap_file, "capture settings")
        for r in meta.get("ranks", []):
            if int(r.get("rank", -1)) == rank:
                captured = float(r["iteration_ms"])
    it = rp.iteration_node
    rows: list[dict[str, Any]] = []
    if per_op:
        per = rp.time_per_op()
        by_name: dict[str, dict[str, float]] = {}
        for n in rp.top:
            d = by_name.setdefault(n.name, {"count": 0, "captured_us": 0.0, "replayed_us": 0.0, "replayed": 0})
            d["count"] += 1
            d["captured_us"] += n.duration_us or 0.0
            if n.id in per:
                d["replayed_us"] += per[n.id]
                d["replayed"] += 1
        rows = sorted(({"name": k, **v} for k, v in by_name.items()), key=lambda r: -r["captured_us"])
    return ReplayResult(
        captured_ms=captured,
        captured_profiled_ms=(it.duration_us / 1e3) if it is not None and it.duration_us else None,
        replayed_ms=statistics.median(times), replayed_ms_all=times, coverage=rp.coverage(), ops=len(rp.top),
        replayed_ops=len(rp.ops), not_rebuilt=rp.not_rebuilt, per_op=rows, leaves=rp.leaves,
    )
