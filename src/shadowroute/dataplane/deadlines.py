"""Timeouts of in-flight upstream exchanges, without a timer per exchange.

A timer per exchange (``loop.call_later`` and its ``cancel``) costs a timer handle and a libuv
timer each time; with two exchanges per mirrored request that was about a tenth of the data
plane's CPU. Instead, each exchange's deadline goes into a bucket of ``tick_s`` seconds, and
one timer, armed at the earliest bucket's end, expires what is due. A timeout fires at most one
tick late and never early.

Nothing is removed when an exchange ends in time, and a pooled connection that starts its next
exchange is not added again while it sits in a bucket that comes due no later than its new
deadline: when that bucket comes due, a holder whose deadline has passed times out, and one
with a later deadline goes into the bucket of that deadline. So the buckets hold about one
entry per connection, whatever the request rate and the timeouts.

A holder is anything with a ``deadline`` (loop time, ``math.inf`` when it waits for nothing),
a ``timeout_key`` for this module's use (0 to start with) and an ``on_timeout`` method.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol

TICK_S = 0.01


class Expiring(Protocol):
    deadline: float
    timeout_key: int  # the bucket the holder is in, 0 for none (kept by ``Deadlines``)

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

    def add(self, holder: Expiring) -> None:
        """Call ``holder.on_timeout()`` at or soon after ``holder.deadline`` (loop time), if
        the deadline has not moved past it by then."""
        if self._closed:
            return
        key = self._key(holder.deadline)
        registered = holder.timeout_key
        if 0 < registered <= key:
            return  # an earlier (or this) bucket will see the holder first
        if self._insert(holder, key) and (self._timer is None or key < self._armed):
            self._arm(key)

    def _key(self, deadline: float) -> int:
        """The bucket for ``deadline``: it ends at ``key * tick_s``, at or after it."""
        return int(deadline / self.tick_s) + 1

    def _insert(self, holder: Expiring, key: int) -> bool:
        """Put ``holder`` in bucket ``key``; True when the bucket is new."""
        holder.timeout_key = key
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.append(holder)
            return False
        self._buckets[key] = [holder]
        heapq.heappush(self._keys, key)
        return True

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
            key = heapq.heappop(keys)
            for holder in buckets.pop(key):
                if holder.timeout_key != key:
                    continue  # moved to an earlier bucket since
                holder.timeout_key = 0
                deadline = holder.deadline
                if deadline > now:
                    if deadline != math.inf:  # a later exchange of the same holder
                        self._insert(holder, self._key(deadline))
                    continue
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
