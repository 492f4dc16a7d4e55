"""The judge in Kafka mode, over the real broker: the comparator group member's assessor judges
the pairs it reads, writes assessment records to ``<prefix>.assessments`` (keyed to their
pair's partition), consumes them back into the evidence with their offsets stored with the
state, and a restart neither judges again nor counts twice."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from judge_upstreams import EmbeddingServer, JudgeServer
from shadowroute.comparator.kafka_source import KafkaComparator, ScoresFollower
from shadowroute.comparator.reader import StateView, Verdicts
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config, parse_config
from shadowroute.core.records import Side, encode_pair
from shadowroute.stream.kafka import create_topics, topic_name

pytestmark = pytest.mark.kafka
PARTS = 2
ROUTE, PROD, CAND = "chat", "big-llm", "fast-llm"
N = 40


def _config(bootstrap: str, prefix: str, state: Path, judge: str, embed: str) -> Config:
    raw: dict[str, Any] = {
        "transport": {
            "kind": "kafka",
            "bootstrap": bootstrap,
            "topic_prefix": prefix,
            "topics": {"partitions": PARTS},
        },
        "comparator": {"state_path": str(state)},
        "routes": [
            {
                "name": ROUTE,
                "protocol": "openai",
                "task": "text",
                "production": {"name": PROD, "url": "http://127.0.0.1:9001"},
                "candidates": [{"name": CAND, "url": "http://127.0.0.1:9002"}],
                "judge": {"url": judge, "model": "j", "rubric": "Prefer the correct answer.",
                          "sample_fraction": 1.0, "rate_per_s": 1000},
                "similarity": {"url": embed, "model": "e", "rate_per_s": 1000},
                "policy": {"primary_metric": "judge", "min_pairs": 20},
            }
        ],
    }  # fmt: skip
    return parse_config(raw, environ={})


def _pair(i: int) -> tuple[bytes, bytes]:
    rid = f"j{i}"
    value = encode_pair(
        request_id=rid, route=ROUTE, ts_ms=1_764_100_000_000 + i,
        production=Side(PROD, None, 200, 40.0, [f"GOOD answer {i}"], None, url="http://p"),
        candidate=Side(CAND, None, 200, 4.0, [f"meh answer {i}"], None, url="http://c"),
        input={"messages": [{"role": "user", "content": f"question {i}"}]},
    )  # fmt: skip
    return rid.encode(), value


async def _judged(comp: KafkaComparator) -> int:
    return sum(
        s.judge.n
        for s in comp.engine.states.values()
        if getattr(s, "judge", None) is not None  # candidate states
    )


async def _until(cond: Any, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_kafka_member_judges_and_consumes_its_assessments(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = "j" + uuid.uuid4().hex[:10]
    judge = await JudgeServer("good").start()
    embed = await EmbeddingServer("good").start()
    cfg = _config(kafka_bootstrap, prefix, tmp_path / "a.sqlite", judge.url, embed.url)
    created = await create_topics(cfg.transport)
    assert topic_name(prefix, "assessments") in created
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for key, value in (_pair(i) for i in range(N)):
            await producer.send_and_wait(topic_name(prefix, "pairs"), value, key=key)
    finally:
        await producer.stop()

    comp = KafkaComparator(cfg, group_id=f"g-{prefix}")
    await comp.start()
    task = asyncio.create_task(comp.run())
    try:
        await _until(lambda: _judged(comp), 5)  # something arrives...

        async def all_judged() -> bool:
            return await _judged(comp) == N

        await _until(all_judged)
        assert comp.assessor is not None
        st = comp.assessor.stats()[ROUTE]
        assert st["judge"]["calls"] == 2 * N and st["similarity"]["calls"] == N
        assert comp.assessments_lost == 0
        lag = comp.lag()
        assert {t for t, _ in lag} >= {topic_name(prefix, "assessments")}
    finally:
        comp.stopping.set()
        await task
        await comp.stop()
    assert len(judge.seen) == 2 * N

    # every assessment is keyed by its request id and lies in its pair's partition
    consumer = AIOKafkaConsumer(
        topic_name(prefix, "assessments"), topic_name(prefix, "pairs"),
        bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    where: dict[str, dict[bytes, int]] = {"pairs": {}, "assessments": {}}
    try:
        while sum(map(len, where.values())) < 2 * N:
            got = await consumer.getmany(timeout_ms=1000)
            for tp, msgs in got.items():
                for m in msgs:
                    where[tp.topic.rsplit(".", 1)[1]][m.key] = tp.partition
                    if tp.topic.endswith("assessments"):
                        rec = orjson.loads(m.value)
                        assert rec["judge"] == "loss" and rec["id"].encode() == m.key
    finally:
        await consumer.stop()
    assert where["assessments"] == where["pairs"] and len(set(where["pairs"].values())) == PARTS

    # a restart on the same state file: nothing judged again, nothing counted twice
    again = KafkaComparator(cfg, group_id=f"g-{prefix}")
    await again.start()
    task = asyncio.create_task(again.run())
    try:

        async def loaded() -> bool:
            return len(again.engine.positions) == PARTS and await _judged(again) == N

        await _until(loaded)
        await asyncio.sleep(1.0)
        assert await _judged(again) == N
        assert again.assessor is not None
        assert again.assessor.stats()[ROUTE]["judge"]["calls"] == 0
        assert again.assessor.stats()[ROUTE]["judge"]["budget_spent"] == 2 * N
    finally:
        again.stopping.set()
        await task
        await again.stop()
    assert len(judge.seen) == 2 * N

    # the scores topic carries the judge's evidence: the follower's verdict rejects on it
    view = StateView()
    history = Store(tmp_path / "reader.sqlite")
    verdicts = Verdicts(cfg, view, history)
    follower = ScoresFollower(cfg, view, verdicts)
    await follower.start()
    ftask = asyncio.create_task(follower.run())
    try:

        async def merged() -> bool:
            state = view.candidate(ROUTE, CAND)
            return state is not None and state.judge is not None and state.judge.n == N

        await _until(merged)
        verdicts.refresh()
        decision = verdicts.current(ROUTE, CAND)
        assert decision["verdict"] == "reject", decision["reasons"]
        assert decision["metrics"]["judge"]["status"] == "fail"
    finally:
        follower.stopping.set()
        await ftask
        await follower.stop()
        history.close()
    await judge.stop()
    await embed.stop()
