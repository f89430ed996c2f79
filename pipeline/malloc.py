"""Keep glibc's heap from holding on to freed chunk buffers.

glibc's ``malloc`` serves a block of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at
start) with its own ``mmap``, returned to the system on ``free``. But each time such a
block is freed, glibc raises the threshold to that block's size (up to 32 MiB), so after
the first decoded 15 MiB chunk is freed every later chunk-sized buffer comes from the
heap arenas instead, where freed space is kept and fragments across dask's threads. On a
31.6 GB cube (benchmarks/bench_beyond_ram.py) that made ``cubepipe compress`` peak at
1.9 GB, and 772 MB on a 6 GB cube, against 458 MB on the 1x cube: memory grew with the
cube's size. With the threshold fixed at 1 MiB (which also turns the raising off) the
6 GB run peaked at 442 MB in the same time.

:func:`bound_heap_growth` fixes the threshold with ``mallopt``; the ``cubepipe`` command
calls it at start (forked ``--scheduler local`` workers inherit it). Python code using
the library in a long-lived process can call it too, or set the environment variable
``MALLOC_MMAP_THRESHOLD_=1048576`` before Python starts (then this does nothing, so a
value the user chose wins). Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "bound_heap_growth"]

#: Bytes from which an allocation gets its own mapping (chunk buffers are far larger;
#: strip temporaries of about 1 MiB and less stay on the heap, where reuse is cheap).
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def bound_heap_growth(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (see the module docs).

    Returns True if it was set; False off glibc, or when ``MALLOC_MMAP_THRESHOLD_`` is
    already in the environment (glibc read it at start)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no libc by that name, or no mallopt (musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
