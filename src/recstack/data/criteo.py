"""Criteo-format TSV: a fast streaming preprocessor into the binary store, and the inverse formatter.

Criteo TSV (REFERENCE.md section 1): one sample per line, tab separated: label, 13 integer
fields, 26 categorical fields as 8-hex-digit hashes; any field may be empty. Preprocessing
follows the DLRM reference: empty -> 0, negative integers -> 0, dense x -> log(x+1) (float32);
categorical hex -> unsigned 32-bit (never int32: hashes reach 2^32), optionally modulo a
per-feature row cap, then either remapped per feature to contiguous ids by frequency (most
frequent -> 0) or kept as the capped value.

Speed: files are cut into blocks of whole lines that threads parse with vectorised numpy (see
`_criteo_parse`); numpy releases the GIL in its loops, so two cores help. Memory is constant in
the input size except the per-feature counters of unique values that frequency remapping needs.
Frequency remapping is two-pass without re-parsing: pass 1 parses, counts, and spills the parsed
arrays inside the store's temporary directory; pass 2 maps the ids and appends to the store.
Everything goes through `StoreWriter`, so an interrupted run leaves nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recstack.data._criteo_format import format_criteo_lines
from recstack.data._criteo_parse import PAD, Parsed, parse_block
from recstack.data.store import FORMAT as STORE_FORMAT
from recstack.data.store import StoreTable, StoreWriter
from recstack.errors import ConfigError, DataError

__all__ = [
    "PreprocessReport",
    "format_criteo_lines",
    "kaggle_splits",
    "preprocess_criteo",
    "terabyte_splits",
]

NUM_DENSE = 13
NUM_CAT = 26
REFERENCE_MB_PER_S = 1.9  # the DLRM reference's Kaggle preprocessing on a 2-core machine (REFERENCE.md)
MAX_ROWS = 2**31  # ids are stored as int32
_MB = 2**20
REMAP_BLOCK = 1 << 17  # samples per pass-2 block
_EMPTY = np.uint64(2**64 - 1)  # an empty hash-table slot

Remap = Literal["frequency", "none"]
SplitMode = Literal["auto", "kaggle", "terabyte", "none"]


@dataclass
class InputStats:
    path: str
    bytes: int
    lines: int = 0
    samples: int = 0
    skipped: int = 0


@dataclass
class PreprocessReport:
    """What `preprocess_criteo` did; also stored (as `preprocess`) in the store's meta.json."""

    out: str
    samples: int
    lines: int
    skipped: int
    first_skipped: list[str]  # "file:line: reason" for the first few malformed lines
    first_skipped_lines: list[int]  # their 1-based line numbers (within their files)
    splits: dict[str, list[int]]
    table_rows: list[int]
    inputs: list[InputStats]
    input_bytes: int
    seconds: float
    mb_per_s: float  # input MiB (2^20 bytes) per second, end to end
    remap: str
    row_cap: int | None
    min_count: int
    split: str
    workers: int
    passes: dict[str, float] = field(default_factory=dict)  # wall and CPU (`_cpu`) seconds per phase
    cpu_seconds: float = 0.0  # CPU time of all threads (more than `seconds` when both cores work)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# splits


def kaggle_splits(n: int, days: int = 7) -> dict[str, tuple[int, int]]:
    """Kaggle-style: n samples cut into `days` equal days (the first n % days get one more);
    all but the last day train; the last day halved: first half test, second half validation."""
    size, extra = divmod(n, days)
    bounds = np.cumsum([0] + [size + (1 if d < extra else 0) for d in range(days)])
    last_lo = int(bounds[-2])
    mid = last_lo + (n - last_lo + 1) // 2
    return {"train": (0, last_lo), "test": (last_lo, mid), "val": (mid, n)}


def terabyte_splits(samples_per_file: Sequence[int]) -> dict[str, tuple[int, int]]:
    """Terabyte-style: one file per day in order; all but the last train, the last halved test/val."""
    counts = list(samples_per_file)
    n = int(sum(counts))
    last_lo = n - (counts[-1] if counts else 0)
    mid = last_lo + (n - last_lo + 1) // 2
    return {"train": (0, last_lo), "test": (last_lo, mid), "val": (mid, n)}


# ---------------------------------------------------------------------------------------------
# reading whole-line blocks


@dataclass
class _Block:
    file: int
    lo: int  # nominal byte range of the file this block owns: lines that *start* in [lo, hi)
    hi: int


def _plan_blocks(sizes: Sequence[int], block_bytes: int) -> list[_Block]:
    blocks = []
    for i, size in enumerate(sizes):
        for lo in range(0, size, block_bytes):
            blocks.append(_Block(i, lo, min(size, lo + block_bytes)))
    return blocks


def _find_newline(buf: np.ndarray, a: int, z: int) -> int:
    """Index of the first b'\\n' in buf[a:z], or -1; scans in small windows (lines are short)."""
    w = 4096
    while a < z:
        k = buf[a : min(z, a + w)].tobytes().find(b"\n")
        if k >= 0:
            return a + k
        a += w
        w = min(w * 4, 1 << 20)
    return -1


def _read_block(path: Path, blk: _Block, size: int) -> tuple[np.ndarray, int, int]:
    """Bytes of the whole lines starting in [lo, hi) as (buf, base, n), padded for `parse_block`.

    The line that crosses `hi` is read to its end; a last line without newline gets one.
    """
    start = max(blk.lo - 1, 0)  # one byte early: tells whether a line starts exactly at lo
    tail = 1 << 16
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        want = blk.hi - start + tail
        buf = np.empty(PAD + want + PAD + 1, np.uint8)
        got = f.readinto(memoryview(buf)[PAD : PAD + want])
        while True:
            # find the newline ending the line that contains byte hi-1
            end = _find_newline(buf, PAD + max(blk.hi - 1 - start, 0), PAD + got)
            if end >= 0:
                end -= PAD
                break
            if start + got >= size:  # end of file without newline
                end = got
                buf[PAD + got] = 10
                break
            more = max(tail, want)  # a very long line: grow and keep reading
            grown = np.empty(buf.size + more, np.uint8)
            grown[: PAD + got] = buf[: PAD + got]
            buf = grown
            got += f.readinto(memoryview(buf)[PAD + got : PAD + got + more])
            want += more
    if blk.lo == 0:
        begin = 0
    else:
        first_nl = _find_newline(buf, PAD, PAD + min(got, blk.hi - start))
        if first_nl < 0:  # no line starts inside this block
            return buf, PAD, 0
        begin = first_nl - PAD + 1
    if begin > end:
        return buf, PAD, 0
    return buf, PAD + begin, end + 1 - begin


# ---------------------------------------------------------------------------------------------
# per-feature frequency counting


class _FreqCounter:
    """Per-feature counts of unique values, merged lazily (sorted runs, merged when they pile up)."""

    def __init__(self, num: int):
        self.u = [np.zeros(0, np.uint32) for _ in range(num)]
        self.c = [np.zeros(0, np.int64) for _ in range(num)]
        self.pending: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(num)]
        self.pending_size = [0] * num

    def add(self, j: int, u: np.ndarray, c: np.ndarray) -> None:
        self.pending[j].append((u, c.astype(np.uint32)))  # a block's counts fit in 32 bits
        self.pending_size[j] += u.size
        if self.pending_size[j] > max(self.u[j].size, 1 << 20):  # amortised: each merge at least doubles
            self._merge(j)

    def _merge(self, j: int) -> None:
        if not self.pending[j]:
            return
        vals = np.concatenate([self.u[j]] + [u for u, _ in self.pending[j]])
        cnts = np.concatenate([self.c[j]] + [c for _, c in self.pending[j]], dtype=np.int64)
        self.pending[j], self.pending_size[j] = [], 0
        if vals.size < 2**32:  # one sort of (value << 32 | position) gives values and order together
            key = (vals.astype(np.uint64) << np.uint64(32)) | np.arange(vals.size, dtype=np.uint64)
            key.sort()
            vals = (key >> np.uint64(32)).astype(np.uint32)
            cnts = cnts[(key & np.uint64(0xFFFFFFFF)).astype(np.intp)]
            del key
        else:
            order = np.argsort(vals, kind="stable")
            vals, cnts = vals[order], cnts[order]
        first = np.ones(vals.size, bool)
        first[1:] = vals[1:] != vals[:-1]
        idx = np.flatnonzero(first)
        self.u[j] = vals[idx]
        self.c[j] = np.add.reduceat(cnts, idx) if idx.size else cnts[:0]

    def finish(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Final (sorted unique values, counts) of feature j; the counter lets go of them."""
        self._merge(j)
        u, c = self.u[j], self.c[j]
        self.u[j], self.c[j] = u[:0], c[:0]
        return u, c


class _Remapper:
    """Maps one feature's raw (capped) values to ids by frequency; rare values share the last id.

    Lookups go through an open-addressing hash table (murmur3 mixing, linear probing, load
    <= 1/2) built and probed with vectorised numpy: about 1.2 random reads per value, where a
    binary search over millions of sorted values would miss the cache about 20 times.
    """

    def __init__(self, u: np.ndarray, c: np.ndarray, min_count: int):
        n = u.size
        if n < 2**32 and (n == 0 or int(c.max()) < 2**32):
            # most frequent first, ties by smaller raw value (u is sorted): one packed sort
            key = ((np.uint64(2**32 - 1) - c.astype(np.uint64)) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
            key.sort()
            order = (key & np.uint64(0xFFFFFFFF)).astype(np.intp)
        else:
            order = np.argsort(-c, kind="stable")
        rank = np.empty(n, np.int32)
        rank[order] = np.arange(n, dtype=np.int32)
        rows = n
        if min_count > 1:
            rare = c < min_count
            if rare.any():
                keep = int((~rare).sum())
                rank[rare] = keep
                rows = keep + 1
        self.rows = max(rows, 1)
        bits = max(4, (2 * n - 1).bit_length())
        self.shift = np.uint32(32 - bits)
        # Linear probing without wrap-around, built in one pass: in order of home slot, each value
        # takes the first free slot at or after its home: pos_i = i + max_{j<=i}(home_j - j).
        # The table has spare slots past the end instead of wrapping.
        # Values sharing a home slot go most frequent first (frequency position breaks the tie).
        home = self._home(u[order])
        key = (home.astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
        key.sort()
        idx = order[(key & np.uint64(0xFFFFFFFF)).astype(np.intp)]
        h = (key >> np.uint64(32)).astype(np.intp)
        del key
        i = np.arange(n, dtype=np.intp)
        pos = i + np.maximum.accumulate(h - i) if n else i
        self.max_probe = int((pos - h).max(initial=0))
        # one uint64 per slot: raw value in the high half, id in the low half; all ones: empty
        self.table = np.full((1 << bits) + self.max_probe + 1, _EMPTY, np.uint64)
        self.table[pos] = (u[idx].astype(np.uint64) << np.uint64(32)) | rank[idx].astype(np.uint32)

    def _home(self, v: np.ndarray) -> np.ndarray:
        """Slot of each value: murmur3's 32-bit finaliser, top bits. A plain multiplicative hash
        clusters badly on structured inputs (e.g. hashes that are themselves multiplicative)."""
        x = v.astype(np.uint32)
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x85EBCA6B)
        x ^= x >> np.uint32(13)
        x *= np.uint32(0xC2B2AE35)
        x ^= x >> np.uint32(16)
        return (x >> self.shift).astype(np.intp)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """ids of the values `v` (every one of which was counted)."""
        home = self._home(v)
        e = self.table[home]
        out = e.astype(np.uint32).view(np.int32)  # the low half
        miss = np.flatnonzero((e >> np.uint64(32)).astype(np.uint32) != v)
        step = 0
        while miss.size:
            step += 1
            if step > self.max_probe:
                raise RuntimeError("value missing from the frequency table (internal error)")
            slot = home[miss] + step
            e = self.table[slot]
            hit = (e >> np.uint64(32)).astype(np.uint32) == v[miss]
            out[miss[hit]] = e[hit].astype(np.uint32).view(np.int32)
            miss = miss[~hit]
        return out


# ---------------------------------------------------------------------------------------------
# the preprocessor


def _check_options(row_cap: int | None, remap: str, min_count: int, split: str, n_inputs: int) -> None:
    if remap not in ("frequency", "none"):
        raise ConfigError(f"--remap: expected 'frequency' or 'none', got {remap!r}")
    if split not in ("auto", "kaggle", "terabyte", "none"):
        raise ConfigError(f"--split: expected auto, kaggle, terabyte or none, got {split!r}")
    if row_cap is not None and not 1 <= row_cap <= MAX_ROWS:
        raise ConfigError(f"--row-cap: must be between 1 and 2^31 (ids are int32), got {row_cap}")
    if remap == "none" and row_cap is None:
        raise ConfigError("--remap none needs --row-cap: raw 32-bit hashes do not fit int32 row ids")
    if min_count < 1:
        raise ConfigError(f"--min-count: must be at least 1, got {min_count}")
    if min_count > 1 and remap != "frequency":
        raise ConfigError("--min-count needs --remap frequency")
    if n_inputs == 0:
        raise ConfigError("no input files given")
    if split == "terabyte" and n_inputs < 2:
        raise ConfigError("--split terabyte needs several day files (the last is halved into test/val)")


def _check_out(out: Path) -> None:
    """The store replaces `out` wholesale: refuse to wipe anything that is not an earlier store."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; choose another --out")
    meta = out / "meta.json"
    is_store = False
    if meta.is_file():
        try:
            is_store = json.loads(meta.read_text()).get("format") == STORE_FORMAT
        except (OSError, ValueError, AttributeError):
            is_store = False
    if not is_store and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not a recstack store; refusing to replace it (choose another --out)")


def _parse_task(path: Path, blk: _Block, size: int, nd: int, nc: int, row_cap: int | None,
                count: bool) -> tuple[Parsed, list[tuple[np.ndarray, np.ndarray]] | None]:
    """Read and parse one block (runs in a worker thread); optionally count unique values."""
    buf, base, n = _read_block(path, blk, size)
    p = parse_block(buf, base, n, nd, nc)
    if row_cap is not None:
        p.cats %= np.uint32(row_cap)
    uniq = None
    if count:
        cols = np.ascontiguousarray(p.cats.T)
        uniq = [np.unique(cols[j], return_counts=True) for j in range(nc)]
    return p, uniq


def _ordered(pool: ThreadPoolExecutor, fn: Callable[..., Any], jobs: Sequence[tuple], ahead: int) -> Iterator[Any]:
    """Results of fn(*job) in job order, with at most `ahead` jobs in flight (bounded memory)."""
    q: deque[Future] = deque()
    it = iter(jobs)
    for job in it:
        q.append(pool.submit(fn, *job))
        if len(q) >= ahead:
            break
    while q:
        res = q.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            q.append(pool.submit(fn, *nxt))
        yield res


def preprocess_criteo(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    row_cap: int | None = None,
    remap: Remap = "frequency",
    min_count: int = 1,
    split: SplitMode = "auto",
    strict: bool = False,
    num_dense: int = NUM_DENSE,
    num_cat: int = NUM_CAT,
    workers: int | None = None,
    block_mb: float = 2,
    progress: Callable[[str, int, int], None] | None = None,
    max_reported: int = 10,
) -> PreprocessReport:
    """Preprocess Criteo TSV files (in day order) into a fixed-layout store at `out`.

    split: "auto" is Kaggle-style for one file, Terabyte-style for several; "none" puts every
    sample in train. Malformed lines are skipped and counted (the first `max_reported` are
    named in the report); with `strict` the first one raises DataError naming file and line.
    `progress(phase, advance, total)` reports work done: phase "parse" in input bytes, then (with
    frequency remapping) phase "remap" in samples.
    Raises DataError for a missing or compressed input, and when no line at all is valid.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    paths = [Path(p) for p in inputs]
    _check_options(row_cap, remap, min_count, split, len(paths))
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: input file not found" if not p.exists() else f"{p}: not a regular file")
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic[:2] == b"\x1f\x8b" or magic[:4] in (b"PK\x03\x04", b"\xfd7zX", b"BZh9", b"(\xb5/\xfd"):
            raise DataError(f"{p}: compressed file; decompress it first (Criteo TSV is read as plain text)")
    _check_out(Path(out))
    mode = ("kaggle" if len(paths) == 1 else "terabyte") if split == "auto" else split
    sizes = [p.stat().st_size for p in paths]
    total = sum(sizes)
    stats = [InputStats(str(p), s) for p, s in zip(paths, sizes, strict=True)]
    workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
    block_bytes = max(1 << 10, int(block_mb * _MB))
    blocks = _plan_blocks(sizes, block_bytes)
    nd, nc = num_dense, num_cat
    frequency = remap == "frequency"
    counter = _FreqCounter(nc) if frequency else None
    names = [f"cat_{j}" for j in range(nc)]
    placeholder = [StoreTable(n, 1, 1) for n in names]
    first_skipped: list[str] = []
    first_lines: list[int] = []
    skipped = 0
    max_id = np.zeros(nc, np.int64)
    phases: dict[str, float] = {}

    with StoreWriter(out, nd, placeholder) as writer, ThreadPoolExecutor(workers) as pool:
        spill_dir = writer.tmp / ".spill"
        with contextlib.ExitStack() as spill_files:
            spills = {}
            if frequency:
                spill_dir.mkdir()
                spills = {k: spill_files.enter_context(open(spill_dir / k, "wb")) for k in ("labels", "dense", "cats")}
            jobs = [(paths[b.file], b, sizes[b.file], nd, nc, row_cap, frequency) for b in blocks]
            for blk, (p, uniq) in zip(blocks, _ordered(pool, _parse_task, jobs, workers + 1), strict=True):
                st = stats[blk.file]
                for line, reason in p.bad:
                    msg = f"{paths[blk.file]}:{st.lines + line + 1}: {reason}"
                    if strict:
                        raise DataError(msg)
                    if len(first_skipped) < max_reported:
                        first_skipped.append(msg)
                        first_lines.append(st.lines + line + 1)
                skipped += len(p.bad)
                st.lines += p.lines
                st.skipped += len(p.bad)
                st.samples += p.labels.size
                if p.labels.size:
                    if frequency:
                        assert counter is not None and uniq is not None
                        for j, (u, c) in enumerate(uniq):
                            counter.add(j, u, c)
                        for name, arr in (("labels", p.labels), ("dense", p.dense), ("cats", p.cats)):
                            spills[name].write(np.ascontiguousarray(arr).data)  # no extra copy
                    else:
                        np.maximum(max_id, p.cats.max(0), out=max_id)
                        writer.append(p.dense, p.labels, ids=p.cats.view(np.int32))
                if progress is not None:
                    progress("parse", blk.hi - blk.lo, total)
        phases["parse"] = time.perf_counter() - t0
        phases["parse_cpu"] = time.process_time() - cpu0

        n = sum(s.samples for s in stats)
        if n == 0:
            first = f"; first: {first_skipped[0]}" if first_skipped else ""
            where = ", ".join(str(p) for p in paths)
            raise DataError(f"{where}: no valid Criteo lines ({skipped} malformed{first})")
        if frequency:
            assert counter is not None
            t1, c1 = time.perf_counter(), time.process_time()
            remappers = list(pool.map(lambda j: _Remapper(*counter.finish(j), min_count), range(nc)))
            rows = [r.rows for r in remappers]
            phases["count"] = time.perf_counter() - t1
            phases["count_cpu"] = time.process_time() - c1
            t1, c1 = time.perf_counter(), time.process_time()
            _remap_spill(spill_dir, n, nd, nc, remappers, writer, pool, block_bytes, workers + 1, progress)
            shutil.rmtree(spill_dir)
            phases["remap"] = time.perf_counter() - t1
            phases["remap_cpu"] = time.process_time() - c1
        else:
            rows = [max(int(m) + 1, 1) for m in max_id]
        if mode == "kaggle":
            splits = kaggle_splits(n)
        elif mode == "terabyte":
            splits = terabyte_splits([s.samples for s in stats])
        else:
            splits = {"train": (0, n)}
        seconds = time.perf_counter() - t0
        report = PreprocessReport(
            out=str(out),
            samples=n,
            lines=sum(s.lines for s in stats),
            skipped=skipped,
            first_skipped=first_skipped,
            first_skipped_lines=first_lines,
            splits={k: [int(a), int(b)] for k, (a, b) in splits.items()},
            table_rows=rows,
            inputs=stats,
            input_bytes=total,
            seconds=seconds,
            mb_per_s=total / _MB / max(seconds, 1e-9),
            remap=remap,
            row_cap=row_cap,
            min_count=min_count,
            split=mode,
            workers=workers,
            passes=phases,
            cpu_seconds=time.process_time() - cpu0,
        )
        tables = [StoreTable(nm, r, 1) for nm, r in zip(names, rows, strict=True)]
        writer.close(splits=splits, tables=tables, source="criteo-tsv", preprocess=report.to_dict())
    report.seconds = time.perf_counter() - t0
    report.cpu_seconds = time.process_time() - cpu0
    report.mb_per_s = report.input_bytes / _MB / max(report.seconds, 1e-9)
    return report


def _remap_spill(spill_dir: Path, n: int, nd: int, nc: int, remappers: list[_Remapper], writer: StoreWriter,
                 pool: ThreadPoolExecutor, block_bytes: int, ahead: int,
                 progress: Callable[[str, int, int], None] | None) -> None:
    """Pass 2: map the spilled raw values to frequency ids, block by block, into the store.

    Blocks are read with plain reads (not memory maps), so memory stays a few blocks' worth.
    """
    step = max(1, min(REMAP_BLOCK, block_bytes))  # samples per block

    def read(name: str, dtype: Any, width: int, lo: int, hi: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * width
        a = np.fromfile(spill_dir / name, dtype, (hi - lo) * width, offset=lo * size)
        return a.reshape(hi - lo, width) if width > 1 else a

    def map_block(lo: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        hi = min(n, lo + step)
        cols = np.ascontiguousarray(read("cats", np.uint32, nc, lo, hi).T)
        ids = np.empty((hi - lo, nc), np.int32)
        for j in range(nc):
            ids[:, j] = remappers[j](cols[j])
        return hi, read("dense", np.float32, nd, lo, hi), read("labels", np.float32, 1, lo, hi), ids

    lo = 0
    for hi, dense, labels, ids in _ordered(pool, map_block, [(a,) for a in range(0, n, step)], ahead):
        writer.append(dense, labels, ids=ids)
        if progress is not None:
            progress("remap", hi - lo, n)
        lo = hi
