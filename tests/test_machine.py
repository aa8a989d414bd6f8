"""recstack.machine: the one reader of CPU facts (shard cache keys, energy estimates, benchmark headers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recstack.machine import cpu_facts, usable_cores


def test_usable_cores_is_the_affinity_set():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity API on this platform")
    assert usable_cores() == len(os.sched_getaffinity(0)) >= 1


def test_cpu_facts_reads_the_model_and_flags_from_cpuinfo():
    facts = cpu_facts()
    assert facts["cores"] == usable_cores()
    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo")
    lines = info.read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    flags = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())
    if model is not None:
        assert facts["cpu"] == model
    assert facts["avx512"] == ("avx512f" in flags) and facts["amx"] == ("amx_tile" in flags)
