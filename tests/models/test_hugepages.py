"""Embedding tables are advised onto transparent huge pages: the kernel marks their memory MADV_HUGEPAGE."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from recstack.models import hugepages
from recstack.models.embedding import EmbeddingBagCollection
from recstack.spec import TableSpec

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise/THP are Linux features")
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str:
    try:
        text = _THP.read_text()
    except OSError:
        return "unavailable"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "unavailable"


def _advised_bytes(t: torch.Tensor) -> int:
    """Bytes of t's memory in mappings the kernel marks MADV_HUGEPAGE ("hg" in VmFlags of
    /proc/self/smaps). Deterministic, unlike AnonHugePages, which depends on how fragmented the
    machine's free memory is at that moment."""
    lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    total, span = 0, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            a, b = (int(x, 16) for x in head.split("-"))
            span = (max(a, lo), min(b, hi)) if a < hi and b > lo else None
        elif span is not None and line.startswith("VmFlags:") and "hg" in line.split()[1:]:
            total += span[1] - span[0]
    return total


@linux
def test_advise_marks_the_aligned_interior(monkeypatch):
    monkeypatch.setenv("RECSTACK_HUGEPAGES", "1")
    t = torch.empty(16 << 20, dtype=torch.uint8)  # 16 MB
    marked = hugepages.advise_hugepages(t)
    # At most the 2 MB-aligned interior; at least all of it but one partial page on each side.
    assert 16 * 2**20 - 2 * 2**21 <= marked <= 16 * 2**20
    assert marked % 2**21 == 0
    # what it reports is marked by the kernel (memory reused from an earlier marked mapping may carry more)
    assert _advised_bytes(t) >= marked
    assert hugepages.advise_hugepages(torch.empty(1000, dtype=torch.uint8)) == 0  # smaller than one huge page


def test_switch_off_and_small_tables(monkeypatch):
    monkeypatch.setenv("RECSTACK_HUGEPAGES", "0")
    assert hugepages.advise_hugepages(torch.empty(16 << 20, dtype=torch.uint8)) == 0
    t = hugepages.empty_table(1000, 16)
    assert t.shape == (1000, 16) and t.dtype == torch.float32


@linux
@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"), reason="transparent huge pages disabled here")
def test_big_tables_are_marked_for_huge_pages(monkeypatch):
    monkeypatch.setenv("RECSTACK_HUGEPAGES", "1")
    ebc = EmbeddingBagCollection([TableSpec(name="t0", rows=1 << 20, dim=16)], backend="torch")
    w = ebc.table_weight(0)
    nbytes = w.numel() * w.element_size()
    assert _advised_bytes(w) >= nbytes - 2 * 2**21  # all of the 64 MB table but partial edge pages
    small = EmbeddingBagCollection([TableSpec(name="s", rows=1000, dim=16)], backend="fused").table_weight(0)
    assert small.shape == (1000, 16)
