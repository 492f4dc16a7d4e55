"""Producer throughput and the sink's CPU per record against a real broker (started by
tests/kafka_harness.py).

    .venv/bin/python benchmarks/bench_kafka_producer.py [--records N] [--paced-seconds S]

Throughput, per compression: records/s of one process (one core for the Python side; the
broker runs on the other), including orjson encoding of a ~335-byte pair record. Compares
aiokafka's keyed ``send()`` (one call and one future per record) with KafkaSink's batch path
(murmur2 over the batch, one BatchBuilder per partition).

CPU per record, paced: the data plane's pattern at low concurrency. Records arrive at a fixed
rate, a few per event-loop turn, through ``RecordQueue.pump`` (uvloop), so the sink gets many
tiny ``write`` calls. The process CPU time per record with the Kafka sink, minus the same with
a null sink, is what the Kafka sink costs the data plane per record (lz4, 6 partitions), for a
few ``linger_ms`` values.
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
import uvloop
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kafka_harness import KafkaBroker
from shadowroute.core.config import Spool as SpoolConfig
from shadowroute.core.config import Topics, Transport
from shadowroute.stream.kafka import KafkaSink, create_topics
from shadowroute.stream.queue import RecordQueue
from shadowroute.stream.sink import FanoutSink, Sink

BATCH = 4096
PER_TURN = 2


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


async def paced_cpu(
    sink: Sink, records: list[tuple[bytes, bytes]], rate: float, seconds: float
) -> float:
    """CPU seconds per record of this process while ``rate`` records/s go through a
    ``RecordQueue`` pump into ``sink``, ``PER_TURN`` records per event-loop turn."""
    await sink.start()
    queue = RecordQueue(1 << 20)
    pump = asyncio.get_running_loop().create_task(queue.pump(sink))
    await asyncio.sleep(0.5)
    n = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while (now := time.perf_counter()) < t0 + seconds:
        due = int((now - t0) * rate)
        while n < due:
            for _ in range(PER_TURN):
                key, value = records[n % len(records)]
                queue.put(key, value)
                n += 1
            await asyncio.sleep(0)
        await asyncio.sleep(0.001)
    cpu = time.process_time() - c0
    queue.close()
    await pump
    await sink.close()
    return cpu / max(n, 1)


def paced(bootstrap: str, tmp: str, rate: float, seconds: float) -> list[tuple[str, float]]:
    """(label, µs per record) for the null sink and the Kafka sink at a few linger values."""
    records = [(f"{i:032x}".encode(), orjson.dumps(pair(i))) for i in range(4096)]
    out: list[tuple[str, float]] = []

    async def one(linger_ms: int | None) -> float:
        if linger_ms is None:
            return await paced_cpu(FanoutSink([]), records, rate, seconds)
        prefix = "p" + uuid.uuid4().hex[:8]
        transport = Transport(
            kind="kafka",
            bootstrap=bootstrap,
            topic_prefix=prefix,
            linger_ms=linger_ms,
            topics=Topics(partitions=6),  # type: ignore[arg-type]
            spool=SpoolConfig(path=str(Path(tmp) / prefix)),
        )
        await create_topics(transport)
        sink = KafkaSink.for_pairs(transport)
        per = await paced_cpu(sink, records, rate, seconds)
        assert sink.records_spooled == 0, sink.records_spooled
        return per

    for label, linger in (("null", None), ("kafka-5", 5), ("kafka-50", 50), ("null", None)):
        out.append((label, uvloop.run(one(linger)) * 1e6))
    return out


async def throughput(n: int, broker: KafkaBroker, tmp: str) -> None:
    size = len(orjson.dumps(pair(0)))
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000, help="records per throughput run")
    ap.add_argument("--paced-rate", type=float, default=5000, help="records/s, paced runs")
    ap.add_argument("--paced-seconds", type=float, default=5.0, help="0: skip the paced runs")
    args = ap.parse_args()
    with KafkaBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(throughput(args.records, broker, tmp))
        if args.paced_seconds <= 0:
            return
        rows = paced(broker.bootstrap, tmp, args.paced_rate, args.paced_seconds)
        null = sum(us for label, us in rows if label == "null") / 2
        print(
            f"\nCPU per record, paced: {args.paced_rate:,.0f} records/s, {PER_TURN} per loop "
            f"turn, {args.paced_seconds:g} s per run (uvloop, lz4, 6 partitions)"
        )
        print(f"{'sink':<12}{'process µs/record':>20}{'minus null sink':>18}")
        for label, us in rows:
            print(f"{label:<12}{us:>20.1f}{us - null:>18.1f}")


if __name__ == "__main__":
    main()
