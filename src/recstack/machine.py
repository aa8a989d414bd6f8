"""Facts about the CPU this process runs on: model, usable cores, ISA flags.

One reader for what cache keys (shard measurements), energy estimates and benchmark headers
record about the machine.
"""

from __future__ import annotations

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


def cpu_facts() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo where readable), usable cores, AVX-512 / AMX flags, Python and OS."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    model_seen = False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model_seen:
                cpu, model_seen = line.split(":", 1)[1].strip(), True
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": cpu, "cores": usable_cores(), "avx512": "avx512f" in flags, "amx": "amx_tile" in flags,
            "python": platform.python_version(), "platform": platform.platform()}
