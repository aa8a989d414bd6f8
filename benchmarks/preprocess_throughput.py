"""Criteo TSV preprocessing throughput, end to end, against the DLRM reference's 1.9 MB/s.

What it measures: the wall time of `preprocess_criteo` (what `recstack data preprocess` runs)
from the input TSV to a published store: parsing, log(x+1), the chosen row cap and remap
(default: frequency remap, no cap, i.e. two passes with per-feature unique counters), the
Kaggle-style day split, and the fsync and rename of the store. MB means MiB (2^20 bytes) of
input TSV. Input: a synthetic Criteo-like TSV written with `format_criteo_lines` (Zipf-like ids
with per-feature cardinalities shaped like Criteo Kaggle's, about 20% empty dense fields), or
`--input FILE`. With `--repeats N` the store is rebuilt N times and the median is reported.

    python benchmarks/preprocess_throughput.py --size-mb 1024 --repeats 3
    python benchmarks/preprocess_throughput.py --size-mb 64 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recstack.data.criteo import REFERENCE_MB_PER_S, format_criteo_lines, preprocess_criteo
from recstack.machine import cpu_facts

# Criteo Kaggle cardinalities (REFERENCE.md section 1): the shape of the synthetic id distributions
KAGGLE_ROWS = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
               27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def machine() -> dict[str, object]:
    return {**cpu_facts(), "numpy": np.__version__}


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except (ImportError, OSError):
        return None


def write_synthetic(path: Path, size_mb: float, seed: int = 0, chunk: int = 100_000) -> tuple[int, float]:
    """Criteo-like TSV of about `size_mb` MiB; returns (lines, seconds)."""
    rng = np.random.default_rng(seed)
    target = int(size_mb * 2**20)
    card = np.array(KAGGLE_ROWS, np.int64)
    mult = np.uint64(2654435761)  # odd: a bijection on 32-bit ids, so hashes look random
    written = lines = 0
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        while written < target:
            n = chunk
            labels = (rng.random(n) < 0.25).astype(np.int64)
            dense = np.floor(rng.lognormal(1.5, 2.0, (n, 13))).astype(np.int64)
            dense[:, 1] -= 2  # the second integer feature has negatives in Criteo
            dense_missing = rng.random((n, 13)) < 0.2
            # ids: half from a Zipf head, half uniform over the feature's cardinality (a long tail)
            zipf = np.minimum(rng.zipf(1.2, (n, 26)) - 1, card - 1)
            unif = (rng.random((n, 26)) * card).astype(np.int64)
            ids = np.where(rng.random((n, 26)) < 0.5, zipf, unif).astype(np.uint64)
            cats = ((ids + np.arange(26, dtype=np.uint64) * np.uint64(0x9E3779B9)) * mult) % np.uint64(2**32)
            cat_missing = rng.random((n, 26)) < 0.03
            text = format_criteo_lines(labels, dense, cats.astype(np.uint32), dense_missing, cat_missing)
            if written + len(text) > target:  # cut at a line boundary near the target size
                cut = text.rfind(b"\n", 0, target - written) + 1
                text = text[:cut]
                if not text:
                    break
            f.write(text)
            written += len(text)
            lines += text.count(b"\n")
    return lines, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=float, default=1024, help="synthetic input size in MiB (default 1024)")
    ap.add_argument("--input", type=Path, help="preprocess this TSV instead of a synthetic one")
    ap.add_argument("--remap", choices=["frequency", "none"], default="frequency")
    ap.add_argument("--row-cap", type=int, default=None)
    ap.add_argument("--split", default="auto")
    ap.add_argument("--workers", type=int, default=None, help="parser threads (default: min(2, cores))")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", type=Path, default=None, help="directory for the synthetic input and the store")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="recstack-preprocess-bench-", dir=args.tmp))
    try:
        gen_s = None
        if args.input is not None:
            src = args.input
        else:
            src = tmp / "criteo.tsv"
            _, gen_s = write_synthetic(src, args.size_mb, args.seed)
        size = src.stat().st_size
        runs = []
        for _ in range(args.repeats):
            out = tmp / "store"
            rep = preprocess_criteo([src], out, row_cap=args.row_cap, remap=args.remap, split=args.split,
                                    workers=args.workers)
            runs.append(rep)
            shutil.rmtree(out)
        secs = [r.seconds for r in runs]
        med = statistics.median(secs)
        size_mb = size / 2**20
        res = {
            "mb_per_s": size_mb / med,
            "seconds": med,
            "seconds_all": secs,
            "mb_per_s_all": [size_mb / s for s in secs],
            "size_mb": size_mb,
            "lines": runs[0].lines,
            "samples": runs[0].samples,
            "reference_mb_per_s": REFERENCE_MB_PER_S,
            "speedup_vs_reference": size_mb / med / REFERENCE_MB_PER_S,
            "remap": args.remap,
            "row_cap": args.row_cap,
            "split": runs[0].split,
            "workers": runs[0].workers,
            "cpu_seconds_all": [r.cpu_seconds for r in runs],
            "phases_s": runs[secs.index(med)].passes if med in secs else runs[0].passes,
            "peak_rss_mb": _peak_rss_mb(),
            "generate_s": gen_s,
            "input": str(args.input) if args.input else "synthetic (format_criteo_lines)",
            "machine": machine(),
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }
        if args.json:
            print(json.dumps(res))
        else:
            m = res["machine"]
            print("measured: wall time of preprocess_criteo (what `recstack data preprocess` runs) from TSV to a "
                  "published store: parse, log(x+1), row cap and remap, split, fsync and rename; median of "
                  f"{args.repeats} run(s); MiB = 2^20 bytes of input")
            print(f"machine: {m['cpu']}, {m['cores']} cores, python {m['python']}, numpy {m['numpy']}, "
                  f"{m['platform']}")
            print(f"input: {res['input']}, {size_mb:.1f} MiB, {res['lines']} lines"
                  + (f" (generated in {gen_s:.1f} s)" if gen_s else ""))
            print(f"preprocess: remap={args.remap} row_cap={args.row_cap} split={res['split']} "
                  f"workers={res['workers']}, {args.repeats} run(s): "
                  + ", ".join(f"{s:.2f} s" for s in secs))
            print("phases (s; _cpu = CPU time of all threads): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in res["phases_s"].items()))
            print("CPU time per run: " + ", ".join(f"{c:.2f} s" for c in res["cpu_seconds_all"])
                  + f"; peak RSS {res['peak_rss_mb']:.0f} MiB (whole process: torch import and any input "
                  f"generation included); load average (1 min) {res['load_avg_1m']:.1f}")
            print(f"median {med:.2f} s = {res['mb_per_s']:.1f} MiB/s end to end; reference "
                  f"{REFERENCE_MB_PER_S} MB/s -> {res['speedup_vs_reference']:.1f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
