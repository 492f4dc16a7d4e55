"""The sink interface, and the sinks that combine or hand over batches in-process.

Records reach a sink through ``stream.queue.RecordQueue``, whose pump writes them in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

KeyValue = tuple[bytes, bytes]


class Sink(Protocol):
    """Where encoded records go. ``write`` gets a batch in arrival order."""

    async def start(self) -> None: ...

    async def write(self, batch: Sequence[KeyValue]) -> None: ...

    async def close(self) -> None:
        """Flush everything written so far, then release resources."""
        ...


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
