"""Keep freed memory in the process (glibc malloc), so a training step does not fault its
activations in again every step.

By default glibc hands large freed blocks back to the kernel (blocks over a threshold that
starts at 128 KiB are mmap-ed and unmapped on free; the top of the heap is trimmed past
128 KiB). A CPU training step frees and reallocates the same activations every step, so
each step then takes ~20,000 page faults, the kernel zeroing every page: measured on the
2-core reference machine at a 630k-parameter model, 35-50 ms of system time in a 115 ms
step; with the thresholds below, no faults and 80 ms (docs/performance.md). Peak memory is
unchanged (the same blocks are reused, not added); memory freed after the peak stays with
the process (up to 2 GiB at the top of the heap) until it ends.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest: bigger blocks are always mmap-ed
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int: trim only past 2 GiB free on top

_state = "default"


def keep_freed_memory() -> str:
    """Raise glibc's thresholds once a process, unless the environment sets malloc's own
    (``MALLOC_*_`` or ``GLIBC_TUNABLES``: those win). Returns what is in effect, for
    run.json."""
    global _state
    if _state != "default":
        return _state
    if not sys.platform.startswith("linux"):
        return _state
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
        k.startswith("MALLOC_") and k.endswith("_") for k in os.environ
    ):
        _state = "from the environment"
        return _state
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(
            M_TRIM_THRESHOLD, TRIM_THRESHOLD
        )
    except (OSError, AttributeError):
        return _state  # not glibc (musl, say): its allocator keeps what it keeps
    if done:
        _state = f"glibc: mmap above {MMAP_THRESHOLD >> 20} MiB, trim above 2 GiB"
    return _state
