"""The sink's linger buffer: records written since the last flush, their size, and when the
first of them came. Pure bookkeeping (no clock, no event loop): the sink reads the clock and
runs the timer that says when to ``take`` them.

``add`` is on the data plane's side of the sink (called for every batch written): it extends
one list and sums the values' lengths, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

KeyValue = tuple[bytes, bytes]


class Linger:
    """Records waiting to be handed to the producer, in write order; ``add`` says when their
    values add up to ``flush_bytes``."""

    __slots__ = ("bytes", "flush_bytes", "records", "since")

    def __init__(self, flush_bytes: int) -> None:
        if flush_bytes <= 0:
            raise ValueError("flush_bytes must be positive")
        self.flush_bytes = flush_bytes
        self.records: list[KeyValue] = []
        self.bytes = 0
        self.since = 0.0

    def __len__(self) -> int:
        return len(self.records)

    def __bool__(self) -> bool:
        return bool(self.records)

    def begin(self, now: float) -> None:
        """A linger period starts at ``now`` (the buffer is empty and a write comes)."""
        self.since = now

    def add(self, batch: Sequence[KeyValue]) -> bool:
        """Append ``batch``; true when the buffer now holds ``flush_bytes`` or more."""
        self.records.extend(batch)
        size = self.bytes
        for _, value in batch:
            size += len(value)
        self.bytes = size
        return size >= self.flush_bytes

    def take(self) -> tuple[list[KeyValue], float]:
        """Everything lingering and when its first record came; the buffer is empty after."""
        records, self.records, self.bytes = self.records, [], 0
        return records, self.since
