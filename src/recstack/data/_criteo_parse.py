"""Vectorised parsing of a block of Criteo TSV lines (bytes in, numpy arrays out).

Why not a per-line Python loop: that runs at a few MB/s. Here the whole block is one uint8
array; separators are located with one comparison, every field's bytes are fetched with a single
unaligned 8-byte gather (a uint64 view with byte strides), and decimal and hex text are decoded
with SWAR arithmetic (all 8 characters of a field at once in one uint64). Lines the fast path
cannot vouch for (wrong field count, odd characters, integers longer than 16 characters) are
handed to an exact per-line parser, which either accepts them or says why they are malformed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

PAD = 16  # bytes of padding before and after the text, so 8-byte gathers never leave the buffer

_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_ZEROS_ASCII = np.uint64(0x3030303030303030)
_U64 = np.uint64
# _KEEP[k]: mask of the top k bytes of a little-endian uint64 (the last k characters of a field)
_KEEP = np.array([0] + [((1 << (8 * k)) - 1) << (8 * (8 - k)) for k in range(1, 9)], np.uint64)

_INT_RE = re.compile(rb"-?[0-9]+")
_HEX_RE = re.compile(rb"[0-9a-fA-F]{1,8}")


@dataclass
class Parsed:
    """The samples of one block, in file order, and the block's malformed lines."""

    labels: np.ndarray  # float32 [m]
    dense: np.ndarray  # float32 [m, D], log(x+1) of max(x, 0)
    cats: np.ndarray  # uint32 [m, C] raw hashes (0 for empty fields)
    lines: int  # lines in the block (good and bad)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (0-based line in block, reason)


def field_name(i: int, num_dense: int) -> str:
    """Criteo's column names: the label, I1..I13 (integers), C1..C26 (categoricals)."""
    if i == 0:
        return "label"
    return f"I{i}" if i <= num_dense else f"C{i - num_dense}"


def _in_range(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per byte of x (all bytes < 0x80): high bit set where lo <= byte <= hi."""
    a = x + _U64((0x80 - lo) * 0x0101010101010101)
    b = x + _U64((0x7F - hi) * 0x0101010101010101)
    return a & ~b & _HIGH


def _decimal(words: np.ndarray, ndig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode the last `ndig` (0..8) characters held in `words` (right-aligned) as decimal.

    Returns (values uint64, ok bool): ok is False where a kept character is not a digit.
    """
    keep = _KEEP[ndig]
    x = (words & keep) | (_ZEROS_ASCII & ~keep)  # characters outside the field read as '0'
    ok = ((x & _HIGH) == 0) & (_in_range(x, 0x30, 0x39) == _HIGH)
    d = x - _ZEROS_ASCII
    d = (d * _U64(10) + (d >> _U64(8))) & _U64(0x00FF00FF00FF00FF)
    d = (d * _U64(100) + (d >> _U64(16))) & _U64(0x0000FFFF0000FFFF)
    d = (d * _U64(10000) + (d >> _U64(32))) & _U64(0xFFFFFFFF)
    return d, ok


def _hex_pair_table() -> np.ndarray:
    """uint16 of two characters (first in the low byte) -> their hex value, or 0x100 if not hex."""
    val = np.full(256, 0x100, np.uint16)
    for i, ch in enumerate(b"0123456789abcdef"):
        val[ch] = i
        val[bytes([ch]).upper()[0]] = i
    pair = np.arange(65536)
    first, second = val[pair & 0xFF].astype(np.uint32), val[pair >> 8].astype(np.uint32)
    bad = (first | second) >= 0x100
    return np.where(bad, 0x100, first * 16 + second).astype(np.uint16)


_HEX_PAIRS = _hex_pair_table()


def _hex8(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode 8 hex characters per uint64 (first character in the lowest byte) to uint32.

    One table lookup per character pair gives the four bytes of the value, most significant first.
    """
    pairs = _HEX_PAIRS[words.view(np.uint16)]  # [..., 4] uint16: byte value, or >= 0x100 if not hex
    ok = (pairs.view(np.uint64) & _U64(0xFF00FF00FF00FF00)) == 0
    value = pairs.astype(np.uint8).view(">u4").astype(np.uint32)
    return value.reshape(words.shape), ok.reshape(words.shape)


def parse_line(line: bytes, num_dense: int, num_cat: int) -> tuple[int, list[float], list[int]] | str:
    """Exact, slow parser of one line (without its newline): the values, or why it is malformed."""
    if line.endswith(b"\r"):
        line = line[:-1]
    fields = line.split(b"\t")
    want = 1 + num_dense + num_cat
    if len(fields) != want:
        return f"expected {want} fields, found {len(fields)}"
    if fields[0] not in (b"0", b"1"):
        return f"label must be 0 or 1, found {fields[0][:20].decode('latin-1')!r}"
    dense: list[float] = []
    for i in range(1, 1 + num_dense):
        f = fields[i]
        if not f:
            dense.append(0.0)
        elif _INT_RE.fullmatch(f):
            dense.append(math.log1p(max(int(f), 0)))
        else:
            return f"field {field_name(i, num_dense)}: not an integer: {f[:20].decode('latin-1')!r}"
    cats: list[int] = []
    for i in range(1 + num_dense, want):
        f = fields[i]
        if not f:
            cats.append(0)
        elif _HEX_RE.fullmatch(f):
            cats.append(int(f, 16))
        else:
            return f"field {field_name(i, num_dense)}: bad hex: {f[:20].decode('latin-1')!r}"
    return int(fields[0]), dense, cats


def parse_block(buf: np.ndarray, base: int, n: int, num_dense: int = 13, num_cat: int = 26) -> Parsed:
    """Parse `buf[base:base+n]`: whole lines, each ending in b'\\n'.

    `buf` must have at least PAD bytes before `base` and after the text (they are read, never used).
    """
    if base < PAD or buf.size < base + n + PAD:
        raise ValueError("parse_block needs PAD spare bytes around the text")
    nf = 1 + num_dense + num_cat
    text = buf[base : base + n]
    sep = np.flatnonzero(text <= 10)  # tabs and newlines (and control bytes, rejected below)
    kind = text[sep]
    is_nl = kind == 10
    nl = np.flatnonzero(is_nl)  # index into sep of each line's newline
    m = nl.size
    if m == 0:
        return Parsed(np.zeros(0, np.float32), np.zeros((0, num_dense), np.float32),
                      np.zeros((0, num_cat), np.uint32), 0)
    ctrl = kind < 9
    if not ctrl.any() and sep.size == m * nf and (nl == np.arange(nf - 1, m * nf, nf)).all():
        good = np.ones(m, bool)
        ends = sep.reshape(m, nf)
    else:
        good = np.diff(nl, prepend=-1) == nf  # separators per line = fields per line
        if ctrl.any():  # a control byte inside a line: leave that line to the exact parser
            line_of_sep = np.cumsum(is_nl) - is_nl
            good[line_of_sep[ctrl]] = False
        ends = sep[nl[good][:, None] - np.arange(nf - 1, -1, -1)]
    line_start = np.empty(m, np.int64)
    line_start[0] = 0
    line_start[1:] = sep[nl[:-1]] + 1
    g = ends.shape[0]
    # a uint64 view at every byte offset of buf (unaligned reads are fine on the CPUs numpy runs on)
    words = np.ndarray((buf.size - 7,), np.uint64, buffer=buf.data, strides=(1,))
    lengths = np.diff(ends, axis=1) - 1  # fields 1 .. nf-1

    # label: exactly one character, '0' or '1'
    lab = text[ends[:, 0] - 1] - np.uint8(48)
    ok = (ends[:, 0] - line_start[good] == 1) & (lab <= 1)

    # every field's last 8 bytes in one gather: the uint64 ending at its separator (column 0, the
    # label's, is not used; gathering it keeps the index array contiguous, which is faster)
    w = words[ends + (base - 8)][:, 1:]

    # dense: up to 8 digits decoded at once; negative or longer numbers are redone below
    d_len = lengths[:, :num_dense]
    value, okd = _decimal(w[:, :num_dense], np.minimum(d_len, 8))
    okd &= d_len <= 8
    if not okd.all():
        r, c = np.nonzero(~okd)
        e, ln = ends[r, c + 1], d_len[r, c]
        neg = text[e - ln] == 45  # '-' (only failed, hence non-empty, fields are here)
        ndig = ln - neg
        low, ok_low = _decimal(words[e + (base - 8)], np.clip(ndig, 0, 8))
        high, ok_high = _decimal(words[e + (base - 16)], np.clip(ndig - 8, 0, 8))
        value[r, c] = np.where(neg, _U64(0), low + high * _U64(100_000_000))
        okd[r, c] = ok_low & ok_high & (ndig >= 1) & (ndig <= 16)
    dense = np.log1p(value.astype(np.float64)).astype(np.float32)

    # categoricals: empty, or exactly 8 hex digits
    c_len = lengths[:, num_dense:]
    present = c_len == 8
    cats, okc = _hex8(w[:, num_dense:])
    okc &= present
    okc |= c_len == 0
    cats *= present
    ok &= okd.all(1) & okc.all(1)

    labels = lab.astype(np.float32)
    if ok.all() and g == m:
        return Parsed(labels, dense, cats, m)

    # slow path for everything the fast path did not accept, in file order
    good_idx = np.flatnonzero(good)
    fast_ok = np.zeros(m, bool)
    fast_ok[good_idx[ok]] = True
    out_labels = np.zeros(m, np.float32)
    out_dense = np.zeros((m, num_dense), np.float32)
    out_cats = np.zeros((m, num_cat), np.uint32)
    out_labels[good_idx[ok]] = labels[ok]
    out_dense[good_idx[ok]] = dense[ok]
    out_cats[good_idx[ok]] = cats[ok]
    keep = fast_ok.copy()
    line_end = sep[nl]
    bad: list[tuple[int, str]] = []
    raw = text.tobytes() if (~fast_ok).sum() > 64 else None
    for i in np.flatnonzero(~fast_ok).tolist():
        a, z = int(line_start[i]), int(line_end[i])
        line = raw[a:z] if raw is not None else text[a:z].tobytes()
        res = parse_line(line, num_dense, num_cat)
        if isinstance(res, str):
            bad.append((i, res))
            continue
        out_labels[i] = res[0]
        out_dense[i] = res[1]
        out_cats[i] = res[2]
        keep[i] = True
    if not keep.all():
        out_labels, out_dense, out_cats = out_labels[keep], out_dense[keep], out_cats[keep]
    return Parsed(out_labels, out_dense, out_cats, m, bad)
