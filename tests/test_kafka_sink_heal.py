"""The sink heals from a producer state no retry gets out of, against a real broker.

After a full cluster outage an idempotent producer can be left with a gap in its sequence
numbers that the broker rejects forever (``OutOfOrderSequenceNumber``). Here that failure is
injected into a sink connected to a real broker, at the point where a failed delivery is
reported; the sink must replace its producer, deliver everything written before and after
(nothing lost), say so once at WARNING, and report ``connected`` (records being accepted)
truthfully. The outage itself is reproduced on a multi-node cluster, not here.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber, RequestTimedOutError

from kafka_harness import started_broker
from shadowroute.stream.kafka import KafkaSink, create_topics, topic_name
from test_kafka_sink import _consume, _prefix, _records, _transport

pytestmark = pytest.mark.kafka


async def test_sink_replaces_a_producer_the_broker_no_longer_accepts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="shadowroute.stream.kafka")
    with started_broker() as broker:
        transport = _transport(broker.bootstrap, _prefix(), tmp_path / "spool", partitions=1)
        await create_topics(transport)
        sink = KafkaSink.for_pairs(transport, retry_interval_s=0.2)
        await sink.start()
        try:
            await sink.write(_records(50))
            for _ in range(200):
                if sink.records_sent == 50:
                    break
                await asyncio.sleep(0.05)
            assert sink.records_sent == 50 and sink.connected
            # A retriable failure is an episode, not a reason to replace the producer.
            sink._delivery_failed(RequestTimedOutError(), sink._generation)
            assert not sink.connected and sink.producer_replacements == 0
            sink._delivery_failed(OutOfOrderSequenceNumber(), sink._generation)
            assert not sink.connected and sink.producer_replacements == 1
            # A failure reported for a producer already replaced replaces nothing.
            sink._delivery_failed(OutOfOrderSequenceNumber(), sink._generation - 1)
            assert sink.producer_replacements == 1
            sent = 50
            for k in range(1, 6):  # keep writing through the episode
                await sink.write(_records(50, start=50 * k))
                sent += 50
                await asyncio.sleep(0.3)
            for _ in range(300):
                if not sink.spool and sink.inflight_records == 0 and sink.connected:
                    break
                await asyncio.sleep(0.1)
            got = await _consume(
                broker.bootstrap, topic_name(transport.topic_prefix, "pairs"), sent
            )
        finally:
            await sink.close()
    keys = {m.key for m in got}
    assert keys == {k for k, _ in _records(sent)}, "every record reached the topic"
    assert sink.producer_replacements == 1
    assert sink.failing_seconds == 0.0
    replaced = [r for r in caplog.records if "replaced" in r.getMessage()]
    assert replaced and all(r.levelno == logging.WARNING for r in replaced)
    episodes = [
        r for r in caplog.records if "failing" in r.getMessage() and r.levelno >= logging.WARNING
    ]
    assert len(episodes) == 1, [r.getMessage() for r in episodes]
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1


async def test_an_acknowledged_write_is_bounded_while_the_broker_hangs(tmp_path: Path) -> None:
    """A label batch (``write_acked``) to a broker that stops answering (SIGSTOP) returns
    within the ack bound with its records in the spool, the writes after it do not wait, and
    everything reaches the topic once the broker answers again."""
    import os
    import signal
    import time

    with started_broker() as broker:
        transport = _transport(broker.bootstrap, _prefix(), tmp_path / "spool", partitions=1)
        await create_topics(transport)
        sink = KafkaSink.for_labels(transport, retry_interval_s=0.2, ack_timeout_s=2.0)
        await sink.start()
        try:
            assert await sink.write_acked(_records(10)) == 0, "acknowledged, nothing spooled"
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                spooled = await sink.write_acked(_records(10, start=10))
                first_s = time.monotonic() - began
                began = time.monotonic()
                spooled_next = await sink.write_acked(_records(10, start=20))
                next_s = time.monotonic() - began
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            assert spooled == 10 and spooled_next == 10
            # (margins for a loaded machine: the bound is 2 s, a write that waited on the broker
            # again would take at least that)
            assert first_s < 2.0 + 1.5, first_s
            assert next_s < 1.0, f"a write after a timed-out one waited {next_s:.2f} s"
            assert not sink.connected
            for _ in range(600):
                if not sink.spool and sink.inflight_records == 0 and sink.connected:
                    break
                await asyncio.sleep(0.1)
            got = await _consume(broker.bootstrap, topic_name(transport.topic_prefix, "labels"), 30)
        finally:
            await sink.close()
    assert {m.key for m in got} == {k for k, _ in _records(30)}, "every record reached the topic"
