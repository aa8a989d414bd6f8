"""Table pools for sharding: synthetic ones calibrated to Meta's open DLRM dataset, and pools
fitted to your own data (a `recstack data stats` JSON or a captured index dump).

Why: sharding planners and learned cost models are trained and compared on tasks drawn from a
pool of tables (REFERENCE.md section 8). The published benchmark pool is Meta's open embedding
dataset (856 tables, one batch of 65,536); its per-table data (2.4 GB) is not here, only its
aggregate locality statistics (../shared/data/dlrm_datasets/locality_stats_2021.txt):
887,017,990 indices and 128,435,723 distinct (table, row) pairs in the batch, i.e. mean pooling
15.81 lookups per sample per table and 6.91 accesses per unique row, and the 17-bin histogram of
the share of accesses that land on rows reused 1, 2, 3-4, ..., >32768 times in the batch.

Every table here is a `ShardTable` whose index batches come from `generate_indices`: bag sizes
rint(gamma(mean=pooling, cv=pooling_cv)), rows bounded Zipf(rows, zipf). Within one batch a row of
probability p drawn N times is hit Binomial(N, p) ~ Poisson(N p) times, so a table's expected reuse
histogram is a sum over its rows of Poisson probabilities; `expected_reuse` evaluates that sum
exactly for the 64 hottest rows and on a fine log grid of N p for the rest (checked against
sampling in the tests and, per pool, in `calibration.sampled_check`).

Synthetic pool (`make_pool`), assumptions (per-table distributions are not published):
- candidates: max(8 n, 2048) tables from a broad prior, Latin-hypercube stratified, seeded:
  rows log-uniform on [1e2, 1e8] (100 is DreamShard's floor on the dataset's row counts, 1e8 an
  upper bound on hash sizes); mean bag size log-normal, median 4, log-sd 1.5 (mean 12.3, heavy
  right tail), clipped to [0.05, 1000], with `pooling` (the gamma mean) set so the generator's
  rounded bags have that mean; Zipf exponent uniform on [0, 1.6]; pooling cv uniform on
  [0.5, 1.5] (bag-size spread is not published and does not change reuse); dim 16 (DreamShard's
  default; `recstack shard tasks --dims` sets task dims). Independent in the prior.
- calibration: the pool's aggregate expected reuse histogram, unique-row histogram, accesses per
  unique row and mean bag size, at the dataset's batch of 65,536, are fitted to the published 2021
  numbers by choosing n of the candidates while reweighting the prior as little as possible:
  inclusion weights w in (0, 1] summing to n minimise squared error + 1e-3 KL(w || uniform)
  (L-BFGS-B), a systematic sample of n candidates is drawn with those inclusion probabilities,
  and single swaps (one table out, one in) then remove the sampling error (a few dozen for 856
  tables; pools under 512 tables resample up to 4 times while the targets are not met to the
  published rounding). The selected tables' quantiles (rows, bag size, zipf) are reported in
  `calibration.marginals`: the reweighting may correlate what the prior kept independent.
- check: a seeded subset of the pool (24 tables, about 16M indices, a few seconds) is sampled
  with the real generator (`generate_indices`) at batch 65,536; its measured histogram is
  compared with the analytic one for the same tables.

Pools from data: each table's rows come from the data (stats JSON, or max index + 1 / a model
config for an index dump), pooling mean and cv are fitted so the generator's rounded gamma bag
sizes have the measured mean and spread, and the Zipf exponent is fitted to the table's measured
reuse histogram (and accesses per unique row) at the measured lookups per batch.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.stats import BIN_LABELS, NUM_BINS, PUBLISHED_2021
from recstack.errors import ConfigError, DataError
from recstack.io import read_json
from recstack.spec.sharding import ShardTable, TablePool

DATASET_BATCH = 65536
DEFAULT_DIM = 16

# Meta's open synthetic embedding dataset, locality stats 2021, the all-tables file
# fbgemm_t856_bs65536.pt: the calibration target.
PUBLISHED = {
    "file": "dlrm_datasets locality_stats_2021.txt: fbgemm_t856_bs65536.pt",
    "tables": 856,
    "batch_size": DATASET_BATCH,
    "indices": 887_017_990,
    "unique_rows": 128_435_723,
    "mean_pooling": 887_017_990 / (856 * DATASET_BATCH),  # 15.812
    "accesses_per_unique": 887_017_990 / 128_435_723,  # 6.906
    "reuse_bins": list(PUBLISHED_2021["reuse_bins"]),
    "unique_row_bins": list(PUBLISHED_2021["unique_row_bins"]),
}
# The 2022 release (788 tables, batch 131,072; first file): plotted for context, not a target.
PUBLISHED_2022 = {
    "file": "dlrm_datasets locality_stats_2022.txt: fbgemm_t788_bs131072_0.pt",
    "tables": 788,
    "batch_size": 131072,
    "indices": 1_405_163_864,
    "unique_rows": 110_259_238,
    "reuse_bins": [0.027, 0.023, 0.040, 0.068, 0.105, 0.120, 0.099, 0.070, 0.059, 0.054, 0.040, 0.072, 0.064,
                   0.047, 0.021, 0.017, 0.076],
}

# Prior of the synthetic pool's candidate tables (see the module docstring).
PRIOR = {
    "rows_log10": [2.0, 8.0],
    "bag_median": 4.0,
    "bag_log_sd": 1.5,
    "bag_clip": [0.05, 1000.0],
    "zipf": [0.0, 1.6],
    "pooling_cv": [0.5, 1.5],
    "candidates_per_table": 8,
    "min_candidates": 2048,
    "tilt_kl_weight": 1e-3,
    "resamples": 4,  # further systematic samples, for pools under 512 tables, while targets are unmet
}
ASSUMPTIONS = {
    "rows": "log-uniform on [1e2, 1e8] (prior; 100 is DreamShard's floor); the dataset's row counts are "
            "not published",
    "pooling": "mean bag size log-normal, median 4, log-sd 1.5 (mean 12.3), clipped to [0.05, 1000] (prior); "
               "`pooling` (the gamma mean generate_indices takes) is set so its rounded bags have that mean; "
               "the pool's mean bag size is fitted to the published 15.81",
    "zipf": "uniform on [0, 1.6] (prior); per-table exponents are not published",
    "pooling_cv": "uniform on [0.5, 1.5]; bag-size spread is not published and does not change reuse",
    "dim": "fixed (default 16, DreamShard's); `recstack shard tasks --dims` assigns task dims",
    "independence": "rows, pooling, zipf and cv independent in the prior; the calibration's selection "
                    "may correlate them (see marginals)",
    "selection": "n of max(8n, 2048) prior draws (Latin hypercube, seeded): inclusion weights that match "
                 "the published aggregates with the least reweighting of the prior (KL-regularised), a "
                 "systematic sample with those weights, then single swaps to remove its sampling error",
    "reuse": "expected reuse of generate_indices at batch 65536 (Poisson per row; exact for the 64 "
             "hottest rows, log-grid of expected hits per row for the rest), checked by sampling",
}
# Stated tolerances (tested in tests/shard/test_pool.py): pools of 256 tables or more meet the
# first set (the published bins are rounded to 0.001); pools of 64 to 255 tables, where a few
# tables carry most lookups, the second; smaller pools are calibrated as well as they can be and
# report what they achieve.
TOLERANCE = {"reuse_bin_abs": 0.003, "unique_row_bin_abs": 0.004, "accesses_per_unique_rel": 0.005,
             "mean_pooling_rel": 0.005}
TOLERANCE_SMALL = {"reuse_bin_abs": 0.01, "unique_row_bin_abs": 0.03, "accesses_per_unique_rel": 0.03,
                   "mean_pooling_rel": 0.02}


def tolerance_for(n_tables: int) -> dict[str, float] | None:
    """The stated tolerance for a pool of `n_tables` tables (None under 64 tables)."""
    return TOLERANCE if n_tables >= 256 else TOLERANCE_SMALL if n_tables >= 64 else None

# ---------------------------------------------------------------------------------------------
# Expected reuse of a Zipf table (analytic)

# count bins: bin 0 is exactly 1 access, bin i is (2^(i-1), 2^i], bin 16 is > 32768
_LO = np.array([1] + [(1 << (i - 1)) + 1 for i in range(1, 16)] + [32769], dtype=np.float64)
_HI = np.array([1] + [1 << i for i in range(1, 16)] + [np.inf], dtype=np.float64)
_LMIN, _LMAX = 1e-7, 1e8  # expected hits per row covered by the grids
_FINE = 1.002  # ratio of the fine grid (hot rows one by one: point values, linear interpolation)
_CELL = 1.05  # ratio of the cell grid (the other rows: per-cell averages) ...
_REFINE = 0.25  # ... refined to a quarter Poisson sd within 5 sd of every bin edge above 25 hits
_HEAD = 64  # hottest rows evaluated one by one
_EM = 8  # Euler-Maclaurin: exact partial sums below this rank
_W = 2 * NUM_BINS + 1  # per-row values: access bins, unique-row bins, P(hit)


def _pois_cdf(k: np.ndarray, lam: np.ndarray) -> np.ndarray:
    from scipy.special import pdtr

    return np.where(k < 0, 0.0, np.where(np.isinf(k), 1.0, pdtr(np.clip(k, 0, 1e15), lam)))


def _pois_sf(k: np.ndarray, lam: np.ndarray) -> np.ndarray:
    from scipy.special import pdtrc

    return np.where(k < 0, 1.0, np.where(np.isinf(k), 0.0, pdtrc(np.clip(k, 0, 1e15), lam)))


def _pois_between(lam: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(a <= X <= b) for X ~ Poisson(lam): [len(lam), len(a)], accurate in both tails."""
    lam = np.asarray(lam, np.float64)[:, None]
    low = _pois_sf(a - 1, lam) - _pois_sf(b, lam)
    high = _pois_cdf(b, lam) - _pois_cdf(a - 1, lam)
    return np.clip(np.where(lam < a, low, high), 0.0, 1.0)


def _per_row(lam: np.ndarray) -> np.ndarray:
    """[len(lam), _W] for a row with `lam` expected hits: its access share per bin
    P(1 + Pois(lam) in bin) (the bins of an access to it), its hit-count bin P(Pois(lam) in bin),
    and P(hit) = 1 - e^-lam."""
    g = _pois_between(lam, _LO - 1, _HI - 1)
    h = _pois_between(lam, _LO, _HI)
    return np.concatenate([g, h, -np.expm1(-lam)[:, None]], axis=1)


def _edges() -> np.ndarray:
    lc = math.log(_CELL)
    e = [np.exp(np.arange(math.log(_LMIN), math.log(_LMAX) + 0.5 * lc, lc))]
    for k in range(5, 17):
        for c in ((1 << k) - 1.0, float(1 << k)):
            step = _REFINE / math.sqrt(c)
            e.append(c * (1.0 + step * np.arange(-20, 21)))
    e = np.unique(np.concatenate(e))
    keep = np.concatenate([[True], np.diff(np.log(e)) > 1e-4])
    return e[keep]


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fine-grid point values [F, _W], cell edges [E], cell averages [E + 1, _W]; cell 0 is
    below the grid, cell E above it)."""
    lf = math.log(_FINE)
    fine = np.exp(np.arange(math.log(_LMIN), math.log(_LMAX) + lf, lf))
    edges = _edges()
    sub = 5  # each cell averaged over 5 log-spaced points
    off = (np.arange(sub) + 0.5) / sub
    lo = np.concatenate([[edges[0] * 1e-3], edges[:-1], [edges[-1]]])
    hi = np.concatenate([[edges[0]], edges[1:], [edges[-1] * 1.5]])
    pts = (lo[:, None] * (hi / lo)[:, None] ** off[None, :]).ravel()
    cells = _per_row(pts).reshape(len(lo), sub, _W).mean(axis=1)
    return _per_row(fine), edges, cells


def _prefix(s: np.ndarray) -> np.ndarray:
    """[T, _EM]: exact partial sums C(j) = sum_{k=1..j} k^-s for j < _EM."""
    k = np.arange(_EM, dtype=np.float64)[None, :]
    w = np.where(k > 0, np.maximum(k, 1.0) ** -s[:, None], 0.0)
    return np.cumsum(w, axis=1)


def _csum(n: np.ndarray, s: np.ndarray, pre: np.ndarray) -> np.ndarray:
    """C(n) = sum_{k=1..n} k^-s for integer-valued float n [T] or [T, E] (s [T] or [T, 1]),
    exact below _EM, Euler-Maclaurin above (error far below 1e-9 relative)."""
    m = float(_EM)
    idx = np.clip(n, 0, _EM - 1).astype(np.int64)
    if n.ndim == 2:
        exact = np.take_along_axis(pre, idx, axis=1)
        base = pre[:, _EM - 1 : _EM]
    else:
        exact = pre[np.arange(len(n)), idx]
        base = pre[:, _EM - 1]
    nn = np.maximum(n, m)
    one = 1.0 - s
    near1 = np.abs(one) < 1e-9
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        integ = np.where(near1, np.log(nn / m), (nn**one - m**one) / np.where(near1, 1.0, one))
    em = (base + integ + (m**-s + nn**-s) / 2 + s / 12 * (m ** (-s - 1) - nn ** (-s - 1))
          - s * (s + 1) * (s + 2) / 720 * (m ** (-s - 3) - nn ** (-s - 3)))
    return np.where(n < m, exact, em)


def expected_reuse(rows: Any, lookups: Any, zipf: Any, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Expected reuse statistics of one batch of `lookups` Zipf(`zipf`) draws over `rows` rows
    (what `generate_indices` draws), per table (arguments broadcast to [T]):
    - "reuse_bins" [T, 17]: share of accesses on rows whose hit count falls in each bin;
    - "unique" [T]: expected distinct rows;
    - "unique_rows" [T, 17]: expected number of distinct rows per hit-count bin.
    """
    rows, lookups, zipf = np.broadcast_arrays(np.asarray(rows, np.float64), np.asarray(lookups, np.float64),
                                              np.asarray(zipf, np.float64))
    rows, lookups, zipf = rows.ravel(), lookups.ravel(), zipf.ravel()
    out = {"reuse_bins": np.zeros((rows.size, NUM_BINS)), "unique": np.zeros(rows.size),
           "unique_rows": np.zeros((rows.size, NUM_BINS))}
    for a in range(0, rows.size, chunk):
        sl = slice(a, a + chunk)
        acc, uniq, urow = _expected_chunk(rows[sl], lookups[sl], zipf[sl])
        out["reuse_bins"][sl], out["unique"][sl], out["unique_rows"][sl] = acc, uniq, urow
    return out


def _expected_chunk(R: np.ndarray, N: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fine, edges, cells = _tables()
    s = np.maximum(s, 1e-6)
    R = np.maximum(np.round(R), 1.0)
    N = np.maximum(N, 1e-12)
    pre = _prefix(s)
    Z = _csum(R, s, pre)
    sc = s[:, None]
    # the hottest rows one by one: p_r = r^-s / Z, lambda_r = N p_r
    r = np.arange(1, _HEAD + 1, dtype=np.float64)[None, :]
    live = r <= R[:, None]
    p = np.where(live, r**-sc / Z[:, None], 0.0)
    lam = N[:, None] * p
    x = (np.log(np.clip(lam, _LMIN, _LMAX)) - math.log(_LMIN)) / math.log(_FINE)
    i = np.clip(np.floor(x).astype(np.int64), 0, len(fine) - 2)
    f = np.clip(x - i, 0.0, 1.0)
    w0, w1 = np.where(live, 1 - f, 0.0), np.where(live, f, 0.0)
    g0, g1 = fine[i], fine[i + 1]
    acc = (np.einsum("tk,tkb->tb", p * w0, g0[..., :NUM_BINS])
           + np.einsum("tk,tkb->tb", p * w1, g1[..., :NUM_BINS]))
    urow = (np.einsum("tk,tkb->tb", w0, g0[..., NUM_BINS:-1]) + np.einsum("tk,tkb->tb", w1, g1[..., NUM_BINS:-1]))
    uniq = np.where(live, -np.expm1(-lam), 0.0).sum(axis=1)
    # the other rows by cell of expected hits: rank counts and access mass per cell
    kt = np.minimum(float(_HEAD), R)
    ck = _csum(kt, s, pre)
    with np.errstate(over="ignore", divide="ignore"):
        xr = (N[:, None] / (Z[:, None] * edges[None, :])) ** (1.0 / sc)  # ranks with lambda >= edge
    n = np.clip(np.floor(xr), kt[:, None], R[:, None])
    mcum = (_csum(n, sc, pre) - ck[:, None]) / Z[:, None]
    mass = np.empty((R.size, edges.size + 1))
    mass[:, 0] = np.maximum(1.0 - ck / Z, 0.0) - mcum[:, 0]
    mass[:, 1:-1] = mcum[:, :-1] - mcum[:, 1:]
    mass[:, -1] = mcum[:, -1]
    np.maximum(mass, 0.0, out=mass)
    cnt = np.empty_like(mass)
    cnt[:, 0] = R - n[:, 0]
    cnt[:, 1:-1] = n[:, :-1] - n[:, 1:]
    cnt[:, -1] = n[:, -1] - kt
    acc += mass @ cells[:, :NUM_BINS]
    urow += cnt @ cells[:, NUM_BINS:-1]
    uniq += cnt @ cells[:, -1]
    acc /= np.maximum(acc.sum(axis=1, keepdims=True), 1e-300)
    return acc, uniq, urow


def expected_bag_moments(pooling: Any, cv: Any, terms: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the bag sizes `generate_indices` draws: rint(max(0, gamma(mean=pooling,
    cv))) (fixed round(pooling) when cv == 0). Exact sums over the first `terms` sizes plus the
    gamma tail integral beyond."""
    from scipy.special import gammaincc

    def gsf(x: Any, shape: Any, scale: Any) -> np.ndarray:  # gamma survival function
        return gammaincc(shape, np.asarray(x) / scale)

    m, c = np.broadcast_arrays(np.asarray(pooling, np.float64), np.asarray(cv, np.float64))
    m, c = m.ravel(), c.ravel()
    mean, std = np.round(m).astype(np.float64), np.zeros(m.size)
    v = c > 0
    if v.any():
        k = 1.0 / c[v] ** 2
        sc = m[v] / k
        j = np.arange(1, terms + 1, dtype=np.float64)[None, :]
        sf = gsf(j - 0.5, k[:, None], sc[:, None])  # P(Y >= j)
        J = float(terms)
        # sizes beyond J by the midpoint rule: E[(X - J)+] and E[(X^2 - J^2)+] of the gamma
        t1 = m[v] * gsf(J, k + 1, sc) - J * gsf(J, k, sc)
        ex2 = m[v] * (m[v] + sc)  # E[X^2]
        t2 = ex2 * gsf(J, k + 2, sc) - J * J * gsf(J, k, sc)
        e1 = sf.sum(axis=1) + np.maximum(t1, 0.0)
        e2 = ((2 * j - 1) * sf).sum(axis=1) + np.maximum(t2, 0.0)
        mean[v] = e1
        std[v] = np.sqrt(np.maximum(e2 - e1 * e1, 0.0))
    return mean, std


def pooling_for_mean(mean: Any, cv: Any, iterations: int = 12) -> np.ndarray:
    """The `pooling` (gamma mean) whose rounded bags (`generate_indices`) have mean bag size
    `mean` at coefficient of variation `cv`: `mean` itself where rounding changes the mean by
    under 0.01%, else Newton steps on log(pooling)."""
    m, c = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(cv, np.float64))
    m, c = m.ravel(), c.ravel()
    out = np.maximum(m, 1e-6)
    em, _ = expected_bag_moments(out, c)
    fix = np.flatnonzero((c > 0) & (m > 0) & (np.abs(em - m) > 1e-4 * m))
    x, target = np.log(out[fix]), np.log(m[fix])
    for _ in range(iterations):
        if fix.size == 0:
            break
        e0, _ = expected_bag_moments(np.exp(x), c[fix])
        e1, _ = expected_bag_moments(np.exp(x + 1e-4), c[fix])
        f0 = np.log(np.maximum(e0, 1e-300)) - target
        d = np.maximum((np.log(np.maximum(e1, 1e-300)) - np.log(np.maximum(e0, 1e-300))) / 1e-4, 0.05)
        x = x - np.clip(f0 / d, -2.0, 2.0)
        out[fix] = np.exp(x)
        ok = np.abs(f0) < 1e-7
        fix, x, target = fix[~ok], x[~ok], target[~ok]
    return out


def fit_bag_params(mean: Any, std: Any, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(pooling, cv) such that the generator's bag sizes have the given mean and std (fixed-point
    iteration from the moment-matched gamma; tables with std 0 get cv 0, fixed bags)."""
    m = np.maximum(np.asarray(mean, np.float64).ravel(), 0.0)
    sd = np.maximum(np.asarray(std, np.float64).ravel(), 0.0)
    p = np.maximum(m, 1e-3)
    cv = np.where(m > 0, sd / np.maximum(m, 1e-12), 0.0)
    live = (cv > 0) & (m > 0)
    for _ in range(iterations):
        if not live.any():
            break
        em, es = expected_bag_moments(p[live], cv[live])
        p[live] = np.clip(p[live] * m[live] / np.maximum(em, 1e-9), 1e-3, 1e7)
        cv[live] = np.clip(cv[live] * sd[live] / np.maximum(es, 1e-9), 1e-3, 20.0)
    return p, cv


# ---------------------------------------------------------------------------------------------
# Synthetic pool


def _lhs(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Latin-hypercube uniforms [n, d]: each column stratified into n equal slices."""
    perm = np.argsort(rng.random((d, n)), axis=1).T
    return (perm + rng.random((n, d))) / n


def _draw_candidates(m: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from scipy.special import ndtri

    u = _lhs(m, 4, rng)
    lo, hi = PRIOR["rows_log10"]
    rows = np.round(10 ** (lo + (hi - lo) * u[:, 0]))
    bag = np.exp(math.log(PRIOR["bag_median"]) + PRIOR["bag_log_sd"] * ndtri(u[:, 1]))
    bag = np.clip(bag, *PRIOR["bag_clip"])
    zlo, zhi = PRIOR["zipf"]
    zipf = np.round(zlo + (zhi - zlo) * u[:, 2], 4)
    clo, chi = PRIOR["pooling_cv"]
    cv = np.round(clo + (chi - clo) * u[:, 3], 3)
    pooling = np.round(pooling_for_mean(bag, cv), 4)
    return {"rows": rows, "pooling": pooling, "zipf": zipf, "cv": cv}


class _Objective:
    """Squared error of a selection's aggregate statistics against the targets, from per-table
    contributions F [M, D]: columns 0..16 lookups x access bins, 17 lookups, 18 unique rows,
    19..35 unique rows per bin."""

    def __init__(self, target: dict[str, Any], n: int, batch: int):
        self.t_bins = np.asarray(target["reuse_bins"], np.float64)
        self.t_urow = np.asarray(target["unique_row_bins"], np.float64)
        self.t_apu = float(target["accesses_per_unique"])
        self.t_pool = float(target["mean_pooling"])
        self.n, self.batch = n, batch

    def stats(self, S: np.ndarray) -> dict[str, np.ndarray]:
        look = S[..., 17]
        return {"bins": S[..., :17] / look[..., None], "apu": look / S[..., 18],
                "pool": look / (self.n * self.batch), "urow": S[..., 19:36] / S[..., 18:19]}

    def good(self, S: np.ndarray, bin_tol: float = 0.001, rel_tol: float = 0.002) -> bool:
        """Every target met to within the published rounding (0.001 per bin, 0.2% otherwise)."""
        st = self.stats(S)
        return bool(np.abs(st["bins"] - self.t_bins).max() <= bin_tol
                    and np.abs(st["urow"] - self.t_urow).max() <= 2 * bin_tol
                    and abs(st["apu"] / self.t_apu - 1) <= rel_tol and abs(st["pool"] / self.t_pool - 1) <= rel_tol)

    def __call__(self, S: np.ndarray) -> np.ndarray:
        st = self.stats(S)
        return (((st["bins"] - self.t_bins) ** 2).sum(-1)
                + 0.25 * ((st["urow"] - self.t_urow) ** 2).sum(-1)
                + (0.25 * np.log(st["apu"] / self.t_apu)) ** 2
                + (0.5 * np.log(st["pool"] / self.t_pool)) ** 2)


def _tilted_weights(F: np.ndarray, n: int, obj: _Objective, alpha: float = 1e-3) -> np.ndarray:
    """Inclusion weights w in (0, 1], summing to n, that reweight the prior as little as possible
    while matching the targets: minimise obj(w @ F) + alpha * KL(w / mean || 1) / M by L-BFGS-B
    from the uniform n / M."""
    from scipy.optimize import minimize

    m = F.shape[0]
    wbar = n / m
    scale = np.maximum(np.abs(F).max(0), 1e-30)

    def fg(w: np.ndarray) -> tuple[float, np.ndarray]:
        S = w @ F
        loss = float(obj(S))
        h = 1e-7 * np.maximum(np.abs(S), scale * 1e-3)
        g = (obj(S[None, :] + np.diag(h)) - loss) / h
        gap = (w.sum() - n) / n
        r = w / wbar
        kl = alpha * float(np.sum(r * np.log(r))) / m
        return loss + 10 * gap * gap + kl, F @ g + 20 * gap / n + alpha * (np.log(r) + 1) / (wbar * m)

    res = minimize(fg, np.full(m, wbar), jac=True, method="L-BFGS-B", bounds=[(1e-9 * wbar, 1.0)] * m,
                   options={"maxiter": 200})
    w = np.clip(res.x, 1e-9 * wbar, 1.0)
    for _ in range(20):  # rescale to sum n, keeping every weight <= 1
        free = w < 1.0
        short = n - w[~free].sum()
        if free.any() and short > 0:
            w[free] *= short / w[free].sum()
        w = np.minimum(w, 1.0)
        if abs(w.sum() - n) < 1e-9 * n:
            break
    return w


def _systematic(w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct indices, index i included with probability w[i] (systematic sampling)."""
    c = np.cumsum(w)
    pick = np.unique(np.searchsorted(c, rng.random() + np.arange(n), side="right").clip(0, w.size - 1))
    if pick.size < n:  # rounding at the ends: top up from the rest
        rest = np.setdiff1d(np.arange(w.size), pick)
        pick = np.union1d(pick, rng.choice(rest, n - pick.size, replace=False))
    return pick


def _select(F: np.ndarray, n: int, obj: _Objective, rng: np.random.Generator,
            max_rounds: int = 4000, max_exhaustive: int = 150, start: np.ndarray | None = None) -> np.ndarray:
    """Indices of n rows of F whose sum minimises obj: from `start` (default a seeded random
    set), swaps of one member for one non-member while one improves. Each round tries the 48 x 48
    pairs the loss gradient ranks best; when none of those improves, 8 random members are tried
    against every non-member. The search stops when every member has been tried so without
    improvement, when every target is met to within the published rounding (`obj.good`), or
    after `max_rounds` rounds or `max_exhaustive` exhaustive tries (bounded time; deterministic)."""
    m = F.shape[0]
    if m <= n:
        return np.arange(m)
    inside = np.zeros(m, bool)
    inside[rng.choice(m, n, replace=False) if start is None else start] = True
    mem, out = np.flatnonzero(inside), np.flatnonzero(~inside)
    S = F[mem].sum(0)
    loss = float(obj(S))
    scale = np.maximum(np.abs(F).max(0), 1e-30)
    Fs = F / scale  # gradient in scaled coordinates
    untried = np.ones(n, bool)  # members not yet tried exhaustively against the current S
    q, top = 8, 48
    for _ in range(max_rounds):
        if obj.good(S):
            break
        # first-order screen: removing i changes S by -F_i, adding j by +F_j
        h = 1e-7 * np.maximum(np.abs(S), scale * 1e-3)
        g = (obj(S[None, :] + np.diag(h)) - loss) / h * scale
        a = np.argsort(-(Fs[mem] @ g))[: min(top, n)]
        b = np.argsort(Fs[out] @ g)[: min(top, out.size)]
        cand = S[None, None, :] - F[mem[a]][:, None, :] + F[out[b]][None, :, :]
        lc = obj(cand)
        k = int(np.argmin(lc))
        ia, ib = a[k // b.size], b[k % b.size]
        if lc.flat[k] >= loss - 1e-15:
            if not untried.any() or max_exhaustive <= 0:
                break
            max_exhaustive -= 1
            pos = rng.choice(np.flatnonzero(untried), size=min(q, int(untried.sum())), replace=False)
            cand = S[None, None, :] - F[mem[pos]][:, None, :] + F[out][None, :, :]
            lc = obj(cand)
            k = int(np.argmin(lc))
            if lc.flat[k] >= loss - 1e-15:
                untried[pos] = False
                continue
            ia, ib = pos[k // out.size], k % out.size
        S = S - F[mem[ia]] + F[out[ib]]
        loss = float(obj(S))
        mem[ia], out[ib] = out[ib], mem[ia]
        untried[:] = True
    return np.sort(mem)


def _quantiles(v: np.ndarray, digits: int = 4) -> dict[str, float]:
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    out = {f"p{int(q * 100)}": round(float(np.quantile(v, q)), digits) for q in qs}
    out.update(min=round(float(v.min()), digits), max=round(float(v.max()), digits),
               mean=round(float(v.mean()), digits))
    return out


def _r6(v: Any) -> list[float]:
    return [round(float(x), 6) for x in np.asarray(v).ravel()]


def make_pool(n_tables: int = 856, seed: int = 0, *, dim: int = DEFAULT_DIM, check_tables: int = 24,
              check_indices: int = 16_000_000, dtype: str = "fp32") -> TablePool:
    """A synthetic pool of `n_tables` tables calibrated to the published 2021 aggregate statistics
    (see the module docstring for the assumptions). Deterministic in (n_tables, seed).
    `check_tables`/`check_indices`: the subset sampled with `generate_indices` at batch 65536 to
    check the analytic reuse (0 to skip)."""
    if n_tables < 1:
        raise ConfigError(f"--tables must be >= 1, got {n_tables}")
    if dim < 1:
        raise ConfigError(f"--dim must be >= 1, got {dim}")
    if check_tables < 0:
        raise ConfigError(f"--check-tables must be >= 0, got {check_tables}")
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0x9001])
    m = max(PRIOR["candidates_per_table"] * n_tables, PRIOR["min_candidates"])
    cand = _draw_candidates(m, rng)
    bag_mean, _ = expected_bag_moments(cand["pooling"], cand["cv"])
    lookups = DATASET_BATCH * bag_mean
    ex = expected_reuse(cand["rows"], lookups, cand["zipf"])
    F = np.concatenate([lookups[:, None] * ex["reuse_bins"], lookups[:, None], ex["unique"][:, None],
                        ex["unique_rows"]], axis=1)
    obj = _Objective(PUBLISHED, n_tables, DATASET_BATCH)
    w = _tilted_weights(F, n_tables, obj, PRIOR["tilt_kl_weight"])
    best = None
    for _ in range(1 + (PRIOR["resamples"] if n_tables < 512 else 0)):
        if best is not None and obj.good(F[best[1]].sum(0)):
            break
        start = _systematic(w, n_tables, rng)
        cand_sel = _select(F, n_tables, obj, rng, start=start)
        loss = float(obj(F[cand_sel].sum(0)))
        if best is None or loss < best[0]:
            best = (loss, cand_sel, int(np.setdiff1d(cand_sel, start).size))
    sel, swaps = best[1], best[2]
    width = max(3, len(str(n_tables - 1)))
    tables = [
        ShardTable(name=f"t{i:0{width}d}", rows=int(cand["rows"][j]), dim=dim, pooling=float(cand["pooling"][j]),
                   zipf=float(cand["zipf"][j]), pooling_cv=float(cand["cv"][j]),
                   reuse=_r6(ex["reuse_bins"][j]), dtype=dtype)  # type: ignore[arg-type]
        for i, j in enumerate(sel)
    ]
    st = obj.stats(F[sel].sum(0))
    achieved = {
        "mean_pooling": round(float(st["pool"]), 6),
        "accesses_per_unique": round(float(st["apu"]), 6),
        "reuse_bins": _r6(st["bins"]),
        "unique_row_bins": _r6(st["urow"]),
        "indices_per_batch": round(float(F[sel, 17].sum())),
        "unique_rows_per_batch": round(float(F[sel, 18].sum())),
    }
    target = {k: PUBLISHED[k] for k in ("file", "tables", "batch_size", "mean_pooling", "accesses_per_unique",
                                        "reuse_bins", "unique_row_bins")}
    target["mean_pooling"] = round(target["mean_pooling"], 6)
    target["accesses_per_unique"] = round(target["accesses_per_unique"], 6)
    calib: dict[str, Any] = {
        "method": "n of max(8n, 2048) prior candidates, sampled with KL-minimal inclusion weights that match the "
                  "published aggregates, then swapped to remove the sampling error (analytic expected reuse of "
                  "generate_indices at batch 65536); a subset checked by sampling",
        "batch_size": DATASET_BATCH,
        "seed": seed,
        "target": target,
        "achieved": achieved,
        "error": _errors(achieved, target),
        "tolerance": tolerance_for(n_tables),
        "assumptions": ASSUMPTIONS,
        "prior": PRIOR,
        "candidates": m,
        "weights": {"max_over_mean": round(float(w.max() / (n_tables / m)), 3),
                    "effective_share": round(float(w.sum() ** 2 / (w**2).sum() / m), 4)},
        "swaps_after_sampling": swaps,
        "marginals": {
            "rows": _quantiles(cand["rows"][sel], 0),
            "pooling": _quantiles(cand["pooling"][sel]),
            "mean_bag_size": _quantiles(bag_mean[sel]),
            "zipf": _quantiles(cand["zipf"][sel]),
            "pooling_cv": _quantiles(cand["cv"][sel]),
            "top10_share_of_lookups": round(float(np.sort(lookups[sel])[::-1][:10].sum() / lookups[sel].sum()), 4),
        },
    }
    if check_tables:
        calib["sampled_check"] = sampled_check(tables, DATASET_BATCH, seed, check_tables, check_indices)
    calib["seconds"] = round(time.perf_counter() - t0, 2)
    return TablePool(name=f"meta2021-t{n_tables}-s{seed}", seed=seed,
                     source="synthetic; calibrated to Meta's open DLRM dataset (locality stats 2021, "
                            "fbgemm_t856_bs65536)", tables=tables, calibration=calib)


def _errors(achieved: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    d = np.asarray(achieved["reuse_bins"]) - np.asarray(target["reuse_bins"])
    du = np.asarray(achieved["unique_row_bins"]) - np.asarray(target["unique_row_bins"])
    return {
        "reuse_bins": _r6(d),
        "max_abs_reuse_bin": round(float(np.abs(d).max()), 6),
        "unique_row_bins": _r6(du),
        "max_abs_unique_row_bin": round(float(np.abs(du).max()), 6),
        "accesses_per_unique_rel": round(achieved["accesses_per_unique"] / target["accesses_per_unique"] - 1, 6),
        "mean_pooling_rel": round(achieved["mean_pooling"] / target["mean_pooling"] - 1, 6),
    }


def sampled_check(tables: list[ShardTable], batch_size: int, seed: int, max_tables: int = 24,
                  max_indices: int = 16_000_000) -> dict[str, Any]:
    """Sample a seeded subset of `tables` (up to `max_tables` tables, about `max_indices` indices)
    with `generate_indices` at `batch_size` and compare the subset's measured aggregate reuse with
    the analytic one at the lookups each table actually drew (the bag-size draw moves a table's
    lookups by about 1/sqrt(batch); near-uniform tables' histograms are sensitive to that)."""
    from recstack.data.stats import reuse_bin_sums
    from recstack.shard.indices import generate_indices

    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0xC4EC])
    bag_mean, _ = expected_bag_moments([t.pooling for t in tables], [t.pooling_cv for t in tables])
    look = batch_size * bag_mean
    chosen: list[int] = []
    budget = 0.0
    for i in rng.permutation(len(tables)):
        if len(chosen) >= max_tables:
            break
        if budget + look[i] <= max_indices:
            chosen.append(int(i))
            budget += look[i]
    if not chosen:
        return {"tables": [], "note": f"no table fits in {max_indices} sampled indices"}
    acc_s, urow_s = np.zeros(NUM_BINS), np.zeros(NUM_BINS)
    drawn = np.zeros(len(chosen))
    for k, i in enumerate(chosen):
        ids = generate_indices(tables[i], batch_size, seed)[0].numpy()
        drawn[k] = ids.size
        if ids.size:
            a, u = reuse_bin_sums(np.unique(ids, return_counts=True)[1])
            acc_s += a
            urow_s += u
    sub = [tables[i] for i in chosen]
    ex = expected_reuse([t.rows for t in sub], drawn, [t.zipf for t in sub])
    acc_a = (drawn[:, None] * ex["reuse_bins"]).sum(0) / max(drawn.sum(), 1.0)
    sampled = acc_s / max(acc_s.sum(), 1.0)
    apu_a = float(drawn.sum() / max(ex["unique"].sum(), 1e-9))
    apu_s = float(drawn.sum() / max(urow_s.sum(), 1.0))
    return {
        "tables": [t.name for t in sub],
        "batch_size": batch_size,
        "indices": int(drawn.sum()),
        "expected_indices": round(float(look[chosen].sum())),
        "analytic_reuse_bins": _r6(acc_a),
        "sampled_reuse_bins": _r6(sampled),
        "max_abs_bin_diff": round(float(np.abs(sampled - acc_a).max()), 6),
        "analytic_accesses_per_unique": round(apu_a, 4),
        "sampled_accesses_per_unique": round(apu_s, 4),
        "accesses_per_unique_rel_diff": round(apu_s / apu_a - 1, 6),
        "seconds": round(time.perf_counter() - t0, 2),
    }


# ---------------------------------------------------------------------------------------------
# Pools from data


def fit_zipf(rows: Any, lookups: Any, reuse_bins: Any, accesses_per_unique: Any,
             s_max: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per table, the Zipf exponent whose expected reuse at (`rows`, `lookups`) best matches the
    measured `reuse_bins` [T, 17] and `accesses_per_unique` [T] (squared bin error plus
    (0.25 log ratio)^2 of accesses per unique row): a 0.05 grid on [0, s_max], then a 0.005 grid
    around the best. Returns (zipf [T], expected reuse bins at the fit [T, 17])."""
    R = np.asarray(rows, np.float64).ravel()
    N = np.asarray(lookups, np.float64).ravel()
    B = np.asarray(reuse_bins, np.float64).reshape(R.size, NUM_BINS)
    A = np.asarray(accesses_per_unique, np.float64).ravel()

    def losses(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # grid [T, G]
        g = grid.shape[1]
        ex = expected_reuse(np.repeat(R, g), np.repeat(N, g), grid.ravel())
        bins = ex["reuse_bins"].reshape(R.size, g, NUM_BINS)
        apu = (np.repeat(N, g) / np.maximum(ex["unique"], 1e-12)).reshape(R.size, g)
        loss = ((bins - B[:, None, :]) ** 2).sum(-1) + (0.25 * np.log(apu / np.maximum(A, 1e-12)[:, None])) ** 2
        return loss, bins

    grid = np.arange(0.0, s_max + 1e-9, 0.05)
    coarse = np.broadcast_to(grid, (R.size, grid.size))
    loss, _ = losses(coarse)
    best = coarse[np.arange(R.size), np.argmin(loss, axis=1)]
    fine = np.clip(best[:, None] + np.arange(-10, 11) * 0.005, 0.0, s_max)
    loss, bins = losses(fine)
    k = np.argmin(loss, axis=1)
    return np.round(fine[np.arange(R.size), k], 4), bins[np.arange(R.size), k]



def _config_tables(config: str | None, scale: float) -> dict[str, Any] | None:
    if config is None:
        return None
    from recstack.spec import load_model_spec

    spec = load_model_spec(config, scale=scale)
    return {t.name: t for t in spec.tables}


def _store_config_dims(stats: dict[str, Any]) -> tuple[dict[str, int], str] | None:
    """Table dims from the model config the stats' store was synthesised from (its meta.json
    provenance), when that store and config can still be found."""
    try:
        meta = json.loads((Path(stats["store"]) / "meta.json").read_text())
        prov = meta.get("provenance") or {}
        cfg = prov.get("config")
        if not cfg:
            return None
        from recstack.spec import load_model_spec

        spec = load_model_spec(cfg, scale=prov.get("scale") or 1.0)
        return {t.name: t.dim for t in spec.tables}, f"model config {cfg} (store provenance)"
    except Exception:  # noqa: BLE001 (best effort: fall back to --dim)
        return None


def _need(obj: Any, key: str, where: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    v = obj[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise DataError(f"{where}.{key}: expected {getattr(kind, '__name__', 'a number')}, got {v!r}"[:200])
    return v


def _data_pool(name: str, source: str, names: list[str], rows: np.ndarray, dims: list[int], lookups: np.ndarray,
               bins: np.ndarray, apu: np.ndarray, bag_mean: np.ndarray, bag_std: np.ndarray, batch: int,
               dtype: str, extra: dict[str, Any]) -> TablePool:
    t0 = time.perf_counter()
    live = lookups > 0
    zipf = np.zeros(len(names))
    fit_bins = np.zeros((len(names), NUM_BINS))
    if live.any():
        zipf[live], fit_bins[live] = fit_zipf(rows[live], lookups[live], bins[live], apu[live])
    pooling, cv = fit_bag_params(bag_mean, bag_std)
    gm, gs = expected_bag_moments(pooling, cv)
    tables, per = [], []
    for i, nm in enumerate(names):
        tables.append(ShardTable(name=nm, rows=int(rows[i]), dim=int(dims[i]),
                                 pooling=round(float(max(pooling[i], 1e-3)), 6), zipf=float(zipf[i]),
                                 pooling_cv=round(float(cv[i]), 6), reuse=_r6(bins[i]),
                                 dtype=dtype))  # type: ignore[arg-type]
        per.append({
            "name": nm, "zipf": float(zipf[i]), "lookups_per_batch": round(float(lookups[i]), 3),
            "max_abs_bin_err": round(float(np.abs(fit_bins[i] - bins[i]).max()), 6) if live[i] else None,
            "fitted_reuse_bins": _r6(fit_bins[i]),
            "bag_mean": [round(float(bag_mean[i]), 6), round(float(gm[i]), 6)],
            "bag_std": [round(float(bag_std[i]), 6), round(float(gs[i]), 6)],
        })
    w = lookups / max(lookups.sum(), 1e-12)
    ex = expected_reuse(rows[live], lookups[live], zipf[live]) if live.any() else None
    pool_bins = (w[live, None] * fit_bins[live]).sum(0) if live.any() else np.zeros(NUM_BINS)
    data_bins = (w[:, None] * bins).sum(0)
    data_unique = float((lookups / np.maximum(apu, 1e-12))[live].sum())
    errs = [p["max_abs_bin_err"] for p in per if p["max_abs_bin_err"] is not None]
    calib = {
        "method": "per table: rows and dim from the data/config; pooling and pooling_cv fitted so "
                  "generate_indices' rounded gamma bags have the measured mean and std; Zipf exponent fitted "
                  "to the measured reuse histogram and accesses per unique row at the measured lookups per batch",
        "source": source,
        "batch_size": batch,
        **extra,
        "tables": per,
        "max_abs_bin_err": {"max": round(max(errs), 6) if errs else None,
                            "median": round(float(np.median(errs)), 6) if errs else None},
        "aggregate": {
            "data": {"reuse_bins": _r6(data_bins),
                     "accesses_per_unique": round(float(lookups.sum() / max(data_unique, 1e-12)), 6),
                     "mean_pooling": round(float(lookups.sum() / (batch * len(names))), 6)},
            "pool": {"reuse_bins": _r6(pool_bins),
                     "accesses_per_unique": round(float(lookups[live].sum() / max(ex["unique"].sum(), 1e-12)), 6)
                     if ex is not None else 0.0,
                     "mean_pooling": round(float(batch * gm.sum() / (batch * len(names))), 6)},
            "max_abs_bin_diff": round(float(np.abs(pool_bins - data_bins).max()), 6),
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return TablePool(name=name, seed=0, source=source, tables=tables, calibration=calib)


def _resolve_dims(names: list[str], per_table: list[Any], cfg: dict[str, Any] | None,
                  fallback: tuple[dict[str, int], str] | None, dim: int | None,
                  config: str | None) -> tuple[list[int], str]:
    if dim is not None and dim < 1:
        raise ConfigError(f"--dim must be >= 1, got {dim}")
    if all(d is not None for d in per_table):
        return [int(d) for d in per_table], "data file"
    if cfg is not None:
        missing = [n for n in names if n not in cfg]
        if missing:
            raise ConfigError(f"--config {config}: no table {missing[0]!r} (has {', '.join(list(cfg)[:6])}...)")
        return [int(cfg[n].dim) for n in names], f"model config {config}"
    if fallback is not None and all(n in fallback[0] for n in names):
        return [fallback[0][n] for n in names], fallback[1]
    d = dim if dim is not None else DEFAULT_DIM
    return [d] * len(names), f"--dim {d}" if dim is not None else f"default dim {d} (no dims in the data; --dim)"


def pool_from_stats(path: str | Path, *, dim: int | None = None, config: str | None = None, scale: float = 1.0,
                    dtype: str = "fp32") -> TablePool:
    """A pool from the JSON `recstack data stats --out` writes: one table per stats table.
    Dims: a per-table `dim` in the file, else `config` (a model config, matched by table name),
    else the config recorded in the stats' store provenance (if found), else `dim` (default 16)."""
    p = Path(path)
    st = read_json(p, "file")
    where = str(p)
    tabs = _need(st, "tables", where, list)
    if not tabs:
        raise DataError(f"{where}: tables: empty")
    batch = int(_need(st, "batch_size", where))
    names, rows, look, bins, apu, bm, bsd, dims = [], [], [], [], [], [], [], []
    for i, t in enumerate(tabs):
        w = f"{where}: tables[{i}]"
        names.append(str(_need(t, "name", w, str)))
        rows.append(int(_need(t, "rows", w)))
        look.append(float(_need(t, "accesses_per_batch", w)))
        rb = _need(t, "reuse_bins", w, list)
        if len(rb) != NUM_BINS:
            raise DataError(f"{w}.reuse_bins: expected {NUM_BINS} bins, got {len(rb)}")
        bins.append([float(x) for x in rb])
        apu.append(float(_need(t, "accesses_per_unique", w)))
        pl = _need(t, "pooling", w, dict)
        bm.append(float(_need(pl, "mean", f"{w}.pooling")))
        bsd.append(float(_need(pl, "std", f"{w}.pooling")))
        dims.append(t.get("dim"))
        if rows[-1] < 1:
            raise DataError(f"{w}.rows: must be >= 1, got {rows[-1]}")
    cfg = _config_tables(config, scale)
    fallback = _store_config_dims(st) if cfg is None and not all(d is not None for d in dims) else None
    dl, dsrc = _resolve_dims(names, dims, cfg, fallback, dim, config)
    return _data_pool(f"stats-{p.stem}", f"recstack data stats: {p}", names, np.array(rows, np.float64), dl,
                      np.array(look), np.array(bins), np.array(apu), np.array(bm), np.array(bsd), batch, dtype,
                      {"dim_source": dsrc, "rows_source": "stats JSON", "store": st.get("store")})


def pool_from_indices(path: str | Path, *, dim: int | None = None, config: str | None = None, scale: float = 1.0,
                      dtype: str = "fp32") -> TablePool:
    """A pool from an index dump (`recstack trace capture --save-indices` writes
    `rank<R>.indices.npz`: indices, offsets [T*B+1], num_tables, batch_size; table-major).
    Rows: from `config` (the model config the capture ran, at its `scale`) when given, else the
    largest index + 1 (a lower bound, as DreamShard takes it). Dims: `config`, else `dim`."""
    from recstack.data.stats import reuse_bin_sums

    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: not a readable .npz index dump ({e})") from None
    with z:
        missing = [k for k in ("indices", "offsets", "num_tables", "batch_size") if k not in z.files]
        if missing:
            raise DataError(f"{p}: missing array {missing[0]!r} (has {', '.join(z.files) or 'none'})")
        idx = np.asarray(z["indices"]).astype(np.int64).ravel()
        off = np.asarray(z["offsets"]).astype(np.int64).ravel()
        T, B = int(z["num_tables"]), int(z["batch_size"])
    if T < 1 or B < 1:
        raise DataError(f"{p}: num_tables {T} and batch_size {B} must be >= 1")
    if off.size != T * B + 1:
        raise DataError(f"{p}: offsets has {off.size} entries, expected num_tables x batch_size + 1 = {T * B + 1}")
    if off[0] != 0 or (np.diff(off) < 0).any() or off[-1] != idx.size:
        raise DataError(f"{p}: offsets must start at 0, never decrease and end at len(indices) = {idx.size}")
    if idx.size and idx.min() < 0:
        raise DataError(f"{p}: indices: negative row id {int(idx.min())}")
    cfg = _config_tables(config, scale)
    if cfg is not None and len(cfg) != T:
        raise ConfigError(f"--config {config}: {len(cfg)} tables, the dump {p} has {T} (a multi-rank capture's "
                          f"rank<R> file holds only that rank's tables; omit --config)")
    names = list(cfg) if cfg is not None else [f"t{t}" for t in range(T)]
    rows, look, bins, apu, bm, bsd = [], [], [], [], [], []
    for t in range(T):
        o = off[t * B : (t + 1) * B + 1]
        ids = idx[o[0] : o[-1]]
        lengths = np.diff(o)
        top = int(ids.max()) + 1 if ids.size else 1
        if cfg is not None:
            r = int(cfg[names[t]].rows)
            if top > r:
                raise DataError(f"{p}: table {t} ({names[t]}) has row id {top - 1} >= {r} rows of --config {config}"
                                f" at --scale {scale:g}")
        else:
            r = top
        rows.append(r)
        look.append(float(ids.size))
        if ids.size:
            cnt = np.unique(ids, return_counts=True)[1]  # one sort per table: bins and accesses per row
            acc, _ = reuse_bin_sums(cnt)
            bins.append(acc / acc.sum())
            apu.append(ids.size / cnt.size)
        else:
            bins.append(np.zeros(NUM_BINS))
            apu.append(0.0)
        bm.append(float(lengths.mean()))
        bsd.append(float(lengths.std()))
    dl, dsrc = _resolve_dims(names, [None] * T, cfg, None, dim, config)
    return _data_pool(f"indices-{p.stem.replace('.indices', '')}", f"index dump: {p}", names,
                      np.array(rows, np.float64), dl, np.array(look), np.array(bins), np.array(apu), np.array(bm),
                      np.array(bsd), B, dtype,
                      {"dim_source": dsrc, "rows_source": f"model config {config}" if cfg is not None
                       else "largest index + 1 (lower bound)"})


# ---------------------------------------------------------------------------------------------
# Files and plot


def load_pool(path: str | Path) -> TablePool:
    """A `TablePool` JSON (what `recstack shard pool` writes); errors name the file and field."""
    from recstack.spec.loader import load_json_model

    return load_json_model(TablePool, path, "file")


def save_pool(pool: TablePool, path: str | Path) -> Path:
    from recstack.io import atomic_write_json

    atomic_write_json(path, pool.model_dump())
    return Path(path)


def pool_summary(pool: TablePool) -> dict[str, Any]:
    """What the CLI prints: per-bin target (or data), achieved and error, and the headline numbers."""
    c = pool.calibration
    if "target" in c:
        ref, ach = c["target"], c["achieved"]
        ref_label = "published 2021"
    else:
        ref, ach = c["aggregate"]["data"], c["aggregate"]["pool"]
        ref_label = "data"
    out = {
        "ref_label": ref_label,
        "bins": BIN_LABELS,
        "ref_bins": ref["reuse_bins"],
        "pool_bins": ach["reuse_bins"],
        "ref_apu": ref["accesses_per_unique"], "pool_apu": ach["accesses_per_unique"],
        "ref_pooling": ref["mean_pooling"], "pool_pooling": ach["mean_pooling"],
    }
    chk = c.get("sampled_check")
    if chk and chk.get("tables"):
        out["check"] = chk
    return out


def plot_pool(pool: TablePool, path: str | Path) -> Path:
    """The pool's aggregate reuse histogram next to the published 2021 one (and 2022 for
    context), or next to the data's for pools from data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recstack.io import save_figure


    s = pool_summary(pool)
    x = np.arange(NUM_BINS)
    fig, ax = plt.subplots(figsize=(9, 4.6))
    wbar = 0.4
    synthetic = s["ref_label"] == "published 2021"
    ref_name = ("published 2021 (Meta dlrm_datasets, 856 tables, batch 65,536)" if synthetic
                else "measured (data)")
    ax.bar(x - wbar / 2, s["ref_bins"], wbar, color="#444444", label=ref_name)
    pool_label = (f"pool {pool.name}: {len(pool.tables)} tables, expected at batch "
                  f"{pool.calibration.get('batch_size', DATASET_BATCH):,}")
    ax.bar(x + wbar / 2, s["pool_bins"], wbar, color="#d9822b", label=pool_label)
    if synthetic:
        ax.plot(x, PUBLISHED_2022["reuse_bins"], "--", color="#6a9fd8", lw=1.2,
                label="published 2022 (788 tables, batch 131,072; context, not a target)")
    ax.set_xticks(x)
    ax.set_xticklabels([b.replace("(32768,inf)", ">32768") for b in s["bins"]], rotation=45, ha="right",
                       fontsize=8)
    ax.set_xlabel("accesses to a row within one batch")
    ax.set_ylabel("share of all accesses")
    err = np.abs(np.asarray(s["pool_bins"]) - np.asarray(s["ref_bins"])).max()
    ax.set_title(f"reuse histogram: {pool.name}  (max |diff| {err:.4f} per bin; accesses/unique row "
                 f"{s['pool_apu']:.2f} vs {s['ref_apu']:.2f}; mean pooling {s['pool_pooling']:.2f} vs "
                 f"{s['ref_pooling']:.2f})", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
