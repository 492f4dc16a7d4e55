"""Work that many connections may want at once takes turns: a few callbacks per turn of the
worker's loop, oldest first, so that the other connections' requests wait for a few of them,
not for all.

Two queues of one data-plane process use it:

- **Long readers** (``Proxy.turns``, one per turn). Given a readable socket, the event loop
  (libuv) reads it up to 256 kB at a time. A connection that has just read
  ``upstream.BULK_READ`` bytes or more (an upload, a big answer) stops reading and waits here;
  each turn lets the oldest waiter read again. With several big bodies streaming at once (an
  upload, an 8 MiB answer, a big candidate answer), a turn then copies at most one of their
  chunks besides the new ones, instead of one per stream. The bulk streams share the turns;
  a turn with nothing else to do is short, so they still move at the speed of the copies.
- **Closes after the peer's end of stream** (``Proxy.closes``, ``CLOSES_PER_TURN`` per turn):
  client connections ended with nothing pending, and idle pooled connections a model server
  ended. Closing a TCP connection the peer ended sends its FIN and tears the socket down,
  ~15 µs of kernel work in the close itself; a client that ends 900 connections at once (a
  flood going away, a balancer restarting) made the loop close all 900 in the turn it read
  their ends: ~13 ms during which no other request was served, and a model server restarting
  ends up to ``max_idle`` (256) pooled connections of each pool at once. The connections now
  wait here and are closed a few per turn.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

CLOSES_PER_TURN: Final = 8
"""Connections closed per turn of the loop after their peers ended them (~0.15 ms)."""


class Turns:
    """Callbacks of one data-plane process waiting for their turn of the loop.

    ``wait(callback)`` queues a callback; each turn of the loop runs up to ``per_turn`` of
    them, oldest first. A callback checks itself whether what it was queued for still stands
    (a connection closed or paused meanwhile does nothing)."""

    __slots__ = ("_armed", "_call_soon", "_per_turn", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int = 1) -> None:
        if per_turn < 1:
            raise ValueError(f"per_turn must be at least 1, not {per_turn}")
        self._call_soon = loop.call_soon
        self._waiting: deque[Callable[[], None]] = deque()
        self._armed = False
        self._per_turn = per_turn

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, callback: Callable[[], None]) -> None:
        self._waiting.append(callback)
        if not self._armed:
            self._armed = True
            self._call_soon(self._next)

    def _next(self) -> None:
        waiting = self._waiting
        n = len(waiting)
        if n > self._per_turn:
            n = self._per_turn
            self._call_soon(self._next)
        else:
            self._armed = False
        for _ in range(n):
            waiting.popleft()()
