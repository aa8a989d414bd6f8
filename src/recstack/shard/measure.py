"""Measured cost of a sharding plan (REFERENCE.md section 8).

cost(plan) = max over devices of (forward kernel + forward all-to-all + backward communication +
backward kernel) of that device's FUSED embedding operator. Costs are not additive per table, so
each device's operator is built over all of its shards and timed as one.

Kernel. One table-batched operator per device: FBGEMM's `SplitTableBatchedEmbeddingBagsCodegen`
on the CPU (EXACT_SGD, so backward includes the fused sparse update, as in training) when
fbgemm_gpu imports, else recstack's "fused" EmbeddingBagCollection backend (backward + sparse SGD
step). A shard is a slice of a table: table-wise = the whole table; column-wise = a table of `cols`
columns that sees every index; row-wise = a table of `rows` rows that sees only the indices in
its row range (shifted to start at 0; each bag keeps the indices that fall in the slice, possibly
none); data-parallel = the whole table over this rank's 1/n of the batch (a separate operator,
since its batch differs). Index batches come from `generate_indices(table, batch_size, seed)`,
one per seed (several seeds), cycled through warm-up and repetitions. Precision (`dtype`
"table"): fp32 tables run the fp32 kernel, fp16 / bf16 / int8 tables FBGEMM's fp16 kernel (one
operator per precision on a device, as TorchRec groups them); the fused fallback is fp32 only.
FBGEMM needs dims in multiples of 4: a shard of other width is padded up (the all-to-all still
counts its true width).

Timing. One thread, process CPU time (`--clock cpu`: time this process was descheduled by the
other processes of a shared machine does not count). A repetition runs enough steps (forward,
then backward with a fixed output gradient) to last `min_sample_ms` and records their mean, so
small operators are not timed at the clock's grain. After `warmup` untimed steps, `reps`
repetitions run in `blocks` blocks. On this kind of machine (a shared 2-core VM) even a plain
matmul's CPU time drifts by 10-35% between half-second windows, because co-running work slows
the core; two embedding operators timed side by side, however, keep their ratio within 1-2%.
Hence the statistic (`normalize`, the default): a fixed REFERENCE operator (4 tables x 125k rows
x 32, pooling 16, batch 512) is timed between consecutive blocks; each block median is scaled by
baseline / (mean of the reference times just before and after it), and the cost is the median
over blocks. The baseline is the reference's time when the machine was calibrated (min over
blocks of block medians, kept in the calibration directory with the comm curve), so costs read
as "ms at the calibrated speed" and costs measured at different times compare. Without
normalisation the cost is the minimum over blocks of the block medians (drops blocks that ran
while something else loaded the machine). When all of a call's devices fit in memory together,
their blocks are interleaved (round-robin over devices, also across the plans of one
`measure_plans` call), so every device is sampled over the same stretch of time.

Communication (see `recstack.shard.comm`): each device sends its pooled outputs for the other
devices' samples, batch x (sum of its shards' output columns) x 4 bytes x (D-1)/D, in the
forward all-to-all and receives gradients of the same size in the backward one; row-wise
partial sums are counted the same way (a reduce-scatter moves the same bytes). Data-parallel
tables all-reduce their gradient (ring: twice the all-to-all of rows x dim x 4 x (n-1)/n bytes).

Large tables: a device's shards are allocated at full size up to `max_device_bytes`; above it
every shard's rows are capped at the largest R that fits (never below MIN_ROW_CAP) and its
indices folded modulo R. Lookup cost depends mostly on the rows a batch touches (a few hundred
thousand at most), not on the rows that exist, so this keeps the DRAM-bound access pattern.
Capped shards are listed in the result's notes.

Measured kernel costs are cached by shard content (a hash of the shards' table specs and slices,
row cap, batch size, seeds, backend, precision, repetitions, clock, threads, calibration
baseline, torch / fbgemm versions and the machine) as one JSON file per device operator in a
cache directory, written atomically; the rank a shard sits on does not matter.
"""

from __future__ import annotations

import gc
import hashlib
import json
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from recstack.errors import ConfigError
from recstack.io import read_keyed, write_keyed
from recstack.machine import machine_key
from recstack.shard.comm import CommModel, describe, resolve_comm
from recstack.shard.indices import generate_indices
from recstack.shard.plan import check_plan, device_bytes, even_split, filled, fmt_bytes
from recstack.spec.sharding import DTYPE_BYTES, ShardingPlan, ShardTable, ShardTask

DEFAULT_REPS = 24
DEFAULT_WARMUP = 3
DEFAULT_BLOCKS = 8
DEFAULT_BATCHES = 3
DEFAULT_THREADS = 1
DEFAULT_MIN_SAMPLE_MS = 10.0  # a repetition runs enough steps to last this long
DEFAULT_MAX_DEVICE_BYTES = 2 << 30  # 2 GiB of tables allocated per device at most
MIN_ROW_CAP = 1 << 18
OUTPUT_BYTES = 4  # pooled outputs and their gradients are fp32
CACHE_FORMAT = "recstack-kernel-cost/1"
BACKENDS = ("auto", "fbgemm", "fused")
DTYPES = ("table", "fp32", "fp16")
ProgressFn = Callable[[str, int, int], None]  # (description, steps done, steps in all)


# ------------------------------------------------------------------------------------ shards


@dataclass(frozen=True)
class Shard:
    """A [row_offset:row_offset+rows, col_offset:col_offset+cols] slice of `table` on one rank.
    Data-parallel shards hold the whole table and serve part `part` of `parts` of the batch."""

    table: ShardTable
    sharding_type: str = "table_wise"
    row_offset: int = 0
    rows: int = 0
    col_offset: int = 0
    cols: int = 0
    part: int = 0
    parts: int = 1

    @classmethod
    def whole(cls, table: ShardTable) -> Shard:
        return cls(table, "table_wise", 0, table.rows, 0, table.dim)

    @property
    def bytes(self) -> int:
        return self.rows * self.cols * DTYPE_BYTES[self.table.dtype]

    @property
    def row_sliced(self) -> bool:
        return self.row_offset > 0 or self.rows < self.table.rows

    @property
    def label(self) -> str:
        t = self.table.name
        if self.parts > 1:
            return f"{t}[dp {self.part + 1}/{self.parts}]"
        parts = []
        if self.row_sliced:
            parts.append(f"rows {self.row_offset}:{self.row_offset + self.rows}")
        if self.col_offset > 0 or self.cols < self.table.dim:
            parts.append(f"cols {self.col_offset}:{self.col_offset + self.cols}")
        return f"{t}[{', '.join(parts)}]" if parts else t

    def key(self) -> dict[str, Any]:
        return {"table": self.table.model_dump(mode="json"), "type": self.sharding_type,
                "rows": [self.row_offset, self.rows], "cols": [self.col_offset, self.cols],
                "part": [self.part, self.parts]}


def device_shards(task: ShardTask, plan: ShardingPlan) -> list[list[Shard]]:
    """Each device's shards (in plan order). The plan must pass `check_plan` against the task (same
    tables, shards tiling each table, memory within the cap): ConfigError naming the table or device."""
    check_plan(plan, task, f"plan for task {task.id}")
    tables = {t.name: t for t in task.tables}
    out: list[list[Shard]] = [[] for _ in range(task.devices)]
    for name, ts in plan.tables.items():
        t = tables[name]
        ts = filled(ts, t)
        kind, n = ts.sharding_type, len(ts.ranks)
        if kind == "data_parallel":
            for k, r in enumerate(ts.ranks):
                out[r].append(Shard(t, kind, 0, t.rows, 0, t.dim, k, n))
            continue
        for r, (nr, nc), (ro, co) in zip(ts.ranks, ts.shard_sizes or [], ts.shard_offsets or []):
            if nr > 0 and nc > 0:
                out[r].append(Shard(t, kind, ro, nr, co, nc))
    return out


# ------------------------------------------------------------------------------ index batches


_INDEX_MEMO: OrderedDict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_INDEX_MEMO_BYTES = 256 << 20  # generated batches kept for the life of the process (planners re-measure)


class _IndexCache:
    """generate_indices memoised by (table spec, batch, seed): in a process-wide LRU of at most
    _INDEX_MEMO_BYTES (generation costs ~50 ms per table and batch; planners measure the same
    tables again and again), and for the life of one measurement (row-wise shards share it)."""

    def __init__(self) -> None:
        self._d: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, table: ShardTable, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = (table.model_dump_json(), batch, seed)
        if k in self._d:
            return self._d[k]
        if k in _INDEX_MEMO:
            _INDEX_MEMO.move_to_end(k)
            v = _INDEX_MEMO[k]
        else:
            v = generate_indices(table, batch, seed)
            _INDEX_MEMO[k] = v
            used = sum(a.numel() * 8 + b.numel() * 8 for a, b in _INDEX_MEMO.values())
            while used > _INDEX_MEMO_BYTES and len(_INDEX_MEMO) > 1:
                _, (a, b) = _INDEX_MEMO.popitem(last=False)
                used -= a.numel() * 8 + b.numel() * 8
        self._d[k] = v
        return v


def shard_indices(shard: Shard, batch_size: int, seed: int, row_cap: int | None = None,
                  cache: _IndexCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, lengths) of one shard's bags for the table's batch `seed`.

    Row-wise: only the indices inside the shard's rows, shifted to start at 0; every bag stays
    (one per sample), holding the indices of that bag that fall in the slice. Data-parallel: the
    bags of this rank's part of the batch. With `row_cap` indices are folded modulo the cap."""
    idx, off = (cache or _IndexCache()).get(shard.table, batch_size, seed)
    lengths = off[1:] - off[:-1]
    if shard.parts > 1:
        lo, hi = shard.part * batch_size // shard.parts, (shard.part + 1) * batch_size // shard.parts
        idx, lengths = idx[int(off[lo]) : int(off[hi])], lengths[lo:hi]
    if shard.row_sliced:
        keep = (idx >= shard.row_offset) & (idx < shard.row_offset + shard.rows)
        bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        lengths = torch.bincount(bag[keep], minlength=lengths.numel())
        idx = idx[keep] - shard.row_offset
    if row_cap is not None and shard.rows > row_cap:
        idx = idx % row_cap
    return idx, lengths


def row_cap_for(shards: Sequence[Shard], max_bytes: int, elem_bytes: Callable[[Shard], int]) -> int | None:
    """The largest row count R with sum(min(rows, R) x cols x bytes) <= max_bytes (never below
    MIN_ROW_CAP), or None when the shards fit uncapped."""
    def total(cap: int) -> int:
        return sum(min(s.rows, cap) * s.cols * elem_bytes(s) for s in shards)

    top = max((s.rows for s in shards), default=0)
    if total(top) <= max_bytes:
        return None
    lo, hi = MIN_ROW_CAP, top
    if total(lo) > max_bytes:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= max_bytes else (lo, mid)
    return lo


# ------------------------------------------------------------------------------- operators


def fbgemm_version() -> str | None:
    from recstack.models import available_backends

    if "fbgemm" not in available_backends():
        return None
    import fbgemm_gpu

    return str(getattr(fbgemm_gpu, "__version__", "unknown"))


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    have = fbgemm_version() is not None
    if backend == "auto":
        return "fbgemm" if have else "fused"
    if backend == "fbgemm" and not have:
        raise ConfigError("--backend fbgemm: fbgemm_gpu does not import here (pip install fbgemm-gpu-cpu); "
                          "use --backend fused")
    return backend


def _precision(shard: Shard, dtype: str, backend: str) -> str:
    if backend == "fused":
        return "fp32"  # recstack's embedding backends train in fp32
    if dtype != "table":
        return dtype
    return "fp32" if shard.table.dtype == "fp32" else "fp16"  # fp16/bf16/int8 storage: the fp16 CPU kernel


class _Group:
    """One operator: shards with the same precision and local batch, and their prepared batches."""

    def __init__(self, shards: list[Shard], backend: str, precision: str, batch: int, seeds: Sequence[int],
                 row_cap: int | None, icache: _IndexCache, grad_seed: int) -> None:
        self.shards, self.backend, self.precision = shards, backend, precision
        rows = [min(s.rows, row_cap) if row_cap is not None else s.rows for s in shards]
        self.cols = [s.cols for s in shards]
        self.padded = [-(-c // 4) * 4 for c in self.cols] if backend == "fbgemm" else list(self.cols)
        self.batches = []
        for seed in seeds:
            parts = [shard_indices(s, batch, seed, row_cap, icache) for s in shards]
            lengths = torch.cat([p[1] for p in parts])
            self.local_batch = parts[0][1].numel()
            offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long)
            torch.cumsum(lengths, 0, out=offsets[1:])
            self.batches.append((torch.cat([p[0] for p in parts]).contiguous(), offsets))
        gen = torch.Generator().manual_seed(grad_seed)
        self.grad = torch.randn(self.local_batch, sum(self.padded), generator=gen) * 1e-3
        if backend == "fbgemm":
            self._build_fbgemm(rows)
        else:
            self._build_fused(rows)

    def _build_fbgemm(self, rows: list[int]) -> None:
        import warnings

        with warnings.catch_warnings():  # fbgemm_gpu warns about optional SSD modules it cannot import
            warnings.simplefilter("ignore", DeprecationWarning)
            from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
            from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
            from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
                ComputeDevice,
                SplitTableBatchedEmbeddingBagsCodegen,
            )

        prec = SparseType.FP16 if self.precision == "fp16" else SparseType.FP32
        self.op = SplitTableBatchedEmbeddingBagsCodegen(
            [(r, d, EmbeddingLocation.HOST, ComputeDevice.CPU) for r, d in zip(rows, self.padded)],
            optimizer=EmbOptimType.EXACT_SGD, learning_rate=1e-9, pooling_mode=PoolingMode.SUM,
            weights_precision=prec, device=torch.device("cpu"),
        )
        with torch.no_grad():
            self.op.weights_host.fill_(0.01)  # touch every page now, not in the timed steps

    def _build_fused(self, rows: list[int]) -> None:
        from recstack.models import EmbeddingBagCollection
        from recstack.spec import TableSpec

        specs = [TableSpec(name=f"{s.table.name}#{i}", rows=r, dim=s.cols) for i, (s, r) in enumerate(zip(self.shards, rows))]
        self.op = EmbeddingBagCollection(specs, backend="fused")
        self.grads = list(torch.split(self.grad, self.cols, dim=1))

    def forward(self, k: int) -> Any:
        idx, off = self.batches[k % len(self.batches)]
        if self.backend == "fbgemm":
            return self.op(idx, off)
        from recstack.data.batch import SparseBatch

        return self.op(SparseBatch(idx, off, len(self.shards), self.local_batch))

    def backward(self, out: Any) -> None:
        if self.backend == "fbgemm":
            out.backward(self.grad)  # includes FBGEMM's fused EXACT_SGD row update
            return
        torch.autograd.backward(out, self.grads)
        with torch.no_grad():
            for p in self.op.sparse_parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-1e-9)  # the sparse SGD step, as a trainer would take it
                    p.grad = None


@dataclass
class KernelCost:
    fwd_ms: float
    bwd_ms: float
    fwd_samples: list[float] = field(default_factory=list)
    bwd_samples: list[float] = field(default_factory=list)
    cached: bool = False
    wall_samples: list[float] = field(default_factory=list)
    steps_per_rep: int = 1
    raw_fwd_ms: float | None = None  # min over blocks of block medians, not normalised
    raw_bwd_ms: float | None = None
    slowdown: float | None = None  # reference ms during the measurement / baseline (1.2 = machine 20% slower)
    ref_samples: list[float] = field(default_factory=list)


def min_of_medians(samples: Sequence[float], blocks: int) -> float:
    """Median within each of `blocks` consecutive blocks, minimum over blocks."""
    if not samples:
        return 0.0
    blocks = max(1, min(blocks, len(samples)))
    size = len(samples) / blocks
    meds = [statistics.median(samples[round(i * size) : round((i + 1) * size)]) for i in range(blocks)]
    return min(meds)


class _DeviceRun:
    """A device's operators and its timing state (warm-up done once; blocks run on demand)."""

    def __init__(self, groups: list[_Group], clock: str) -> None:
        self.groups, self.clock = groups, clock
        self.step = 0
        self.per_rep = 1
        self.fwd: list[float] = []
        self.bwd: list[float] = []
        self.wall: list[float] = []  # wall-clock ms of each timed step (forward + backward), for reference
        self.bounds: list[tuple[int, int]] = []  # [start, end) of each timed block in fwd / bwd
        self.speed: list[float] = []  # reference-operator ms around each block (normalised runs)

    def calibrate(self, min_sample_ms: float, max_steps: int = 64) -> None:
        """Steps per repetition: enough that one repetition lasts at least `min_sample_ms`
        (short operators are timed over several steps, long ones one step at a time)."""
        t0 = time.perf_counter()
        self._steps(1)
        ms = (time.perf_counter() - t0) * 1e3
        self.per_rep = int(min(max_steps, max(1, -(-min_sample_ms // max(ms, 1e-3)))))

    def _steps(self, k: int) -> tuple[float, float, float]:
        clock = time.perf_counter if self.clock == "wall" else time.process_time
        fwd = bwd = 0.0
        w0 = time.perf_counter()
        for _ in range(k):
            i = self.step
            self.step += 1
            t0 = clock()
            outs = [g.forward(i) for g in self.groups]
            t1 = clock()
            for g, o in zip(self.groups, outs):
                g.backward(o)
            t2 = clock()
            fwd += t1 - t0
            bwd += t2 - t1
        return fwd * 1e3 / k, bwd * 1e3 / k, (time.perf_counter() - w0) * 1e3 / k

    def run(self, n: int, record: bool) -> None:
        """`n` repetitions of `per_rep` steps each (a repetition's time is its mean step time);
        recorded repetitions form one block."""
        start = len(self.fwd)
        for _ in range(n):
            f, b, w = self._steps(self.per_rep)
            if record:
                self.fwd.append(f)
                self.bwd.append(b)
                self.wall.append(w)
        if record:
            self.bounds.append((start, len(self.fwd)))


@dataclass(frozen=True)
class MeasureSettings:
    backend: str = "auto"
    reps: int = DEFAULT_REPS
    warmup: int = DEFAULT_WARMUP
    blocks: int = DEFAULT_BLOCKS
    seeds: tuple[int, ...] = tuple(range(DEFAULT_BATCHES))
    threads: int = DEFAULT_THREADS
    dtype: str = "table"
    max_device_bytes: int = DEFAULT_MAX_DEVICE_BYTES
    clock: str = "cpu"
    min_sample_ms: float = DEFAULT_MIN_SAMPLE_MS
    normalize: bool = True

    def check(self) -> MeasureSettings:
        for name, v, lo in (("reps", self.reps, 1), ("warmup", self.warmup, 0), ("blocks", self.blocks, 1),
                            ("threads", self.threads, 1), ("batches", len(self.seeds), 1)):
            if v < lo:
                raise ConfigError(f"--{name} must be >= {lo}, got {v}")
        if self.blocks > self.reps:
            raise ConfigError(f"--blocks ({self.blocks}) must not exceed --reps ({self.reps})")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_device_bytes <= 0:
            raise ConfigError("--max-device-gb must be > 0")
        if self.clock not in ("cpu", "wall"):
            raise ConfigError(f"--clock must be cpu or wall, got {self.clock!r}")
        if self.clock == "cpu" and self.threads != 1:
            raise ConfigError("--clock cpu times one thread's CPU time; with --threads > 1 use --clock wall")
        if self.min_sample_ms < 0:
            raise ConfigError(f"min_sample_ms must be >= 0, got {self.min_sample_ms}")
        return self


def _plan_groups(shards: Sequence[Shard], backend: str, dtype: str) -> dict[tuple[str, int, int], list[Shard]]:
    groups: dict[tuple[str, int, int], list[Shard]] = {}
    for s in sorted(shards, key=lambda s: (s.parts, s.table.name, s.row_offset, s.col_offset)):
        groups.setdefault((_precision(s, dtype, backend), s.parts, s.part), []).append(s)
    return groups


def _elem_bytes(backend: str, dtype: str) -> Callable[[Shard], int]:
    return lambda s: 2 if _precision(s, dtype, backend) == "fp16" else 4


def kernel_key(shards: Sequence[Shard], batch: int, st: MeasureSettings, backend: str,
               baseline: float | None = None) -> dict[str, Any]:
    """What a device operator's measured cost depends on (its cache key, before hashing)."""
    cap = row_cap_for(shards, st.max_device_bytes, _elem_bytes(backend, st.dtype))
    ordered = [s for g in _plan_groups(shards, backend, st.dtype).values() for s in g]
    return {"format": CACHE_FORMAT, "shards": [s.key() for s in ordered], "row_cap": cap, "batch": batch,
            "seeds": list(st.seeds), "backend": backend, "dtype": st.dtype,
            "precisions": sorted({_precision(s, st.dtype, backend) for s in shards}),
            "reps": st.reps, "warmup": st.warmup, "blocks": st.blocks, "threads": st.threads, "clock": st.clock,
            "min_sample_ms": st.min_sample_ms, "normalize": st.normalize,
            "baseline_ms": round(baseline, 6) if st.normalize and baseline is not None else None,
            "torch": torch.__version__, "fbgemm": fbgemm_version() if backend == "fbgemm" else None,
            "machine": machine_key()}


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _cache_file(cache: Path, key: dict[str, Any]) -> Path:
    return cache / f"kernel-{key_hash(key)[:24]}.json"


def _cache_read(cache: Path | None, key: dict[str, Any]) -> KernelCost | None:
    d = read_keyed(_cache_file(cache, key), key) if cache is not None else None
    if d is None:
        return None
    names = {f.name for f in fields(KernelCost)}
    try:
        kc = KernelCost(**{k: v for k, v in d["cost"].items() if k in names})
    except (KeyError, TypeError, AttributeError):
        return None
    kc.cached = True
    return kc


def _cache_write(cache: Path | None, key: dict[str, Any], kc: KernelCost) -> None:
    if cache is None:
        return
    cost = asdict(kc)
    cost.pop("cached")
    try:
        write_keyed(_cache_file(cache, key), key, cost=cost)
    except OSError as e:
        raise ConfigError(f"cost cache {cache}: cannot write ({e.strerror}); use another --cache or --no-cache") from None


def _build_run(shards: Sequence[Shard], batch: int, st: MeasureSettings, backend: str,
               icache: _IndexCache) -> _DeviceRun:
    cap = row_cap_for(shards, st.max_device_bytes, _elem_bytes(backend, st.dtype))
    groups = [_Group(g, backend, prec, batch, st.seeds, cap, icache, grad_seed=i)
              for i, ((prec, _, _), g) in enumerate(_plan_groups(shards, backend, st.dtype).items())]
    return _DeviceRun(groups, st.clock)


# The reference operator: timed around every block, it tells how fast the machine runs right now.
REFERENCE_TABLES = tuple(ShardTable(name=f"reference{i}", rows=125_000, dim=32, pooling=16, zipf=0.9) for i in range(4))
REFERENCE_BATCH = 512
REFERENCE_SAMPLE_MS = 4.0
REFERENCE_REPS = 3  # repetitions per reference sample (one sample between consecutive blocks)
REFERENCE_FORMAT = "recstack-reference-speed/1"
_reference_runs: dict[tuple[str, int, str], _DeviceRun] = {}
_baselines: dict[str, float] = {}


def _reference_run(st: MeasureSettings, backend: str) -> _DeviceRun:
    """The reference operator (built once per process, about 64 MB), warmed up."""
    k = (backend, st.threads, st.clock)
    if k not in _reference_runs:
        ref_st = MeasureSettings(backend, 1, 0, 1, (0,), st.threads, "fp32", DEFAULT_MAX_DEVICE_BYTES, st.clock,
                                 REFERENCE_SAMPLE_MS, False)
        r = _build_run([Shard.whole(t) for t in REFERENCE_TABLES], REFERENCE_BATCH, ref_st, backend, _IndexCache())
        r.run(3, record=False)
        r.calibrate(REFERENCE_SAMPLE_MS, max_steps=16)
        _reference_runs[k] = r
    return _reference_runs[k]


def _ref_sample(ref: _DeviceRun, n: int = REFERENCE_REPS) -> float:
    """The reference operator's forward + backward ms now: one untimed step (its caches were the
    device's), then the median of `n` repetitions."""
    ref._steps(1)
    return statistics.median(sum(ref._steps(ref.per_rep)[:2]) for _ in range(n))


def reference_key(st: MeasureSettings, backend: str) -> dict[str, Any]:
    return {"format": REFERENCE_FORMAT, "tables": [t.model_dump(mode="json") for t in REFERENCE_TABLES],
            "batch": REFERENCE_BATCH, "backend": backend, "threads": st.threads, "clock": st.clock,
            "torch": torch.__version__, "fbgemm": fbgemm_version() if backend == "fbgemm" else None,
            "machine": machine_key()}


def reference_baseline(st: MeasureSettings, backend: str, calib_dir: Path | None = None,
                       refresh: bool = False) -> float:
    """The reference operator's forward + backward ms when this machine was calibrated: read from
    `calib_dir`/reference-speed.json when it holds one for this machine and software, else measured
    (under a second: min over 12 blocks of the block median of 60 samples, i.e. the machine's
    fast state, which is what repeats best on a shared machine) and written there.
    Without a directory the calibration lasts for the process."""
    key = reference_key(st, backend)
    memo = json.dumps(key, sort_keys=True) + str(calib_dir)
    if not refresh and memo in _baselines:
        return _baselines[memo]
    f = calib_dir / "reference-speed.json" if calib_dir is not None else None
    d = read_keyed(f, key) if f is not None and not refresh else None
    if d is not None and isinstance(d.get("baseline_ms"), (int, float)) and d["baseline_ms"] > 0:
        _baselines[memo] = float(d["baseline_ms"])
        return _baselines[memo]
    old = torch.get_num_threads()
    torch.set_num_threads(st.threads)
    try:
        ref = _reference_run(st, backend)
        samples = [_ref_sample(ref, 1) for _ in range(60)]
    finally:
        torch.set_num_threads(old)
    base = min_of_medians(samples, 12)
    if f is not None:
        write_keyed(f, key, baseline_ms=base, samples=[round(x, 4) for x in samples])
    _baselines[memo] = base
    return base


def _measure_devices(devs: list[tuple[Sequence[Shard], int]], st: MeasureSettings, backend: str,
                     interleave: bool, progress: ProgressFn | None, baseline: float | None = None) -> list[KernelCost]:
    """Time each device's operator in `st.blocks` blocks: interleaved block by block over devices
    when `interleave` (all built at once), else one device after another. Each run does `warmup`
    untimed steps first (and one more before each later block when interleaved: the caches were
    the other devices'). With `baseline` (st.normalize) the reference operator is timed between
    consecutive blocks, so every block has the machine's speed just before and just after it;
    then every block (and every reference sample) starts with one untimed step."""
    icache = _IndexCache()
    out: list[KernelCost] = []
    sizes = even_split(st.reps, st.blocks)
    # one untimed step before every block whose caches something else used since (another
    # device, the reference), so that interleaved and one-after-another runs time the same thing
    rewarm = 1 if (interleave and len(devs) > 1) or baseline is not None else 0
    total = len(devs) * (st.warmup + st.reps + rewarm * len(sizes))
    done = 0

    def tick(desc: str, n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(desc, done, total)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(st.threads)
    gc_was = gc.isenabled()
    ref = _reference_run(st, backend) if baseline is not None else None
    prev = [0.0]

    def block(r: _DeviceRun, n: int) -> None:
        if rewarm:
            r.run(1, record=False)
        r.run(n, record=True)
        if ref is not None:
            cur = _ref_sample(ref)
            r.speed.append((prev[0] + cur) / 2)
            prev[0] = cur

    # interleaved: one group of all devices, built at once; else one device per group in turn
    groups = [list(range(len(devs)))] if interleave else [[i] for i in range(len(devs))]
    try:
        for group in groups:
            runs = [_build_run(*devs[i], st, backend, icache) for i in group]
            gc.disable()
            for i, r in zip(group, runs):
                r.run(st.warmup, record=False)
                r.calibrate(st.min_sample_ms)
                tick(f"device {i + 1}/{len(devs)}, warm-up", st.warmup)
            if ref is not None:
                prev[0] = _ref_sample(ref)
            for b, n in enumerate(sizes):
                for i, r in zip(group, runs):
                    block(r, n)
                    tick(f"device {i + 1}/{len(devs)}, block {b + 1}/{len(sizes)}", n + rewarm)
            if gc_was:
                gc.enable()
            out += [_finish(r, baseline) for r in runs]
            del runs, r  # free this group's tables before building the next
    finally:
        if gc_was:
            gc.enable()
        torch.set_num_threads(old_threads)
    return out


def _finish(r: _DeviceRun, baseline: float | None) -> KernelCost:
    """Raw cost: min over blocks of the block median. Normalised (with `baseline`): each block's
    median scaled by baseline / (reference ms around the block), then the median over blocks."""
    fmed = [statistics.median(r.fwd[a:b]) for a, b in r.bounds]
    bmed = [statistics.median(r.bwd[a:b]) for a, b in r.bounds]
    raw_f, raw_b = min(fmed), min(bmed)
    speed = None
    f, b = raw_f, raw_b
    if baseline is not None and r.speed:
        f = statistics.median(m * baseline / s for m, s in zip(fmed, r.speed))
        b = statistics.median(m * baseline / s for m, s in zip(bmed, r.speed))
        speed = statistics.median(r.speed) / baseline
    return KernelCost(f, b, [round(x, 4) for x in r.fwd], [round(x, 4) for x in r.bwd],
                      wall_samples=[round(x, 4) for x in r.wall], steps_per_rep=r.per_rep,
                      raw_fwd_ms=raw_f, raw_bwd_ms=raw_b, slowdown=speed,
                      ref_samples=[round(x, 4) for x in r.speed])


def measure_shard(
    tables: Sequence[ShardTable | Shard], batch: int, *, backend: str = "auto", reps: int = DEFAULT_REPS,
    warmup: int = DEFAULT_WARMUP, blocks: int = DEFAULT_BLOCKS, seeds: Sequence[int] = tuple(range(DEFAULT_BATCHES)),
    threads: int = DEFAULT_THREADS, dtype: str = "table", max_bytes: int = DEFAULT_MAX_DEVICE_BYTES,
    cache: str | Path | None = None, clock: str = "cpu", min_sample_ms: float = DEFAULT_MIN_SAMPLE_MS,
    normalize: bool = True, calibration: str | Path | None = None,
) -> tuple[float, float]:
    """(forward ms, backward ms) of ONE fused operator over `tables` (whole tables, or `Shard` slices)
    at batch size `batch`, timed as `measure_plans` times a device (same statistic, same cache)."""
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    if not tables:
        return 0.0, 0.0
    shards = [t if isinstance(t, Shard) else Shard.whole(t) for t in tables]
    st = MeasureSettings(resolve_backend(backend), reps, warmup, blocks, tuple(seeds), threads, dtype, max_bytes,
                         clock, min_sample_ms, normalize).check()
    be = st.backend
    cdir = Path(cache) if cache is not None else None
    caldir = Path(calibration) if calibration is not None else cdir
    base = reference_baseline(st, be, caldir) if st.normalize else None
    key = kernel_key(shards, batch, st, be, base)
    hit = _cache_read(cdir, key)
    if hit is not None:
        return hit.fwd_ms, hit.bwd_ms
    kc = _measure_devices([(shards, batch)], st, be, interleave=False, progress=None, baseline=base)[0]
    _cache_write(cdir, key, kc)
    return kc.fwd_ms, kc.bwd_ms


# ------------------------------------------------------------------------------- plan cost


@dataclass
class DeviceCost:
    rank: int
    shards: list[str]
    fwd_ms: float
    bwd_ms: float
    comm_fwd_ms: float
    comm_bwd_ms: float
    mem_bytes: int
    mem_cap: int
    send_bytes: float  # bytes this device sends in the forward all-to-all (and receives back in backward)
    out_cols: int
    cached: bool = False
    row_cap: int | None = None
    steps_per_rep: int = 1
    raw_fwd_ms: float | None = None  # without the speed normalisation (min over blocks of block medians)
    raw_bwd_ms: float | None = None
    slowdown: float | None = None  # how much slower than calibrated the machine ran while measuring

    @property
    def comm_ms(self) -> float:
        return self.comm_fwd_ms + self.comm_bwd_ms

    @property
    def total_ms(self) -> float:
        return self.fwd_ms + self.comm_fwd_ms + self.comm_bwd_ms + self.bwd_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(comm_ms=self.comm_ms, total_ms=self.total_ms, mem_fraction=self.mem_bytes / self.mem_cap)
        return d


@dataclass
class PlanCost:
    task: int
    devices: list[DeviceCost]
    comm: dict[str, Any]
    method: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def cost_ms(self) -> float:
        return max((d.total_ms for d in self.devices), default=0.0)

    @property
    def bottleneck(self) -> int:
        return max(range(len(self.devices)), key=lambda i: self.devices[i].total_ms) if self.devices else -1

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "cost_ms": self.cost_ms, "bottleneck_rank": self.bottleneck,
                "devices": [d.to_dict() for d in self.devices], "comm": self.comm, "method": self.method,
                "notes": self.notes}


def _statistic(st: MeasureSettings) -> str:
    rep = f"a repetition = mean of enough steps to last >= {st.min_sample_ms:g} ms of {st.clock} time"
    if st.normalize:
        return (f"{st.reps} repetitions in {st.blocks} blocks; each block median scaled by baseline / reference "
                f"operator ms timed just before and after the block; median over blocks ({rep})")
    return f"min over {st.blocks} blocks of the block median of {st.reps} repetitions ({rep})"


def default_cache_dir(tasks_file: str | Path) -> Path:
    """The cost cache next to a tasks file (TASKS.costcache/): one per tasks file, shared by
    `shard measure` and `shard bench`, so their normalised costs compare (same baseline)."""
    p = Path(tasks_file)
    return p.with_name(p.name + ".costcache")


def measure_plan(task: ShardTask, plan: ShardingPlan, **kwargs: Any) -> PlanCost:
    """Measured cost of `plan` on `task`: per device forward / backward kernel ms of its fused
    operator, all-to-all ms (forward + backward) from `comm`, total, memory; cost_ms = max.
    Keyword arguments as `measure_plans` (backend="auto", reps, warmup, blocks, batches, seed,
    cache=None, calibration, comm="auto", topology, normalize=True, max_device_bytes, ...)."""
    return measure_plans([(task, plan)], **kwargs)[0]


def measure_plans(
    items: Sequence[tuple[ShardTask, ShardingPlan]], *, backend: str = "auto", reps: int = DEFAULT_REPS,
    warmup: int = DEFAULT_WARMUP, blocks: int = DEFAULT_BLOCKS, batches: int = DEFAULT_BATCHES, seed: int = 0,
    threads: int = DEFAULT_THREADS, dtype: str = "table", max_device_bytes: int = DEFAULT_MAX_DEVICE_BYTES,
    cache: str | Path | None = None, comm: str | CommModel = "auto", topology: Any = "cpu-2core",
    clock: str = "cpu",
    min_sample_ms: float = DEFAULT_MIN_SAMPLE_MS, normalize: bool = True, calibration: str | Path | None = None,
    recalibrate: bool = False, progress: ProgressFn | None = None,
) -> list[PlanCost]:
    """Measured costs of several (task, plan) pairs, their uncached device operators timed together:
    interleaved block by block when they fit in `max_device_bytes`
    at once, so plans compared with each other are measured under the same machine conditions.

    `cache`: directory of measured kernel costs; None measures afresh (and every device of every
    item is measured, even when two are identical). `calibration`: directory of the machine
    calibration (the comm curve and the reference speed; default `cache`; None keeps them for the
    process); `recalibrate` measures both again.
    `normalize`: scale each block by the machine's speed measured around it (see the module doc).
    `comm`: "auto" (measured gloo curve, modelled from `topology` when that fails), "measured",
    "model", or any CommModel. Index batches use seeds seed .. seed + batches - 1.
    Raises ConfigError for a plan that does not fit its task (names the table or device)."""
    if batches < 1:
        raise ConfigError(f"--batches must be >= 1, got {batches}")
    prepared = [(task, plan, device_shards(task, plan), device_bytes(plan, task)) for task, plan in items]
    be = resolve_backend(backend)
    st = MeasureSettings(be, reps, warmup, blocks, tuple(range(seed, seed + batches)), threads, dtype,
                         max_device_bytes, clock, min_sample_ms, normalize).check()
    cdir = Path(cache) if cache is not None else None
    caldir = Path(calibration) if calibration is not None else cdir
    eb = _elem_bytes(be, st.dtype)

    comms: dict[int, tuple[CommModel, str]] = {}
    for task, *_ in prepared:
        if task.devices not in comms:
            if progress is not None and isinstance(comm, str) and comm != "model":
                progress("communication curve", 0, 0)
            comms[task.devices] = resolve_comm(comm, world=task.devices, cache_dir=caldir, topology=topology,
                                               refresh=recalibrate and not comms)
    if progress is not None and st.normalize:
        progress("reference speed", 0, 0)
    base = reference_baseline(st, be, caldir, refresh=recalibrate) if st.normalize else None

    # every device operator of every item: cached, empty, or to measure
    costs: dict[tuple[int, int], KernelCost] = {}
    keys: dict[tuple[int, int], dict[str, Any]] = {}
    todo: list[tuple[int, int]] = []
    for i, (task, _, shards, _) in enumerate(prepared):
        for r, dev in enumerate(shards):
            if not dev:
                costs[i, r] = KernelCost(0.0, 0.0)
                continue
            keys[i, r] = kernel_key(dev, task.batch_size, st, be, base)
            hit = _cache_read(cdir, keys[i, r])
            if hit is not None:
                costs[i, r] = hit
            else:
                todo.append((i, r))

    def measured_bytes(dev: Sequence[Shard]) -> int:
        cap = row_cap_for(dev, st.max_device_bytes, eb)
        return sum((min(s.rows, cap) if cap else s.rows) * s.cols * eb(s) for s in dev)

    interleave = bool(todo) and sum(measured_bytes(prepared[i][2][r]) for i, r in todo) <= st.max_device_bytes
    if todo:
        fresh = _measure_devices([(prepared[i][2][r], prepared[i][0].batch_size) for i, r in todo], st, be,
                                 interleave, progress, baseline=base)
        for ir, kc in zip(todo, fresh):
            costs[ir] = kc
            _cache_write(cdir, keys[ir], kc)

    out = []
    for i, (task, plan, shards, mem) in enumerate(prepared):
        world = task.devices
        cm, comm_note = comms[world]
        notes = [comm_note] if comm_note else []
        if plan.task is not None and plan.task != task.id:
            notes.append(f"the plan was made for task {plan.task}; measured against task {task.id}")
        devices = []
        for r, dev in enumerate(shards):
            kc = costs[i, r]
            cap = row_cap_for(dev, st.max_device_bytes, eb) if dev else None
            if cap is not None:
                capped = [s.label for s in dev if s.rows > cap]
                notes.append(f"device {r}: its {fmt_bytes(mem[r])} of tables exceed the {fmt_bytes(st.max_device_bytes)} "
                             f"measured per device, so rows were capped at {cap} for {', '.join(capped)} "
                             f"(indices folded modulo the cap; lookup cost depends mostly on the rows accessed)")
            pooled = [s for s in dev if s.parts == 1]
            out_cols = sum(s.cols for s in pooled)
            send = task.batch_size * out_cols * OUTPUT_BYTES * (world - 1) / world
            a2a = cm.all_to_all_ms(send, world)
            allreduce = sum(2 * cm.all_to_all_ms(s.rows * s.cols * OUTPUT_BYTES * (s.parts - 1) / s.parts, s.parts)
                            for s in dev if s.parts > 1)
            devices.append(DeviceCost(rank=r, shards=[s.label for s in dev], fwd_ms=kc.fwd_ms, bwd_ms=kc.bwd_ms,
                                      comm_fwd_ms=a2a, comm_bwd_ms=a2a + allreduce, mem_bytes=mem[r],
                                      mem_cap=task.mem_bytes, send_bytes=send, out_cols=out_cols,
                                      cached=kc.cached, row_cap=cap, steps_per_rep=kc.steps_per_rep,
                                      raw_fwd_ms=kc.raw_fwd_ms, raw_bwd_ms=kc.raw_bwd_ms, slowdown=kc.slowdown))
        measured_here = sum(1 for j, _ in todo if j == i)
        method = {
            "backend": be,
            "operator": ("FBGEMM SplitTableBatchedEmbeddingBagsCodegen (CPU, EXACT_SGD in backward)" if be == "fbgemm"
                         else "recstack fused EmbeddingBagCollection (backward + sparse SGD step)"),
            "dtype": st.dtype, "reps": st.reps, "warmup": st.warmup, "blocks": st.blocks,
            "statistic": _statistic(st),
            "reference": ({"tables": len(REFERENCE_TABLES), "rows": REFERENCE_TABLES[0].rows,
                           "dim": REFERENCE_TABLES[0].dim, "pooling": REFERENCE_TABLES[0].pooling,
                           "batch": REFERENCE_BATCH, "baseline_ms": base,
                           "calibration": str(caldir / "reference-speed.json") if caldir is not None else None}
                          if st.normalize else None),
            "clock": st.clock, "seeds": list(st.seeds), "batch_size": task.batch_size, "threads": st.threads,
            "interleaved": interleave and measured_here > 0, "max_device_bytes": st.max_device_bytes,
            "torch": torch.__version__, "fbgemm": fbgemm_version() if be == "fbgemm" else None,
            "machine": machine_key(), "cache": str(cdir) if cdir is not None else None,
            "measured_devices": measured_here, "cached_devices": sum(1 for d in devices if d.cached),
        }
        out.append(PlanCost(task=task.id, devices=devices, comm=describe(cm), method=method, notes=notes))
    return out


__all__ = ["DeviceCost", "KernelCost", "PlanCost", "Shard", "default_cache_dir", "device_shards", "measure_plan", "measure_plans",
           "measure_shard", "min_of_medians", "reference_baseline", "row_cap_for",
           "shard_indices"]
