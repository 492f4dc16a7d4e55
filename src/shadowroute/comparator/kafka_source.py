"""Kafka mode: a consumer group over ``<prefix>.pairs`` and ``<prefix>.labels``.

Per ``getmany`` batch and per partition, the engine processes pairs and labels and commits
state and the next offsets in one SQLite transaction; on assignment each partition is sought to
the offsets stored with its state (the beginning when there are none), so a crash or rebalance
neither loses nor double-counts. Kafka's own group offsets are not used.

After each commit the touched per-partition states are published to the compacted
``<prefix>.scores`` topic, key ``route|candidate|partition`` (``@production`` as the candidate
of production's monitoring state, ``@partition|@partition`` for the partition's counters); the
value carries the positions it reflects. ``ScoresFollower`` reads that topic from the beginning,
keeps the most advanced state per key and merges them: any number of comparators give the
verdict one would. Dead letters go to ``<prefix>.deadletter`` with the reason in a header and
the original bytes as the value (at least once).

``shadowroute compare`` runs these in a process of its own (``runtime.run_compare``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from shadowroute.comparator.assessor import Assessor, calls_recorded, needs_assessor
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.gcpause import PeriodicCollection, gc_paused
from shadowroute.comparator.reader import StateView, Verdicts
from shadowroute.comparator.state import StateKey
from shadowroute.comparator.statefile import check_state_file, record_fingerprint
from shadowroute.comparator.store import Positions, Store
from shadowroute.core.config import Config
from shadowroute.core.families import Family, describe
from shadowroute.core.records import LabelRecord
from shadowroute.stream.kafka import (
    FATAL_PRODUCER_ERRORS,
    check_copartitioned,
    security_kwargs,
    topic_name,
    topic_partitions,
)

log = logging.getLogger("shadowroute.comparator.kafka")

_Dead = tuple[bytes, bytes | None, list[tuple[str, bytes]]]
"""A dead letter waiting to be published: value, key, headers."""

__all__ = [
    "ConsumerLagCollector",
    "KafkaComparator",
    "ScoresFollower",
    "scores_key",
]


def scores_key(key: tuple[str, str, str, int]) -> bytes:
    """The scores-topic key of a state: ``route|candidate|partition``
    (``StateKey.topic_key``)."""
    return StateKey(*key).topic_key()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaComparator) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Waits for the batch in progress: state and positions are already committed after it.
        async with self.owner.lock:
            self.owner.engine.drop_partitions(sorted({tp.partition for tp in revoked}))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.owner.lock:
            await self.owner.assigned(assigned)


class KafkaComparator:
    """One member of the comparator consumer group."""

    def __init__(
        self,
        config: Config,
        *,
        state_path: str | Path | None = None,
        max_records: int = 50_000,
        group_id: str | None = None,
        group_instance_id: str | None = None,
        session_timeout_ms: int = 10_000,
    ) -> None:
        t = config.transport
        if not t.bootstrap:
            raise ValueError("Kafka mode needs transport.bootstrap")
        self.config = config
        self.bootstrap = t.bootstrap
        self.pairs_topic = topic_name(t.topic_prefix, "pairs")
        self.labels_topic = topic_name(t.topic_prefix, "labels")
        self.scores_topic = topic_name(t.topic_prefix, "scores")
        self.dead_topic = topic_name(t.topic_prefix, "deadletter")
        self.assessments_topic = topic_name(t.topic_prefix, "assessments")
        self.judged = needs_assessor(config)
        """Some route has a judge, a similarity or an embedding drift endpoint: the member
        also consumes the assessments topic, and its assessor writes to it."""
        self.group_id = group_id or t.consumer_group
        self.max_records = max_records
        self.group_instance_id = group_instance_id
        self.session_timeout_ms = session_timeout_ms
        check_state_file(config, state_path)
        self.store = Store(state_path or config.comparator.state_path)
        self.engine = Engine(config, self.store, clock=None)
        self.assessor: Assessor | None = None
        """Judge and embedding calls for the pairs this member reads (docs/llm.md);
        its budget starts from the calls recorded in this state file."""
        if self.judged:
            spent = calls_recorded(self.engine.snapshot())
            self.assessor = Assessor(config, self._emit_assessments, spent=spent)
        self.assessments_lost = 0
        """Assessments the cluster did not take (not retried: a sample is lost, not skewed)."""
        self.engine.drop_partitions(sorted(self.engine.positions))  # until assigned
        self.lock = asyncio.Lock()
        self.batches = 0
        self.skipped = 0
        self.publish_failures = 0
        self.producer_replacements = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # What could not be published (the cluster was away): partitions whose states to send
        # again (the state is committed locally; a later snapshot supersedes the lost one) and
        # dead letters to send again, in order.
        self._dirty: set[int] = set()
        self._dead_backlog: list[_Dead] = []
        self._tombstones: list[StateKey] = []
        self._failing_since: float | None = None
        self._next_retry = 0.0
        self._retiring: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.idle_expiry_s = config.comparator.idle_expiry_s
        self._last_record: dict[int, float] = {}
        """When each owned partition last had a record (or was assigned), monotonic."""
        self._idle_checked = 0.0
        self.idle_expiries = 0
        """Partitions whose pending sides expired on the clock while idle."""

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="shadowroute-comparator",
            acks="all",
            enable_idempotence=True,
            compression_type="lz4",
            max_request_size=16 << 20,
            **security_kwargs(self.config.transport.security),
        )

    async def start(self) -> None:
        kw = security_kwargs(self.config.transport.security)
        await check_copartitioned(
            self.bootstrap, self.config.transport.security, self.config.transport.topic_prefix
        )
        self._producer = self._new_producer()
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            group_instance_id=self.group_instance_id,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(self.session_timeout_ms // 4, 500),
            client_id="shadowroute-comparator",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
            **kw,
        )
        topics = [self.pairs_topic, self.labels_topic]
        if self.judged:
            counts = await topic_partitions(
                self.bootstrap,
                self.config.transport.security,
                [self.pairs_topic, self.assessments_topic],
            )
            if counts.get(self.assessments_topic) != counts.get(self.pairs_topic):
                raise RuntimeError(
                    f"{self.assessments_topic} must exist with as many partitions as "
                    f"{self.pairs_topic} (run `shadowroute topics create`)"
                )
            topics.append(self.assessments_topic)
        self._consumer.subscribe(topics, listener=_Listener(self))
        await self._consumer.start()
        if self.assessor is not None:
            await self.assessor.start()

    async def _emit_assessments(self, values: Sequence[bytes]) -> None:
        """The assessor's records to the assessments topic, keyed by request id (their
        pair's partition)."""
        producer = self._producer
        if producer is None:
            self.assessments_lost += len(values)
            return
        for value in values:
            key = orjson.loads(value)["id"].encode()
            try:
                await (await producer.send(self.assessments_topic, value, key=key))
            except KafkaError as exc:
                self.assessments_lost += 1
                log.warning("an assessment was not written to %s: %r", self.assessments_topic, exc)

    async def reconfigure(self, config: Config) -> None:
        """Score the routes of a reloaded config (``Engine.reconfigure``), between two
        batches."""
        async with self.lock:
            await asyncio.to_thread(self._reconfigure, config)

    def _reconfigure(self, config: Config) -> None:
        self.engine.reconfigure(config)
        record_fingerprint(self.store, config)
        self.config = config

    async def assigned(self, assigned: Sequence[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        parts = sorted({tp.partition for tp in assigned})
        await asyncio.to_thread(self.engine.load, parts)
        now = time.monotonic()
        for p in parts:
            self._last_record[p] = now
        from_start: list[TopicPartition] = []
        for tp in assigned:
            pos = self.engine.positions.get(tp.partition)
            offset = 0 if pos is None else self._stored_offset(tp.topic, pos)
            if offset > 0:
                consumer.seek(tp, offset)
            else:
                from_start.append(tp)
            log.info("assigned %s[%d] from offset %d", tp.topic, tp.partition, offset)
        if from_start:  # one request for all of them
            await consumer.seek_to_beginning(*from_start)

    def _stored_offset(self, topic: str, pos: Positions) -> int:
        if topic == self.pairs_topic:
            return pos.pairs
        return pos.assessments if topic == self.assessments_topic else pos.labels

    async def run(self) -> None:
        """Consume until ``stop()``.

        The next ``getmany`` (which unpacks the fetched records on this thread) runs while
        the engine processes the previous batch in its worker thread; batches are still
        processed one at a time, in the order they were fetched. The cyclic garbage collector
        is paused meanwhile, with a full collection every few seconds (``gcpause``)."""
        consumer = self._consumer
        assert consumer is not None
        work: asyncio.Task[None] | None = None
        collector = PeriodicCollection()
        with gc_paused():
            try:
                while not self.stopping.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
                    if work is not None:
                        await work
                        work = None
                    if batch:
                        work = asyncio.create_task(self._locked(batch))
                    else:
                        if self._dirty or self._dead_backlog or self._tombstones:
                            async with self.lock:
                                await self._republish()
                        if self.idle_expiry_s is not None:
                            async with self.lock:
                                await self._expire_idle(self.idle_expiry_s)
                    collector.tick()
                if work is not None:
                    await work
            finally:
                if work is not None and not work.done():  # cancelled: the batch completes
                    await asyncio.shield(work)

    async def _locked(self, batch: dict[TopicPartition, list[Any]]) -> None:
        async with self.lock:
            await self._process(batch)

    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        owned = set(self.engine.positions)
        by_part: dict[int, dict[str, list[Any]]] = defaultdict(
            lambda: {"pairs": [], "labels": [], "assessments": []}
        )
        kinds = {self.pairs_topic: "pairs", self.assessments_topic: "assessments"}
        for tp, msgs in batch.items():
            if tp.partition not in owned or not msgs:
                continue  # revoked meanwhile
            by_part[tp.partition][kinds.get(tp.topic, "labels")].extend(msgs)
        for partition, got in sorted(by_part.items()):
            pos = self.engine.positions[partition]
            # Records before the stored position are already in the state (a fetch that raced
            # a seek): skipping them keeps every record counted exactly once.
            pair_msgs = _from_offset(got["pairs"], pos.pairs)
            label_msgs = _from_offset(got["labels"], pos.labels)
            assess_msgs = _from_offset(got["assessments"], pos.assessments)
            self.skipped += (
                (len(got["pairs"]) + len(got["labels"]) - len(pair_msgs) - len(label_msgs))
                + len(got["assessments"])
                - len(assess_msgs)
            )
            if not pair_msgs and not label_msgs and not assess_msgs:
                continue
            self._last_record[partition] = time.monotonic()
            pairs = [(m.key or b"", m.value or b"") for m in pair_msgs]
            labels: list[bytes | LabelRecord] = [m.value or b"" for m in label_msgs]
            next_pairs = pair_msgs[-1].offset + 1 if pair_msgs else pos.pairs
            next_labels = label_msgs[-1].offset + 1 if label_msgs else pos.labels
            assessed = [m.value or b"" for m in assess_msgs]
            next_assessed = assess_msgs[-1].offset + 1 if assess_msgs else pos.assessments
            dead = await asyncio.to_thread(
                self.engine.process, partition, pairs, labels, next_pairs, next_labels,
                assessed, next_assessed,
            )  # fmt: skip
            if self.assessor is not None:
                if pairs:
                    self.assessor.offer(pairs)  # committed: each pair is offered once
                self.assessor.offer_embedding(self.engine.take_embed_jobs())
            # sent now, delivery awaited once for the whole batch: the next partition's
            # records are processed meanwhile
            label_keys = {m.value: m.key for m in label_msgs} if dead else {}
            letters = [
                (
                    value,
                    key or label_keys.get(value) or None,
                    [
                        ("reason", reason.encode()),
                        ("source", _dead_source(reason)),
                    ],
                )
                for key, value, reason in dead
            ]
            self._dead_backlog.extend(letters)
            self._dirty.add(partition)
            self.batches += 1
        self._tombstones.extend(self.engine.take_evicted())  # revisions dropped
        await self._republish(force=True)

    async def _expire_idle(self, idle_s: float) -> None:
        """``comparator.idle_expiry_s``: on each partition read to its end with no record for
        ``idle_s``, expire what is due by the wall clock (at most once a second), and publish
        the states that changed."""
        now = time.monotonic()
        if now - self._idle_checked < 1.0:
            return
        self._idle_checked = now
        wall_ms = int(time.time() * 1000)
        expired = []
        for partition in sorted(self.engine.positions):
            if now - self._last_record.get(partition, now) < idle_s:
                continue
            if not self._caught_up(partition):
                continue
            if await asyncio.to_thread(self.engine.expire, partition, wall_ms):
                expired.append(partition)
        if expired:
            self.idle_expiries += len(expired)
            self._dirty.update(expired)
            await self._republish(force=True)

    def _caught_up(self, partition: int) -> bool:
        """Every record of the partition (both topics) up to the latest fetch's high watermark
        is committed."""
        consumer = self._consumer
        pos = self.engine.positions.get(partition)
        if consumer is None or pos is None:
            return False
        topics = [(self.pairs_topic, pos.pairs), (self.labels_topic, pos.labels)]
        if self.judged:
            topics.append((self.assessments_topic, pos.assessments))
        for topic, at in topics:
            high = consumer.highwater(TopicPartition(topic, partition))
            if high is None or at < high:
                return False
        return True

    async def _republish(self, force: bool = False) -> None:
        """Send what is waiting (dead letters first, in order, then the states of the
        partitions changed since their last acknowledged publish) and wait for the broker.
        What fails stays waiting, to be sent again a second later; the comparator goes on
        consuming meanwhile (its state is committed locally), so a cluster outage never
        stops it. A producer in a fatal state is replaced."""
        now = time.monotonic()
        if not force and now < self._next_retry:
            return
        if self._producer is None:
            producer = self._new_producer()
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                self._publish_failed(exc)
                return
            self._producer = producer
        producer = self._producer
        letters, self._dead_backlog = self._dead_backlog, []
        graves, self._tombstones = self._tombstones, []
        dirty, self._dirty = self._dirty & set(self.engine.positions), set()
        # (delivery, what to keep waiting if it fails)
        sent: list[tuple[asyncio.Future[Any], _Dead | StateKey | int]] = []
        try:
            for letter in letters:
                value, key, headers = letter
                fut = await producer.send(self.dead_topic, value, key=key, headers=headers)
                sent.append((fut, letter))
            for skey in graves:  # a revision dropped: a tombstone on the scores topic
                fut = await producer.send(self.scores_topic, None, key=skey.topic_key())
                sent.append((fut, skey))
            for partition in sorted(dirty):
                sent += [(f, partition) for f in await self._send_states(partition)]
        except KafkaError as exc:  # not even enqueued: everything waits
            self._dead_backlog = letters + self._dead_backlog
            self._tombstones = graves + self._tombstones
            self._dirty |= dirty
            self._publish_failed(exc)
            return
        failed: list[_Dead] = []
        failed_graves: list[StateKey] = []
        for fut, waiting in sent:
            try:
                await fut
            except KafkaError as exc:
                self._publish_failed(exc)
                if isinstance(waiting, int):
                    self._dirty.add(waiting)  # the partition's states, sent again later
                elif len(waiting) == 4:
                    failed_graves.append(waiting)
                else:
                    failed.append(waiting)
        self._dead_backlog = failed + self._dead_backlog
        self._tombstones = failed_graves + self._tombstones
        if not failed and not failed_graves and not self._dirty and self._failing_since is not None:
            log.warning(
                "publishing to %s recovered after %.1f s",
                self.scores_topic,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None

    def _publish_failed(self, exc: BaseException) -> None:
        self.publish_failures += 1
        self._next_retry = time.monotonic() + 1.0
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(
                "publishing scores and dead letters failed (%r); consuming goes on, and they "
                "are sent again until the cluster takes them",
                exc,
            )
        if isinstance(exc, FATAL_PRODUCER_ERRORS) and self._producer is not None:
            old, self._producer = self._producer, None
            self.producer_replacements += 1
            log.warning("comparator producer replaced after %r", exc)
            task = asyncio.get_running_loop().create_task(old.stop())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _send_states(self, partition: int) -> list[asyncio.Future[Any]]:
        """Send the partition's states to the scores topic; returns the delivery futures."""
        producer = self._producer
        assert producer is not None
        pos = self.engine.positions[partition]
        futures: list[asyncio.Future[Any]] = []
        for skey, state in self.engine.snapshot().items():
            if skey.partition != partition:
                continue
            value = orjson.dumps(
                {
                    "kind": skey.kind,
                    "route": skey.route,
                    "candidate": skey.candidate,
                    "partition": partition,
                    # the assessments topic's too when some route is judged
                    "positions": [pos.pairs, pos.labels, pos.assessments]
                    if self.judged
                    else [pos.pairs, pos.labels],
                    "state": state,
                }
            )
            futures.append(await producer.send(self.scores_topic, value, key=skey.topic_key()))
        return futures

    def lag(self) -> dict[tuple[str, int], int]:
        """Records not yet committed per assigned (topic, partition): the partition's high
        watermark (from the latest fetch) minus the next offset stored with the state. Partitions
        not fetched yet are left out."""
        consumer = self._consumer
        if consumer is None:
            return {}
        positions = dict(self.engine.positions)
        out: dict[tuple[str, int], int] = {}
        for tp in sorted(consumer.assignment()):
            high = consumer.highwater(tp)
            pos = positions.get(tp.partition)
            if high is None or pos is None:
                continue
            at = self._stored_offset(tp.topic, pos)
            out[(tp.topic, tp.partition)] = max(0, int(high) - at)
        return out

    async def stop(self) -> None:
        self.stopping.set()
        if self.assessor is not None:
            await self.assessor.close()  # before the producer its records go through
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: the revoke waits for the batch
        if self._producer is not None:
            await self._producer.stop()
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=10)
        self.store.close()


_CONSUMER_LAG = Family(
    "shadowroute_kafka_consumer_lag",
    "Records on an assigned partition not yet committed by this comparator "
    "(high watermark minus the stored next offset).",
    "gauge",
    ("topic", "partition"),
)


class ConsumerLagCollector(Collector):
    """``shadowroute_kafka_consumer_lag{topic,partition}`` of one comparator group member."""

    FAMILIES = (_CONSUMER_LAG,)

    def __init__(self, comparator: KafkaComparator) -> None:
        self._comparator = comparator

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        lag = _CONSUMER_LAG.gauge()
        for (topic, partition), n in self._comparator.lag().items():
            lag.add_metric([topic, str(partition)], n)
        yield lag


class ScoresFollower:
    """Merges the latest per-partition states from ``<prefix>.scores`` into a ``StateView``
    and keeps the verdicts (and their history) current."""

    def __init__(self, config: Config, view: StateView, verdicts: Verdicts) -> None:
        t = config.transport
        assert t.bootstrap is not None
        self.config = config
        self.view = view
        self.verdicts = verdicts
        self.topic = topic_name(t.topic_prefix, "scores")
        self._positions: dict[StateKey, tuple[int, int, int]] = {}
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=t.bootstrap,
            client_id="shadowroute-scores",
            enable_auto_commit=False,
            group_id=None,
            **security_kwargs(t.security),
        )
        self.stopping = asyncio.Event()
        self.messages = 0

    async def start(self) -> None:
        t = self.config.transport
        assert t.bootstrap is not None
        counts = await topic_partitions(t.bootstrap, t.security, [self.topic], settle_s=10.0)
        if self.topic not in counts:
            raise RuntimeError(f"topic {self.topic} not found (create the topics first)")
        await self._consumer.start()
        parts = range(counts[self.topic])
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)

    def apply(self, values: Sequence[bytes | tuple[bytes | None, bytes | None]]) -> int:
        """Take scores messages, in order; the most advanced state per key wins. A message is
        its value, or (key, value): a tombstone (value None) drops a candidate revision the
        comparator dropped. Returns how many applied."""
        fresh: dict[StateKey, dict[str, Any]] = {}
        dropped: set[StateKey] = set()
        for item in values:
            if isinstance(item, tuple):
                raw_key, value = item
                if value is None:
                    gone = StateKey.of_tombstone(raw_key)
                    if gone is not None:
                        dropped.add(gone)
                        fresh.pop(gone, None)
                        self._positions.pop(gone, None)
                    continue
            else:
                value = item
            msg = orjson.loads(value)
            key = StateKey(msg["kind"], msg["route"], msg["candidate"], int(msg["partition"]))
            got = msg["positions"]
            at = (int(got[0]), int(got[1]), int(got[2]) if len(got) > 2 else 0)
            old = self._positions.get(key)
            if old is not None and (at[0] < old[0] or at[1] < old[1] or at[2] < old[2]):
                continue
            self._positions[key] = at
            fresh[key] = msg["state"]
        if dropped:
            self.view.remove(sorted(dropped - set(fresh)))
        if fresh:
            self.view.update(fresh)
        return len(fresh) + len(dropped)

    async def run(self) -> None:
        while not self.stopping.is_set():
            batch = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
            values: list[bytes | tuple[bytes | None, bytes | None]] = [
                (m.key, m.value) for msgs in batch.values() for m in msgs
            ]
            self.messages += sum(1 for v in values if isinstance(v, tuple) and v[1] is not None)
            applied: int = await asyncio.to_thread(self.apply, values) if values else 0
            if applied:
                await asyncio.to_thread(self.verdicts.refresh)

    async def stop(self) -> None:
        self.stopping.set()
        await self._consumer.stop()


def _dead_source(reason: str) -> bytes:
    if reason.startswith("label:"):
        return b"labels"
    return b"assessments" if reason.startswith("assessment:") else b"pairs"


def _from_offset(msgs: list[Any], offset: int) -> list[Any]:
    """The messages at or after ``offset`` (one partition's, in offset order)."""
    if not msgs or msgs[0].offset >= offset:
        return msgs
    return [m for m in msgs if m.offset >= offset]
