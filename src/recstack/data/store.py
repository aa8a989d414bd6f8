"""The preprocessed binary store: a directory of raw little-endian arrays plus `meta.json`.

Layout (N samples, D dense features, T tables):
- `dense.f32`   float32 [N, D]   dense features, already transformed (log(x+1) for Criteo)
- `labels.f32`  float32 [N, L]   L = 1 (click) or the number of tasks
- fixed layout (every table has a fixed number of lookups p_t per sample):
  `ids.i32`     int32   [N, sum p_t]  row ids, columns grouped by table
- ragged layout (multi-hot with variable pooling):
  `lengths.i32` int32   [N, T]   lookups per (sample, table)
  `values.i32`  int32   [nnz]    row ids, sample-major, table-major within a sample
  `sample_ptr.i64` int64 [N+1]   start of each sample in `values`
- `meta.json`: format, version, counts, tables (name, rows, pooling), splits, provenance,
  and `complete: true`. It is written last, and the directory is built under a temporary
  name and renamed into place, so a store that opens is a complete store.

Row ids are < 2^31 (tables are capped), so int32 halves disk and memory traffic; they are
widened to int64 per batch. Everything is memory-mapped: reading is constant memory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack.data.batch import Batch, SparseBatch
from recstack.errors import DataError
from recstack.io import atomic_dir, atomic_write_json, read_json

FORMAT = "recstack-store"
VERSION = 1


@dataclass(frozen=True)
class StoreTable:
    name: str
    rows: int
    pooling: int | None  # fixed lookups per sample; None in the ragged layout


class StoreWriter:
    """Append chunks of samples; `close()` publishes the store atomically.

    Use as a context manager: an exception (or Ctrl-C) discards everything written.
    """

    def __init__(self, out: str | Path, num_dense: int, tables: list[StoreTable], num_labels: int = 1):
        self.out = Path(out)
        self.num_dense = num_dense
        self.tables = list(tables)
        self.num_labels = num_labels
        self.ragged = any(t.pooling is None for t in tables)
        self.num_samples = 0
        self._nnz = 0
        self._ctx = atomic_dir(self.out)
        self.tmp = self._ctx.__enter__()
        self._closed = False
        names = ["dense.f32", "labels.f32"] + (
            ["lengths.i32", "values.i32", "sample_ptr.i64"] if self.ragged else ["ids.i32"]
        )
        self._files = {n: open(self.tmp / n, "wb") for n in names}  # noqa: SIM115 (closed in close/abort)
        if self.ragged:
            self._files["sample_ptr.i64"].write(np.zeros(1, np.int64).tobytes())

    def append(
        self,
        dense: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
        values: np.ndarray | None = None,
    ) -> None:
        n = dense.shape[0]
        if dense.shape != (n, self.num_dense):
            raise ValueError(f"dense has shape {dense.shape}, expected ({n}, {self.num_dense})")
        labels = np.asarray(labels, np.float32).reshape(n, self.num_labels)
        self._files["dense.f32"].write(np.ascontiguousarray(dense, np.float32).tobytes())
        self._files["labels.f32"].write(np.ascontiguousarray(labels).tobytes())
        if self.ragged:
            assert lengths is not None and values is not None
            lengths = np.ascontiguousarray(lengths, np.int32).reshape(n, len(self.tables))
            per_sample = lengths.sum(1, dtype=np.int64)
            ptr = self._nnz + np.cumsum(per_sample)
            if ptr.size and ptr[-1] - self._nnz != values.size:
                raise ValueError("values size does not match lengths")
            self._files["lengths.i32"].write(lengths.tobytes())
            self._files["values.i32"].write(np.ascontiguousarray(values, np.int32).tobytes())
            self._files["sample_ptr.i64"].write(ptr.astype(np.int64).tobytes())
            self._nnz += int(values.size)
        else:
            assert ids is not None
            width = sum(t.pooling or 0 for t in self.tables)
            if ids.shape != (n, width):
                raise ValueError(f"ids has shape {ids.shape}, expected ({n}, {width})")
            self._files["ids.i32"].write(np.ascontiguousarray(ids, np.int32).tobytes())
        self.num_samples += n

    def close(
        self,
        splits: dict[str, tuple[int, int]] | None = None,
        tables: list[StoreTable] | None = None,
        **extra: Any,
    ) -> Path:
        """Finish: write meta.json last and rename the directory into place."""
        for f in self._files.values():
            f.close()
        if tables is not None:
            self.tables = list(tables)
        splits = splits or {"train": (0, self.num_samples)}
        for name, (lo, hi) in splits.items():
            if not 0 <= lo <= hi <= self.num_samples:
                raise ValueError(f"split {name} [{lo}, {hi}) outside [0, {self.num_samples})")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "num_samples": self.num_samples,
            "num_dense": self.num_dense,
            "num_labels": self.num_labels,
            "layout": "ragged" if self.ragged else "fixed",
            "nnz": self._nnz if self.ragged else None,
            "tables": [{"name": t.name, "rows": t.rows, "pooling": t.pooling} for t in self.tables],
            "splits": {k: [int(a), int(b)] for k, (a, b) in splits.items()},
            **extra,
            "complete": True,
        }
        atomic_write_json(self.tmp / "meta.json", meta)
        self._closed = True
        self._ctx.__exit__(None, None, None)
        return self.out

    def abort(self) -> None:
        if not self._closed:
            for f in self._files.values():
                f.close()
            self._closed = True
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> StoreWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.abort()
            raise RuntimeError("StoreWriter left without close(): nothing was published")


class Store:
    """Read-only, memory-mapped view of a store directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not self.path.is_dir():
            raise DataError(f"{self.path}: data directory not found")
        if not meta_path.exists():
            raise DataError(f"{self.path}: not a recstack data store (no meta.json; incomplete or wrong directory)")
        self.meta = read_json(meta_path, "store metadata")
        if self.meta.get("format") != FORMAT or not self.meta.get("complete"):
            raise DataError(f"{meta_path}: not a complete recstack store")
        if self.meta.get("version") != VERSION:
            raise DataError(f"{meta_path}: store version {self.meta.get('version')} unsupported (want {VERSION})")
        self.num_samples: int = self.meta["num_samples"]
        self.num_dense: int = self.meta["num_dense"]
        self.num_labels: int = self.meta.get("num_labels", 1)
        self.tables = [StoreTable(t["name"], t["rows"], t["pooling"]) for t in self.meta["tables"]]
        self.ragged = self.meta["layout"] == "ragged"
        n = self.num_samples
        self.dense = self._map("dense.f32", np.float32, (n, self.num_dense))
        self.labels = self._map("labels.f32", np.float32, (n, self.num_labels))
        if self.ragged:
            self.lengths = self._map("lengths.i32", np.int32, (n, len(self.tables)))
            self.values = self._map("values.i32", np.int32, (self.meta["nnz"],))
            self.sample_ptr = self._map("sample_ptr.i64", np.int64, (n + 1,))
        else:
            self.pooling = [int(t.pooling) for t in self.tables]  # type: ignore[arg-type]
            self.ids = self._map("ids.i32", np.int32, (n, sum(self.pooling)))

    def _map(self, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        p = self.path / name
        want = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not p.exists() or p.stat().st_size != want:
            have = p.stat().st_size if p.exists() else "missing"
            raise DataError(f"{p}: expected {want} bytes, found {have} (corrupt store)")
        if want == 0:
            return np.zeros(shape, dtype)
        return np.memmap(p, dtype=dtype, mode="r", shape=shape)

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables]

    @property
    def splits(self) -> dict[str, tuple[int, int]]:
        return {k: (int(a), int(b)) for k, (a, b) in self.meta["splits"].items()}

    def split_range(self, split: str) -> tuple[int, int]:
        s = self.splits
        if split not in s:
            raise DataError(f"{self.path}: no split {split!r} (has {', '.join(s)})")
        return s[split]

    def __len__(self) -> int:
        return self.num_samples

    # ---- batch assembly ----
    def batch(self, lo: int, hi: int) -> Batch:
        """Samples [lo, hi) as one batch (contiguous: a cheap memmap slice)."""
        return self._assemble(slice(lo, hi), hi - lo)

    def take(self, idx: np.ndarray) -> Batch:
        """Samples at `idx` (any order) as one batch."""
        idx = np.asarray(idx, np.int64)
        return self._assemble(idx, idx.size)

    def _assemble(self, sel: slice | np.ndarray, b: int) -> Batch:
        dense = torch.from_numpy(np.array(self.dense[sel], copy=True))
        labels = torch.from_numpy(np.array(self.labels[sel], copy=True))
        if self.num_labels == 1:
            labels = labels.reshape(-1)
        if not self.ragged:
            ids = torch.from_numpy(np.array(self.ids[sel], copy=True))
            sparse = SparseBatch.from_fixed(ids, self.pooling)
        else:
            sparse = self._ragged(sel, b)
        return Batch(dense, sparse, labels)

    def _ragged(self, sel: slice | np.ndarray, b: int) -> SparseBatch:
        t = len(self.tables)
        lengths = np.ascontiguousarray(self.lengths[sel]).astype(np.int64)  # [B, T]
        if isinstance(sel, slice):
            start, stop = int(self.sample_ptr[sel.start]), int(self.sample_ptr[sel.stop])
            vals = np.asarray(self.values[start:stop], np.int64)
        else:
            starts = self.sample_ptr[sel]
            tot = lengths.sum(1)
            rep = np.repeat(starts - np.concatenate([[0], np.cumsum(tot)[:-1]]), tot)
            vals = np.asarray(self.values[np.arange(tot.sum()) + rep], np.int64)
        # sample-major -> table-major: key (table, sample) for each value, stable sort.
        flat_len = lengths.reshape(-1)
        key = np.repeat(np.tile(np.arange(t), b) * b + np.repeat(np.arange(b), t), flat_len)
        order = np.argsort(key, kind="stable")
        idx = torch.from_numpy(vals[order])
        return SparseBatch.from_lengths(idx, torch.from_numpy(lengths.T.copy()), t)

    def batches(
        self,
        split: str = "train",
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        start: int = 0,
    ) -> Iterator[Batch]:
        """Batches over a split, in file order or in a seeded permutation; `start` skips batches."""
        lo, hi = self.split_range(split)
        n = hi - lo
        nb = n // batch_size if drop_last else -(-n // batch_size)
        perm = np.random.default_rng(seed).permutation(n) + lo if shuffle else None
        for i in range(start, nb):
            a, z = i * batch_size, min(n, (i + 1) * batch_size)
            if perm is not None:
                yield self.take(np.sort(perm[a:z]))
            else:
                yield self.batch(lo + a, lo + z)

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        lo, hi = self.split_range(split)
        return (hi - lo) // batch_size if drop_last else -(-(hi - lo) // batch_size)
