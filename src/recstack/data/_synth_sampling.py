"""Vectorised samplers behind the synthetic generator: bounded Zipf ranks, keyed permutations.

- `ZipfSampler`: ranks 0..n-1 with P(rank r) proportional to (r+1)^-s. Exact inverse CDF
  (cumulative table + searchsorted) over the first `HEAD` ranks, continuous inverse of the
  power law over the rest, with the tail mass taken as the midpoint-rule integral
  (accurate to far below sampling noise once the head holds 65536 ranks), so a 40M-row
  table costs the same half megabyte as a 65k-row one.
- `KeyedPermutation`: a seeded bijection of [0, n) (a balanced Feistel network over the
  next even power of two, cycle-walking values that fall outside [0, n)), so hot ranks
  land on scattered row ids without a permutation array of n entries.
- `mix32`: a seeded bijection of 32-bit integers, used to turn row ids into Criteo-like
  categorical hashes (values spread over the full 32-bit range, many above 2^31).
"""

from __future__ import annotations

import math

import numpy as np

HEAD = 1 << 16
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class ZipfSampler:
    """Bounded Zipf(s) over ranks [0, n): rank 0 is the hottest row. s = 0 is uniform."""

    def __init__(self, n: int, s: float):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n, self.s = int(n), float(s)
        if self.s == 0.0:
            return
        h = min(self.n, HEAD)
        w = np.arange(1, h + 1, dtype=np.float64) ** -self.s
        self.head_cdf = np.cumsum(w)
        self.head_mass = float(self.head_cdf[-1])
        self.tail_a = h + 0.5  # tail ranks (1-based) h+1..n cover [h+0.5, n+0.5]
        self.tail_mass = self._integral(self.tail_a, self.n + 0.5) if self.n > h else 0.0
        self.total = self.head_mass + self.tail_mass
        self.h = h

    def _integral(self, a: float, b: float) -> float:
        s = self.s
        if abs(1.0 - s) < 1e-9:
            return math.log(b / a)
        return (b ** (1.0 - s) - a ** (1.0 - s)) / (1.0 - s)

    def pmf_head(self, k: int) -> np.ndarray:
        """Probabilities of the k hottest ranks (analytic, for tests and calibration)."""
        k = min(k, self.n)
        if self.s == 0.0:
            return np.full(k, 1.0 / self.n)
        if k <= self.h:
            return np.diff(np.concatenate([[0.0], self.head_cdf[:k]])) / self.total
        raise ValueError(f"k > {self.h}")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` ranks (int64)."""
        if self.s == 0.0:
            return rng.integers(0, self.n, size=size, dtype=np.int64)
        u = rng.random(size) * self.total
        out = np.searchsorted(self.head_cdf, u, side="right").astype(np.int64)
        if self.tail_mass > 0.0:
            tail = u >= self.head_mass
            if tail.any():
                r = u[tail] - self.head_mass
                s, a = self.s, self.tail_a
                if abs(1.0 - s) < 1e-9:
                    x = a * np.exp(r)
                else:
                    x = np.exp(np.log(a ** (1.0 - s) + r * (1.0 - s)) / (1.0 - s))
                # x is a 1-based continuous rank; the 0-based rank of the bin [k-0.5, k+0.5) is k-1
                k = np.floor(x + 0.5).astype(np.int64) - 1
                out[tail] = np.clip(k, self.h, self.n - 1)
        np.minimum(out, self.n - 1, out=out)
        return out


def _splitmix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (uint64 in, uint64 out); wraps modulo 2^64 by design."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


class KeyedPermutation:
    """A seeded bijection of [0, n), evaluated elementwise on arrays."""

    ROUNDS = 4
    TABLE_MAX = 1 << 21  # domains up to this size are evaluated once and looked up

    def __init__(self, n: int, key: int):
        self.n = int(n)
        bits = max(2, (self.n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        rng = np.random.default_rng([int(key) & 0xFFFFFFFF, int(key) >> 32 & 0xFFFFFFFF, 0x5EED])
        self.keys = [np.uint64(k) for k in rng.integers(0, 2**63, size=self.ROUNDS, dtype=np.int64)]
        self.table = self._eval(np.arange(self.n)).astype(np.int32) if self.n <= self.TABLE_MAX else None

    def _once(self, x: np.ndarray) -> np.ndarray:
        sh = np.uint64(self.half)
        left, right = x >> sh, x & self.mask
        for k in self.keys:
            f = _splitmix(right ^ k) & self.mask
            left, right = right, left ^ f
        return (left << sh) | right

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table[np.asarray(x, np.int64)].astype(np.int64)
        return self._eval(x)

    def _eval(self, x: np.ndarray) -> np.ndarray:
        if self.n == 1:
            return np.zeros(np.shape(x), np.int64)
        y = self._once(np.asarray(x, np.uint64))
        bad = y >= np.uint64(self.n)
        while bad.any():  # cycle-walking: stays a bijection of [0, n)
            y[bad] = self._once(y[bad])
            bad = y >= np.uint64(self.n)
        return y.astype(np.int64)


def mix32(x: np.ndarray, key: int) -> np.ndarray:
    """Seeded bijection of uint32 values (xor, odd multiply and xorshift steps, all invertible)."""
    rng = np.random.default_rng([int(key) & 0xFFFFFFFF, 0x4A5C])
    m1, m2 = (int(v) | 1 for v in rng.integers(1, 2**32, size=2, dtype=np.uint64))
    k1, k2 = (int(v) for v in rng.integers(0, 2**32, size=2, dtype=np.uint64))
    y = np.asarray(x, np.uint64) & np.uint64(0xFFFFFFFF)
    m32 = np.uint64(0xFFFFFFFF)
    y ^= np.uint64(k1)
    y = (y * np.uint64(m1)) & m32
    y ^= y >> np.uint64(15)
    y ^= np.uint64(k2)
    y = (y * np.uint64(m2)) & m32
    y ^= y >> np.uint64(13)
    return y.astype(np.uint32)
