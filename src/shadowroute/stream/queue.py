"""The bounded queue between the data plane and its sink.

The data plane calls ``RecordQueue.put(key, value)``: it never blocks and never raises; when the
queue is full the record is dropped and counted. One pump task (owned by whoever owns the queue)
moves records to a ``Sink`` in batches, off the client's path. (Compiled with the hot path:
``put`` runs for every record.)
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from shadowroute.stream.sink import KeyValue, Sink

log = logging.getLogger("shadowroute.stream")


class RecordQueue:
    """A bounded FIFO of (key, value) records with a non-blocking ``put``."""

    def __init__(self, maxsize: int, max_batch: int = 4096) -> None:
        self.maxsize = maxsize
        self.max_batch = max_batch
        self._items: deque[KeyValue] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._waiting = False  # the pump waits for _ready (a flag: Event.is_set is a call)
        self.put_total = 0
        self.dropped_total = 0
        """Records lost here: refused (full or closed) plus those of failed sink writes."""
        self.failed_total = 0
        """Records of sink writes that raised (part of ``dropped_total``)."""

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: bytes, value: bytes) -> bool:
        """Queue a record; False (and counted) when full or closed."""
        if self._closed or len(self._items) >= self.maxsize:
            self.dropped_total += 1
            return False
        self._items.append((key, value))
        self.put_total += 1
        if self._waiting:
            self._waiting = False
            self._ready.set()
        return True

    def close(self) -> None:
        """Stop accepting records; the pump drains what is queued and returns."""
        self._closed = True
        self._ready.set()

    def _take(self) -> list[KeyValue]:
        n = min(len(self._items), self.max_batch)
        return [self._items.popleft() for _ in range(n)]

    async def pump(self, sink: Sink) -> None:
        """Move batches to ``sink`` until closed and empty. A failing write is logged and the
        batch is dropped and counted (sinks that must not lose data, like Kafka, spool
        internally and do not raise)."""
        while True:
            if not self._items:
                if self._closed:
                    return
                self._ready.clear()
                self._waiting = True
                await self._ready.wait()
                continue
            batch = self._take()
            try:
                await sink.write(batch)
            except Exception:
                self.dropped_total += len(batch)
                self.failed_total += len(batch)
                log.exception("sink write failed; %d records dropped", len(batch))
