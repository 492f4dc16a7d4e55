"""Embedding drift through a configured ``/v1/embeddings`` endpoint
(``routes[].drift.embedding.endpoint``): the engine's part without an event loop (selection
once per request, vectors added at the request's window), the embedding record's strict
decoder, the config and reload rules, the assessor against a real HTTP stand-in, and the
whole path through the proxy (embedded mode) and through Kafka."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from judge_upstreams import EmbeddingServer
from proxyutil import settle
from shadowroute.comparator.assessor import Assessor, calls_recorded
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.kafka_source import KafkaComparator
from shadowroute.comparator.production import ProductionState
from shadowroute.comparator.store import Store
from shadowroute.core.assessments import (
    EmbeddingRecord,
    EmbedJob,
    decode_any,
    decode_embedding,
    encode_embedding,
)
from shadowroute.core.config import Config, ConfigError, parse_config
from shadowroute.core.embedding import HashingEmbedder
from shadowroute.core.records import RecordError, Side, encode_pair
from shadowroute.core.reload import refusals
from shadowroute.runtime import Stack, embedded_stack
from shadowroute.stream.kafka import create_topics, topic_name
from test_comparator_gen import T0
from test_embedding_drift import texts
from test_embedding_drift_engine import _chat_reply
from test_records import load_schema
from upstreams import ModelServer

HOUR = 3_600_000
ROUTE = "chat"
PROMPT = "embedding:$.messages[-1].content"
VEC = "embedding:$.vec"
ANSWER = "embedding:output"
EP = "http://127.0.0.1:9300"
EMB: dict[str, Any] = {
    "fields": ["$.messages[-1].content"],
    "outputs": True,
    "reference_size": 100,
    "min_count": 50,
    "dims": 64,
}


def _raw(state: Path, embedding: dict[str, Any] | None, endpoint: str | None = EP) -> Any:
    drift: dict[str, Any] = {"fields": ["$.temperature"]}
    if embedding is not None:
        emb = dict(embedding)
        if endpoint is not None:
            emb["endpoint"] = {"url": endpoint, "model": "hash-64", "rate_per_s": 1000,
                               **emb.pop("ep", {})}  # fmt: skip
        drift["embedding"] = emb
    return {
        "comparator": {"state_path": str(state), "windows": ["hour"]},
        "routes": [
            {
                "name": ROUTE,
                "protocol": "openai",
                "task": "text",
                "production": {"name": "llm-a", "url": "http://127.0.0.1:9001"},
                "candidates": [{"name": "llm-b", "url": "http://127.0.0.1:9002"}],
                "drift": drift,
            }
        ],
    }


def _config(state: Path, embedding: dict[str, Any] | None = EMB, **kw: Any) -> Config:
    return parse_config(_raw(state, embedding, **kw), environ={})


def _pair(i: int, ts: int, prompt: str, answer: str, **body: Any) -> tuple[bytes, bytes]:
    rid = f"r{i}"
    p = Side("llm-a", "1", 200, 40.0, [answer], None)
    c = Side("llm-b", "1", 200, 30.0, [answer.upper()], None)
    doc = {"model": "m", "temperature": 0.5, "messages": [{"role": "user", "content": prompt}]}
    rec = encode_pair(
        request_id=rid, route=ROUTE, ts_ms=ts, production=p, candidate=c, input=doc | body
    )
    return rid.encode(), rec


def _traffic(rng: np.random.Generator, start: int, n: int, ts: int, topic: int) -> list[Any]:
    prompts, answers = texts(rng, n, topic), texts(rng, n, topic)
    return [_pair(start + i, ts + i, prompts[i], answers[i]) for i in range(n)]


def _answer(jobs: Sequence[EmbedJob], dims: int = 64) -> list[bytes]:
    """What a deterministic endpoint (the built-in lexical embedder as its model) gives."""
    emb = HashingEmbedder(dims)
    out = []
    for job in jobs:
        flat = [t for _, ts in job.fields for t in ts]
        vectors = emb.embed(flat)[0].tolist()
        out.append(encode_embedding(EmbeddingRecord.of(job, vectors, calls=1)))
    return out


def _prod(engine: Engine, partition: int = 0) -> ProductionState:
    state = engine.production(ROUTE, partition)
    assert isinstance(state, ProductionState)
    return state


# --- the engine's part, without an event loop ------------------------------------------------


def test_texts_are_handed_on_once_per_request_and_come_back_at_their_window(
    tmp_path: Path,
) -> None:
    """The engine embeds nothing itself: each request's texts (prompt and answer, one job) are
    taken once after the commit; the vectors that come back later land in the window of the
    request's time, not of their arrival, and a topic shift is ``major``."""
    engine = Engine(_config(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite"))
    rng = np.random.default_rng(3)
    batch = _traffic(rng, 0, 160, T0, topic=0)
    engine.process(0, batch, [])
    # the same records again (a re-delivery): no second job
    engine.process(0, batch[:10], [])
    jobs = engine.take_embed_jobs()
    assert engine.take_embed_jobs() == []
    assert len(jobs) == 160 and len({j.id for j in jobs}) == 160
    first = jobs[0]
    assert first.id == "r0" and first.ts == T0 and first.route == ROUTE
    assert [name for name, _ in first.fields] == [PROMPT, ANSWER]
    state = _prod(engine)
    assert state.embedding[PROMPT].reference.n == 0  # nothing embedded in the engine
    assert state.drift["$.temperature"].pending  # PSI fields as always
    shifted = _traffic(rng, 1000, 60, T0 + HOUR, topic=1)
    engine.process(0, shifted, [])
    later = engine.take_embed_jobs()
    # vectors come late and out of order (hour 1's before the last of hour 0's): each goes
    # to the window of its request's time
    engine.process(0, [], [], assessments=_answer(jobs[:130]))
    engine.process(0, [], [], assessments=_answer(later) + _answer(jobs[130:]))
    state = _prod(engine)
    field = state.embedding[PROMPT]
    assert field.model == f"endpoint:{EP}#hash-64/64/128/1/0"
    assert field.reference.n == 100
    assert {w: s.n for w, s in field.windows.items()} == {T0: 60, T0 + HOUR: 60}
    summary = field.summary(engine.routes[ROUTE].drift.embedding)  # type: ignore[arg-type]
    assert summary["state"] == "major" and summary["window"] == T0 + HOUR, summary
    assert summary["counts"] == {"items": 220}
    assert state.counts["embedding_drift_calls"] == 220
    assert calls_recorded(engine.snapshot()) == {(ROUTE, "embedding_drift"): 220}
    # the same record again (a Kafka re-delivery) is counted, not added
    engine.process(0, [], [], assessments=_answer(later[:5]))
    assert _prod(engine).embedding[PROMPT].windows[T0 + HOUR].n == 60
    assert engine.counters(0)["duplicate_assessments"] == 5


def test_vectors_in_the_request_are_used_directly_and_bad_answers_are_counted(
    tmp_path: Path,
) -> None:
    """A vector field needs no call; a failed call's texts are ``not_embedded``, vectors of
    another length ``bad_vector``, fields the route does not watch are left out (counted),
    and the other fields' drift is untouched."""
    emb = EMB | {"fields": ["$.messages[-1].content", "$.vec"], "outputs": False, "dims": 4}
    engine = Engine(_config(tmp_path / "s.sqlite", emb), Store(tmp_path / "s.sqlite"))
    pairs = [_pair(i, T0 + i, f"hello number {i}", "ok", vec=[1, 0, 0, i]) for i in range(6)]
    pairs.append(_pair(6, T0 + 6, "   ", "ok", vec=[1, 2]))  # blank text, vector too short
    engine.process(0, pairs, [])
    jobs = engine.take_embed_jobs()
    assert [j.fields for j in jobs[:1]] == [((PROMPT, ("hello number 0",)),)]
    assert len(jobs) == 6
    state = _prod(engine)
    assert state.embedding[VEC].reference.n == 6
    assert state.embedding[VEC].counts == {"bad_vector": 1, "items": 6}
    assert state.embedding[PROMPT].counts == {"empty": 1}
    failed = EmbeddingRecord.of(jobs[0], None, "http_5xx", calls=1)
    skipped = EmbeddingRecord.of(jobs[1], None, "rate_limited")
    wrong = EmbeddingRecord.of(jobs[2], [[1.0, 0.0, 0.0]])
    good = EmbeddingRecord.of(jobs[3], [[0.0, 1.0, 0.0, 0.0]], calls=1)
    stray = EmbeddingRecord(jobs[4].id, ROUTE, jobs[4].ts, (("embedding:$.gone", 1, ((1.0,),)),))
    values = [encode_embedding(r) for r in (failed, skipped, wrong, good, stray)]
    dead = engine.process(0, [], [], assessments=values)
    assert dead == []
    counts = _prod(engine).embedding[PROMPT].counts
    assert counts == {"empty": 1, "not_embedded": 2, "bad_vector": 1, "items": 1}
    assert engine.counters(0)["embedding_unknown_fields"] == 1
    assert _prod(engine).embedding[VEC].counts == {"bad_vector": 1, "items": 6}
    assert _prod(engine).counts["embedding_drift_calls"] == 2


def test_sample_fraction_is_by_request_id(tmp_path: Path) -> None:
    emb = EMB | {"outputs": False, "ep": {"sample_fraction": 0.5}}
    engine = Engine(_config(tmp_path / "s.sqlite", emb), Store(tmp_path / "s.sqlite"))
    engine.process(0, [_pair(i, T0 + i, f"question {i}", "a") for i in range(200)], [])
    jobs = engine.take_embed_jobs()
    unsampled = _prod(engine).embedding[PROMPT].counts["unsampled"]
    assert unsampled + len(jobs) == 200 and 70 < len(jobs) < 130


def test_bad_embedding_records_are_dead_letters_and_nothing_good_is_dropped(
    tmp_path: Path,
) -> None:
    engine = Engine(_config(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite"))
    engine.process(0, [_pair(i, T0 + i, f"question {i}", "answer") for i in range(3)], [])
    jobs = engine.take_embed_jobs()
    good = _answer(jobs)
    base = orjson.loads(good[0])
    vec = base["fields"][PROMPT]["vectors"][0]

    def bad(**kw: Any) -> bytes:
        return orjson.dumps(base | kw)

    cases = {
        b"not json": "assessment:unparseable",
        bad(v=2): "assessment:schema_version",
        bad(kind="vectors"): "assessment:bad_value:kind",
        bad(ts=-1): "assessment:bad_value:ts",
        bad(fields=[]): "assessment:bad_type:fields",
        bad(error="nope"): "assessment:bad_value:error",
        bad(fields={PROMPT: {"texts": 1, "vectors": [[1.0, "x"]]}}): "assessment:bad_value:"
        "fields.vectors",
        bad(fields={PROMPT: {"texts": 1, "vectors": [vec, vec]}}): "assessment:bad_value:"
        "fields.vectors",
        bad(fields={PROMPT: {"texts": 2000, "vectors": []}}): "assessment:bad_value:fields.texts",
        bad(fields={PROMPT: {"texts": 1, "vectors": [[0.1] * 5000]}}): "assessment:bad_value:"
        "fields.vectors",
        bad(fields={f"f{i}": {"texts": 0} for i in range(65)}): "assessment:bad_value:fields",
        bad(fields={PROMPT: {"texts": 17, "vectors": [[0.1] * 4096] * 17}}): "assessment:"
        "bad_value:fields.vectors",
        bad(error="timeout", calls=1): "assessment:bad_value:fields.vectors",
        bad(route="other"): "assessment:unknown_route",
    }
    values = [good[0], *cases, *good[1:]]
    dead = engine.process(0, [], [], assessments=values)
    assert [(reason, value) for _, value, reason in dead] == list(
        zip(cases.values(), cases, strict=True)
    )
    assert _prod(engine).embedding[PROMPT].counts == {"items": 3}
    with pytest.raises(RecordError, match="bad_value:kind"):
        decode_embedding(orjson.dumps(base | {"kind": "assessment"}))
    assert decode_any(good[1]) == decode_embedding(good[1])


# --- configuration and reload ---------------------------------------------------------------


def test_endpoint_configuration(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "s.sqlite", EMB)
    emb = cfg.routes[0].drift.embedding
    assert emb is not None and emb.endpoint is not None
    assert emb.endpoint.sample_fraction == 1.0 and emb.endpoint.timeout_s == 10.0
    raw = _raw(tmp_path / "s.sqlite", EMB | {"ep": {"secret_headers": {"Authorization":
               "env:EMB_KEY"}}})  # fmt: skip
    resolved = parse_config(raw, environ={"EMB_KEY": "Bearer k"})
    ep = resolved.routes[0].drift.embedding.endpoint  # type: ignore[union-attr]
    assert ep is not None and ep.secret_header_values() == {"Authorization": "Bearer k"}
    with pytest.raises(ConfigError, match="EMB_KEY"):
        parse_config(raw, environ={})
    with pytest.raises(ConfigError, match="give fields"):
        _config(tmp_path / "s.sqlite", {"endpoint": {"url": EP, "model": "m"}}, endpoint=None)
    with pytest.raises(ConfigError, match="url"):
        _config(tmp_path / "s.sqlite", EMB | {"ep": {"url": "ftp://x"}})


def test_a_reload_that_adds_changes_or_removes_an_endpoint_is_refused(tmp_path: Path) -> None:
    builtin = _config(tmp_path / "s.sqlite", EMB, endpoint=None)
    with_ep = _config(tmp_path / "s.sqlite", EMB)
    other = _config(tmp_path / "s.sqlite", EMB | {"ep": {"model": "bge-small"}})
    line = "routes[0].drift.embedding.endpoint {} on route 'chat': the comparator's assessor "
    assert refusals(builtin, with_ep) == [
        line.format("added") + "reads it at start (and the field's sums restart); restart to "
        "apply it"
    ]
    assert refusals(with_ep, other)[0].startswith(line.format("changed"))
    assert refusals(with_ep, builtin)[0].startswith(line.format("removed"))
    assert refusals(with_ep, _config(tmp_path / "s.sqlite", EMB | {"min_count": 60})) == []


# --- the assessor against a real /v1/embeddings stand-in -------------------------------------


class Collected:
    def __init__(self) -> None:
        self.records: list[EmbeddingRecord] = []

    async def __call__(self, batch: Sequence[bytes]) -> None:
        self.records.extend(decode_embedding(v) for v in batch)


def _jobs(n: int, per: int = 2) -> list[EmbedJob]:
    return [
        EmbedJob(f"q{i}", ROUTE, T0 + i, ((PROMPT, tuple(f"refund order {i} {k}"
                 for k in range(per))), (ANSWER, (f"your refund {i}",))))
        for i in range(n)
    ]  # fmt: skip


async def _assess(
    server: EmbeddingServer, jobs: list[EmbedJob], tmp_path: Path, serial: bool = False,
    **ep: Any,
) -> tuple[Assessor, Collected]:  # fmt: skip
    """``serial``: each job once the one before is done (else all at once, to the workers)."""
    cfg = _config(tmp_path / "s.sqlite", EMB | {"ep": ep}, endpoint=server.url)
    out = Collected()
    assessor = Assessor(cfg, out)
    await assessor.start()
    try:
        for batch in [[j] for j in jobs] if serial else [jobs]:
            assessor.offer_embedding(batch)
            await assessor.drain()
    finally:
        await assessor.close()
    return assessor, out


async def test_one_call_per_request_with_all_its_texts(tmp_path: Path) -> None:
    server = await EmbeddingServer("hashing", dims=64).start()
    try:
        assessor, out = await _assess(server, _jobs(3), tmp_path)
    finally:
        await server.stop()
    inputs = {tuple(s["input"]) for s in server.seen}
    assert ("refund order 0 0", "refund order 0 1", "your refund 0") in inputs
    assert all(s["model"] == "hash-64" for s in server.seen) and len(server.seen) == 3
    rec = next(r for r in out.records if r.id == "q0")
    assert rec.error is None and rec.calls == 1 and rec.ts == T0
    (p_name, p_n, p_vecs), (a_name, a_n, a_vecs) = rec.fields
    assert (p_name, p_n, len(p_vecs), a_name, a_n, len(a_vecs)) == (PROMPT, 2, 2, ANSWER, 1, 1)
    want = HashingEmbedder(64).embed(["refund order 0 0"])[0][0]
    assert np.allclose(p_vecs[0], want, atol=1e-6)
    st = assessor.stats()[ROUTE]["embedding_drift"]
    assert st["calls"] == 3 and st["sampled"] == 3 and st["failures"] == {}
    assert st["budget_spent"] == 3 and st["breaker"] == "closed"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("failing", "http_5xx"),
        ("malformed", "bad_response"),
        ("not_json", "bad_response"),
        ("too_many_dims", "bad_response"),
        ("wrong_dims", "bad_response"),
        ("slow", "timeout"),
    ],
)
async def test_failed_calls_are_counted_by_reason_and_recorded(
    mode: str, reason: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await EmbeddingServer(mode, dims=64, delay=1.0).start()
    try:
        with caplog.at_level(logging.ERROR, "shadowroute.assessor"):
            assessor, out = await _assess(server, _jobs(3), tmp_path, timeout_s=0.2)
    finally:
        await server.stop()
    st = assessor.stats()[ROUTE]["embedding_drift"]
    assert st["failures"] == {reason: 3} and st["calls"] == 3
    assert sorted(r.error or "" for r in out.records) == [reason] * 3
    assert all(r.fields[0][1:] == (2, ()) for r in out.records)
    told = [r for r in caplog.records if "dimensional vectors" in r.getMessage()]
    assert len(told) == (1 if mode == "wrong_dims" else 0)
    if told:
        assert "65-dimensional" in told[0].getMessage() and "dims is 64" in told[0].getMessage()


async def test_rate_limit_budget_breaker_and_size_skip_and_count(tmp_path: Path) -> None:
    server = await EmbeddingServer("hashing", dims=64).start()
    try:
        limited, out = await _assess(server, _jobs(6), tmp_path, rate_per_s=1, max_calls=1)
        assert limited.stats()[ROUTE]["embedding_drift"]["skipped"] == {
            "budget_exhausted": 1, "rate_limited": 4
        }  # fmt: skip
        assert sorted(r.error or "ok" for r in out.records) == [
            "budget_exhausted", "ok", *["rate_limited"] * 4
        ]  # fmt: skip
        big = [EmbedJob("big", ROUTE, T0, ((PROMPT, ("x",) * 600), (ANSWER, ("y",) * 600)))]
        sized, out = await _assess(server, big, tmp_path)
        assert sized.stats()[ROUTE]["embedding_drift"]["skipped"] == {"too_large": 1}
        assert out.records[0].error == "too_large"
    finally:
        await server.stop()
    failing = await EmbeddingServer("failing").start()
    try:
        broken, _ = await _assess(failing, _jobs(6), tmp_path, True, breaker={"failures": 2})
    finally:
        await failing.stop()
    st = broken.stats()[ROUTE]["embedding_drift"]
    assert st["failures"] == {"http_5xx": 2} and st["skipped"] == {"circuit_open": 4}
    assert st["breaker"] == "open" and len(failing.seen) == 2


async def test_the_queue_is_bounded(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "s.sqlite", EMB)
    assessor = Assessor(cfg, Collected(), max_queue=4)  # not started: nothing drains it
    assessor.offer_embedding(_jobs(10))
    assert assessor.queue_full == 6


# --- end to end: the embedded stack, real chat and embeddings servers on loopback ------------


def _stack_config(tmp_path: Path, prod: str, cand: str, embed: str) -> Config:
    emb = EMB | {"endpoint": {"url": embed, "model": "hash-64", "rate_per_s": 1000,
                              "timeout_s": 2, "breaker": {"failures": 1000}}}  # fmt: skip
    return parse_config(
        {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "comparator": {"state_path": str(tmp_path / "state.sqlite")},
            "routes": [
                {
                    "name": ROUTE,
                    "protocol": "openai",
                    "task": "text",
                    "production": {"name": "llm-a", "url": prod, "timeout_s": 2},
                    "candidates": [{"name": "llm-b", "url": cand, "fraction": 1.0}],
                    "drift": {"fields": ["$.temperature"], "embedding": emb},
                }
            ],
        },
        environ={},
    )


async def _send(stack: Stack, prompts: list[str]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.proxy_port}") as client:
        for p in prompts:
            body = {"model": "m", "temperature": 0.5, "messages": [{"role": "user",
                    "content": p}]}  # fmt: skip
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
    await settle(stack.dataplane)


async def _production(admin: httpx.AsyncClient, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        doc: dict[str, Any] = (await admin.get(f"/v1/routes/{ROUTE}/production")).json()
        if done(doc) or time.monotonic() > deadline:
            return doc
        await asyncio.sleep(0.05)


def _embedded_n(field: str, n: int) -> Any:
    return lambda doc: doc.get("drift", {}).get(field, {}).get("n") == n


async def test_a_topic_shift_through_the_proxy_is_flagged_with_the_endpoint_embedder(
    tmp_path: Path,
) -> None:
    """Prompts through the proxy; the comparator's assessor embeds them with the endpoint
    (the stand-in's model: the lexical embedder): 100 fill the reference, 60 more of the same
    topic are ``stable``, 100 on another topic are ``major``; the calls show in the metrics."""
    prod = await ModelServer(_chat_reply).start()
    cand = await ModelServer(_chat_reply).start()
    embed = await EmbeddingServer("hashing", dims=64).start()
    rng = np.random.default_rng(9)
    try:
        async with embedded_stack(_stack_config(tmp_path, prod.url, cand.url, embed.url)) as st:
            api = f"http://127.0.0.1:{st.admin_port}"
            async with httpx.AsyncClient(base_url=api) as admin:
                await _send(st, texts(rng, 160, topic=0))
                same = (await _production(admin, _embedded_n(PROMPT, 60)))["drift"][PROMPT]
                await _send(st, texts(rng, 100, topic=1))
                doc = await _production(
                    admin, lambda d: _embedded_n(PROMPT, 160)(d) and _embedded_n(ANSWER, 160)(d)
                )
                metrics = (await admin.get("/metrics")).text
    finally:
        for server in (prod, cand, embed):
            await server.stop()
    assert same["state"] == "stable" and same["reference_n"] == 100, same
    moved, answers = doc["drift"][PROMPT], doc["drift"][ANSWER]
    assert moved["state"] == "major" and moved["p_value"] < 0.001, moved
    assert answers["state"] == "major", answers
    assert moved["counts"] == {"items": 260}
    assert len(embed.seen) == 260 and all(len(s["input"]) == 2 for s in embed.seen)
    lab = f'field="{PROMPT}",route="{ROUTE}"'
    assert f'shadowroute_drift_state{{{lab},state="major"}} 1.0' in metrics
    assert f'shadowroute_assess_calls_total{{kind="embedding_drift",route="{ROUTE}"}} 260.0' in (
        metrics
    )


async def test_a_failing_endpoint_is_counted_and_blocks_nothing_else(tmp_path: Path) -> None:
    """An endpoint answering 500: every text is ``not_embedded`` and each failure counted;
    the PSI field, the candidate's scores and its verdict go on as without it."""
    prod = await ModelServer(_chat_reply).start()
    cand = await ModelServer(_chat_reply).start()
    embed = await EmbeddingServer("failing").start()
    rng = np.random.default_rng(4)
    try:
        async with embedded_stack(_stack_config(tmp_path, prod.url, cand.url, embed.url)) as st:
            api = f"http://127.0.0.1:{st.admin_port}"
            async with httpx.AsyncClient(base_url=api) as admin:
                await _send(st, texts(rng, 40, topic=0))
                doc = await _production(
                    admin,
                    lambda d: all(
                        d.get("drift", {}).get(f, {}).get("counts", {}).get("not_embedded") == 40
                        for f in (PROMPT, ANSWER)
                    ),
                )
                scores = (await admin.get(f"/v1/routes/{ROUTE}/candidates/llm-b/scores")).json()
                decision = (await admin.get(f"/v1/routes/{ROUTE}/candidates/llm-b/decision")).json()
                metrics = (await admin.get("/metrics")).text
    finally:
        for server in (prod, cand, embed):
            await server.stop()
    assert doc["drift"][PROMPT]["counts"] == {"not_embedded": 40}
    assert doc["drift"][PROMPT]["state"] == "collecting_reference"
    assert doc["drift"]["$.temperature"]["reference_n"] == 40  # PSI: as always
    assert doc["counts"]["requests"] == 40
    assert scores["pairs"] == 40, scores
    assert scores["assessor"]["embedding_drift"]["failures"] == {"http_5xx": 40}
    assert decision["verdict"] in ("hold", "promote", "reject"), decision
    assert (
        f'shadowroute_assess_failures_total{{kind="embedding_drift",reason="http_5xx",'
        f'route="{ROUTE}"}} 40.0'
    ) in metrics
    assert (
        f'shadowroute_embedding_drift_values_total{{field="{PROMPT}",outcome="not_embedded",'
        f'route="{ROUTE}"}} 40.0'
    ) in metrics


# --- Kafka: the vectors come back through the assessments topic ------------------------------


@pytest.mark.kafka
async def test_kafka_vectors_come_back_through_the_assessments_topic(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A comparator group member over the real broker: the texts of the requests it reads
    are embedded, the embedding records go to ``<prefix>.assessments`` keyed by request id
    (each in its request's partition), come back, and are added to that partition's state;
    a restart embeds nothing again."""
    parts, n = 2, 30
    prefix = "e" + uuid.uuid4().hex[:10]
    embed = await EmbeddingServer("hashing", dims=64).start()
    raw = _raw(tmp_path / "k.sqlite", EMB | {"outputs": False}, endpoint=embed.url)
    raw["transport"] = {"kind": "kafka", "bootstrap": kafka_bootstrap, "topic_prefix": prefix,
                        "topics": {"partitions": parts}}  # fmt: skip
    cfg = parse_config(raw, environ={})
    await create_topics(cfg.transport)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(n):
            key, value = _pair(i, T0 + i, f"refund for order {i}", "done")
            await producer.send_and_wait(topic_name(prefix, "pairs"), value, key=key)
    finally:
        await producer.stop()

    def items(comp: KafkaComparator) -> dict[int, int]:
        out = {}
        for p in comp.engine.positions:
            state = comp.engine.production(ROUTE, p)
            if state is not None and PROMPT in state.embedding:
                out[p] = state.embedding[PROMPT].reference.n
        return out

    async def until(cond: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.1)

    comp = KafkaComparator(cfg, group_id=f"g-{prefix}")
    await comp.start()
    task = asyncio.create_task(comp.run())
    try:
        await until(lambda: sum(items(comp).values()) == n)
        assert comp.assessor is not None
        assert comp.assessor.stats()[ROUTE]["embedding_drift"]["calls"] == n
        assert comp.assessments_lost == 0
        got = items(comp)
    finally:
        comp.stopping.set()
        await task
        await comp.stop()

    consumer = AIOKafkaConsumer(
        topic_name(prefix, "assessments"), topic_name(prefix, "pairs"),
        bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    where: dict[str, dict[bytes, int]] = {"pairs": {}, "assessments": {}}
    try:
        while sum(map(len, where.values())) < 2 * n:
            for tp, msgs in (await consumer.getmany(timeout_ms=1000)).items():
                for m in msgs:
                    where[tp.topic.rsplit(".", 1)[1]][m.key] = tp.partition
                    if tp.topic.endswith("assessments"):
                        rec = decode_embedding(m.value or b"")
                        assert rec.id.encode() == m.key and rec.error is None
    finally:
        await consumer.stop()
    assert where["assessments"] == where["pairs"]
    per_partition = {p: list(where["pairs"].values()).count(p) for p in range(parts)}
    assert got == {p: k for p, k in per_partition.items() if k}

    again = KafkaComparator(cfg, group_id=f"g-{prefix}")
    await again.start()
    task = asyncio.create_task(again.run())
    try:
        await until(lambda: len(again.engine.positions) == parts and items(again) == got)
        await asyncio.sleep(1.0)
        assert items(again) == got
        assert again.assessor is not None
        st = again.assessor.stats()[ROUTE]["embedding_drift"]
        assert st["calls"] == 0 and st["budget_spent"] == n
    finally:
        again.stopping.set()
        await task
        await again.stop()
        await embed.stop()
    assert len(embed.seen) == n


def test_the_embedding_schema_accepts_what_is_encoded_and_refuses_the_bad() -> None:
    schema = load_schema("embedding")
    job = _jobs(1)[0]
    records = (
        EmbeddingRecord.of(job, [[0.5, -0.25]] * 3, calls=1),
        EmbeddingRecord.of(job, None, "rate_limited"),
    )
    for rec in records:
        jsonschema.validate(orjson.loads(encode_embedding(rec)), schema)
        assert decode_embedding(encode_embedding(rec)) == rec
    good = orjson.loads(encode_embedding(records[0]))
    for patch in ({"kind": "assessment"}, {"v": 2}, {"ts": -1}, {"error": "nope"},
                  {"fields": {PROMPT: {"texts": 1, "vectors": [["x"]]}}},
                  {"fields": {PROMPT: {"texts": 5000}}}, {"calls": 99}):  # fmt: skip
        bad = good | patch
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(RecordError):
            decode_any(orjson.dumps(bad))
