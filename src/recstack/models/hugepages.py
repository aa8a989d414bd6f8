"""Embedding tables on transparent huge pages (CPU, Linux).

Embedding lookups and sparse updates touch rows at random across tables of hundreds of MB; with
4 KB pages nearly every row access also misses the TLB and walks the page table. Backing a table
with 2 MB pages removes most of those walks (on the DLRM benchmark configuration, 8 x 1M x 16
tables, the sparse SGD update of a batch is about 20% faster). Kernels commonly run THP in
`madvise` mode, where only memory marked with MADV_HUGEPAGE gets huge pages; this module marks a
table's memory right after allocation, before its first touch, so the initialisation faults it
in as huge pages. Anywhere this does not apply (other OS, devices, small tables, THP disabled)
the table is an ordinary tensor. Set RECSTACK_HUGEPAGES=0 to turn it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

_HUGE = 2 << 20  # 2 MB, the x86-64 and arm64 THP size
_MADV_HUGEPAGE = 14
_MIN_BYTES = 4 * _HUGE  # below this a table's random accesses mostly hit cache anyway
_madvise = None


def _libc_madvise():  # type: ignore[no-untyped-def]
    global _madvise
    if _madvise is None:
        try:
            fn = ctypes.CDLL("libc.so.6", use_errno=True).madvise
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):
            _madvise = False
    return _madvise


def enabled() -> bool:
    """Whether tables are advised onto huge pages in this process (Linux, not switched off)."""
    return sys.platform.startswith("linux") and os.environ.get("RECSTACK_HUGEPAGES", "1") != "0"


def advise_hugepages(t: torch.Tensor) -> int:
    """Mark the 2 MB-aligned interior of a CPU tensor's memory MADV_HUGEPAGE; returns the bytes marked.

    Only memory not yet touched (or later collapsed by khugepaged) becomes huge pages, so call it
    between allocation and initialisation.
    """
    if t.device.type != "cpu" or not enabled():
        return 0
    fn = _libc_madvise()
    if not fn:
        return 0
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    lo = (start + _HUGE - 1) // _HUGE * _HUGE
    hi = end // _HUGE * _HUGE
    if hi <= lo or fn(lo, hi - lo, _MADV_HUGEPAGE) != 0:
        return 0
    return hi - lo


def empty_table(rows: int, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised [rows, dim] table, on huge pages where that applies (see module doc)."""
    t = torch.empty(rows, dim, device=device, dtype=dtype)
    if t.numel() * t.element_size() >= _MIN_BYTES:
        advise_hugepages(t)
    return t
