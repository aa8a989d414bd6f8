"""Synthetic datasets for any `ModelSpec`, with labels from a hidden teacher of known AUC.

Why: real recommendation data is large and licensed; systems work (sharding, performance
models, training speed) needs data with the right *shape* (table sizes, pooling, skewed
row access), and accuracy work needs labels a model can actually learn, with a known
ceiling. Everything here derives from the seed: the same seed gives a byte-identical store.

What a sample holds
- Sparse: per table, a bag of row ids. Bag size follows the table's `pooling` /
  `pooling_dist` (fixed -> the store's fixed layout; poisson/uniform -> ragged layout).
  Row ids follow a bounded Zipf law with the table's exponent (`zipf`, 0 = uniform, or
  one override for every table): ranks are drawn by inverse CDF, then a per-table keyed
  permutation of [0, rows) maps ranks to row ids, so the hot rows are scattered.
- Dense: `dense_features` heavy-tailed nonnegative integer counts (a share of zeros, the
  rest lognormal), stored as log(x + 1) float32, exactly as the Criteo preprocessor does.
- Labels: `num_tasks` clicks (one per task, ModelSpec.num_tasks), each drawn as
  Bernoulli(sigmoid(teacher logit)). The teacher is a small factorisation machine over
  the same fields a DLRM sees: every table has a `TeacherConfig.dim`-dimensional vector
  and a scalar bias for each of its `hot_rows` (256) hottest rows (colder rows contribute
  zero); a bag's vector is the (1/sqrt(pooling)-scaled) sum of its rows' vectors; the
  dense features give one more field vector through a random linear map. The logit is
  linear terms plus all pairwise dot products of the field vectors (each task has its
  own random mixing of the fields), standardised on a pilot sample, multiplied by
  `scale` and offset so the mean click rate is `ctr`. A DLRM with dot interaction can
  represent this function (the per-row biases through dot products with the bottom-MLP
  output), so training approaches the ceiling.
- The store's meta records `teacher_auc` (AUC of the teacher's own probabilities
  against the drawn labels, per split; the ceiling a learner can reach), the teacher's
  log loss, click rates, splits and provenance. The teacher's probabilities are kept
  in `teacher.f32` ([N, num_labels] float32) beside the store's arrays.

Public API
- `synthesize(spec, out, samples, seed=0, fmt="store", ...) -> SynthReport`: write a
  store directory (or a Criteo TSV for single-hot specs).
- `SyntheticGenerator(spec, seed, zipf=None)`: the lower-level, chunk-deterministic
  generator; `.chunk(index, n)` gives raw numpy arrays, `.batches(batch_size)` yields
  `Batch` objects for training straight from memory.

Learnability, measured on a loaded 2-core CPU (dlrm-demo config, 3M samples, one epoch of
the 2.4M-sample train split, batch 1024, Adagrad lr 0.03): a DLRM ends about 0.016 AUC
below the teacher in about a minute. Cold rows carry no signal, so more rows per table
mostly add noise the learner must ignore; skew (higher Zipf) makes the signal easier to learn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recstack.data._synth_sampling import KeyedPermutation, ZipfSampler, mix32
from recstack.errors import ConfigError
from recstack.spec.model import ModelSpec, TableSpec

if TYPE_CHECKING:
    from recstack.data.batch import Batch

CHUNK = 65536  # largest generation unit; the unit depends only on the spec, so output depends on the seed
_CHUNK_VALUES = 1 << 22  # bound on lookups + dense values per chunk (memory)
_PILOT = 32768  # samples used to standardise the teacher (fewer for very wide specs)
_PILOT_VALUES = 1 << 22
_AUC_BINS = 1 << 16
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
GENERATOR_VERSION = 1  # bump when the same seed would give different data
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class TeacherConfig:
    """Knobs of the hidden teacher. Defaults give a teacher AUC near 0.8 and CTR near 0.25."""

    dim: int = 4  # teacher field-vector width
    hot_rows: int = 256  # rows per table that carry signal (the hottest ranks)
    scale: float = 1.7  # std of the logit
    ctr: float = 0.25  # mean click rate
    linear_weight: float = 1.0  # weight of the linear terms (row biases, dense weights)
    dense_weight: float = 1.0  # weight of the table x dense-field dot products
    pair_weight: float = 1.0  # weight of the table x table dot products

    def describe(self) -> str:
        return (
            f"factorisation-machine teacher: per-table dim-{self.dim} vectors and biases on the "
            f"{self.hot_rows} hottest rows (sum-pooled, 1/sqrt(pooling) scaled), dense field "
            f"vector by a random linear map of standardised log(x+1); logit = {self.linear_weight} x linear + "
            f"{self.dense_weight} x table.dense dots + {self.pair_weight} x table.table dots (each "
            f"normalised to unit variance scale), standardised, x{self.scale}, "
            f"offset for CTR {self.ctr}; label ~ Bernoulli(sigmoid(logit)) per task"
        )


@dataclass
class SynthChunk:
    """One chunk of samples as numpy arrays (what the store writer and TSV writer take)."""

    dense_raw: np.ndarray  # int64 [n, D] raw counts
    dense: np.ndarray  # float32 [n, D] log(x+1)
    labels: np.ndarray  # float32 [n, L]
    probs: np.ndarray  # float32 [n, L] teacher probabilities
    lengths: np.ndarray  # int32 [T, n] bag sizes
    values: list[np.ndarray]  # per table: int64 row ids, bags in sample order

    @property
    def n(self) -> int:
        return self.dense.shape[0]

    def fixed_ids(self, pooling: list[int]) -> np.ndarray:
        """Sample-major [n, sum pooling] id matrix, columns grouped by table (fixed layout)."""
        return np.concatenate([v.reshape(self.n, p) for v, p in zip(self.values, pooling)], axis=1)

    def ragged_values(self) -> np.ndarray:
        """Row ids sample-major, table-major within a sample (the store's ragged layout)."""
        lengths = self.lengths.astype(np.int64)  # [T, n]
        per_sample = lengths.sum(0)
        sample_start = np.concatenate([[0], np.cumsum(per_sample)[:-1]])
        within = np.cumsum(lengths, axis=0) - lengths  # exclusive prefix over tables
        out = np.empty(int(per_sample.sum()), np.int64)
        for t, v in enumerate(self.values):
            seg = sample_start + within[t]
            lt = lengths[t]
            bag_start = np.cumsum(lt) - lt
            pos = np.arange(v.size) - np.repeat(bag_start, lt) + np.repeat(seg, lt)
            out[pos] = v
        return out


def _pool_sizes(t: TableSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    if t.pooling_dist == "fixed":
        return np.full(n, fixed_pooling(t), np.int64)
    if t.pooling_dist == "poisson":
        return 1 + rng.poisson(max(0.0, t.pooling - 1.0), size=n)
    return rng.integers(1, t.max_pooling + 1, size=n)


def fixed_pooling(t: TableSpec) -> int:
    """Lookups per bag of a fixed-pooling table (at least 1)."""
    return max(1, round(t.pooling))


def expected_pooling(t: TableSpec) -> float:
    """Mean bag size the generator produces for a table (what `pooling` means after rounding)."""
    if t.pooling_dist == "fixed":
        return float(fixed_pooling(t))
    if t.pooling_dist == "poisson":
        return 1.0 + max(0.0, t.pooling - 1.0)
    return (1 + t.max_pooling) / 2.0


class SyntheticGenerator:
    """Chunk-deterministic generator: chunk i depends only on (spec, seed, zipf, teacher, i).

    Memory is bounded by the chunk size and the teacher tables (tables x hot_rows x dim),
    whatever the table sizes and the sample count.
    """

    def __init__(
        self,
        spec: ModelSpec,
        seed: int = 0,
        zipf: float | None = None,
        teacher: TeacherConfig | None = None,
    ):
        if zipf is not None and (zipf < 0 or not math.isfinite(zipf)):
            raise ConfigError(f"--zipf must be a nonnegative number, got {zipf}")
        self.spec = spec
        self.seed = int(seed)
        self.teacher = teacher or TeacherConfig()
        if self.teacher.dim < 1 or self.teacher.hot_rows < 1:
            raise ConfigError("teacher dim and hot_rows must be >= 1")
        if not 0.0 < self.teacher.ctr < 1.0:
            raise ConfigError(f"teacher ctr must be in (0, 1), got {self.teacher.ctr}")
        self.tables = spec.tables
        self.zipf = [float(zipf if zipf is not None else t.zipf) for t in self.tables]
        self.num_dense = spec.dense_features
        self.num_labels = spec.num_tasks
        self.ragged = not spec.uniform_pooling
        self.pooling = [fixed_pooling(t) for t in self.tables]
        self.samplers = [ZipfSampler(t.rows, z) for t, z in zip(self.tables, self.zipf)]
        self.perms = [KeyedPermutation(t.rows, self._key(1, i)) for i, t in enumerate(self.tables)]
        width = sum(expected_pooling(t) for t in self.tables) + self.num_dense
        self.chunk_size = CHUNK  # a power of two, smaller for wide specs to bound memory
        while self.chunk_size > 1024 and self.chunk_size * width > _CHUNK_VALUES:
            self.chunk_size //= 2
        self._init_teacher()

    # ---- seeding ----
    def _key(self, *path: int) -> int:
        ss = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.seed >> 32 & 0xFFFFFFFF, *path])
        return int(ss.generate_state(2, np.uint64)[0] >> np.uint64(1))

    def _rng(self, *path: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.seed >> 32 & 0xFFFFFFFF,
                                                            *path]))

    # ---- teacher ----
    def _init_teacher(self) -> None:
        cfg, d, k = self.teacher, self.num_dense, self.teacher.dim
        rng = self._rng(2)
        # dense feature distributions: P(zero), lognormal mu and sigma per feature
        self.dense_p0 = rng.uniform(0.05, 0.5, size=d)
        self.dense_mu = rng.uniform(0.0, 4.0, size=d)
        self.dense_sigma = rng.uniform(0.5, 1.8, size=d)
        self.t_vec, self.t_bias, self.t_norm = [], [], []
        for t in self.tables:
            h = min(t.rows, cfg.hot_rows)
            # one extra all-zero row at index h stands for every colder row
            self.t_vec.append(np.vstack([rng.standard_normal((h, k)), np.zeros((1, k))]))
            self.t_bias.append(np.concatenate([rng.standard_normal(h), [0.0]]))
            self.t_norm.append(1.0 / math.sqrt(expected_pooling(t)))
        self.w_dense_vec = rng.standard_normal((d, k)) / math.sqrt(max(d, 1))
        self.w_dense_lin = rng.standard_normal(d) / math.sqrt(max(d, 1))
        f = len(self.tables) + (1 if d else 0)
        self.num_fields = f
        tasks = self.num_labels
        self.task_mix = rng.standard_normal((tasks, k, k)) / math.sqrt(k)  # per-task field mixing
        self.task_lin = rng.standard_normal((tasks, f))  # per-task weight of each field's bias
        # standardisation of dense inputs and of the raw logit, from a pilot sample
        self.dense_center = np.zeros(d)
        self.dense_scale = np.ones(d)
        self.logit_center = np.zeros(tasks)
        self.logit_scale = np.ones(tasks)
        self.logit_offset = np.zeros(tasks)
        width = sum(expected_pooling(t) for t in self.tables) + d
        pilot = self._draw(self._rng(3), int(min(_PILOT, max(4096, _PILOT_VALUES // max(width, 1)))))
        if d:
            x = pilot[0]
            self.dense_center = x.mean(0)
            self.dense_scale = np.maximum(x.std(0), 1e-6)
        raw = self._raw_logit(*pilot)
        self.logit_center = raw.mean(0)
        self.logit_scale = np.maximum(raw.std(0), 1e-12)
        z = (raw - self.logit_center) / self.logit_scale * cfg.scale
        for j in range(tasks):
            lo, hi = -20.0, 20.0
            for _ in range(60):  # bisection: mean sigmoid(z + o) == ctr
                mid = 0.5 * (lo + hi)
                if _sigmoid(z[:, j] + mid).mean() < cfg.ctr:
                    lo = mid
                else:
                    hi = mid
            self.logit_offset[j] = 0.5 * (lo + hi)

    def _draw(self, rng: np.random.Generator, n: int):
        """Features of n samples: (dense log1p float64, dense raw int64, lengths [T, n], ranks, ids)."""
        d = self.num_dense
        if d:
            zero = rng.random((n, d)) < self.dense_p0
            g = rng.standard_normal((n, d))
            raw = np.floor(np.exp(np.minimum(self.dense_mu + self.dense_sigma * g, 21.0)))
            raw[zero] = 0.0
            dense_raw = raw.astype(np.int64)
            dense = np.log1p(raw)
        else:
            dense_raw = np.zeros((n, 0), np.int64)
            dense = np.zeros((n, 0))
        lengths = np.empty((len(self.tables), n), np.int64)
        ranks, ids = [], []
        for i, t in enumerate(self.tables):
            lengths[i] = _pool_sizes(t, rng, n)
            r = self.samplers[i].sample(rng, int(lengths[i].sum()))
            ranks.append(r)
            ids.append(self.perms[i](r))
        return dense, dense_raw, lengths, ranks, ids

    def _raw_logit(self, dense, dense_raw, lengths, ranks, ids) -> np.ndarray:
        n, k = dense.shape[0], self.teacher.dim
        f, nt = self.num_fields, len(self.tables)
        v = np.empty((f, n, k))  # field vectors (field-major); the dense field (if any) is last
        b = np.empty((f, n))  # field biases
        for i in range(nt):
            rc = np.minimum(ranks[i], self.t_vec[i].shape[0] - 1)  # colder rows -> the zero row
            vec = self.t_vec[i][rc]
            bias = self.t_bias[i][rc]
            if self.ragged or self.pooling[i] != 1:
                starts = np.concatenate([[0], np.cumsum(lengths[i])[:-1]])
                vec = np.add.reduceat(vec, starts, axis=0)
                bias = np.add.reduceat(bias, starts)
            np.multiply(vec, self.t_norm[i], out=v[i])
            np.multiply(bias, self.t_norm[i], out=b[i])
        if self.num_dense:
            xs = (dense - self.dense_center) / self.dense_scale
            v[nt] = xs @ self.w_dense_vec
            b[nt] = xs @ self.w_dense_lin
        cfg = self.teacher
        pairs = max(1, nt * (nt - 1) // 2)
        out = np.empty((n, self.num_labels))
        for j in range(self.num_labels):
            u = (v.reshape(f * n, k) @ self.task_mix[j]).reshape(f, n, k)
            ut = u[:nt]
            s = ut.sum(0)
            sq = np.einsum("fnk,fnk->n", ut, ut)
            logit = cfg.pair_weight * 0.5 * (np.einsum("nk,nk->n", s, s) - sq) / math.sqrt(pairs * k)
            if self.num_dense:
                logit += cfg.dense_weight * np.einsum("nk,nk->n", s, u[nt]) / math.sqrt(nt * k)
            logit += cfg.linear_weight * (self.task_lin[j] @ b) / math.sqrt(f)
            out[:, j] = logit
        return out

    def _probs(self, raw: np.ndarray) -> np.ndarray:
        z = (raw - self.logit_center) / self.logit_scale * self.teacher.scale + self.logit_offset
        return _sigmoid(z)

    # ---- public ----
    def chunk(self, index: int, n: int | None = None) -> SynthChunk:
        """Chunk `index` of the stream: its first n samples (default and at most `chunk_size`).

        The draws depend on (index, n): chunk(i, n) is not a prefix of chunk(i, m).
        """
        n = self.chunk_size if n is None else n
        rng = self._rng(4, index)
        dense, dense_raw, lengths, ranks, ids = self._draw(rng, n)
        probs = self._probs(self._raw_logit(dense, dense_raw, lengths, ranks, ids))
        labels = (rng.random(probs.shape) < probs).astype(np.float32)
        return SynthChunk(
            dense_raw=dense_raw,
            dense=dense.astype(np.float32),
            labels=labels,
            probs=probs.astype(np.float32),
            lengths=lengths.astype(np.int32),
            values=ids,
        )

    def chunks(self, samples: int) -> Iterator[SynthChunk]:
        c = self.chunk_size
        for i in range(-(-samples // c)):
            yield self.chunk(i, min(c, samples - i * c))

    def batches(self, batch_size: int, num_batches: int | None = None, start_chunk: int = 0) -> Iterator[Batch]:
        """Training batches straight from memory (torch `Batch`), chunk after chunk, forever
        or for `num_batches`. Different `start_chunk` values give disjoint sample streams
        (e.g. 0 for training, 10**9 for evaluation)."""
        import torch

        from recstack.data.batch import Batch, SparseBatch

        produced, i = 0, start_chunk
        buf: list[SynthChunk] = []
        have = 0
        while num_batches is None or produced < num_batches:
            while have < batch_size:
                c = self.chunk(i)
                i += 1
                buf.append(c)
                have += c.n
            merged = _concat(buf)
            ptrs = _ptrs(merged)
            lo = 0
            while have - lo >= batch_size and (num_batches is None or produced < num_batches):
                part = _slice(merged, lo, lo + batch_size, ptrs)
                lo += batch_size
                labels = torch.from_numpy(part.labels)
                if self.num_labels == 1:
                    labels = labels.reshape(-1)
                sparse = SparseBatch.from_lengths(
                    torch.from_numpy(np.concatenate(part.values)),
                    torch.from_numpy(part.lengths.astype(np.int64)),
                    len(self.tables),
                )
                yield Batch(torch.from_numpy(part.dense), sparse, labels)
                produced += 1
            buf = [_slice(merged, lo, merged.n, ptrs)] if lo < merged.n else []
            have = merged.n - lo


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _concat(parts: list[SynthChunk]) -> SynthChunk:
    if len(parts) == 1:
        return parts[0]
    return SynthChunk(
        dense_raw=np.concatenate([p.dense_raw for p in parts]),
        dense=np.concatenate([p.dense for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        probs=np.concatenate([p.probs for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts], axis=1),
        values=[np.concatenate([p.values[t] for p in parts]) for t in range(len(parts[0].values))],
    )


def _ptrs(c: SynthChunk) -> np.ndarray:
    """[T, n+1] start of each sample's bag in each table's values."""
    out = np.zeros((c.lengths.shape[0], c.n + 1), np.int64)
    np.cumsum(c.lengths, axis=1, out=out[:, 1:])
    return out


def _slice(c: SynthChunk, lo: int, hi: int, ptrs: np.ndarray) -> SynthChunk:
    values = [c.values[t][ptrs[t, lo] : ptrs[t, hi]] for t in range(c.lengths.shape[0])]
    return SynthChunk(
        c.dense_raw[lo:hi], c.dense[lo:hi], c.labels[lo:hi], c.probs[lo:hi], c.lengths[:, lo:hi], values
    )


# ---------------------------------------------------------------------------------------
# streaming metrics (constant memory): binned AUC and exact log loss
# ---------------------------------------------------------------------------------------
class StreamingAUC:
    """AUC of probabilities against 0/1 labels from 2^16 probability bins (ties within a bin
    count one half): exact up to ~1e-5 for smooth score distributions, constant memory."""

    def __init__(self, tasks: int = 1):
        self.pos = np.zeros((tasks, _AUC_BINS))
        self.neg = np.zeros((tasks, _AUC_BINS))
        self.ll = np.zeros(tasks)
        self.n = 0

    def update(self, probs: np.ndarray, labels: np.ndarray) -> None:
        p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
        bins = np.minimum((p * _AUC_BINS).astype(np.int64), _AUC_BINS - 1)
        for j in range(p.shape[1]):
            y = labels[:, j] > 0.5
            self.pos[j] += np.bincount(bins[y, j], minlength=_AUC_BINS)
            self.neg[j] += np.bincount(bins[~y, j], minlength=_AUC_BINS)
            self.ll[j] -= np.where(y, np.log(p[:, j]), np.log1p(-p[:, j])).sum()
        self.n += p.shape[0]

    def auc(self) -> list[float]:
        out = []
        for pos, neg in zip(self.pos, self.neg):
            np_, nn = pos.sum(), neg.sum()
            if np_ == 0 or nn == 0:
                out.append(float("nan"))
                continue
            neg_below = np.cumsum(neg) - neg
            out.append(float((pos * (neg_below + 0.5 * neg)).sum() / (np_ * nn)))
        return out

    def logloss(self) -> list[float]:
        return [float(v / max(self.n, 1)) for v in self.ll]

    def ctr(self) -> list[float]:
        return [float(p.sum() / max(self.n, 1)) for p in self.pos]


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
@dataclass
class SynthReport:
    """What `synthesize` wrote and the teacher's ceiling on it."""

    out: str
    format: str
    samples: int
    seconds: float
    splits: dict[str, list[int]]
    teacher_auc: dict[str, float | None]
    teacher_logloss: dict[str, float]
    ctr: dict[str, float]
    teacher_auc_tasks: dict[str, list[float | None]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_bounds(samples: int, fractions: tuple[float, ...] = DEFAULT_SPLITS) -> dict[str, tuple[int, int]]:
    """train/val/test sample ranges: [0, a), [a, b), [b, n) from the fractions (floor)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ConfigError(f"splits must be three nonnegative fractions, got {fractions}")
    tot = sum(fractions)
    a = math.floor(samples * fractions[0] / tot)
    b = math.floor(samples * (fractions[0] + fractions[1]) / tot)
    return {"train": (0, a), "val": (a, b), "test": (b, samples)}


def synthesize(
    spec: ModelSpec,
    out: str | Path,
    samples: int,
    seed: int = 0,
    fmt: str = "store",
    *,
    zipf: float | None = None,
    splits: tuple[float, float, float] = DEFAULT_SPLITS,
    missing_rate: float = 0.0,
    teacher: TeacherConfig | None = None,
    config_name: str | None = None,
    scale: float | None = None,
    progress: bool | Callable[[int], None] = False,
) -> SynthReport:
    """Write `samples` synthetic samples for `spec` to `out` and return the teacher's ceiling.

    fmt="store": a store directory (recstack.data.Store) with train/val/test splits and
    `teacher.f32`. fmt="tsv": a directory holding `train.txt` in Criteo format (label,
    dense counts, 8-hex-digit categorical hashes; only for specs whose tables all have
    fixed pooling 1) and `synth.json` with the same provenance and teacher figures.
    `missing_rate` (TSV only) blanks that share of dense and categorical fields after the
    labels are drawn. `config_name`/`scale` are recorded as provenance only (apply the
    scale when loading the spec). `progress`: True for a rich progress bar, or a callback
    receiving the number of samples written so far.
    """
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    if fmt not in ("store", "tsv"):
        raise ConfigError(f"--format must be 'store' or 'tsv', got {fmt!r}")
    if not 0.0 <= missing_rate < 1.0:
        raise ConfigError(f"--missing-rate must be in [0, 1), got {missing_rate}")
    if missing_rate and fmt != "tsv":
        raise ConfigError("--missing-rate applies to --format tsv only (the store has no missing fields)")
    if fmt == "tsv":
        bad = [t.name for t in spec.tables if t.pooling_dist != "fixed" or fixed_pooling(t) != 1]
        if bad:
            raise ConfigError(
                f"--format tsv needs single-hot tables (pooling 1, pooling_dist fixed); "
                f"{spec.name}: table {bad[0]} has pooling {spec.table(bad[0]).pooling} "
                f"({spec.table(bad[0]).pooling_dist})"
            )
        if spec.num_tasks != 1:
            raise ConfigError(
                f"--format tsv writes one label per line; {spec.name} has num_tasks {spec.num_tasks} "
                "(use --format store)"
            )
        big = [t.name for t in spec.tables if t.rows > 2**32]
        if big:
            raise ConfigError(f"--format tsv: table {big[0]} has more than 2^32 rows")
    bounds = split_bounds(samples, splits)
    gen = SyntheticGenerator(spec, seed, zipf, teacher)
    t0 = time.perf_counter()
    prov = {
        "generator": "recstack.data.synth",
        "generator_version": GENERATOR_VERSION,
        "config": config_name or spec.name,
        "model": spec.name,
        "scale": scale,
        "seed": seed,
        "zipf_override": zipf,
        "zipf": {t.name: z for t, z in zip(spec.tables, gen.zipf)},
        "teacher": {**asdict(gen.teacher), "description": gen.teacher.describe()},
        "dense": "P(0) ~ U(0.05, 0.5), else floor(exp(N(mu, sigma))), mu ~ U(0, 4), sigma ~ U(0.5, 1.8); "
        "stored as log(x+1)",
        "missing_rate": missing_rate,
    }
    metrics = {k: StreamingAUC(gen.num_labels) for k in SPLIT_NAMES}
    bar = _Progress(samples, progress)
    try:
        if fmt == "store":
            path = _write_store(gen, Path(out), samples, bounds, metrics, bar, prov)
        else:
            path = _write_tsv(gen, Path(out), samples, bounds, metrics, bar, prov, missing_rate)
    finally:
        bar.close()
    rep = _summarise(metrics, bounds)
    report = SynthReport(
        out=str(path), format=fmt, samples=samples, seconds=round(time.perf_counter() - t0, 3),
        splits={k: [a, b] for k, (a, b) in bounds.items()}, provenance=prov, **rep,
    )
    return report


def _summarise(metrics: dict[str, StreamingAUC], bounds) -> dict[str, Any]:
    auc, auc_tasks, ll, ctr = {}, {}, {}, {}
    for k, m in metrics.items():
        if m.n == 0:
            continue
        a = m.auc()  # NaN (JSON null) where a split has a single class
        auc_tasks[k] = [None if np.isnan(x) else round(x, 6) for x in a]
        auc[k] = None if all(np.isnan(a)) else round(float(np.nanmean(a)), 6)
        ll[k] = round(float(np.mean(m.logloss())), 6)
        ctr[k] = round(float(np.mean(m.ctr())), 6)
    return {"teacher_auc": auc, "teacher_auc_tasks": auc_tasks, "teacher_logloss": ll, "ctr": ctr}


def _split_update(metrics, bounds, lo: int, c: SynthChunk) -> None:
    for name, (a, b) in bounds.items():
        s, e = max(a, lo) - lo, min(b, lo + c.n) - lo
        if e > s:
            metrics[name].update(c.probs[s:e], c.labels[s:e])


def _write_store(gen: SyntheticGenerator, out: Path, samples, bounds, metrics, bar, prov) -> Path:
    from recstack.data.store import StoreTable, StoreWriter

    tables = [
        StoreTable(t.name, t.rows, None if gen.ragged else p) for t, p in zip(gen.tables, gen.pooling)
    ]
    if any(t.rows >= 2**31 for t in gen.tables):
        big = next(t for t in gen.tables if t.rows >= 2**31)
        raise ConfigError(f"table {big.name}: {big.rows} rows; the store holds row ids < 2^31")
    with StoreWriter(out, gen.num_dense, tables, num_labels=gen.num_labels) as w:
        with open(w.tmp / "teacher.f32", "wb") as tf:
            lo = 0
            for c in gen.chunks(samples):
                if gen.ragged:
                    w.append(c.dense, c.labels, lengths=c.lengths.T, values=c.ragged_values())
                else:
                    w.append(c.dense, c.labels, ids=c.fixed_ids(gen.pooling))
                tf.write(np.ascontiguousarray(c.probs, np.float32).tobytes())
                _split_update(metrics, bounds, lo, c)
                lo += c.n
                bar.update(lo)
        rep = _summarise(metrics, bounds)
        return w.close(
            splits=bounds,
            synthetic=prov,
            teacher_file="teacher.f32",
            **rep,
        )


def _write_tsv(gen: SyntheticGenerator, out: Path, samples, bounds, metrics, bar, prov, missing_rate) -> Path:
    from recstack.io import atomic_dir, atomic_write_json

    try:
        from recstack.data.criteo import format_criteo_lines
    except ImportError:
        raise ConfigError(
            "--format tsv needs recstack.data.criteo.format_criteo_lines, which this install lacks"
        ) from None
    keys = [gen._key(5, i) for i in range(len(gen.tables))]
    with atomic_dir(out) as tmp:
        with open(tmp / "train.txt", "wb") as f:
            lo = 0
            for ci, c in enumerate(gen.chunks(samples)):
                cats = np.stack([mix32(v, k) for v, k in zip(c.values, keys)], axis=1)
                dm = cm = None
                if missing_rate:
                    mrng = gen._rng(6, ci)
                    dm = mrng.random(c.dense_raw.shape) < missing_rate
                    cm = mrng.random(cats.shape) < missing_rate
                labels = c.labels[:, 0].astype(np.int64)
                f.write(format_criteo_lines(labels, c.dense_raw, cats, dense_missing=dm, cat_missing=cm))
                _split_update(metrics, bounds, lo, c)
                lo += c.n
                bar.update(lo)
        rep = _summarise(metrics, bounds)
        atomic_write_json(
            tmp / "synth.json",
            {"format": "criteo-tsv", "file": "train.txt", "num_samples": samples,
             "num_dense": gen.num_dense, "num_labels": gen.num_labels,
             "tables": [{"name": t.name, "rows": t.rows} for t in gen.tables],
             "splits": {k: list(v) for k, v in bounds.items()}, "synthetic": prov,
             "hash": "categorical = seeded 32-bit bijective mix of the row id, per table", **rep},
        )
    return out


class _Progress:
    """A rich progress bar for big runs (or a callback); silent when off."""

    def __init__(self, total: int, progress: bool | Callable[[int], None]):
        self.cb = progress if callable(progress) else None
        self.bar = None
        if progress is True and total >= 262_144:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("synth"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                TimeRemainingColumn(), transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("synth", total=total)

    def update(self, done: int) -> None:
        if self.cb:
            self.cb(done)
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
