"""Bulk reads take turns: after a long read, a connection waits here, and one waiting
connection reads again per turn of the worker's loop.

Given a readable socket, the event loop (libuv) reads it up to 256 kB at a time. A connection
that has just read ``upstream.BULK_READ`` bytes or more (an upload, a big answer) stops
reading and waits in the worker's one ``BulkTurns``; each turn of the loop lets the oldest
waiter read again. With several big bodies streaming at once (an upload, an 8 MiB answer, a
big candidate answer), a turn then copies at most one of their chunks besides the new ones,
instead of one per stream: the other connections' requests wait for one chunk, not for all.
The bulk streams share the turns; a turn with nothing else to do is short, so they still
move at the speed of the copies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class BulkTurns:
    """The connections of one data-plane process waiting to read again after a long read.

    ``wait(again)`` queues a callback that resumes a connection's reading (it checks itself
    whether the connection still wants to read: closed or paused for backpressure meanwhile,
    it does nothing); one callback runs per turn of the loop, oldest first."""

    __slots__ = ("_armed", "_call_soon", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call_soon = loop.call_soon
        self._waiting: deque[Callable[[], None]] = deque()
        self._armed = False

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, again: Callable[[], None]) -> None:
        self._waiting.append(again)
        if not self._armed:
            self._armed = True
            self._call_soon(self._next)

    def _next(self) -> None:
        waiting = self._waiting
        again = waiting.popleft()
        if waiting:
            self._call_soon(self._next)
        else:
            self._armed = False
        again()
