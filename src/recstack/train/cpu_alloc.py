"""Process-level CPU allocator setting for training (perf).

glibc returns freed memory to the OS eagerly: blocks above a dynamic mmap threshold are
unmapped on free, and the heap top is trimmed once a few MB are free. A training step frees and
reallocates the same multi-MB activation and gradient buffers every iteration, so each step
page-faults them in again: about 1,800 minor faults (7 MB) per step of the DLRM benchmark
configuration, 1.5 ms of a 30 ms single-threaded step, more in share on 2 threads where the
other thread waits. Raising the thresholds once per process keeps those pages mapped; this is
what a jemalloc/tcmalloc LD_PRELOAD achieves, without the preload.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory() -> bool:
    """Stop glibc from handing freed buffers back to the OS (once per process; Linux/glibc only).

    Buffers up to 32 MB come from the heap and stay mapped until 1 GB of it is free. Set
    RECSTACK_MALLOC_TUNING=0 to leave malloc alone. Returns whether the setting is in effect.
    """
    global _done
    if _done:
        return True
    if os.environ.get("RECSTACK_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(
            libc.mallopt(param, value)
            for param, value in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 16 << 20))
        )
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _done = ok
    return ok
