"""What every benchmark prints about the machine it ran on (CPU, usable cores, ISA, OS)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_facts() -> dict[str, Any]:
    """CPU model, usable cores, AVX-512 / AMX flags, Python and platform strings."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"cpu": cpu, "cores": cores, "avx512": "avx512f" in flags, "amx": "amx_tile" in flags,
            "python": platform.python_version(), "platform": platform.platform()}
