"""Producer throughput against a real broker (started by tests/kafka_harness.py).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_kafka_producer.py [--records N]

Per configuration: records/s of one process (one core for the Python side; the broker runs on
the other), including orjson encoding of a ~250-byte pair record. Compares aiokafka's keyed
``send()`` (one call and one future per record) with KafkaSink's batch path (murmur2 over the
batch, one BatchBuilder per partition), with and without compression.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kafka_harness import KafkaBroker
from shadowroute.core.config import Spool as SpoolConfig
from shadowroute.core.config import Topics, Transport
from shadowroute.stream.kafka import KafkaSink, create_topics

BATCH = 4096


def pair(i: int) -> dict[str, object]:
    return {
        "v": 1,
        "id": f"{i:032x}",
        "route": "fraud",
        "ts": 1764100000123 + i,
        "production": {
            "model": "fraud-v7",
            "version": "7",
            "status": 200,
            "latency_ms": 4.1,
            "output": [0.91],
            "error": None,
        },
        "candidate": {
            "model": "fraud-v8",
            "version": "8",
            "status": 200,
            "latency_ms": 5.3,
            "output": [0.88],
            "error": None,
        },
        "input": {"amount": 120.5, "country": "DE"},
    }


async def run_send(transport: Transport, topic: str, n: int) -> float:
    comp = None if transport.compression == "none" else transport.compression
    producer = AIOKafkaProducer(
        bootstrap_servers=transport.bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=transport.linger_ms,
        max_batch_size=transport.batch_bytes,
        compression_type=comp,
    )
    await producer.start()
    t0 = time.perf_counter()
    futs = []
    for i in range(n):
        rec = pair(i)
        value = orjson.dumps(rec)
        futs.append(
            await producer.send(
                topic, value, key=str(rec["id"]).encode(), headers=[("schema", b"pair.v1")]
            )
        )
        if len(futs) >= BATCH:
            await asyncio.gather(*futs)
            futs.clear()
    await producer.flush()
    await asyncio.gather(*futs)
    elapsed = time.perf_counter() - t0
    await producer.stop()
    return n / elapsed


async def run_sink(transport: Transport, topic: str, n: int, spool_dir: Path) -> float:
    sink = KafkaSink(transport, topic, b"pair.v1")
    await sink.start()
    assert sink.connected
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        batch = []
        for i in range(start, min(n, start + BATCH)):
            rec = pair(i)
            batch.append((str(rec["id"]).encode(), orjson.dumps(rec)))
        await sink.write(batch)
    await sink.close()
    elapsed = time.perf_counter() - t0
    assert sink.records_sent == n and sink.records_spooled == 0, (sink.records_sent, n)
    return n / elapsed


async def main(n: int) -> None:
    size = len(orjson.dumps(pair(0)))
    with KafkaBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        print(
            f"Kafka {broker.version} at {broker.bootstrap} (started in "
            f"{broker.start_seconds:.1f}s); {n} records of {size} bytes; batch {BATCH}"
        )
        rows = []
        for comp in ("none", "lz4", "zstd", "gzip"):
            prefix = "b" + uuid.uuid4().hex[:8]
            transport = Transport(
                kind="kafka",
                bootstrap=broker.bootstrap,
                topic_prefix=prefix,
                compression=comp,
                topics=Topics(partitions=6),  # type: ignore[arg-type]
                spool=SpoolConfig(path=str(Path(tmp) / prefix)),
            )
            await create_topics(transport)
            topic = f"{prefix}.pairs"
            send = await run_send(transport, topic, n)
            sink = await run_sink(transport, topic, n, Path(tmp))
            rows.append((comp, send, sink))
        print(f"{'compression':<12}{'send() keyed rec/s':>20}{'sink batch rec/s':>20}{'ratio':>8}")
        for comp, send, sink in rows:
            print(f"{comp:<12}{send:>20,.0f}{sink:>20,.0f}{sink / send:>8.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    asyncio.run(main(ap.parse_args().records))
