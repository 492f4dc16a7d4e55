"""KafkaSink, topics and co-partitioning against a real Apache Kafka broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kafka_harness import KafkaBroker
from shadowroute.core.config import KafkaSecurity, Topics, Transport
from shadowroute.core.config import Spool as SpoolConfig
from shadowroute.stream.kafka import (
    CopartitionError,
    KafkaSink,
    check_copartitioned,
    create_topics,
    topic_partitions,
)
from shadowroute.stream.murmur2 import partition_for
from shadowroute.stream.spool import Spool

pytestmark = pytest.mark.kafka


def _transport(bootstrap: str, prefix: str, spool_dir: Path, partitions: int = 3) -> Transport:
    return Transport(
        kind="kafka",
        bootstrap=bootstrap,
        topic_prefix=prefix,
        linger_ms=2,
        topics=Topics(partitions=partitions),
        spool=SpoolConfig(path=str(spool_dir), fsync="segment"),
    )


def _prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _records(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [
        (f"req-{i:08d}".encode(), b'{"v":1,"id":"req-%08d","route":"r"}' % i)
        for i in range(start, start + n)
    ]


async def _consume(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    got: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                got.extend(msgs)
        # A little longer, to see duplicates that would arrive after the expected count.
        extra = await consumer.getmany(timeout_ms=500)
        for msgs in extra.values():
            got.extend(msgs)
    finally:
        await consumer.stop()
    return got


@pytest.fixture
async def topics(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Transport]:
    transport = _transport(kafka_bootstrap, _prefix(), tmp_path / "spool")
    await create_topics(transport)
    yield transport


async def test_create_topics_idempotent_and_copartitioned(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    transport = _transport(kafka_bootstrap, _prefix(), tmp_path, partitions=4)
    p = transport.topic_prefix
    created = await create_topics(transport)
    assert sorted(created) == sorted(
        f"{p}.{k}" for k in ("pairs", "labels", "scores", "deadletter", "events", "assessments")
    )
    assert await create_topics(transport) == []  # again: nothing to do, no error
    counts = await topic_partitions(kafka_bootstrap, KafkaSecurity(), created)
    assert set(counts.values()) == {4}
    assert await check_copartitioned(kafka_bootstrap, KafkaSecurity(), p) == 4


async def test_partition_count_mismatch_is_named(kafka_bootstrap: str) -> None:
    p = _prefix()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{p}.pairs", 3, 1), NewTopic(f"{p}.labels", 2, 1)])
    finally:
        await admin.close()
    with pytest.raises(CopartitionError, match=r"pairs has 3 partitions but .*labels has 2"):
        await check_copartitioned(kafka_bootstrap, KafkaSecurity(), p)
    with pytest.raises(CopartitionError, match="missing"):
        await check_copartitioned(kafka_bootstrap, KafkaSecurity(), _prefix())


async def test_round_trip_headers_and_copartitioning(topics: Transport) -> None:
    bootstrap = topics.bootstrap
    assert bootstrap is not None
    sink = KafkaSink.for_pairs(topics)
    await sink.start()
    assert sink.connected
    recs = _records(600)
    for i in range(0, len(recs), 100):
        await sink.write(recs[i : i + 100])
    await sink.close()
    assert sink.records_sent == 600 and sink.records_spooled == 0

    # Labels from a plain Kafka client with its default partitioner.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, _ in recs[:200]:
            await producer.send(f"{topics.topic_prefix}.labels", b'{"label":1}', key=key)
        await producer.flush()
    finally:
        await producer.stop()

    pairs = await _consume(bootstrap, f"{topics.topic_prefix}.pairs", 600)
    labels = await _consume(bootstrap, f"{topics.topic_prefix}.labels", 200)
    assert len(pairs) == 600
    assert {m.key: m.value for m in pairs} == dict(recs)
    assert all(m.headers == (("schema", b"pair.v1"),) for m in pairs)
    pair_part = {m.key: m.partition for m in pairs}
    assert len(set(pair_part.values())) == 3  # spread over all partitions
    for m in labels:
        assert pair_part[m.key] == m.partition == partition_for(m.key, 3)
    # Per partition, the sink kept write order.
    for part in range(3):
        keys = [m.key for m in sorted(pairs, key=lambda m: m.offset) if m.partition == part]
        assert keys == sorted(keys)


async def test_broker_outage_spools_then_delivers_exactly_once(
    own_broker: KafkaBroker, tmp_path: Path
) -> None:
    transport = _transport(own_broker.bootstrap, _prefix(), tmp_path / "spool")
    await create_topics(transport)
    sink = KafkaSink.for_pairs(transport, retry_interval_s=0.3, close_timeout_s=30)
    await sink.start()
    latencies: list[float] = []
    n = 0
    batch = 50

    async def produce_for(seconds: float) -> None:
        nonlocal n
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            await sink.write(_records(batch, start=n))
            latencies.append(time.monotonic() - t0)
            n += batch
            await asyncio.sleep(0.01)

    await produce_for(1.0)
    await asyncio.to_thread(own_broker.stop)
    await produce_for(3.0)
    spooled_during_outage = sink.records_spooled
    await asyncio.to_thread(own_broker.start)
    await produce_for(2.0)
    for _ in range(300):  # up to 30 s for the spool to drain
        if not sink.spool and not sink.inflight_records:
            break
        await asyncio.sleep(0.1)
    await sink.close()

    got = await _consume(own_broker.bootstrap, f"{transport.topic_prefix}.pairs", n, 60)
    counts = Counter(m.key for m in got)
    assert spooled_during_outage > 0
    assert sink.records_drained > 0
    assert len(counts) == n, f"missing {n - len(counts)} of {n}"
    assert max(counts.values()) == 1, "duplicates in the topic"
    assert sink.records_sent + sink.records_drained == n
    assert sink.records_dropped == 0
    latencies.sort()
    print(
        f"\noutage: {n} records, {spooled_during_outage} spooled, write() p50 "
        f"{latencies[len(latencies) // 2] * 1e3:.2f} ms, p99 "
        f"{latencies[int(len(latencies) * 0.99)] * 1e3:.1f} ms, max {latencies[-1] * 1e3:.0f} ms"
    )
    assert latencies[-1] < 5.0  # write() never waited for the broker to come back


async def test_spool_left_by_a_dead_sink_is_delivered(topics: Transport, tmp_path: Path) -> None:
    spool_dir = tmp_path / "dead-sink"
    # A sink that never reaches a broker (nothing listens there) spools everything...
    nowhere = topics.model_copy(update={"bootstrap": "127.0.0.1:9"})
    dead = KafkaSink.for_pairs(
        nowhere, spool=Spool(spool_dir), connect_timeout_s=0.5, retry_interval_s=5
    )
    await dead.start()
    assert not dead.connected
    recs = _records(1000)
    await dead.write(recs[:400])
    await dead.write(recs[400:])
    assert dead.records_spooled == 1000
    dead.abandon()  # ...and dies without delivering.

    sink = KafkaSink.for_pairs(topics, spool=Spool(spool_dir), retry_interval_s=0.2)
    await sink.start()
    await sink.write(_records(10, start=1000))  # behind the spooled records
    for _ in range(200):
        if not sink.spool:
            break
        await asyncio.sleep(0.05)
    await sink.close()
    assert sink.records_drained == 1010
    got = await _consume(topics.bootstrap or "", f"{topics.topic_prefix}.pairs", 1010)
    counts = Counter(m.key for m in got)
    assert len(counts) == 1010 and max(counts.values()) == 1
    # A third sink on the same folder finds nothing left to send.
    with Spool(spool_dir) as again:
        assert not again


async def test_small_writes_linger_into_few_batches_and_close_flushes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    transport = _transport(kafka_bootstrap, _prefix(), tmp_path / "spool").model_copy(
        update={"linger_ms": 60_000}
    )
    await create_topics(transport)
    sink = KafkaSink.for_pairs(transport)
    await sink.start()
    recs = _records(300)
    for kv in recs:
        await sink.write([kv])  # one record per call, as a data plane at low concurrency
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    # Still lingering (linger 60 s): nothing sent, nothing spooled, all counted in flight.
    assert sink.records_sent == 0 and sink.records_spooled == 0
    assert sink.inflight_records == 300
    await sink.close()  # flushes what lingers
    assert sink.records_sent == 300 and sink.records_spooled == 0
    assert len(sink.send_latencies) == 3  # one batch per partition
    got = await _consume(kafka_bootstrap, f"{transport.topic_prefix}.pairs", 300)
    assert sorted((m.key, m.value) for m in got) == recs
    for part in range(3):
        keys = [m.key for m in sorted(got, key=lambda m: m.offset) if m.partition == part]
        assert keys == sorted(keys)


async def test_lingering_records_are_sent_after_linger_ms(topics: Transport) -> None:
    sink = KafkaSink.for_pairs(topics.model_copy(update={"linger_ms": 50}))
    await sink.start()
    await sink.write(_records(10))
    assert sink.records_sent == 0
    for _ in range(100):
        if sink.records_sent == 10:
            break
        await asyncio.sleep(0.05)
    assert sink.records_sent == 10 and sink.inflight_records == 0
    await sink.close()


async def test_records_lingering_when_an_outage_begins_stay_ahead_in_the_spool(
    topics: Transport, tmp_path: Path
) -> None:
    """Once the spool holds records, what lingers goes there before newer writes."""
    spool = Spool(tmp_path / "order")
    sink = KafkaSink.for_pairs(
        topics.model_copy(update={"linger_ms": 60_000}), spool=spool, retry_interval_s=60
    )
    await sink.start()
    await sink.write(_records(5))
    spool.append([(b"older", b"x")])  # as if a delivery had failed meanwhile
    await sink.write(_records(5, start=5))
    assert sink.inflight_records == 0
    got, _ = spool.read(100)
    assert [k for k, _ in got] == [b"older", *(k for k, _ in _records(10))]
    await sink.close()
