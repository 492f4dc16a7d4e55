"""The cyclic garbage collector paused while batches run.

A batch allocates hundreds of thousands of small containers (fetched records, decoded
records, rows, entries) that all live until it ends. Each young collection promotes them and
full collections then walk them again and again: up to a third of the batch time, for nothing,
since they form no cycles and reference counting frees them when the batch ends. Cycles made
meanwhile anywhere in the process are collected after the pause, or by ``PeriodicCollection.tick``
during a long one, so nothing leaks.

>>> import gc
>>> with gc_paused():
...     gc.isenabled()
False
>>> gc.isenabled()
True
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["PeriodicCollection", "gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block, if it is enabled; enable it after. A
    nested or concurrent pause that found it disabled leaves it to the outer one."""
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class PeriodicCollection:
    """A full collection at most every ``interval_s``, for a loop that keeps the collector
    paused for a long time (``tick`` after each batch)."""

    def __init__(
        self, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next = clock() + interval_s
        self.collections = 0

    def tick(self) -> None:
        now = self._clock()
        if now >= self._next:
            gc.collect()
            self.collections += 1
            self._next = now + self.interval_s
