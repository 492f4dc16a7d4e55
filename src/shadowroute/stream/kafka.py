"""The Kafka sink: records to one topic, through an on-disk spool when the broker is away.

``KafkaSink.write`` only appends to a lingering buffer (it never waits). A flush task takes
the buffer after ``transport.linger_ms`` (or at once when it holds ``transport.batch_bytes``),
partitions it with the Java client's murmur2 (``stream.murmur2``) and hands one ``BatchBuilder``
per partition to aiokafka's idempotent producer (which then sends without lingering again), so
a label produced by any Kafka client with the default partitioner lands in the same partition
as its pair. Per-batch costs (builders, futures, the sender's request) are paid once per
linger period rather than once per ``write``.

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
says for how long. Each failure episode is logged once at WARNING when it starts and once
when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.helpers import create_ssl_context

from shadowroute.core.config import KafkaSecurity, Transport
from shadowroute.stream.murmur2 import partition_list
from shadowroute.stream.spool import Spool

log = logging.getLogger("shadowroute.stream.kafka")

KeyValue = tuple[bytes, bytes]
PAIR_SCHEMA = b"pair.v1"
LABEL_SCHEMA = b"label.v1"
TOPIC_KINDS = ("pairs", "labels", "scores", "deadletter", "events")
FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
    ProducerClosed,
)
"""Producer states no retry with the same producer gets out of: the producer is replaced."""


def topic_name(prefix: str, kind: str) -> str:
    """``<prefix>.<kind>`` for kind in pairs, labels, scores, deadletter, events."""
    if kind not in TOPIC_KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{prefix}.{kind}"


def security_kwargs(security: KafkaSecurity) -> dict[str, Any]:
    """aiokafka client arguments for TLS and SASL (PLAIN / SCRAM)."""
    kw: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = create_ssl_context(
            cafile=security.ssl_cafile,
            certfile=security.ssl_certfile,
            keyfile=security.ssl_keyfile,
        )
    if security.protocol.startswith("SASL_"):
        password = security.sasl_password
        kw["sasl_mechanism"] = security.sasl_mechanism
        kw["sasl_plain_username"] = security.sasl_username
        kw["sasl_plain_password"] = password.get_secret_value() if password else None
    return kw


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
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0  # which producer a send belongs to
        self._retiring: set[asyncio.Task[None]] = set()
        self._failing_since: float | None = None
        self._num_partitions = 0
        self._inflight: dict[asyncio.Future[Any], tuple[list[KeyValue], float, int]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Lingering: records written since the last flush, and the flush in progress.
        self._linger_s = transport.linger_ms / 1000
        self._flush_bytes = transport.batch_bytes
        self._pending: list[KeyValue] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_wanted = asyncio.Event()
        self._taken = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._handing: list[tuple[int, list[KeyValue]]] = []
        self._handing_pos = (0, 0)
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
        return self._producer is not None and self._failing_since is None

    @property
    def failing_seconds(self) -> float:
        """How long deliveries have been failing (0 while they are accepted)."""
        since = self._failing_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def inflight_records(self) -> int:
        """Records written but neither acknowledged nor spooled: lingering, being handed to
        the producer, or handed and awaiting the broker's acknowledgement."""
        acking = sum(len(r) for r, _, _ in self._inflight.values())
        return acking + len(self._pending) + len(self._unhanded())

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Try to connect once (bounded); keep trying in the background either way."""
        await self._connect()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"sink-{self.topic}")
        self._flusher = loop.create_task(self._flush_loop(), name=f"sink-flush-{self.topic}")

    def _new_producer(self) -> AIOKafkaProducer:
        t = self.transport
        idempotent = t.acks == "all"
        acks: str | int = "all" if t.acks == "all" else int(t.acks)
        return AIOKafkaProducer(
            bootstrap_servers=t.bootstrap,
            client_id=f"shadowroute-{self.topic}",
            acks=acks,
            enable_idempotence=idempotent,
            linger_ms=0,  # the sink lingers (transport.linger_ms) before handing batches over
            max_batch_size=t.batch_bytes,
            max_request_size=max(t.batch_bytes, 1 << 20),
            compression_type=None if t.compression == "none" else t.compression,
            request_timeout_ms=self.request_timeout_ms,
            **security_kwargs(t.security),
        )

    async def _connect(self) -> bool:
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), self.connect_timeout_s)
            parts = await asyncio.wait_for(
                producer.partitions_for(self.topic), self.connect_timeout_s
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            self.producer_errors += 1
            self._failing(f"not connected: {exc!r}")
            await _hard_stop(producer)
            return False
        self._num_partitions = len(parts)
        self._producer = producer
        self._generation += 1
        self._wake.set()
        return True

    # --- failure episodes and healing ------------------------------------------------------

    def _failing(self, why: str) -> None:
        """A failed connect or delivery: the episode starts (logged once) or goes on."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(
                "kafka delivery to %s failing (%s); records go to the spool until it recovers",
                self.topic,
                why,
            )
        else:
            log.debug("kafka delivery to %s still failing: %s", self.topic, why)

    def _accepted(self) -> None:
        since = self._failing_since
        if since is not None:
            self._failing_since = None
            log.warning(
                "kafka delivery to %s recovered after %.1f s (%d bytes waiting in the spool)",
                self.topic,
                time.monotonic() - since,
                self.spool.pending_bytes,
            )

    def _delivery_failed(self, exc: BaseException | None, generation: int) -> None:
        self.producer_errors += 1
        self._failing(repr(exc))
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
        task = asyncio.get_running_loop().create_task(_hard_stop(old))
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
            if self._pending:
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
        unhanded = self._unhanded()
        self._handing = []
        if unhanded:
            self._to_spool(unhanded)
        self._spool_pending()
        # Unacknowledged direct sends go to the spool (the broker may still have them: see
        # the duplicate window in docs/kafka.md).
        for fut, (records, _, _) in list(self._inflight.items()):
            if not fut.done():
                del self._inflight[fut]
                self._to_spool(records)
        if self._producer is not None:
            await _hard_stop(self._producer, self.close_timeout_s / 2)
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
        pending = self._pending
        if not pending:
            self._pending_since = time.monotonic()
            if self._flush_timer is None:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(self._linger_s, self._flush_wanted.set)
        pending.extend(batch)
        size = self._pending_bytes
        for _, value in batch:
            size += len(value)
        self._pending_bytes = size
        if size >= self._flush_bytes:
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
            parts = producer.client.cluster.partitions_for_topic(self.topic)
            if parts:
                self._num_partitions = len(parts)
            handed: list[tuple[asyncio.Future[Any], list[KeyValue]]] = []
            for partition, chunk in self._group(batch):
                left = max(0.0, deadline - time.monotonic())
                took, rest = await self._hand_over(
                    producer, partition, chunk, min(self.enqueue_timeout_s, left)
                )
                handed += took
                failed += rest
            if handed:
                left = max(0.0, deadline - time.monotonic())
                done, late = await asyncio.wait([f for f, _ in handed], timeout=left)
                for fut, records in handed:
                    if fut in done and not fut.cancelled() and fut.exception() is None:
                        self.records_sent += len(records)
                    else:
                        failed += records
                if late:
                    self._delivery_failed(
                        TimeoutError(f"no acknowledgement within {wait_s:g} s"), generation
                    )
            if not failed and handed:
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
        if self._pending:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            self._taken.set()
            self._cancel_flush_timer()
            self._to_spool(pending)

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
                unhanded = self._unhanded()
                self._handing = []
                if unhanded:
                    self._to_spool(unhanded)

    async def _flush(self) -> None:
        """Hand the lingering records to the producer, one builder per partition; what it does
        not take within ``enqueue_timeout_s`` (and everything after it) goes to the spool."""
        batch = self._pending
        if not batch:
            return
        self._pending, self._pending_bytes = [], 0
        self._taken.set()
        started = self._pending_since
        producer = self._producer
        if self._closed or producer is None or self.spool:
            self._to_spool(batch)
            return
        parts = producer.client.cluster.partitions_for_topic(self.topic)
        if parts:
            self._num_partitions = len(parts)
        groups = self._group(batch)
        self._handing, self._handing_pos = groups, (0, 0)
        generation = self._generation
        try:
            async with asyncio.timeout(self.enqueue_timeout_s):
                for gi, (partition, chunk) in enumerate(groups):
                    done = 0
                    for builder, taken in self._builders(producer, chunk):
                        fut = await producer.send_batch(builder, self.topic, partition=partition)
                        self._inflight[fut] = (taken, started, generation)
                        fut.add_done_callback(self._on_done)
                        done += len(taken)
                        self._handing_pos = (gi, done)
                    self._handing_pos = (gi + 1, 0)
        except (TimeoutError, KafkaError) as exc:
            self._delivery_failed(exc, generation)
            unhanded = self._unhanded()
            self._handing = []
            self._to_spool(unhanded)
            return
        self._handing = []

    def _unhanded(self) -> list[KeyValue]:
        """Records of the flush in progress not yet taken by the producer, in order."""
        if not self._handing:
            return []
        gi, done = self._handing_pos
        out = list(self._handing[gi][1][done:]) if gi < len(self._handing) else []
        for _, chunk in self._handing[gi + 1 :]:
            out.extend(chunk)
        return out

    def _group(self, batch: Sequence[KeyValue]) -> list[tuple[int, list[KeyValue]]]:
        parts = partition_list([k for k, _ in batch], self._num_partitions)
        groups: dict[int, list[KeyValue]] = {}
        for p, kv in zip(parts, batch, strict=True):
            chunk = groups.get(p)
            if chunk is None:
                groups[p] = [kv]
            else:
                chunk.append(kv)
        return list(groups.items())

    def _builders(
        self, producer: AIOKafkaProducer, chunk: Sequence[KeyValue]
    ) -> Iterator[tuple[Any, list[KeyValue]]]:
        builder = producer.create_batch()
        taken: list[KeyValue] = []
        for key, value in chunk:
            if builder.append(key=key, value=value, timestamp=None, headers=self.headers) is None:
                yield builder, taken
                builder = producer.create_batch()
                taken = []
                builder.append(key=key, value=value, timestamp=None, headers=self.headers)
            taken.append((key, value))
        if taken:
            yield builder, taken

    async def _hand_over(
        self, producer: AIOKafkaProducer, partition: int, chunk: list[KeyValue], wait_s: float
    ) -> tuple[list[tuple[asyncio.Future[Any], list[KeyValue]]], list[KeyValue]]:
        """Hand ``chunk`` to the producer, one builder at a time: the (future, records) of the
        builders it took, and the records it did not take in time (in order)."""
        handed: list[tuple[asyncio.Future[Any], list[KeyValue]]] = []
        done = 0
        generation = self._generation
        for builder, taken in self._builders(producer, chunk):
            try:
                async with asyncio.timeout(wait_s):
                    fut = await producer.send_batch(builder, self.topic, partition=partition)
            except (TimeoutError, KafkaError) as exc:
                self._delivery_failed(exc, generation)
                return handed, chunk[done:]
            handed.append((fut, taken))
            done += len(taken)
        return handed, []

    def _on_done(self, fut: asyncio.Future[Any]) -> None:
        entry = self._inflight.pop(fut, None)
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
        parts = producer.client.cluster.partitions_for_topic(self.topic)
        if parts:
            self._num_partitions = len(parts)
        pending = self._group(records)
        generation = self._generation
        while not self._closed and self._producer is producer:
            failed: list[tuple[int, list[KeyValue]]] = []
            waiting: list[tuple[asyncio.Future[Any], int, list[KeyValue]]] = []
            for partition, chunk in pending:
                handed, rest = await self._hand_over(
                    producer, partition, chunk, 4 * self.enqueue_timeout_s
                )
                waiting += [(fut, partition, taken) for fut, taken in handed]
                if rest:
                    failed.append((partition, rest))
            for fut, partition, taken in waiting:
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


async def _hard_stop(producer: AIOKafkaProducer, timeout_s: float = 5.0) -> None:
    """Stop a producer, flushing for up to ``timeout_s``; then stop it without flushing."""
    stopping = asyncio.ensure_future(producer.stop())
    await asyncio.wait([stopping], timeout=timeout_s)
    if not stopping.done():
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        if task is not None:
            task.cancel()
        await asyncio.wait([stopping], timeout=timeout_s)
    if not stopping.done():
        stopping.cancel()
        await asyncio.wait([stopping], timeout=1.0)
    if stopping.done() and not stopping.cancelled() and stopping.exception() is not None:
        log.debug("producer stop: %r", stopping.exception())


# --- topics ------------------------------------------------------------------------------------


class CopartitionError(RuntimeError):
    """Pairs and labels topics do not have the same number of partitions."""


def _admin(bootstrap: str, security: KafkaSecurity) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="shadowroute-admin",
        request_timeout_ms=15_000,
        **security_kwargs(security),
    )


async def topic_partitions(
    bootstrap: str, security: KafkaSecurity, topics: list[str], settle_s: float = 3.0
) -> dict[str, int]:
    """Partition count per existing topic (missing ones left out). Topics whose metadata is
    not yet available (just created) are asked about again for up to ``settle_s``."""
    admin = _admin(bootstrap, security)
    await admin.start()
    counts: dict[str, int] = {}
    try:
        deadline = time.monotonic() + settle_s
        while True:
            described = await admin.describe_topics(topics)
            counts = {
                t["topic"]: len(t["partitions"])
                for t in described
                if t["error_code"] == 0 and t["partitions"]
            }
            if len(counts) == len(topics) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return counts


async def check_copartitioned(bootstrap: str, security: KafkaSecurity, prefix: str) -> int:
    """Raise ``CopartitionError`` unless ``<prefix>.pairs`` and ``<prefix>.labels`` exist
    with the same partition count; return that count."""
    pairs, labels = topic_name(prefix, "pairs"), topic_name(prefix, "labels")
    counts = await topic_partitions(bootstrap, security, [pairs, labels])
    missing = [t for t in (pairs, labels) if t not in counts]
    if missing:
        raise CopartitionError(f"topic(s) missing: {', '.join(missing)}")
    if counts[pairs] != counts[labels]:
        raise CopartitionError(
            f"{pairs} has {counts[pairs]} partitions but {labels} has {counts[labels]}: "
            "pairs and labels must have the same partition count to be joined by request id"
        )
    return counts[pairs]


class TopicSettingsError(ValueError):
    """The topics asked for cannot work on this cluster (e.g. more replicas than brokers)."""


async def create_topics(transport: Transport) -> list[str]:
    """Create ``<prefix>.pairs``, ``.labels``, ``.scores`` (compacted), ``.deadletter`` and
    ``.events`` (docs/events.md)
    with the configured partitions, replication and ``min.insync.replicas``; topics that
    already exist are left as they are. Returns the names created now. Raises
    ``TopicSettingsError`` when the replication exceeds the cluster's brokers."""
    if not transport.bootstrap:
        raise ValueError("create_topics needs transport.bootstrap")
    tc = transport.topics
    retention = str(int(tc.retention_hours * 3_600_000))
    isr = {"min.insync.replicas": str(tc.min_isr)}
    configs = {
        "pairs": {"retention.ms": retention, **isr},
        "labels": {"retention.ms": retention, **isr},
        "scores": {"cleanup.policy": "compact", **isr},
        "deadletter": {"retention.ms": retention, **isr},
        "events": {"retention.ms": retention, **isr},
    }
    wanted = {topic_name(transport.topic_prefix, kind): cfg for kind, cfg in configs.items()}
    admin = _admin(transport.bootstrap, transport.security)
    await admin.start()
    try:
        brokers = len((await _retrying(admin.describe_cluster))["brokers"])
        if tc.replication > brokers:
            raise TopicSettingsError(
                f"transport.topics.replication is {tc.replication} but the cluster has "
                f"{brokers} broker(s): lower it, or add brokers"
            )
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, tc.partitions, tc.replication, topic_configs=cfg)
            for name, cfg in wanted.items()
            if name not in existing
        ]
        if not new:
            return []
        response = await admin.create_topics(new)
    finally:
        await admin.close()
    created: list[str] = []
    problems: list[str] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code == 0:
            created.append(name)
        elif code != 36:  # TOPIC_ALREADY_EXISTS: created meanwhile by someone else
            message = entry[2] if len(entry) > 2 else ""
            problems.append(f"{name}: error {code} {message or ''}".strip())
    if problems:
        raise RuntimeError("could not create topics: " + "; ".join(problems))
    return created


# The settings `topics describe` shows for each topic.
DESCRIBED_CONFIGS = ("min.insync.replicas", "retention.ms", "cleanup.policy")


async def _retrying(call: Callable[[], Any], attempts: int = 10, pause_s: float = 0.5) -> Any:
    """An admin call, again while a node it picked is down (the client's metadata still
    lists a dead broker until the controller fences it)."""
    for attempt in range(attempts):
        try:
            return await call()
        except KafkaError as exc:
            if attempt == attempts - 1 or not getattr(exc, "retriable", False):
                raise
            await asyncio.sleep(pause_s)
    raise AssertionError("unreachable")


async def describe_topics(transport: Transport) -> dict[str, Any]:
    """The cluster's brokers and controller, and for each of the topics its partitions
    (leader, replicas, in-sync replicas, offline replicas) and key settings; a topic that does
    not exist is ``{"exists": False}``."""
    if not transport.bootstrap:
        raise ValueError("describe_topics needs transport.bootstrap")
    names = [topic_name(transport.topic_prefix, kind) for kind in TOPIC_KINDS]
    admin = _admin(transport.bootstrap, transport.security)
    await admin.start()
    try:
        cluster = await _retrying(admin.describe_cluster)
        described = await _retrying(lambda: admin.describe_topics(names))
        present = [t["topic"] for t in described if t["error_code"] == 0 and t["partitions"]]
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs=dict.fromkeys(DESCRIBED_CONFIGS))
            for name in present
        ]
        config_responses = (
            await _retrying(lambda: admin.describe_configs(resources)) if resources else []
        )
    finally:
        await admin.close()
    settings: dict[str, dict[str, str]] = {}
    for response in config_responses:
        for res in response.to_object()["resources"]:
            settings[res["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in res["config_entries"]
            }
    topics: dict[str, Any] = {name: {"exists": False} for name in names}
    for t in described:
        if t["topic"] not in present:
            continue
        parts = sorted(t["partitions"], key=lambda p: p["partition"])
        topics[t["topic"]] = {
            "exists": True,
            "partitions": [
                {
                    "partition": p["partition"],
                    "leader": p["leader"],
                    "replicas": list(p["replicas"]),
                    "isr": list(p["isr"]),
                    "offline": list(p.get("offline_replicas", [])),
                }
                for p in parts
            ],
            "configs": settings.get(t["topic"], {}),
        }
    return {
        "cluster_id": cluster.get("cluster_id"),
        "controller": cluster.get("controller_id"),
        "brokers": sorted(b["node_id"] for b in cluster["brokers"]),
        "topics": topics,
    }


def describe_text(doc: dict[str, Any]) -> str:
    """``describe_topics`` for a terminal: one line per partition, problems marked."""
    lines = [
        f"cluster {doc['cluster_id']}: brokers {doc['brokers']}, controller {doc['controller']}"
    ]
    for name, t in doc["topics"].items():
        if not t["exists"]:
            lines.append(f"{name}: MISSING (run `shadowroute topics create`)")
            continue
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(t["configs"].items()))
        lines.append(f"{name}: {len(t['partitions'])} partitions; {cfg}")
        min_isr = int(t["configs"].get("min.insync.replicas", "1"))
        for p in t["partitions"]:
            flags = []
            if p["leader"] is None or p["leader"] < 0:
                flags.append("NO LEADER")
            if len(p["isr"]) < len(p["replicas"]):
                flags.append("UNDER-REPLICATED")
            if len(p["isr"]) < min_isr:
                flags.append("BELOW MIN ISR: acks=all writes refused")
            lines.append(
                f"  {p['partition']}: leader {p['leader']}, replicas {p['replicas']}, "
                f"isr {p['isr']}" + (f"  [{'; '.join(flags)}]" if flags else "")
            )
    return "\n".join(lines)
