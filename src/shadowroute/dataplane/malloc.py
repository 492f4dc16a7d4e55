"""A fixed mmap threshold for glibc's allocator in a data-plane worker.

glibc serves allocations of at least ``M_MMAP_THRESHOLD`` bytes with their own ``mmap`` and
gives them back to the system when they are freed. By default that threshold is dynamic: each
time a block so mapped is freed, the threshold rises to its size (up to 32 MiB on 64-bit), so
after one multi-MiB body every later body of that size is carved from the heap, whose freed
middle is never given back. A worker that once held a few hostile multi-MiB bodies at the same
time keeps that high-water mark for good (the hostile soak: 69 → 78 → 80 MiB over its first
three rounds). Setting the threshold explicitly turns the dynamic adjustment off: bodies of at
least ``MMAP_THRESHOLD`` are always mapped and unmapped, and smaller blocks (the socket reads
of 256 KiB) stay on the heap.

Only glibc has ``mallopt`` with these semantics: elsewhere nothing is done.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Final

M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 1 << 20
"""Blocks of at least this many bytes are mmap'd (and returned when freed). Above the 256 KiB
socket reads, so streaming a body does not map and unmap a block per read."""


TRIM_THRESHOLD: Final = 4 << 20
"""Free memory at the top of the heap is given back to the system once it exceeds this."""


def fix_malloc_thresholds(threshold: int = MMAP_THRESHOLD, trim: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes and its trim threshold at ``trim``
    bytes for this process; False (nothing done) on another C library or when glibc refuses."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
