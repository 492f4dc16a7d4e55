"""The Kafka sink: records to one topic, through an on-disk spool when the broker is away.

``KafkaSink.write`` only appends to a lingering buffer (``stream.linger``; it never waits). A
flush task takes the buffer after ``transport.linger_ms`` (or at once when it holds
``transport.batch_bytes``) and hands it to aiokafka's idempotent producer (which then sends
without lingering again) through ``stream.handover``: grouped by partition with the Java
client's murmur2, one ``BatchBuilder`` per partition. Per-batch costs (builders, futures, the
sender's request) are paid once per linger period rather than once per ``write``. The same
hand-over routine serves ``write_acked`` and the spool drain.

Outage behaviour (see docs/kafka.md): ``write`` never raises and never waits. Records the
producer cannot take (not connected, no room within ``enqueue_timeout_s``) or that it fails to
deliver go to the ``Spool``; while the spool holds anything, new records (and the lingering
buffer, ahead of them) are appended to it too, so order is kept. A background task connects,
and drains the spool in order, advancing the spool's cursor only after the broker acknowledged
a chunk. ``close`` flushes the buffer first.

Healing: a delivery that fails with a fatal producer state (``FATAL_PRODUCER_ERRORS``: after a
full outage the idempotent producer's sequence numbers can have a gap the broker never
accepts again) retires that producer; the background task starts a new one (a new producer
id) and drains the spool through it. ``connected`` means "records are being accepted": it is
false from the first failed delivery until the next acknowledged one, and ``failing_seconds``
says for how long. Each failure episode (``stream.delivery``) is logged once at WARNING when
it starts and once when it ends.

Topic administration lives in ``stream.topics`` and the producer's construction and bounded
stop in ``stream.kafka_client``; both are re-exported here for the callers that import them
from this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shadowroute.core.config import Transport
from shadowroute.stream.delivery import Episode, InFlight
from shadowroute.stream.handover import Group, HandOver, group_by_partition
from shadowroute.stream.kafka_client import (
    FATAL_PRODUCER_ERRORS,
    new_producer,
    security_kwargs,
    stop_producer,
)
from shadowroute.stream.linger import Linger
from shadowroute.stream.spool import Spool
from shadowroute.stream.topics import (
    DESCRIBED_CONFIGS,
    TOPIC_KINDS,
    CopartitionError,
    TopicSettingsError,
    check_copartitioned,
    create_topics,
    describe_text,
    describe_topics,
    topic_name,
    topic_partitions,
)

__all__ = [
    "DESCRIBED_CONFIGS",
    "FATAL_PRODUCER_ERRORS",
    "LABEL_SCHEMA",
    "PAIR_SCHEMA",
    "TOPIC_KINDS",
    "CopartitionError",
    "KafkaSink",
    "TopicSettingsError",
    "check_copartitioned",
    "create_topics",
    "describe_text",
    "describe_topics",
    "security_kwargs",
    "topic_name",
    "topic_partitions",
]

log = logging.getLogger("shadowroute.stream.kafka")

KeyValue = tuple[bytes, bytes]
PAIR_SCHEMA = b"pair.v1"
LABEL_SCHEMA = b"label.v1"


class KafkaSink:
    """A ``Sink`` for one topic. Counters are plain ints (exported by the caller):

    - ``records_sent``: acknowledged records sent directly;
    - ``records_spooled``: records written to the spool;
    - ``records_drained``: spooled records acknowledged by the broker;
    - ``records_dropped``: records lost (spool full);
    - ``producer_errors``: failed connects, enqueues and deliveries;
    - ``producer_replacements``: producers retired after a fatal state.

    ``send_latencies`` keeps the latest write-to-ack latencies (seconds) of direct sends, one
    per batch handed to the producer, from the first write of the flush that carried it;
    ``latency_hook`` (if given) is called with each one, e.g. a Prometheus histogram's observe.
    """

    def __init__(
        self,
        transport: Transport,
        topic: str,
        schema: bytes,
        *,
        spool: Spool | None = None,
        enqueue_timeout_s: float = 0.5,
        ack_timeout_s: float = 2.0,
        connect_timeout_s: float = 10.0,
        retry_interval_s: float = 1.0,
        close_timeout_s: float = 10.0,
        request_timeout_ms: int = 30_000,
        drain_records: int = 4096,
        latency_hook: Callable[[float], None] | None = None,
    ) -> None:
        if not transport.bootstrap:
            raise ValueError("the Kafka sink needs transport.bootstrap")
        self.transport = transport
        self.topic = topic
        self.headers = [("schema", schema)]
        self.spool = spool if spool is not None else Spool.from_config(transport.spool, topic)
        self.enqueue_timeout_s = enqueue_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_interval_s = retry_interval_s
        self.close_timeout_s = close_timeout_s
        self.request_timeout_ms = request_timeout_ms
        self.drain_records = drain_records
        self.latency_hook = latency_hook
        self.send_latencies: deque[float] = deque(maxlen=4096)
        self.records_sent = 0
        self.records_spooled = 0
        self.records_drained = 0
        self.producer_errors = 0
        self.producer_replacements = 0
        self._dropped_outside_spool = 0
        # The producer, which one it is (a send belongs to a generation), the ones retiring.
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0
        self._retiring: set[asyncio.Task[None]] = set()
        self._num_partitions = 0
        self._episode = Episode(topic, log)
        self._inflight = InFlight()
        # Lingering, and the flush in progress.
        self._linger = Linger(transport.batch_bytes)
        self._linger_s = transport.linger_ms / 1000
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_wanted = asyncio.Event()
        self._taken = asyncio.Event()
        self._handing: HandOver | None = None
        # Background tasks: flushing, and connecting / draining the spool.
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    @classmethod
    def for_pairs(cls, transport: Transport, **kw: Any) -> KafkaSink:
        return cls(transport, topic_name(transport.topic_prefix, "pairs"), PAIR_SCHEMA, **kw)

    @classmethod
    def for_labels(cls, transport: Transport, **kw: Any) -> KafkaSink:
        return cls(transport, topic_name(transport.topic_prefix, "labels"), LABEL_SCHEMA, **kw)

    # --- state -----------------------------------------------------------------------------

    @property
    def records_dropped(self) -> int:
        return self.spool.dropped + self._dropped_outside_spool

    @property
    def connected(self) -> bool:
        """Records are being accepted: a producer is up and no delivery has failed since the
        last acknowledged one."""
        return self._producer is not None and not self._episode.failing

    @property
    def failing_seconds(self) -> float:
        """How long deliveries have been failing (0 while they are accepted)."""
        return self._episode.seconds(time.monotonic())

    @property
    def inflight_records(self) -> int:
        """Records written but neither acknowledged nor spooled: lingering, being handed to
        the producer, or handed and awaiting the broker's acknowledgement."""
        handing = self._handing
        unhanded = len(handing.unhanded()) if handing is not None else 0
        return self._inflight.records + len(self._linger) + unhanded

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Try to connect once (bounded); keep trying in the background either way."""
        await self._connect()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"sink-{self.topic}")
        self._flusher = loop.create_task(self._flush_loop(), name=f"sink-flush-{self.topic}")

    async def _connect(self) -> bool:
        producer = new_producer(self.transport, self.topic, self.request_timeout_ms)
        try:
            await asyncio.wait_for(producer.start(), self.connect_timeout_s)
            parts = await asyncio.wait_for(
                producer.partitions_for(self.topic), self.connect_timeout_s
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            self.producer_errors += 1
            self._episode.failed(f"not connected: {exc!r}", time.monotonic())
            await stop_producer(producer)
            return False
        self._num_partitions = len(parts)
        self._producer = producer
        self._generation += 1
        self._wake.set()
        return True

    # --- failure episodes and healing ------------------------------------------------------

    def _accepted(self) -> None:
        self._episode.accepted(time.monotonic(), self.spool.pending_bytes)

    def _delivery_failed(self, exc: BaseException | None, generation: int) -> None:
        self.producer_errors += 1
        self._episode.failed(repr(exc), time.monotonic())
        if isinstance(exc, FATAL_PRODUCER_ERRORS) and generation == self._generation:
            self._retire_producer(exc)

    def _retire_producer(self, exc: BaseException) -> None:
        """Stop using a producer stuck in a fatal state; the background task starts another
        (with a new producer id) and drains the spool through it, in order."""
        old = self._producer
        if old is None:
            return
        self._producer = None
        self.producer_replacements += 1
        log.warning(
            "kafka producer for %s replaced after %r: its sequence numbers can no longer be "
            "accepted; a new producer drains the spool",
            self.topic,
            exc,
        )
        task = asyncio.get_running_loop().create_task(stop_producer(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        self._wake.set()

    async def close(self) -> None:
        """Deliver what was written (or leave it in the spool), then release everything."""
        if self._closed:
            return
        self._closing = True
        deadline = time.monotonic() + self.close_timeout_s
        # Flush what lingers; let the drain task empty the spool and direct sends finish,
        # while time allows.
        while time.monotonic() < deadline and self._producer is not None:
            if not self.spool and not self.inflight_records:
                break
            if self._linger:
                self._flush_wanted.set()
            self._wake.set()
            await asyncio.sleep(0.02)
        for task in (self._flusher, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._closed = True
        self._cancel_flush_timer()
        # What was not handed over, then what lingers, go to the spool in order.
        self._spool_unhanded()
        self._spool_pending()
        # Unacknowledged direct sends go to the spool (the broker may still have them: see
        # the duplicate window in docs/kafka.md).
        for records in self._inflight.unresolved():
            self._to_spool(records)
        if self._producer is not None:
            await stop_producer(self._producer, self.close_timeout_s / 2)
            self._producer = None
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=self.close_timeout_s / 2)
        self.spool.close()

    def abandon(self) -> None:
        """Stop without delivering (tests: a process that dies). Nothing is flushed."""
        self._closed = self._closing = True
        self._cancel_flush_timer()
        for task in (self._flusher, self._task):
            if task is not None:
                task.cancel()
        self.spool.close()

    # --- writing ---------------------------------------------------------------------------

    async def write(self, batch: Sequence[KeyValue]) -> None:
        """Queue ``batch`` for the next flush, or spool it; never raises. It waits (at most
        ``enqueue_timeout_s``) only when a full batch (``batch_bytes``) is lingering."""
        if not batch:
            return
        if self._closed or self._producer is None or self.spool:
            self._spool_pending()
            self._to_spool(batch)
            return
        linger = self._linger
        if not linger.records:
            linger.begin(time.monotonic())
            if self._flush_timer is None:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(self._linger_s, self._flush_wanted.set)
        if linger.add(batch):
            # A full batch lingers: wait (at most enqueue_timeout_s) for the flush task to take
            # it, so a writer faster than the broker is slowed down rather than piling up.
            self._flush_wanted.set()
            taken = self._taken
            taken.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.enqueue_timeout_s):
                    await taken.wait()

    async def write_acked(self, batch: Sequence[KeyValue], timeout_s: float | None = None) -> int:
        """Write ``batch`` and return once every record is either acknowledged by the broker
        or in the spool (handed to the OS: a crash of this process loses none). Returns how
        many went to the spool. Raises ``OSError`` when the spool could not take them all.

        The whole call takes at most about ``timeout_s`` (default ``ack_timeout_s``): records
        the producer did not take or acknowledge by then are spooled, and the sink counts as
        failing until an acknowledgement comes, so the writes after it go straight to the
        spool instead of waiting too. A record spooled that way may reach the topic twice (a
        consumer must treat a repeat as a duplicate)."""
        if not batch:
            return 0
        wait_s = self.ack_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        dropped = self.records_dropped
        producer = self._producer
        failed: list[KeyValue] = []
        if self._closed or producer is None or self.spool:
            self._spool_pending()
            failed = list(batch)
        else:
            generation = self._generation
            handing = HandOver(self._group(producer, batch))
            await handing.run(
                producer,
                self.topic,
                self.headers,
                send_timeout_s=self.enqueue_timeout_s,
                deadline=deadline,
            )
            self._handing_failed(handing, generation)
            failed = handing.unhanded()
            if handing.handed:
                left = max(0.0, deadline - time.monotonic())
                done, late = await asyncio.wait([f for f, _, _ in handing.handed], timeout=left)
                for fut, _, records in handing.handed:
                    if fut in done and not fut.cancelled() and fut.exception() is None:
                        self.records_sent += len(records)
                    else:
                        failed += records
                if late:
                    self._delivery_failed(
                        TimeoutError(f"no acknowledgement within {wait_s:g} s"), generation
                    )
            if not failed and handing.handed:
                self._accepted()
        if failed:
            self._to_spool(failed)
        if self.records_dropped > dropped:
            raise OSError(f"spool full: {self.records_dropped - dropped} record(s) not kept")
        return len(failed)

    def _cancel_flush_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    def _spool_pending(self) -> None:
        """Move the lingering records to the spool (they are older than anything written
        after them)."""
        if self._linger:
            pending, _ = self._linger.take()
            self._taken.set()
            self._cancel_flush_timer()
            self._to_spool(pending)

    def _spool_unhanded(self) -> None:
        """Move what the flush in progress has not handed over to the spool."""
        handing, self._handing = self._handing, None
        if handing is not None:
            unhanded = handing.unhanded()
            if unhanded:
                self._to_spool(unhanded)

    async def _flush_loop(self) -> None:
        wanted = self._flush_wanted
        while True:
            await wanted.wait()
            wanted.clear()
            self._cancel_flush_timer()
            try:
                await self._flush()
            except Exception:
                # Not expected (hand-over failures are handled): spool what was not handed.
                self.producer_errors += 1
                log.exception("kafka sink flush error")
                self._spool_unhanded()

    async def _flush(self) -> None:
        """Hand the lingering records to the producer, one builder per partition; what it does
        not take within ``enqueue_timeout_s`` goes to the spool."""
        if not self._linger:
            return
        batch, started = self._linger.take()
        self._taken.set()
        producer = self._producer
        if self._closed or producer is None or self.spool:
            self._to_spool(batch)
            return
        generation = self._generation
        inflight, on_done = self._inflight, self._on_done

        def handed(fut: asyncio.Future[Any], records: list[KeyValue]) -> None:
            inflight.add(fut, records, started, generation)
            fut.add_done_callback(on_done)

        handing = self._handing = HandOver(self._group(producer, batch))
        await handing.run(
            producer,
            self.topic,
            self.headers,
            send_timeout_s=self.enqueue_timeout_s,
            deadline=time.monotonic() + self.enqueue_timeout_s,
            on_handed=handed,
        )
        self._handing_failed(handing, generation)
        self._spool_unhanded()

    def _group(self, producer: AIOKafkaProducer, batch: Sequence[KeyValue]) -> list[Group]:
        """``batch`` by partition, with the partition count the producer knows now."""
        parts = producer.client.cluster.partitions_for_topic(self.topic)
        if parts:
            self._num_partitions = len(parts)
        return group_by_partition(batch, self._num_partitions)

    def _handing_failed(self, handing: HandOver, generation: int) -> None:
        for exc in handing.errors:
            self._delivery_failed(exc, generation)

    def _on_done(self, fut: asyncio.Future[Any]) -> None:
        entry = self._inflight.pop(fut)
        if entry is None:
            return  # already handled by close()
        records, started, generation = entry
        if fut.cancelled() or fut.exception() is not None:
            self._to_spool(records)
            self._delivery_failed(None if fut.cancelled() else fut.exception(), generation)
            return
        self._accepted()
        self.records_sent += len(records)
        latency = time.monotonic() - started
        self.send_latencies.append(latency)
        if self.latency_hook is not None:
            self.latency_hook(latency)

    def _to_spool(self, records: Sequence[KeyValue]) -> None:
        try:
            self.records_spooled += self.spool.append(records)
        except OSError as exc:
            self._dropped_outside_spool += len(records)
            log.error("spool write failed, %d records dropped: %s", len(records), exc)
        self._wake.set()

    # --- background: connect and drain ---------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            try:
                if self._producer is None:
                    if not await self._connect():
                        await self._nap()
                    continue
                if self.spool:
                    if not await self._drain_chunk(self._producer):
                        await self._nap()
                    continue
                if self._closing:
                    await asyncio.sleep(0.02)
                    continue
                self._wake.clear()
                await self._nap()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.producer_errors += 1
                log.exception("kafka sink background task error")
                await self._nap()

    async def _nap(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.retry_interval_s)
        self._wake.clear()

    async def _drain_chunk(self, producer: AIOKafkaProducer) -> bool:
        """Send the next spooled chunk; commit the cursor once all of it is acknowledged."""
        records, pos = self.spool.read(self.drain_records, 1 << 20)
        if not records:
            self.spool.commit(pos)
            return True
        pending = self._group(producer, records)
        generation = self._generation
        while not self._closed and self._producer is producer:
            handing = HandOver(pending)
            await handing.run(
                producer, self.topic, self.headers, send_timeout_s=4 * self.enqueue_timeout_s
            )
            self._handing_failed(handing, generation)
            failed = handing.unhanded_groups()
            for fut, partition, taken in handing.handed:
                # An idempotent producer retries until delivered: waiting for it (rather than
                # re-sending) is what keeps a record from being written twice.
                try:
                    await fut
                except KafkaError as exc:
                    self._delivery_failed(exc, generation)
                    failed.append((partition, taken))
            if not failed:
                self.spool.commit(pos)
                self.records_drained += len(records)
                self._accepted()
                return True
            pending = failed
            await self._nap()
        return False
