"""The data plane writing pair records to a real Kafka broker, and reading them back."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from proxyutil import running_dataplane
from shadowroute.core.config import Config, Topics, Transport
from shadowroute.core.config import Spool as SpoolConfig
from shadowroute.dataplane.server import DataPlane
from shadowroute.stream.kafka import KafkaSink


def unique_prefix() -> str:
    return "rel" + uuid.uuid4().hex[:10]


def kafka_transport(bootstrap: str, prefix: str, spool_dir: Path) -> Transport:
    return Transport(
        kind="kafka",
        bootstrap=bootstrap,
        topic_prefix=prefix,
        linger_ms=2,
        topics=Topics(partitions=3),
        spool=SpoolConfig(path=str(spool_dir), fsync="segment"),
    )


@contextlib.asynccontextmanager
async def kafka_proxy(
    config: Config, transport: Transport, **sink_kw: Any
) -> AsyncIterator[tuple[DataPlane, KafkaSink]]:
    """A DataPlane whose sink is ``KafkaSink.for_pairs(transport)``."""
    kw: dict[str, Any] = {"retry_interval_s": 0.3, "connect_timeout_s": 2.0, "close_timeout_s": 30}
    kw.update(sink_kw)
    sink = KafkaSink.for_pairs(transport, **kw)
    async with running_dataplane(config, sink) as dp:
        yield dp, sink


async def wait_delivered(sink: KafkaSink, timeout_s: float = 60.0) -> float:
    """Wait until the spool is empty and nothing is in flight; seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if not sink.spool and not sink.inflight_records:
            break
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def consume_keys(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 60.0
) -> tuple[Counter[bytes], list[bytes]]:
    """Every record of ``topic`` from the start: a count per key, and the values."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    keys: Counter[bytes] = Counter()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while sum(keys.values()) < expect and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    keys[m.key] += 1
                    values.append(m.value)
        # A little longer, to see duplicates arriving after the expected count.
        for msgs in (await consumer.getmany(timeout_ms=1000)).values():
            for m in msgs:
                keys[m.key] += 1
                values.append(m.value)
    finally:
        await consumer.stop()
    return keys, values
