"""The worker's fixed mmap threshold (``dataplane/malloc.py``): a multi-MiB body freed is
given back to the system, where glibc's default (dynamic) threshold keeps it in the heap; the
heap top a stream of reads reuses is kept (its trim threshold)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from shadowroute.dataplane.malloc import fix_malloc_thresholds

# Allocates an 8 MiB body once (mmap'd under the default threshold, which then rises to
# 8 MiB), then again with a small block allocated after it (so the heap's top stays in use),
# frees it and prints how much the resident set kept, in KiB.
SCRIPT = """
import sys
from shadowroute.dataplane.malloc import fix_malloc_thresholds
if sys.argv[1] == "fixed":
    assert fix_malloc_thresholds()
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4
body = b"x" * (8 << 20)
del body
before = rss_kib()
body = b"y" * (8 << 20)
pins = [b"z" * 200 for _ in range(2000)]
del body
print(rss_kib() - before)
"""

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not sys.platform.startswith("linux"),
    reason="glibc's mallopt on Linux only",
)


def _run(script: str, mode: str) -> int:
    """The number ``script`` prints, run in a fresh interpreter (``mode``: fixed or default)."""
    out = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=30, check=True
    )
    return int(out.stdout.strip())


@glibc
def test_a_freed_big_body_is_given_back_with_the_fixed_threshold() -> None:
    default, fixed = _run(SCRIPT, "default"), _run(SCRIPT, "fixed")
    assert default > 6 * 1024, default  # the mechanism the fix is for: 8 MiB kept in the heap
    assert fixed < 2 * 1024, fixed


@glibc
def test_fixing_the_threshold_reports_success() -> None:
    # A subprocess would do as well; setting it here is harmless (blocks of >= 1 MiB mmap'd).
    assert fix_malloc_thresholds()


# Streams 40 bodies of 1 MiB through the heap in 256 KiB blocks (a socket read each) with a
# small block allocated after each burst (the heap's top stays in use, as a worker's does),
# and prints the page faults that took, from the second body on.
STREAM = """
import resource, sys
from shadowroute.dataplane.malloc import fix_malloc_thresholds
if sys.argv[1] == "fixed":
    assert fix_malloc_thresholds()
pins = []
def burst():
    reads = [bytes(256 << 10) for _ in range(4)]
    pins.append(b"p" * 64)
    del reads
burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    burst()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@glibc
def test_a_body_streamed_through_reuses_the_heap_top_instead_of_faulting_it_in_again() -> None:
    """glibc's default trim threshold (128 KiB) gives the free heap top back after each burst
    of reads and faults it in again on the next: 40 MiB streamed, ~4,000 page faults. The
    worker's trim threshold keeps it (~130)."""
    default, fixed = _run(STREAM, "default"), _run(STREAM, "fixed")
    assert default > 2000, default
    assert fixed < default // 10, (fixed, default)
