"""The comparator over a real Kafka broker: SIGKILLs, rebalances, exactly-once state."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from documented import assert_documented
from proxyutil import free_port, wait_ready
from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.kafka_source import ScoresFollower
from shadowroute.comparator.reader import Reader, StateView, Verdicts
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config, parse_config
from shadowroute.core.records import LabelRecord, encode_label
from shadowroute.stream.kafka import create_topics, topic_name
from test_comparator_engine import _assert_equal_states
from test_comparator_gen import T0, cand_state, pair

pytestmark = pytest.mark.kafka
PARTS = 3
ROUTE, CAND = "fraud", "fraud-v8"


def _raw(bootstrap: str, prefix: str, state: Path) -> dict[str, Any]:
    return {
        "admin": {"host": "127.0.0.1", "port": 0},
        "transport": {
            "kind": "kafka",
            "bootstrap": bootstrap,
            "topic_prefix": prefix,
            "topics": {"partitions": PARTS},
        },
        "comparator": {"state_path": str(state), "windows": ["hour"]},
        "routes": [
            {
                "name": ROUTE,
                "protocol": "kserve-v1",
                "task": "classification",
                "label_ttl_s": 60,
                "production": {"name": "fraud-v7", "url": "http://127.0.0.1:9001"},
                "candidates": [{"name": CAND, "url": "http://127.0.0.1:9002"}],
                "policy": {"min_pairs": 200, "min_labelled": 100},
                "drift": {"fields": ["$.amount"], "reference_file": None},
            }
        ],
    }


def _cfg(tmp: Path, bootstrap: str, prefix: str, name: str) -> tuple[Path, Config]:
    raw = _raw(bootstrap, prefix, tmp / f"{name}.sqlite")
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, parse_config(raw, environ={})


def _stream(n: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    """(topic kind, key, value) in event-time order, so each topic is in timestamp order:
    labels from 1 s before to 5 s after their pair (some before it, most after), 10% never,
    labels whose pair never comes, a few bad records; pairs 50 ms apart, so the stream spans
    ten times the 60 s TTL."""
    rng = np.random.default_rng(seed)
    events: list[tuple[int, int, tuple[str, bytes, bytes]]] = []
    for i in range(n):
        rid = f"k{seed}-{i}"
        k = 2 if i % 9 == 0 else 1
        ys = rng.integers(0, 2, size=k).tolist()
        prod = [y if rng.random() < 0.7 else 1 - y for y in ys]
        cand = [y if rng.random() < 0.8 else 1 - y for y in ys]
        ts = T0 + 50 * i
        monitor_only = i % 17 == 0
        value = pair(rid, ts, prod, None if monitor_only else cand, amount=float(rng.normal()))
        events.append((ts, len(events), ("pairs", rid.encode(), value)))
        if i % 500 == 7:
            events.append((ts, len(events), ("pairs", rid.encode(), b"{broken")))
            events.append((ts, len(events), ("labels", rid.encode(), b'{"id": 5}')))
        if i % 300 == 11:
            lab = encode_label(LabelRecord(f"x{i}", 1, ts))
            events.append((ts, len(events), ("labels", f"x{i}".encode(), lab)))
        if rng.random() < 0.1:
            continue  # never labelled
        lts = ts + int(rng.integers(-1000, 5000))
        for j, y in enumerate(ys):
            lid = rid if k == 1 else f"{rid}#{j}"
            lab = encode_label(LabelRecord(lid, y, lts))
            events.append((lts, len(events), ("labels", rid.encode(), lab)))
    events.sort()
    return [e[2] for e in events]


async def _produce(bootstrap: str, prefix: str, items: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futs = [
            await producer.send(topic_name(prefix, kind), value, key=key)
            for kind, key, value in items
        ]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str) -> dict[int, list[Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [tp for tp in consumer.assignment()] or []
        while not tps:
            await asyncio.sleep(0.1)
            tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + 60
        while any(len(out[tp.partition]) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                out[tp.partition].extend(msgs)
        return out
    finally:
        await consumer.stop()


def _positions(path: Path) -> dict[int, tuple[int, int]]:
    if not path.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT partition, pairs, labels FROM positions").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return {}
    return {int(p): (int(a), int(b)) for p, a, b in rows}


async def _wait_done(
    paths: list[Path], ends: dict[int, tuple[int, int]], timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        best: dict[int, tuple[int, int]] = {}
        for path in paths:
            for p, at in _positions(path).items():
                best[p] = max(best.get(p, (0, 0)), at)
        if all(best.get(p) == end for p, end in ends.items()):
            return
        assert time.monotonic() < deadline, f"comparator stuck at {best}, want {ends}"
        await asyncio.sleep(0.2)


def _spawn(cfg: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(cfg.with_suffix(".log"), "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "shadowroute", "compare", "-c", str(cfg), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=60)


async def _offline(
    tmp: Path, config: Config, bootstrap: str, prefix: str
) -> tuple[Engine, dict[int, tuple[int, int]]]:
    """Recompute from the topics: each partition's pairs and labels in one batch."""
    pairs = await _read_all(bootstrap, topic_name(prefix, "pairs"))
    labels = await _read_all(bootstrap, topic_name(prefix, "labels"))
    engine = Engine(config, Store(tmp / "offline.sqlite"))
    for p in range(PARTS):
        engine.process(
            p,
            [(m.key, m.value) for m in pairs[p]],
            [m.value for m in labels[p]],
        )
    ends = {p: (len(pairs[p]), len(labels[p])) for p in range(PARTS)}
    return engine, ends


def _assert_same(got: Engine, want: Engine) -> None:
    for p in range(PARTS):
        g, w = (
            cand_state(got, ROUTE, CAND, p),
            cand_state(want, ROUTE, CAND, p),
        )
        assert isinstance(g, CandidateState) and isinstance(w, CandidateState)
        _assert_equal_states(g, w)
        assert got.counters(p) == want.counters(p)
        gp, wp = got.production(ROUTE, p), want.production(ROUTE, p)
        assert gp.counts == wp.counts  # type: ignore[union-attr]


async def _follow(config: Config, tmp: Path, want_messages: int = 1) -> StateView:
    view = StateView()
    history = Store(tmp / "follower.sqlite")
    follower = ScoresFollower(config, view, Verdicts(config, view, history))
    await follower.start()
    task = asyncio.create_task(follower.run())
    deadline = time.monotonic() + 30
    last = -1
    while follower.messages != last or follower.messages < want_messages:
        assert time.monotonic() < deadline
        last = follower.messages
        await asyncio.sleep(1.0)
    follower.stopping.set()
    await task
    await follower.stop()
    history.close()
    return view


@pytest.fixture
async def prefix(kafka_bootstrap: str) -> str:
    p = "c" + uuid.uuid4().hex[:10]
    cfg = parse_config(_raw(kafka_bootstrap, p, Path("unused.sqlite")), environ={})
    await create_topics(cfg.transport)
    return p


async def test_sigkill_three_times_then_equal_to_offline(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg_path, config = _cfg(tmp_path, kafka_bootstrap, prefix, "a")
    items = _stream(12_000, seed=1)
    chunks = np.array_split(np.arange(len(items)), 6)
    rng = np.random.default_rng(7)
    args = ("--instance-id", "a", "--session-timeout-ms", "6000")
    proc = _spawn(cfg_path, *args)
    kills = 0
    try:
        for i, idx in enumerate(chunks):
            await _produce(kafka_bootstrap, prefix, [items[int(j)] for j in idx])
            if i % 2 == 0:
                await asyncio.sleep(float(rng.uniform(0.5, 3.0)))
                _stop(proc, signal.SIGKILL)
                kills += 1
                proc = _spawn(cfg_path, *args)
        offline, ends = await _offline(tmp_path, config, kafka_bootstrap, prefix)
        await _wait_done([tmp_path / "a.sqlite"], ends)
    finally:
        _stop(proc)
    assert kills >= 3
    got = Engine(config, Store(tmp_path / "a.sqlite"))
    _assert_same(got, offline)
    part = offline.counters(0)
    assert isinstance(part, dict) and part.get("labels", 0) > 0
    total = {k: sum(offline.counters(p).get(k, 0) for p in range(PARTS)) for k in (
        "orphan_labels", "deadletter:unparseable", "deadletter:label:bad_type:id"
    )}  # fmt: skip
    broken = sum(1 for _, _, v in items if v == b"{broken")
    assert total["deadletter:unparseable"] == broken == 24
    assert total["deadletter:label:bad_type:id"] == 24
    assert total["orphan_labels"] >= 1
    cand = [cand_state(offline, ROUTE, CAND, p) for p in range(PARTS)]
    assert sum(c.count("orphan_pairs") for c in cand) > 0  # type: ignore[union-attr]
    assert sum(c.labelled for c in cand) > 0  # type: ignore[union-attr]

    view = await _follow(config, tmp_path, want_messages=PARTS * 3)
    merged = view.candidate(ROUTE, CAND)
    assert merged is not None
    want = cand[0]
    for c in cand[1:]:
        want = want.merge(c)  # type: ignore[union-attr,arg-type]
    _assert_equal_states(merged, want)  # type: ignore[arg-type]
    # the labels waiting for their pair, per route, as the comparator's API reads them from
    # the scores topic: the partitions' counters summed (these labels carry no route)
    history = Store(tmp_path / "reader.sqlite")
    reader = Reader(config, view, Verdicts(config, view, history), history)
    waiting = reader.production(ROUTE)["labels"]
    parts = [got.counters(p) for p in range(PARTS)]
    assert waiting["waiting_without_route"] == sum(pt.get("waiting:", 0) for pt in parts)
    assert waiting["waiting"] == sum(pt.get(f"waiting:{ROUTE}", 0) for pt in parts) == 0
    assert reader.decision(ROUTE, CAND)["labels_waiting"] == 0
    history.close()
    dead = await _read_all(kafka_bootstrap, topic_name(prefix, "deadletter"))
    reasons = {dict(m.headers)["reason"] for msgs in dead.values() for m in msgs}
    assert {b"unparseable", b"label:bad_type:id"} <= reasons


async def test_two_comparators_one_leaves(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    a_path, config = _cfg(tmp_path, kafka_bootstrap, prefix, "a")
    b_path, _ = _cfg(tmp_path, kafka_bootstrap, prefix, "b")
    items = _stream(6000, seed=2)
    half = len(items) // 2
    a, b = _spawn(a_path), _spawn(b_path)
    try:
        await _produce(kafka_bootstrap, prefix, items[:half])
        deadline = time.monotonic() + 60
        while not (_positions(tmp_path / "a.sqlite") and _positions(tmp_path / "b.sqlite")):
            assert time.monotonic() < deadline, "both members should own partitions"
            await asyncio.sleep(0.2)
        _stop(b)  # leaves the group: a takes over b's partitions from its own store
        await _produce(kafka_bootstrap, prefix, items[half:])
        offline, ends = await _offline(tmp_path, config, kafka_bootstrap, prefix)
        await _wait_done([tmp_path / "a.sqlite"], ends)
    finally:
        _stop(b)
        _stop(a)
    _assert_same(Engine(config, Store(tmp_path / "a.sqlite")), offline)
    view = await _follow(config, tmp_path, want_messages=PARTS * 3)
    single = StateView()
    single.update(offline.snapshot())
    merged, want = view.candidate(ROUTE, CAND), single.candidate(ROUTE, CAND)
    assert merged is not None and want is not None
    _assert_equal_states(merged, want)
    hist = Store(tmp_path / "v.sqlite")
    one = Verdicts(config, single, hist).refresh()
    two = Verdicts(config, view, Store(tmp_path / "w.sqlite")).refresh()
    assert [d["verdict"] for d in one] == [d["verdict"] for d in two]
    assert orjson.dumps(one[0]["metrics"]) == orjson.dumps(two[0]["metrics"]) or all(
        one[0]["metrics"][k]["n"] == two[0]["metrics"][k]["n"] for k in one[0]["metrics"]
    )


async def test_consumer_lag_per_assigned_partition(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from shadowroute.comparator.kafka_source import ConsumerLagCollector, KafkaComparator

    _, config = _cfg(tmp_path, kafka_bootstrap, prefix, "lag")
    first = [("pairs", f"a{i}".encode(), pair(f"a{i}", T0 + i, [1], [0])) for i in range(60)]
    await _produce(kafka_bootstrap, prefix, first)
    comp = KafkaComparator(config, group_id="lag-" + prefix)
    await comp.start()
    try:
        assert comp.lag() == {}  # nothing fetched yet
        task = asyncio.create_task(comp.run())
        deadline = time.monotonic() + 60
        while sum(p.pairs for p in comp.engine.positions.values()) < 60:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        comp.stopping.set()
        await task
        pairs_topic = topic_name(prefix, "pairs")
        assert {k: v for k, v in comp.lag().items() if k[0] == pairs_topic and v} == {}
        # Seven more records are fetched but not processed: the lag shows them.
        more = [("pairs", f"b{i}".encode(), pair(f"b{i}", T0 + i, [1], [0])) for i in range(7)]
        await _produce(kafka_bootstrap, prefix, more)
        consumer = comp._consumer
        assert consumer is not None
        deadline = time.monotonic() + 30
        while sum(v for (t, _), v in comp.lag().items() if t == pairs_topic) < 7:
            assert time.monotonic() < deadline
            await consumer.getmany(timeout_ms=200)
        lag = comp.lag()
        assert sum(v for (t, _), v in lag.items() if t == pairs_topic) == 7
        assert {p for t, p in lag if t == pairs_topic} == set(range(PARTS))
        registry = CollectorRegistry()
        registry.register(ConsumerLagCollector(comp))
        text = generate_latest(registry).decode()
        samples = [
            line
            for line in text.splitlines()
            if line.startswith("shadowroute_kafka_consumer_lag{") and pairs_topic in line
        ]
        assert len(samples) == PARTS
        assert sum(float(line.rsplit(" ", 1)[1]) for line in samples) == 7
        assert all('partition="' in line and 'topic="' in line for line in samples)
    finally:
        await comp.stop()


async def test_a_comparator_that_lost_its_disk_rebuilds_from_the_topics(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """Delete the SQLite state (and its WAL) after a run: a new comparator starts from the
    beginning of the topics and ends with exactly the offline recomputation again."""
    cfg_path, config = _cfg(tmp_path, kafka_bootstrap, prefix, "a")
    items = _stream(4_000, seed=3)
    await _produce(kafka_bootstrap, prefix, items)
    offline, ends = await _offline(tmp_path, config, kafka_bootstrap, prefix)
    args = ("--instance-id", "a", "--session-timeout-ms", "6000")
    proc = _spawn(cfg_path, *args)
    try:
        await _wait_done([tmp_path / "a.sqlite"], ends)
    finally:
        _stop(proc)
    _delete_state(tmp_path, "a.sqlite")
    proc = _spawn(cfg_path, *args)
    try:
        await _wait_done([tmp_path / "a.sqlite"], ends)
    finally:
        _stop(proc)
    _assert_same(Engine(config, Store(tmp_path / "a.sqlite")), offline)


def _delete_state(directory: Path, name: str) -> None:
    for f in directory.glob(name + "*"):
        f.unlink()


async def test_a_pair_record_sent_again_is_counted_once(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """Exactly-once counting over Kafka: pair records written to their partition again (as a
    producer retry after a full outage does) — some before their label, some after it joined,
    across a comparator restart — move no count: the state equals the recomputation from the
    records as first written, and every re-sent record is counted as ``duplicate_pairs``."""
    cfg_path, config = _cfg(tmp_path, kafka_bootstrap, prefix, "a")
    items = _stream(1500, seed=3)
    pairs = [it for it in items if it[0] == "pairs" and it[2] != b"{broken"]
    half = len(items) // 2
    proc = _spawn(cfg_path)
    try:
        await _produce(kafka_bootstrap, prefix, items[:half])
        # re-sent while their labels may still be on the way, and again after the restart
        early = [it for it in pairs[:40] if it in items[:half]][:20]
        await _produce(kafka_bootstrap, prefix, early)
        await asyncio.sleep(2.0)
        _stop(proc)
        proc = _spawn(cfg_path)
        await _produce(kafka_bootstrap, prefix, items[half:])
        await _produce(kafka_bootstrap, prefix, pairs[100:130] + early[:5])  # long after
        _, ends = await _offline(tmp_path, config, kafka_bootstrap, prefix)
        await _wait_done([tmp_path / "a.sqlite"], ends)
    finally:
        _stop(proc)
    resent = len(early) + 30 + 5
    # what the comparator should hold: the records as first written, in one batch each
    want = Engine(config, Store(tmp_path / "want.sqlite"))
    by_part: dict[int, tuple[list[tuple[bytes, bytes]], list[bytes]]] = {}
    from shadowroute.stream.murmur2 import partition_for

    for kind, key, value in items:
        p = partition_for(key, PARTS)
        entry = by_part.setdefault(p, ([], []))
        if kind == "pairs":
            entry[0].append((key, value))
        else:
            entry[1].append(value)
    for p, (ps, ls) in by_part.items():
        want.process(p, ps, ls)
    got = Engine(config, Store(tmp_path / "a.sqlite"))
    for p in range(PARTS):
        g = cand_state(got, ROUTE, CAND, p)
        w = cand_state(want, ROUTE, CAND, p)
        assert isinstance(g, CandidateState) and isinstance(w, CandidateState)
        assert (g.pairs, g.labelled) == (w.pairs, w.labelled), p
        _assert_equal_states(g, w)
    dup = sum(got.counters(p).get("duplicate_pairs", 0) for p in range(PARTS))
    assert dup == resent


def test_compare_takes_every_comparator_option() -> None:
    """``shadowroute compare`` is the one way to run the Kafka comparator: its options are
    the comparator's (there is no second, module-level command line)."""
    from shadowroute.cli import build_parser

    args = build_parser().parse_args(
        ["compare", "-c", "x.yaml", "--instance-id", "pod-0", "--session-timeout-ms", "6000"]
    )
    assert (args.instance_id, args.session_timeout_ms) == ("pod-0", 6000)
    defaults = build_parser().parse_args(["compare", "-c", "x.yaml"])
    assert (defaults.instance_id, defaults.session_timeout_ms) == (None, 10_000)
    import shadowroute.comparator.kafka_source as ks

    assert not hasattr(ks, "main") and not hasattr(ks, "run_compare")


async def test_sighup_reload_scores_an_added_candidate(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """``compare`` takes a reloaded config on SIGHUP: pairs of a candidate it did not know
    went to the dead letters (counted); after the reload the candidate's pairs are scored and
    served. A reload that changes a route's task is refused and the running config stays."""
    raw = _raw(kafka_bootstrap, prefix, tmp_path / "a.sqlite")
    admin = free_port()
    raw["admin"]["port"] = admin
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(raw))
    log = path.with_suffix(".log")

    def pairs(cand: str, ids: range) -> list[tuple[str, bytes, bytes]]:
        out = []
        for i in ids:
            rid = f"{cand}-{i}"
            out.append(("pairs", rid.encode(), pair(rid, T0 + i, [1], [i % 2], cand)))
        return out

    async def scored(api: httpx.AsyncClient, cand: str, want: int) -> int:
        got = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = await api.get(f"/v1/routes/{ROUTE}/candidates/{cand}/decision")
            got = r.json()["pairs"] if r.status_code == 200 else -1
            if got >= want:
                break
            await asyncio.sleep(0.3)
        return int(got)

    async def hup(marker: str) -> str:
        seen = log.read_text().count(marker)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while log.read_text().count(marker) == seen:
            assert time.monotonic() < deadline, f"no {marker!r} in the log"
            await asyncio.sleep(0.1)
        return [line for line in log.read_text().splitlines() if marker in line][-1]

    proc = _spawn(path)
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz", timeout=60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}") as api:
            await _produce(
                kafka_bootstrap, prefix, pairs(CAND, range(10)) + pairs("fraud-v9", range(3))
            )
            assert await scored(api, CAND, 10) == 10
            raw["routes"][0]["candidates"].append(
                {"name": "fraud-v9", "url": "http://127.0.0.1:9003"}
            )
            path.write_text(yaml.safe_dump(raw))
            assert "added [], changed ['fraud'], removed []" in await hup("config reloaded:")
            await _produce(kafka_bootstrap, prefix, pairs("fraud-v9", range(3, 10)))
            assert await scored(api, "fraud-v9", 7) == 7
            assert await scored(api, CAND, 10) == 10  # its evidence kept
            listed = (await api.get("/v1/routes")).json()
            assert_documented(listed, "ConfiguredRoutes")
            routes = listed["routes"]
            assert [c["name"] for c in routes[0]["candidates"]] == [CAND, "fraud-v9"]
            assert "effective_fraction" not in routes[0]["candidates"][0]  # no data plane here

            raw["routes"][0]["task"] = "regression"
            path.write_text(yaml.safe_dump(raw))
            line = await hup("config reload refused")
            assert "routes[0].task changed ('classification' -> 'regression')" in line
            assert (await api.get(f"/v1/routes/{ROUTE}/candidates/fraud-v9/decision")).is_success
            metrics = (await api.get("/metrics")).text
            assert 'shadowroute_config_reloads_total{outcome="applied"} 1.0' in metrics
            assert 'shadowroute_config_reloads_total{outcome="refused"} 1.0' in metrics
        dead = await _read_all(kafka_bootstrap, topic_name(prefix, "deadletter"))
        reasons = [dict(m.headers)["reason"] for msgs in dead.values() for m in msgs]
        assert reasons == [b"unknown_candidate"] * 3  # only those sent before the reload
    finally:
        _stop(proc)
