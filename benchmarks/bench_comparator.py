"""Comparator benchmark: throughput, memory with pending joins, verdict latency, scoring cost.

    .venv/bin/python benchmarks/bench_comparator.py [--pairs 100000] [--pending 1000000]
        [--kafka | --no-kafka] [--kafka-runs 1]

- in-process: ``Engine.process`` in batches of 20,000 (decode, join, score, SQLite commit),
  each batch with its pairs' labels, or (labels later) all pairs first and then their labels;
- from Kafka: one ``KafkaComparator`` consuming a 3-partition topic pair from a real broker
  (``$SHADOWROUTE_TEST_KAFKA``, or one started with ``tests/kafka_harness.py``);
- both as pairs per second of wall time and per second of the process's CPU time (the second
  moves less when other work shares the machine); ``--kafka-runs N`` repeats each Kafka case
  on fresh topics (whether a partition's pairs or its labels are fetched first differs from
  run to run, and labels that find their pairs pending in the store cost the most);
- RSS (peak, VmHWM) of a process holding ``--pending`` pair records whose labels never came;
- time from the deciding labels to the verdict change (embedded comparator, 200 ms flush);
- the scoring core (paired CS, McNemar, paired t, per-window sums) against pandas + scipy on
  the same labelled data (throughput ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from shadowroute.comparator.aggregates import LabelledRow, new_candidate_state  # noqa: E402
from shadowroute.comparator.embedded import Comparator  # noqa: E402
from shadowroute.comparator.engine import Engine  # noqa: E402
from shadowroute.comparator.store import Store  # noqa: E402
from test_comparator_gen import T0, classification, config, pair  # noqa: E402

BATCH = 20_000


def in_process(n: int, with_labels: bool, labels_later: bool = False) -> tuple[float, float]:
    """Pairs per second of wall time and per second of this process's CPU time.

    ``labels_later``: every pair first, then every label (each joins a pair pending in the
    store), instead of each batch carrying pairs and their labels together."""
    s = classification(n, seed=1, label_share=1.0 if with_labels else 0.0)
    if labels_later:
        batches = [(s.pairs[i : i + BATCH], []) for i in range(0, n, BATCH)]
        batches += [([], s.labels[i : i + BATCH]) for i in range(0, n, BATCH)]
    else:
        batches = [(s.pairs[i : i + BATCH], s.labels[i : i + BATCH]) for i in range(0, n, BATCH)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.sqlite"
        engine = Engine(config(str(path)), Store(path))
        started, cpu = time.perf_counter(), time.process_time()
        for pairs, labels in batches:
            engine.process(0, pairs, labels)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        engine.store.close()
    return n / elapsed, n / cpu


def _rss_child(n: int) -> None:
    """Run in a child process: hold n pending joins, print peak RSS in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.sqlite"
        engine = Engine(config(str(path), ttl_s=30 * 86400), Store(path))
        for start in range(0, n, BATCH):
            # copies: encode_pair's orjson output keeps a 4 KiB buffer per record; records read
            # from Kafka or a socket are exact-size bytes.
            batch = [
                (
                    f"p{i}".encode(),
                    bytes(memoryview(pair(f"p{i}", T0 + i, [i % 2], [1 - i % 2], amount=i % 97))),
                )
                for i in range(start, min(start + BATCH, n))
            ]
            engine.process(0, batch, [])
        pending = engine.store.pending_count()
        rows = engine.store.conn.execute("SELECT count(*) FROM pending").fetchone()[0]
        with open(f"/proc/{os.getpid()}/status") as fh:
            status = dict(line.split(":", 1) for line in fh if ":" in line)
        peak = int(status["VmHWM"].split()[0]) / 1024
        now = int(status["VmRSS"].split()[0]) / 1024
        print(f"{pending} {rows} {peak:.1f} {now:.1f} {path.stat().st_size / 2**20:.0f}")


def rss_with_pending(n: int) -> tuple[int, int, float, float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), int(out[1]), float(out[2]), float(out[3]), float(out[4])


async def verdict_latency(runs: int = 5) -> list[float]:
    out = []
    for seed in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            comp = Comparator(config(str(Path(tmp) / "s.sqlite")), clock=None)
            await comp.start()
            s = classification(3000, p_prod=0.6, p_cand=0.95, seed=seed)
            await comp.consume(s.pairs)
            await comp.flush()
            started = time.perf_counter()
            await comp.consume_labels(s.labels)
            while comp.reader.decision("fraud", "fraud-v8")["verdict"] != "promote":
                await asyncio.sleep(0.005)
            out.append(time.perf_counter() - started)
            await comp.close()
    return out


def scoring_vs_scipy(n: int = 200_000, reps: int = 3) -> tuple[float, float]:
    """Pairs/s of our scoring core and of pandas + scipy computing the same figures."""
    import pandas as pd
    from scipy import stats

    from shadowroute.core.config import parse_config

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    prod = np.where(rng.random(n) < 0.8, y, 1 - y).tolist()
    cand = np.where(rng.random(n) < 0.82, y, 1 - y).tolist()
    ts = (T0 + np.arange(n) * 20).tolist()
    labels = y.tolist()
    route = parse_config(
        {
            "routes": [
                {
                    "name": "r",
                    "protocol": "kserve-v1",
                    "production": {"name": "p", "url": "http://127.0.0.1:1"},
                }
            ]
        },
        environ={},
    ).routes[0]

    def ours() -> Any:
        state = new_candidate_state(route, "c", ["hour"])
        rows = [
            LabelledRow(t, p, c, lab) for t, p, c, lab in zip(ts, prod, cand, labels, strict=True)
        ]
        state.add_labelled(rows, None)
        return state.scores()

    def theirs() -> Any:
        df = pd.DataFrame({"ts": ts, "prod": prod, "cand": cand, "label": labels})
        pc = (df["prod"] == df["label"]).astype(float)
        cc = (df["cand"] == df["label"]).astype(float)
        d = cc - pc
        b, c = int(((cc == 1) & (pc == 0)).sum()), int(((pc == 1) & (cc == 0)).sum())
        mcnemar = stats.binomtest(min(b, c), b + c, 0.5).pvalue
        t = stats.ttest_rel(cc, pc)
        hours = df["ts"] // 3_600_000
        windows = pd.DataFrame({"h": hours, "p": pc, "c": cc}).groupby("h").agg(["sum", "count"])
        return mcnemar, t.pvalue, d.mean(), windows

    def best(fn: Any) -> float:
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return n / min(times)

    return best(ours), best(theirs)


async def _consume_until(comp: Any, total: int) -> None:
    started = time.perf_counter()
    while True:
        done = sum(p.pairs + p.labels for p in comp.engine.positions.values())
        if done >= total:
            return
        if time.perf_counter() - started > 600:
            raise RuntimeError(f"only {done} of {total} records after 600 s")
        await asyncio.sleep(0.05)


KAFKA_PARTITIONS = 3


async def _comparator_phase(cfg: Any, group: str, total: int) -> tuple[float, float]:
    """Start a comparator, wait for its partitions, consume until ``total`` records are
    committed, stop it. Returns (wall s, CPU s) from the group join to the last commit."""
    from shadowroute.comparator.kafka_source import KafkaComparator

    comp = KafkaComparator(cfg, group_id=group)
    await comp.start()
    task = asyncio.create_task(comp.run())
    try:
        joined = time.perf_counter()
        while len(comp.engine.positions) < KAFKA_PARTITIONS:  # the join is not counted
            if time.perf_counter() - joined > 60:
                raise RuntimeError("partitions not assigned after 60 s")
            await asyncio.sleep(0.01)
        started, cpu = time.perf_counter(), time.process_time()
        await _consume_until(comp, total)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        comp.stopping.set()
        await task
        await comp.stop()
    return elapsed, cpu


async def from_kafka(
    bootstrap: str, n: int, with_labels: bool, labels_later: bool = False
) -> tuple[float, float]:
    """Pairs per second of wall time and of this process's CPU time (event loop, Kafka
    client and engine), from the group join to the last record committed.

    ``labels_later``: the pairs are produced and consumed first (the comparator stops), then
    the labels (a comparator starts again from the stored positions), as in production, where
    ground truth comes long after the prediction: every label joins a pair pending in the
    store. Both phases are timed; producing the labels between them is not."""
    from aiokafka import AIOKafkaProducer

    from shadowroute.core.records import encode_label
    from shadowroute.stream.kafka import create_topics, topic_name

    prefix = "b" + uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(
            str(Path(tmp) / "s.sqlite"),
            bootstrap=bootstrap,
            prefix=prefix,
            partitions=KAFKA_PARTITIONS,
        )
        await create_topics(cfg.transport)
        s = classification(n, seed=2, label_share=1.0 if with_labels else 0.0)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
        await producer.start()

        async def produce(pairs: bool, labels: bool) -> None:
            futs = []
            if pairs:
                futs += [
                    await producer.send(topic_name(prefix, "pairs"), v, key=k) for k, v in s.pairs
                ]
            if labels:
                futs += [
                    await producer.send(
                        topic_name(prefix, "labels"),
                        encode_label(lab),
                        key=lab.id.split("#")[0].encode(),
                    )
                    for lab in s.labels
                ]
            await asyncio.gather(*futs)

        group = "bench-" + prefix
        try:
            if labels_later:
                await produce(True, False)
                wall, cpu = await _comparator_phase(cfg, group, n)
                await produce(False, True)
                wall2, cpu2 = await _comparator_phase(cfg, group, n + len(s.labels))
                wall, cpu = wall + wall2, cpu + cpu2
            else:
                await produce(True, True)
                wall, cpu = await _comparator_phase(cfg, group, n + len(s.labels))
        finally:
            await producer.stop()
    return n / wall, n / cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--kafka", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--kafka-runs", type=int, default=1)
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child)
        return
    n = args.pairs
    print(f"in-process, {n} pairs, batches of {BATCH}:")
    print(
        "  without labels  {:10,.0f} pairs/s ({:,.0f} per CPU second)".format(*in_process(n, False))
    )
    print(
        "  with labels     {:10,.0f} pairs/s ({:,.0f} per CPU second)".format(*in_process(n, True))
    )
    print(
        "  labels later    {:10,.0f} pairs/s ({:,.0f} per CPU second)".format(
            *in_process(n, True, labels_later=True)
        )
    )
    if args.kafka:
        bootstrap = os.environ.get("SHADOWROUTE_TEST_KAFKA")
        broker = None
        if not bootstrap:
            from kafka_harness import KafkaBroker

            broker = KafkaBroker()
            broker.start()
            bootstrap = broker.bootstrap
        try:
            print(f"from Kafka (3 partitions, one process), {n} pairs:")
            cases = (
                ("without labels", False, False),
                ("with labels   ", True, False),
                ("labels later  ", True, True),
            )
            for name, labels, later in cases:
                for _ in range(max(1, args.kafka_runs)):
                    rate, cpu = asyncio.run(from_kafka(bootstrap, n, labels, later))
                    print(f"  {name}  {rate:10,.0f} pairs/s ({cpu:,.0f} per CPU second)")
        finally:
            if broker is not None:
                broker.cleanup()
    lat = asyncio.run(verdict_latency())
    print(
        f"deciding labels -> verdict change: median {statistics.median(lat) * 1000:.0f} ms, "
        f"max {max(lat) * 1000:.0f} ms ({len(lat)} runs)"
    )
    ours, theirs = scoring_vs_scipy()
    print(
        f"scoring core {ours:,.0f} labelled pairs/s; pandas + scipy {theirs:,.0f}/s; "
        f"ratio {ours / theirs:.2f}"
    )
    pending, rows, peak, now, disk = rss_with_pending(args.pending)
    print(
        f"{args.pending:,} pairs never labelled: {pending:,} pending entries in {rows:,} rows "
        f"on disk ({disk:.0f} MiB), RSS peak {peak:.0f} MiB, at end {now:.0f} MiB"
    )


if __name__ == "__main__":
    main()
