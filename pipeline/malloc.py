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
the library in a long-lived process can call it too, or set the environment variables
``MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=16777216`` before Python starts
(then this does nothing, so values the user chose win). Other C libraries (musl, macOS)
are left alone.

Fixing the mmap threshold also fixes glibc's trim threshold, at its start value of
128 KiB: every time more than that is free at the top of a heap, glibc hands it back to
the system, and the next strip's temporaries fault fresh pages in again. So the trim
threshold is set too, to :data:`TRIM_THRESHOLD` (16 MiB: a few strips' temporaries per
dask thread, nothing chunk-sized). Measured with the CLI on this project's 2-core machine,
page cache full: an autoencoder ``compress --model`` of a 15 x 2500 x 2500 cube faulted
2.3-2.6 M pages with the mmap threshold alone (4-6 s of system time: its ~1 MiB strip
temporaries were mapped and unmapped, or trimmed, for every strip) and ~0.16 M with both
(1.0-1.5 s; 8.3-9.0 -> 5.5-6.0 s wall); PCA and standardize of a 15 x 5000 x 5000
cube are unchanged (their temporaries are smaller) and every peak stayed within 10 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "bound_heap_growth"]

#: Bytes from which an allocation gets its own mapping (chunk buffers are far larger;
#: strip temporaries under 1 MiB stay on the heap, where reuse is cheap).
MMAP_THRESHOLD = 1 << 20
#: Bytes free at the top of a heap before glibc returns them to the system.
TRIM_THRESHOLD = 16 << 20
_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def bound_heap_growth(threshold: int = MMAP_THRESHOLD, trim: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes and its trim threshold at
    ``trim`` bytes (see the module docs).

    Returns True if they were set; False off glibc, or when ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` is already in the environment (glibc read it at start)."""
    if not sys.platform.startswith("linux") or any(
        v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no libc by that name, or no mallopt (musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold))) and bool(
        mallopt(_M_TRIM_THRESHOLD, int(trim))
    )
