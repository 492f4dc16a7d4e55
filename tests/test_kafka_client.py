"""The sink's producer is stopped within a bound, against a real broker: delivering what it
holds when the broker answers, and leaving nothing of itself running when the broker does not
(aiokafka's own ``stop()`` waits for every queued batch, without a timeout)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from kafka_harness import started_broker
from shadowroute.stream.kafka_client import new_producer, stop_producer
from shadowroute.stream.topics import create_topics, topic_name
from test_kafka_sink import _prefix, _records, _transport

pytestmark = pytest.mark.kafka


def _aiokafka_tasks() -> list[asyncio.Task[object]]:
    """Tasks still running code of the aiokafka package: the sender, its requests, the
    metadata synchronizer. Left out: the accumulator's ``close()``, which ``stop()`` starts
    and never cancels; it only waits (forever) on the undelivered batches and holds no
    connection."""
    out = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if task.done() or code is None or "aiokafka" not in code.co_filename:
            continue
        if code.co_qualname != "MessageAccumulator.close":
            out.append(task)
    return out


async def test_a_producer_delivers_what_it_holds_before_it_stops(tmp_path: Path) -> None:
    with started_broker() as broker:
        transport = _transport(broker.bootstrap, _prefix(), tmp_path / "spool", partitions=1)
        await create_topics(transport)
        topic = topic_name(transport.topic_prefix, "pairs")
        producer = new_producer(transport, topic, request_timeout_ms=5_000)
        await producer.start()
        futs = [await producer.send(topic, value=v, key=k) for k, v in _records(20)]
        await stop_producer(producer, timeout_s=5.0)
    assert all(f.done() and f.exception() is None for f in futs), "all delivered before stop"
    assert [f.result().offset for f in futs] == list(range(20))
    assert not _aiokafka_tasks()


async def test_a_producer_that_cannot_deliver_stops_within_its_bound(tmp_path: Path) -> None:
    with started_broker() as broker:
        transport = _transport(broker.bootstrap, _prefix(), tmp_path / "spool", partitions=1)
        await create_topics(transport)
        topic = topic_name(transport.topic_prefix, "pairs")
        producer = new_producer(transport, topic, request_timeout_ms=1_000)
        await producer.start()
        await producer.partitions_for(topic)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            futs = [await producer.send(topic, value=v, key=k) for k, v in _records(20)]
            began = time.monotonic()
            await stop_producer(producer, timeout_s=2.0)
            took = time.monotonic() - began
            left = _aiokafka_tasks()
        finally:
            os.kill(broker.pid, signal.SIGCONT)
    # 2 s for a delivering stop, then the sender ends once its request in flight times out
    # (1 s, within the second 2 s); the last resort (cancelling stop() itself) is not needed.
    assert 1.9 <= took < 2.0 + 1.0 + 1.0, took
    assert not left, f"still running after stop: {left}"
    assert not any(f.done() and f.exception() is None for f in futs), "nothing acknowledged"
