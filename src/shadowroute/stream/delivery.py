"""Delivery tracking for the Kafka sink: the batches handed to a producer and not yet resolved,
and the failure episodes (from the first failed connect or delivery to the next acknowledged
one), each logged once when it starts and once when it ends.

Both are plain bookkeeping: no event loop, no producer. The sink decides what a resolution
means (count it, spool the records, replace the producer).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

KeyValue = tuple[bytes, bytes]


class Episode:
    """Whether deliveries to ``topic`` are failing, and since when (``time.monotonic``)."""

    __slots__ = ("log", "since", "topic")

    def __init__(self, topic: str, log: logging.Logger) -> None:
        self.topic = topic
        self.log = log
        self.since: float | None = None

    @property
    def failing(self) -> bool:
        return self.since is not None

    def seconds(self, now: float) -> float:
        """How long deliveries have been failing at ``now`` (0 while they are accepted)."""
        since = self.since
        return 0.0 if since is None else now - since

    def failed(self, why: str, now: float) -> None:
        """A failed connect or delivery: the episode starts (logged once) or goes on."""
        if self.since is None:
            self.since = now
            self.log.warning(
                "kafka delivery to %s failing (%s); records go to the spool until it recovers",
                self.topic,
                why,
            )
        else:
            self.log.debug("kafka delivery to %s still failing: %s", self.topic, why)

    def accepted(self, now: float, spooled_bytes: int) -> None:
        """An acknowledged delivery: the episode (if any) ends, logged once."""
        since = self.since
        if since is not None:
            self.since = None
            self.log.warning(
                "kafka delivery to %s recovered after %.1f s (%d bytes waiting in the spool)",
                self.topic,
                now - since,
                spooled_bytes,
            )


class InFlight:
    """Batches a producer took and the broker has not yet resolved: for each delivery future,
    its records, when the first of them was written and which producer (generation) took it."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[asyncio.Future[Any], tuple[list[KeyValue], float, int]] = {}

    def add(
        self, fut: asyncio.Future[Any], records: list[KeyValue], started: float, generation: int
    ) -> None:
        self._entries[fut] = (records, started, generation)

    def pop(self, fut: asyncio.Future[Any]) -> tuple[list[KeyValue], float, int] | None:
        """The entry of a resolved future; None if it was already taken (``unresolved``)."""
        return self._entries.pop(fut, None)

    @property
    def records(self) -> int:
        return sum(len(r) for r, _, _ in self._entries.values())

    def unresolved(self) -> list[list[KeyValue]]:
        """Take the records of every batch not resolved yet, in hand-over order; their futures
        resolving later is then ignored."""
        out: list[list[KeyValue]] = []
        for fut, (records, _, _) in list(self._entries.items()):
            if not fut.done():
                del self._entries[fut]
                out.append(records)
        return out
