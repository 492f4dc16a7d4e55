"""The sink interface and the bounded queue in front of it.

The data plane calls ``RecordQueue.put(key, value)``: it never blocks and never raises; when the
queue is full the record is dropped and counted. One pump task (owned by whoever owns the queue)
moves records to a ``Sink`` in batches, off the client's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("shadowroute.stream")

KeyValue = tuple[bytes, bytes]


class Sink(Protocol):
    """Where encoded records go. ``write`` gets a batch in arrival order."""

    async def start(self) -> None: ...

    async def write(self, batch: Sequence[KeyValue]) -> None: ...

    async def close(self) -> None:
        """Flush everything written so far, then release resources."""
        ...


class RecordQueue:
    """A bounded FIFO of (key, value) records with a non-blocking ``put``."""

    def __init__(self, maxsize: int, max_batch: int = 4096) -> None:
        self.maxsize = maxsize
        self.max_batch = max_batch
        self._items: deque[KeyValue] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self.put_total = 0
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: bytes, value: bytes) -> bool:
        """Queue a record; False (and counted) when full or closed."""
        if self._closed or len(self._items) >= self.maxsize:
            self.dropped_total += 1
            return False
        self._items.append((key, value))
        self.put_total += 1
        if not self._ready.is_set():
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
                await self._ready.wait()
                continue
            batch = self._take()
            try:
                await sink.write(batch)
            except Exception:
                self.dropped_total += len(batch)
                log.exception("sink write failed; %d records dropped", len(batch))


class ChannelSink:
    """The in-process channel: records are handed to a consumer callback (the embedded
    comparator) batch by batch."""

    def __init__(self, consumer: ChannelConsumer) -> None:
        self._consumer = consumer

    async def start(self) -> None:
        return None

    async def write(self, batch: Sequence[KeyValue]) -> None:
        await self._consumer.consume(batch)

    async def close(self) -> None:
        return None


class ChannelConsumer(Protocol):
    async def consume(self, batch: Sequence[KeyValue]) -> None: ...


class FanoutSink:
    """Writes each batch to several sinks in order (e.g. channel + JSONL)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._sinks = list(sinks)

    async def start(self) -> None:
        for s in self._sinks:
            await s.start()

    async def write(self, batch: Sequence[KeyValue]) -> None:
        for s in self._sinks:
            await s.write(batch)

    async def close(self) -> None:
        for s in reversed(self._sinks):
            await s.close()
