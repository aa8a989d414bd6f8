"""Facts about the CPU this process runs on: model, usable cores, ISA flags.

One reader for what cache keys (shard measurements), energy estimates and benchmark headers
record about the machine.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any


def usable_cores() -> int:
    """Cores this process may run on (its affinity set), which bounds its CPU time per second."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """(model name, ISA flags) of the first processor in /proc/cpuinfo text; (None, {}) where absent."""
    model: str | None = None
    flags: frozenset[str] | None = None
    for line in text.splitlines():
        if model is None and line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif flags is None and line.startswith("flags"):
            flags = frozenset(line.split(":", 1)[1].split())
        if model is not None and flags is not None:
            break
    return model, flags or frozenset()


@functools.cache
def _cpu() -> tuple[str, frozenset[str]]:
    """The CPU model and flags, read once per process (they do not change while it runs)."""
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags = None, frozenset()
    return model or platform.processor() or platform.machine(), flags


def machine_key() -> dict[str, Any]:
    """CPU model and usable cores: the machine part of a measurement cache key."""
    return {"cpu": _cpu()[0], "cores": usable_cores()}


def cpu_facts() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo where readable), usable cores, AVX-512 / AMX flags, native
    bfloat16 arithmetic (AVX512_BF16 or AMX-BF16), Python and OS."""
    cpu, flags = _cpu()
    return {"cpu": cpu, "cores": usable_cores(), "avx512": "avx512f" in flags, "amx": "amx_tile" in flags,
            "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
            "python": platform.python_version(), "platform": platform.platform()}
