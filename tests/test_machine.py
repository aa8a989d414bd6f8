"""recstack.machine: the one reader of CPU facts (shard cache keys, energy estimates, benchmark headers)."""

from __future__ import annotations

import os

from recstack import machine
from recstack.machine import cpu_facts, machine_key, parse_cpuinfo, usable_cores

_X86 = """processor\t: 0
model name\t: Example CPU A
flags\t\t: fpu sse avx2 avx512f amx_tile

processor\t: 1
model name\t: Example CPU B
flags\t\t: fpu sse
"""


def test_parse_cpuinfo_takes_the_first_processor():
    model, flags = parse_cpuinfo(_X86)
    assert model == "Example CPU A"
    assert {"avx512f", "amx_tile", "avx2"} <= flags and len(flags) == 5


def test_parse_cpuinfo_without_model_or_flags():
    assert parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n") == (None, frozenset())


def test_usable_cores_is_the_affinity_set_else_cpu_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    assert usable_cores() == 2
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert usable_cores() == 7


def test_facts_and_key_come_from_the_parsed_cpu(monkeypatch):
    monkeypatch.setattr(machine, "_cpu", lambda: ("Example CPU A", parse_cpuinfo(_X86)[1]))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    facts = cpu_facts()
    assert (facts["cpu"], facts["cores"], facts["avx512"], facts["amx"]) == ("Example CPU A", 3, True, True)
    assert facts["bf16"] is False  # amx_tile alone is not bf16 arithmetic
    assert machine_key() == {"cpu": "Example CPU A", "cores": 3}
    monkeypatch.setattr(machine, "_cpu", lambda: ("Example CPU C", frozenset({"avx512f", "avx512_bf16"})))
    assert cpu_facts()["bf16"] is True


def test_cpu_is_read_once(monkeypatch):
    machine._cpu.cache_clear()
    reads = []
    real = machine.Path.read_text
    monkeypatch.setattr(machine.Path, "read_text", lambda self, *a, **k: reads.append(self) or real(self, *a, **k))
    try:
        first = cpu_facts()["cpu"]
        assert machine_key()["cpu"] == first and cpu_facts()["cpu"] == first
        assert len(reads) <= 1  # 0 where /proc/cpuinfo is absent (the platform fallback)
    finally:
        machine._cpu.cache_clear()
