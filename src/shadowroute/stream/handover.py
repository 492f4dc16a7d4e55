"""Handing records to aiokafka's producer: the one routine the sink's flush, its acknowledged
writes and its spool drain all use.

Records are grouped by partition with the Java client's murmur2 (``stream.murmur2``), so a
label produced by any Kafka client with the default partitioner lands in the same partition as
its pair. Each group is packed into ``BatchBuilder``s and each builder is given to
``send_batch`` (which queues it in the producer's accumulator for its sender task); the future
it returns resolves when the broker acknowledged the batch.

A ``HandOver`` knows at every moment which records the producer took (``handed``, with their
futures) and which it did not (``unhanded``): a group whose builder the producer did not take
in time (or refused) is given up from that builder on, and the next group is tried while the
deadline allows. The bookkeeping is pure; only ``run`` talks to the producer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shadowroute.stream.murmur2 import partition_list

KeyValue = tuple[bytes, bytes]
Group = tuple[int, list[KeyValue]]
"""A partition and its records, in write order."""
Handed = tuple[asyncio.Future[Any], int, list[KeyValue]]
"""A batch the producer took: its delivery future, its partition and its records."""


def group_by_partition(batch: Sequence[KeyValue], num_partitions: int) -> list[Group]:
    """``batch`` split by partition (murmur2 of the key), groups in order of first appearance,
    records in write order within each."""
    parts = partition_list([k for k, _ in batch], num_partitions)
    groups: dict[int, list[KeyValue]] = {}
    for p, kv in zip(parts, batch, strict=True):
        chunk = groups.get(p)
        if chunk is None:
            groups[p] = [kv]
        else:
            chunk.append(kv)
    return list(groups.items())


class HandOver:
    """Groups of records on their way into one producer, and how far they got."""

    __slots__ = ("_done", "_group", "errors", "failed", "groups", "handed")

    def __init__(self, groups: list[Group]) -> None:
        self.groups = groups
        self.handed: list[Handed] = []
        self.failed: list[Group] = []
        self.errors: list[BaseException] = []
        self._group = 0  # the group being handed
        self._done = 0  # how many of its records the producer took

    @property
    def finished(self) -> bool:
        return self._group >= len(self.groups)

    def took(self, fut: asyncio.Future[Any], records: list[KeyValue]) -> None:
        """The producer took ``records`` (the next ones of the current group)."""
        self.handed.append((fut, self.groups[self._group][0], records))
        self._done += len(records)

    def next_group(self) -> None:
        self._group += 1
        self._done = 0

    def give_up_group(self, exc: BaseException) -> None:
        """The producer refused (or did not take in time) the current group's next builder:
        the rest of the group is given up, and the next group comes."""
        self.errors.append(exc)
        partition, chunk = self.groups[self._group]
        rest = chunk[self._done :]
        if rest:
            self.failed.append((partition, rest))
        self.next_group()

    def unhanded_groups(self) -> list[Group]:
        """What the producer did not take, by group, in group order: the groups given up,
        the rest of the current one and the groups not tried yet."""
        out = list(self.failed)
        if self.finished:
            return out
        partition, chunk = self.groups[self._group]
        rest = chunk[self._done :]
        if rest:
            out.append((partition, rest))
        out.extend(self.groups[self._group + 1 :])
        return out

    def unhanded(self) -> list[KeyValue]:
        """The records the producer did not take, in group order."""
        out: list[KeyValue] = []
        for _, chunk in self.unhanded_groups():
            out.extend(chunk)
        return out

    async def run(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        headers: list[tuple[str, bytes]],
        *,
        send_timeout_s: float,
        deadline: float = float("inf"),
        on_handed: Callable[[asyncio.Future[Any], list[KeyValue]], None] | None = None,
    ) -> None:
        """Hand every group to ``producer``: each builder waits at most ``send_timeout_s``
        for room, and nothing is tried after ``deadline`` (``time.monotonic``). Failures
        are recorded (``errors``, ``failed``), not raised. ``on_handed`` is called with each
        batch as soon as the producer took it."""
        groups = self.groups
        while self._group < len(groups):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            partition, chunk = groups[self._group]
            try:
                for builder, taken in _builders(producer, chunk, headers):
                    wait_s = min(send_timeout_s, deadline - time.monotonic())
                    async with asyncio.timeout(max(wait_s, 0.0)):
                        fut = await producer.send_batch(builder, topic, partition=partition)
                    self.took(fut, taken)
                    if on_handed is not None:
                        on_handed(fut, taken)
            except (TimeoutError, KafkaError) as exc:
                self.give_up_group(exc)
                continue
            self.next_group()


def _builders(
    producer: AIOKafkaProducer, chunk: Sequence[KeyValue], headers: list[tuple[str, bytes]]
) -> Iterator[tuple[Any, list[KeyValue]]]:
    """``chunk`` packed into the producer's batch builders (each as full as it takes), with
    the records each holds."""
    builder = producer.create_batch()
    taken: list[KeyValue] = []
    for key, value in chunk:
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            yield builder, taken
            builder = producer.create_batch()
            taken = []
            builder.append(key=key, value=value, timestamp=None, headers=headers)
        taken.append((key, value))
    if taken:
        yield builder, taken
