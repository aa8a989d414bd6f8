"""Per-table access statistics of a store: pooling, unique rows, and the 17 reuse-factor bins.

Why: sharding planners and the performance model describe a table by its rows, dim,
pooling factor and how often rows are reused within a batch (REFERENCE.md sections 7
and 8). These figures come from data, so they are measured here, on batches of a given
size, the same way the published DLRM datasets report them.

Reuse bins: within one batch, count how many times each distinct row of a table is
accessed (its "column size"). Bin i covers counts in (2^(i-1), 2^i] for i = 0..15
(bin 0 is exactly 1 access; bin 15 is (16384, 32768]) and bin 16 is > 32768.
- `reuse_bins[i]`: fraction of all the table's accesses that go to rows whose count
  falls in bin i ("Ratio of index distribution at different column sizes" in the
  published locality stats; the form `TableSpec.reuse_bins` holds). Sums to 1.
- `unique_row_bins[i]`: fraction of the distinct rows whose count falls in bin i
  ("Histogram of col sizes"). Sums to 1.
Per-batch counts are pooled over the batches examined (sums of counts, then normalised).

Public functions: `table_stats(store, batch_size, max_samples, split) -> dict` (below),
`render_stats(stats)` (rich tables), `reuse_histograms(ids)` for one batch of one table,
`simulate_reuse_bins(table_spec, batch_size)` for a table known only by its spec.

JSON schema (what `table_stats` returns and `recstack data stats --out` writes):
{
  "store": str, "split": str | null, "batch_size": int, "batches": int, "samples": int,
  "bins": [str] * 17,                  # "(0,1]", "(1,2]", ..., "(16384,32768]", "(32768,inf)"
  "tables": [{
      "name": str, "rows": int,
      "accesses": int,                  # lookups over all examined samples
      "accesses_per_batch": float,
      "pooling": {"mean", "std", "min", "max", "p50", "p90", "p99": number,
                  "hist": {"0": frac, "1": frac, "2": frac, "3-4": frac, "5-8": frac, ...}},
      "unique_per_batch": float,        # mean distinct rows per batch
      "unique_ratio": float,            # distinct rows per batch / accesses per batch
      "accesses_per_unique": float,     # its inverse (the published "avg col size")
      "rows_touched": int,              # distinct rows over all examined samples
      "rows_touched_frac": float,       # rows_touched / rows
      "reuse_bins": [float] * 17, "unique_row_bins": [float] * 17,
  }, ...],
  "aggregate": {                        # all tables pooled, as in the published file
      "accesses_per_batch", "unique_per_batch", "unique_ratio", "accesses_per_unique",
      "mean_pooling" (lookups per sample per table), "reuse_bins", "unique_row_bins"
  },
  "published_2021": {"accesses_per_unique": 6.9, "reuse_bins": [...], "unique_row_bins": [...]}
}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.store import Store
from recstack.errors import ConfigError
from recstack.spec.model import TableSpec

NUM_BINS = 17
BIN_LABELS = ["(0,1]"] + [f"({1 << (i - 1)},{1 << i}]" for i in range(1, 16)] + ["(32768,inf)"]
DEFAULT_BATCH = 65536
DEFAULT_MAX_BATCHES = 8

# Meta's open synthetic DLRM dataset, 856 tables, one batch of 65,536 (locality stats 2021,
# all tables): the calibration target for synthetic table pools.
PUBLISHED_2021 = {
    "accesses_per_unique": 6.9,
    "reuse_bins": [0.069, 0.044, 0.068, 0.101, 0.121, 0.104, 0.073, 0.058, 0.052, 0.050, 0.049,
                   0.048, 0.048, 0.043, 0.031, 0.023, 0.019],
    "unique_row_bins": [0.473, 0.152, 0.139, 0.112, 0.072, 0.032, 0.011, 0.005, 0.002, 0.001, 0.0,
                        0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
}


def reuse_bin_index(counts: np.ndarray) -> np.ndarray:
    """Bin of each access count (>= 1): 0 for 1, i for (2^(i-1), 2^i], 16 above 32768."""
    c = np.asarray(counts, np.int64)
    if c.size and c.min() < 1:
        raise ValueError("access counts must be >= 1")
    _, e = np.frexp((c - 1).astype(np.float64))  # (c-1).bit_length(), exact for integers < 2^53
    return np.minimum(e, NUM_BINS - 1).astype(np.int64)


def reuse_histograms(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reuse_bins, unique_row_bins) of one batch of one table's row ids (each sums to 1)."""
    _, cnt = np.unique(np.asarray(ids).ravel(), return_counts=True)
    acc, uniq = reuse_bin_sums(cnt)
    return acc / max(acc.sum(), 1), uniq / max(uniq.sum(), 1)


def reuse_bin_sums(cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accesses, unique rows) per reuse bin, unnormalised, from each touched row's access count."""
    b = reuse_bin_index(cnt)
    return (np.bincount(b, weights=cnt, minlength=NUM_BINS).astype(np.float64),
            np.bincount(b, minlength=NUM_BINS).astype(np.float64))


def simulate_reuse_bins(
    table: TableSpec, batch_size: int = DEFAULT_BATCH, zipf: float | None = None, seed: int = 0
) -> list[float]:
    """Expected `reuse_bins` of a table from its spec alone (rows, pooling, Zipf exponent),
    by sampling one batch the way the synthetic generator does. For table pools that
    sharding and the performance model describe without generating a dataset."""
    from recstack.data._synth_sampling import ZipfSampler
    from recstack.data.synth import expected_pooling

    rng = np.random.default_rng(seed)
    if table.pooling_dist == "fixed":
        lookups = batch_size * max(1, round(table.pooling))
    else:
        lookups = max(1, round(batch_size * expected_pooling(table)))
    ranks = ZipfSampler(table.rows, table.zipf if zipf is None else zipf).sample(rng, lookups)
    return [round(float(x), 6) for x in reuse_histograms(ranks)[0]]


def _pool_label(lo: int, hi: int) -> str:
    return str(hi) if lo + 1 == hi or hi <= 2 else f"{lo + 1}-{hi}"


def _pooling_summary(hist: np.ndarray) -> dict[str, Any]:
    """Moments, quantiles and a power-of-two histogram from exact bag-size counts."""
    n = hist.sum()
    vals = np.arange(hist.size)
    mean = float((vals * hist).sum() / n)
    std = float(np.sqrt(max(((vals - mean) ** 2 * hist).sum() / n, 0.0)))
    cdf = np.cumsum(hist) / n
    q = {f"p{int(p * 100)}": int(np.searchsorted(cdf, p - 1e-12)) for p in (0.5, 0.9, 0.99)}
    nz = np.nonzero(hist)[0]
    out_hist: dict[str, float] = {}
    if hist[0]:
        out_hist["0"] = round(float(hist[0] / n), 6)
    hi = 1
    while hi // 2 <= vals[-1]:
        lo = hi // 2 if hi > 1 else 0
        frac = float(hist[lo + 1 : hi + 1].sum() / n)
        if frac:
            out_hist[_pool_label(lo, hi)] = round(frac, 6)
        hi *= 2
    return {"mean": round(mean, 6), "std": round(std, 6), "min": int(nz[0]), "max": int(nz[-1]), **q,
            "hist": out_hist}


class _TableAcc:
    def __init__(self, rows: int):
        self.rows = rows
        self.acc = np.zeros(NUM_BINS)
        self.uniq = np.zeros(NUM_BINS)
        self.accesses = 0
        self.unique = 0
        self.touched = np.zeros(rows, bool) if rows <= 1 << 27 else None
        self.touched_set: np.ndarray = np.zeros(0, np.int64)
        self.pool_hist = np.zeros(1, np.int64)

    def add(self, rows_u: np.ndarray, cnt: np.ndarray, bag_sizes: np.ndarray) -> None:
        a, u = reuse_bin_sums(cnt)
        self.acc += a
        self.uniq += u
        self.accesses += int(cnt.sum())
        self.unique += int(cnt.size)
        if self.touched is not None:
            self.touched[rows_u] = True
        else:
            self.touched_set = np.union1d(self.touched_set, rows_u)
        h = np.bincount(bag_sizes)
        if h.size > self.pool_hist.size:
            h[: self.pool_hist.size] += self.pool_hist
            self.pool_hist = h
        else:
            self.pool_hist[: h.size] += h


def table_stats(
    store: Store | str | Path,
    batch_size: int = DEFAULT_BATCH,
    max_samples: int | None = None,
    split: str | None = "train",
) -> dict[str, Any]:
    """Statistics of every table of `store` over consecutive batches of `batch_size` samples.

    `split`: which split to read (None: the whole store; "train" falls back to the whole
    store when the store has no such split). The batch size is cut to the split's size
    when that is smaller. `max_samples` bounds the samples examined (default: 8 batches),
    rounded down to whole batches (at least one).
    """
    st = store if isinstance(store, Store) else Store(store)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if split is None or (split == "train" and split not in st.splits):
        lo, hi, split = 0, st.num_samples, None
    else:
        lo, hi = st.split_range(split)
    n = hi - lo
    if n == 0:
        raise ConfigError(f"{st.path}: split {split or 'all'} has no samples")
    bs = min(batch_size, n)
    limit = max_samples if max_samples is not None else DEFAULT_MAX_BATCHES * bs
    if limit < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {limit}")
    nb = max(1, min(n, limit) // bs)
    t = len(st.tables)
    accs = [_TableAcc(tb.rows) for tb in st.tables]
    agg_acc, agg_uniq = np.zeros(NUM_BINS), np.zeros(NUM_BINS)
    agg_unique = 0
    if not st.ragged:
        col_table = np.repeat(np.arange(t, dtype=np.int64), st.pooling)
    for i in range(nb):
        a, z = lo + i * bs, lo + (i + 1) * bs
        if st.ragged:
            lengths = np.asarray(st.lengths[a:z], np.int64)  # [b, T]
            vals = np.asarray(st.values[int(st.sample_ptr[a]) : int(st.sample_ptr[z])], np.int64)
            tab = np.repeat(np.tile(np.arange(t, dtype=np.int64), z - a), lengths.ravel())
        else:
            ids = np.asarray(st.ids[a:z], np.int64)
            vals = ids.ravel()
            tab = np.broadcast_to(col_table, ids.shape).ravel()
            lengths = np.broadcast_to(np.asarray(st.pooling, np.int64), (z - a, t))
        key = (tab << 31) | vals
        uk, cnt = np.unique(key, return_counts=True)
        ut = uk >> 31
        bounds = np.searchsorted(ut, np.arange(t + 1))
        for j in range(t):
            s, e = bounds[j], bounds[j + 1]
            accs[j].add(uk[s:e] & ((1 << 31) - 1), cnt[s:e], lengths[:, j])
        a_, u_ = reuse_bin_sums(cnt)
        agg_acc += a_
        agg_uniq += u_
        agg_unique += int(cnt.size)
    samples = nb * bs
    tables = []
    for tb, ac in zip(st.tables, accs):
        touched = int(ac.touched.sum()) if ac.touched is not None else int(ac.touched_set.size)
        tables.append({
            "name": tb.name,
            "rows": tb.rows,
            "accesses": ac.accesses,
            "accesses_per_batch": round(ac.accesses / nb, 3),
            "pooling": _pooling_summary(ac.pool_hist),
            "unique_per_batch": round(ac.unique / nb, 3),
            "unique_ratio": round(ac.unique / ac.accesses, 6) if ac.accesses else 0.0,
            "accesses_per_unique": round(ac.accesses / ac.unique, 6) if ac.unique else 0.0,
            "rows_touched": touched,
            "rows_touched_frac": round(touched / tb.rows, 6),
            "reuse_bins": _norm(ac.acc),
            "unique_row_bins": _norm(ac.uniq),
        })
    total = sum(ac.accesses for ac in accs)
    aggregate = {
        "accesses_per_batch": round(total / nb, 3),
        "unique_per_batch": round(agg_unique / nb, 3),
        "unique_ratio": round(agg_unique / total, 6) if total else 0.0,
        "accesses_per_unique": round(total / agg_unique, 6) if agg_unique else 0.0,
        "mean_pooling": round(total / (samples * t), 6),
        "reuse_bins": _norm(agg_acc),
        "unique_row_bins": _norm(agg_uniq),
    }
    return {
        "store": str(st.path), "split": split, "batch_size": bs, "batches": nb, "samples": samples,
        "bins": BIN_LABELS, "tables": tables, "aggregate": aggregate, "published_2021": PUBLISHED_2021,
    }


def _norm(v: np.ndarray) -> list[float]:
    s = v.sum()
    return [round(float(x / s), 6) if s else 0.0 for x in v]


def render_stats(stats: dict[str, Any], console: Any = None, max_tables: int = 60) -> None:
    """A readable rich rendering: one row per table, then the aggregate reuse histogram."""
    from rich.table import Table

    from recstack.ui import console as ui_console

    con = console or ui_console()
    groups = [("(0,1]", 0, 1), ("(1,4]", 1, 3), ("(4,64]", 3, 7), ("(64,1k]", 7, 11), (">1k", 11, 17)]
    tab = Table(title=f"{stats['store']}  split={stats['split'] or 'all'}  batch={stats['batch_size']:,} "
                      f"x {stats['batches']}", show_lines=False)
    for col in ["table", "rows", "pool", "p99", "uniq/acc", "acc/uniq", "touched"] + [g[0] for g in groups]:
        tab.add_column(col, justify="left" if col == "table" else "right")
    rows = stats["tables"]
    for r in rows[:max_tables]:
        rb = r["reuse_bins"]
        tab.add_row(
            r["name"], f"{r['rows']:,}", f"{r['pooling']['mean']:.2f}", str(r["pooling"]["p99"]),
            f"{r['unique_ratio']:.3f}", f"{r['accesses_per_unique']:.2f}", f"{r['rows_touched_frac']:.1%}",
            *(f"{sum(rb[a:b]):.3f}" for _, a, b in groups),
        )
    if len(rows) > max_tables:
        tab.add_row(f"... {len(rows) - max_tables} more (see --out JSON)", *[""] * (6 + len(groups)))
    con.print(tab)
    agg = stats["aggregate"]
    pub = stats["published_2021"]
    ag = Table(title=f"all tables: {agg['accesses_per_unique']:.2f} accesses per unique row "
                     f"(published 2021: {pub['accesses_per_unique']}), mean pooling {agg['mean_pooling']:.2f}")
    for col in ["reuse bin", "share of accesses", "published 2021", "share of unique rows", "published 2021 "]:
        ag.add_column(col, justify="right")
    for i, lab in enumerate(stats["bins"]):
        ag.add_row(lab, f"{agg['reuse_bins'][i]:.3f}", f"{pub['reuse_bins'][i]:.3f}",
                   f"{agg['unique_row_bins'][i]:.3f}", f"{pub['unique_row_bins'][i]:.3f}")
    con.print(ag)
