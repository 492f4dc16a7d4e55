"""Timeouts of in-flight upstream exchanges, without a timer per exchange.

A timer per exchange (``loop.call_later`` and its ``cancel``) costs a timer handle and a libuv
timer each time; with two exchanges per mirrored request that was about a tenth of the data
plane's CPU. Instead, each exchange's deadline goes into a bucket of ``tick_s`` seconds, and
one timer, armed at the earliest bucket's end, expires what is due. A timeout fires at most one
tick late and never early.

Nothing is removed when an exchange ends in time: when its bucket comes due, the entry is
checked against the holder's current deadline and skipped. A holder is anything with a
``deadline`` (``math.inf`` when it waits for nothing) and an ``on_timeout`` method.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Protocol

TICK_S = 0.01


class Expiring(Protocol):
    @property
    def deadline(self) -> float: ...

    def on_timeout(self) -> None: ...


class Deadlines:
    """The deadlines of one event loop's exchanges, in buckets of ``tick_s``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_s: float = TICK_S) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self.loop = loop
        self.tick_s = tick_s
        self._buckets: dict[int, list[Expiring]] = {}
        self._keys: list[int] = []  # heap of the buckets' keys
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the key the timer is armed for
        self._closed = False

    def __len__(self) -> int:
        """Entries not yet due (including those of exchanges that already ended)."""
        return sum(map(len, self._buckets.values()))

    def add(self, holder: Expiring, deadline: float) -> None:
        """Call ``holder.on_timeout()`` at or soon after ``deadline`` (loop time) if
        ``holder.deadline`` is then still ``deadline`` or earlier."""
        if self._closed:
            return
        key = int(deadline / self.tick_s) + 1  # the bucket ends at key * tick_s >= deadline
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.append(holder)
            return
        self._buckets[key] = [holder]
        heapq.heappush(self._keys, key)
        if self._timer is None or key < self._armed:
            self._arm(key)

    def _arm(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = key
        self._timer = self.loop.call_at(key * self.tick_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.loop.time()
        keys = self._keys
        buckets = self._buckets
        while keys and keys[0] * self.tick_s <= now:
            for holder in buckets.pop(heapq.heappop(keys)):
                if holder.deadline <= now:
                    try:
                        holder.on_timeout()
                    except Exception as exc:  # one failing holder must not strand the others
                        self.loop.call_exception_handler(
                            {"message": "timeout handler failed", "exception": exc}
                        )
        if keys and not self._closed:
            self._arm(keys[0])

    def close(self) -> None:
        """Stop: pending deadlines are dropped (their holders are being closed anyway)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._keys.clear()
