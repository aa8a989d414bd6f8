"""Vectorised Criteo TSV writer (the inverse of the preprocessor's parser).

Every line is laid out in a fixed-width byte matrix (one row per sample, each field right-aligned in
its widest-possible slot) with a mask of the bytes that belong to the text; `matrix[mask]` is then
the TSV. No Python loop runs per line, so the synthetic generator can write gigabytes quickly.
"""

from __future__ import annotations

import numpy as np

_HEXDIGITS = b"0123456789abcdef"
# byte -> its two hex characters, as a little-endian uint16 (high nibble's character first in memory)
_HEX2 = np.array([_HEXDIGITS[b >> 4] | (_HEXDIGITS[b & 15] << 8) for b in range(256)], np.uint16)
_POW10 = 10 ** np.arange(20, dtype=np.uint64)


def _int_block(values: np.ndarray, missing: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Decimal text of an int64 [n, k] matrix: (bytes [n, k, w], mask [n, k, w]), right-aligned."""
    v = np.asarray(values, np.int64)
    neg = v < 0
    mag = np.abs(v).astype(np.uint64)  # |int64 min| wraps to 2^63 as uint64, which is right
    ndig = np.maximum(np.searchsorted(_POW10, mag, side="right"), 1)
    width = int((ndig + neg).max(initial=1))
    if width <= 9:
        mag = mag.astype(np.uint32)  # 32-bit division is much faster
    n, c = v.shape
    chars = np.empty((n, c, width), np.uint8)
    mask = np.empty((n, c, width), bool)
    q = mag
    for k in range(width):  # digit position counted from the right
        j = width - 1 - k
        q, r = np.divmod(q, 10)
        chars[:, :, j] = r
        mask[:, :, j] = ndig > k
    chars += 48
    if neg.any():
        for k in range(1, width):
            sign_here = neg & (ndig == k)
            chars[:, :, width - 1 - k][sign_here] = ord("-")
            mask[:, :, width - 1 - k] |= sign_here
    if missing is not None:
        mask &= ~np.asarray(missing, bool)[:, :, None]
    return chars, mask


def format_criteo_lines(
    labels: np.ndarray,
    dense: np.ndarray,
    cats: np.ndarray,
    dense_missing: np.ndarray | None = None,
    cat_missing: np.ndarray | None = None,
) -> bytes:
    """Criteo TSV text for n samples: label, D integer fields, C categorical fields as 8 hex digits.

    labels: ints [n]; dense: int64 [n, D] raw counts (negative values are written as they are);
    cats: uint32 [n, C], written as 8 lowercase hex digits. `dense_missing` / `cat_missing`
    (bool [n, D] / [n, C]) make those fields empty. Every line ends with a newline.
    """
    labels = np.asarray(labels).reshape(-1)
    n = labels.shape[0]
    if n == 0:
        return b""
    dense = np.asarray(dense)
    dense = dense if dense.ndim == 2 else dense.reshape(n, -1)
    cats_arr = np.asarray(cats)
    if cats_arr.dtype.kind not in "ui":
        raise TypeError(f"cats must be an integer array, got {cats_arr.dtype}")
    if cats_arr.dtype.kind == "i" and cats_arr.size and (cats_arr.min() < 0 or cats_arr.max() >= 2**32):
        raise ValueError("cats must lie in [0, 2^32)")
    cats_arr = cats_arr.astype(np.uint32)
    cats_arr = cats_arr if cats_arr.ndim == 2 else cats_arr.reshape(n, -1)
    if dense.shape[0] != n or cats_arr.shape[0] != n:
        raise ValueError(f"labels, dense and cats disagree on the sample count: {n}, {dense.shape}, {cats_arr.shape}")
    d, c = dense.shape[1], cats_arr.shape[1]

    lab_chars, lab_mask = _int_block(labels.reshape(n, 1).astype(np.int64), None)
    lw = lab_chars.shape[2]
    dc, dm = _int_block(dense, dense_missing) if d else (None, None)
    dw = dc.shape[2] + 1 if dc is not None else 0
    width = lw + d * dw + c * 9 + 1
    mat = np.empty((n, width), np.uint8)
    msk = np.ones((n, width), bool)

    def fields(a: int, k: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Views [n, k, w] of columns a .. a + k*w (no copies: the last axis splits evenly)."""
        mv, kv = mat[:, a : a + k * w].reshape(n, k, w), msk[:, a : a + k * w].reshape(n, k, w)
        assert np.shares_memory(mv, mat) and np.shares_memory(kv, msk)
        return mv, kv

    mat[:, :lw] = lab_chars[:, 0]
    msk[:, :lw] = lab_mask[:, 0]
    pos = lw
    if d:
        mv, kv = fields(pos, d, dw)
        mv[:, :, 0] = 9
        mv[:, :, 1:] = dc
        kv[:, :, 1:] = dm
        pos += d * dw
    if c:
        mv, kv = fields(pos, c, 9)
        mv[:, :, 0] = 9
        big_endian = cats_arr.astype(">u4").view(np.uint8).reshape(n, c, 4)
        mv[:, :, 1:] = _HEX2[big_endian].view(np.uint8).reshape(n, c, 8)
        if cat_missing is not None:
            kv[:, :, 1:] = ~np.asarray(cat_missing, bool).reshape(n, c)[:, :, None]
        pos += c * 9
    mat[:, pos] = 10
    return mat[msk].tobytes()
