"""Embedding drift wired in: an ``openai`` route's prompts and answers through the comparator
engine, shown on the production document (API schema), Prometheus metrics and drift events;
partitions merge, a restart keeps the sums, outsider-controlled values are bounded and
counted; and end to end through the proxy to a real chat model server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from proxyutil import settle
from shadowroute.api.openapi import document
from shadowroute.api.scores import ScoresCollector
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.production import ProductionState
from shadowroute.comparator.reader import Reader, StateView, Verdicts
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config, ConfigError, parse_config
from shadowroute.core.records import Side, encode_pair
from shadowroute.dataplane.planner import RoutePlan
from shadowroute.events.cloudevents import DRIFT_EXCEEDED
from shadowroute.events.detect import Detector, Snapshot
from shadowroute.runtime import Stack, embedded_stack
from test_comparator_gen import T0
from test_embedding_drift import texts
from upstreams import JSON_HEADERS, ModelServer, Reply, Seen

HOUR = 3_600_000
PROMPT = "embedding:$.messages[-1].content"
ANSWER = "embedding:output"


def _config(state: Path, embedding: dict[str, Any] | None) -> Config:
    drift: dict[str, Any] = {} if embedding is None else {"embedding": embedding}
    raw: dict[str, Any] = {
        "comparator": {"state_path": str(state), "windows": ["hour"]},
        "routes": [
            {
                "name": "chat",
                "protocol": "openai",
                "task": "text",
                "production": {"name": "llm-a", "url": "http://127.0.0.1:9001"},
                "candidates": [{"name": "llm-b", "url": "http://127.0.0.1:9002"}],
                "drift": drift,
            }
        ],
    }
    return parse_config(raw, environ={})


EMB = {
    "fields": ["$.messages[-1].content"],
    "outputs": True,
    "reference_size": 300,
    "min_count": 100,
}


def _pair(i: int, ts: int, prompt: Any, answer: str) -> tuple[bytes, bytes]:
    rid = f"r{i}"
    p = Side("llm-a", "1", 200, 40.0, [answer], None)
    c = Side("llm-b", "1", 200, 30.0, [answer.upper()], None)
    body = {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": prompt}]}  # fmt: skip
    rec = encode_pair(request_id=rid, route="chat", ts_ms=ts, production=p, candidate=c, input=body)
    return rid.encode(), rec


def _traffic(rng: np.random.Generator, start: int, n: int, ts: int, topic: int) -> list[Any]:
    prompts = texts(rng, n, topic)
    answers = texts(rng, n, topic)
    return [_pair(start + i, ts + i, prompts[i], answers[i]) for i in range(n)]


def _reader(cfg: Config, engine: Engine) -> Reader:
    view = StateView()
    view.update(engine.snapshot())
    return Reader(cfg, view, Verdicts(cfg, view, engine.store), engine.store)


def test_a_topic_shift_is_flagged_on_the_api_metrics_and_events(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "s.sqlite", EMB)
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    rng = np.random.default_rng(5)
    # hour 0: the reference (300) then 200 more of the same topic; hour 1: 100 of another
    engine.process(0, _traffic(rng, 0, 500, T0, topic=0), [])
    reader = _reader(cfg, engine)
    doc = reader.production("chat")
    components = document()["components"]
    jsonschema.validate(doc, {"$ref": "#/components/schemas/Production", "components": components})
    before = doc["drift"][PROMPT]
    assert before["kind"] == "embedding" and before["state"] == "stable", before
    assert before["reference_n"] == 300 and before["n"] == 200
    assert doc["drift"][ANSWER]["state"] == "stable"
    detector = Detector(instance="t")
    assert detector.observe(Snapshot(production={"chat": doc}), 0, 0) == []

    engine.process(0, _traffic(rng, 1000, 100, T0 + HOUR, topic=1), [])
    reader = _reader(cfg, engine)
    doc = reader.production("chat")
    jsonschema.validate(doc, {"$ref": "#/components/schemas/Production", "components": components})
    after = doc["drift"][PROMPT]
    assert after["state"] == "major" and after["n"] == 100, after
    assert after["p_value"] < 0.001 and after["mmd2"] > after["threshold_major"]
    assert after["centroid_shift"] > before["centroid_shift"]
    assert after["counts"] == {"items": 600}
    assert doc["drift"][ANSWER]["state"] == "major"
    events = detector.observe(Snapshot(production={"chat": doc}), 1, 1)
    by_field = {e["data"]["field"]: e for e in events}
    assert set(by_field) == {PROMPT, ANSWER}
    assert all(e["type"] == DRIFT_EXCEEDED for e in events)
    assert by_field[PROMPT]["data"]["threshold"] == after["threshold_major"]

    registry = CollectorRegistry()
    registry.register(ScoresCollector(reader))
    text = generate_latest(registry).decode()
    lab = f'field="{PROMPT}",route="chat"'
    assert f'shadowroute_drift_state{{{lab},state="major"}} 1.0' in text
    assert f"shadowroute_embedding_drift_p_value{{{lab}}}" in text
    assert f"shadowroute_embedding_drift_mmd2{{{lab}}}" in text
    assert f"shadowroute_embedding_drift_centroid_shift{{{lab}}}" in text
    items = f'field="{PROMPT}",outcome="items",route="chat"'
    assert f"shadowroute_embedding_drift_values_total{{{items}}} 600.0" in text


def test_partitions_merge_and_a_restart_keeps_the_sums(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "s.sqlite", EMB | {"outputs": False})
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    rng = np.random.default_rng(6)
    engine.process(0, _traffic(rng, 0, 250, T0, topic=0), [])
    engine.process(1, _traffic(rng, 1000, 250, T0, topic=0), [])
    before = engine.snapshot()
    view = StateView()
    view.update(before)
    merged = view.production("chat")
    assert merged is not None
    field = merged.embedding[PROMPT]
    # each partition keeps its own reference until it has reference_size items
    assert field.reference.n == 500 and not field.windows
    assert set(merged.embedding) == {PROMPT}
    engine.store.close()
    again = Engine(cfg, Store(tmp_path / "s.sqlite"))
    for p in (0, 1):
        state = again.production("chat", p)
        assert isinstance(state, ProductionState)
        assert state.to_dict() == before[("prod", "chat", "", p)]
    again.process(0, _traffic(rng, 2000, 150, T0 + 1, topic=0), [])
    state = again.production("chat", 0)
    assert isinstance(state, ProductionState)
    part = state.embedding[PROMPT]
    assert part.reference.n == 300 and sum(s.n for s in part.windows.values()) == 100


def test_outsider_values_are_bounded_and_counted(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path / "s.sqlite",
        {"fields": ["$.messages[*].content", "$.vec"], "dims": 4, "max_chars": 100,
         "max_items": 2, "reference_size": 50, "min_count": 10},
    )  # fmt: skip
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    recs = []
    for i in range(5):
        rid, rec = _pair(i, T0 + i, "word " * 100, "fine")
        recs.append((rid, rec))
    # a body with a vector of the wrong length, one right, one object, one empty text
    p = Side("llm-a", "1", 200, 40.0, ["x"], None)
    odd = {"messages": [{"content": {"a": 1}}, {"content": "!!"}], "vec": [1, 2, 3]}
    recs.append((b"o", encode_pair(request_id="o", route="chat", ts_ms=T0 + 9, production=p,
                                   candidate=None, input=odd)))  # fmt: skip
    good = {"messages": [], "vec": [0, 0, 3, 4]}
    recs.append((b"g", encode_pair(request_id="g", route="chat", ts_ms=T0 + 9, production=p,
                                   candidate=None, input=good)))  # fmt: skip
    engine.process(0, recs, [])
    state = engine.production("chat", 0)
    assert isinstance(state, ProductionState)
    msgs = state.embedding["embedding:$.messages[*].content"].counts
    # five bodies: system prompt + a 500-char prompt cut to 100, each; then an object, "!!"
    assert msgs == {"items": 10, "truncated": 5, "unusable": 1, "empty": 1}
    assert state.embedding["embedding:$.vec"].counts == {"items": 1, "bad_vector": 1}
    assert state.embedding["embedding:$.vec"].reference.n == 1


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        ({}, "give fields"),
        ({"outputs": True, "warn_alpha": 0.001, "alert_alpha": 0.01}, "alert_alpha"),
        ({"fields": ["$.a[?"]}, "cannot parse path"),
        ({"outputs": True, "reference_size": 10}, "reference_size"),
    ],
)
def test_bad_configuration_is_a_clear_error(
    tmp_path: Path, embedding: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path / "s.sqlite", embedding)


@pytest.mark.parametrize(
    ("embedding", "needs"),
    [(None, False), ({"outputs": True}, False), ({"fields": ["$.prompt"]}, True)],
)
def test_the_data_plane_captures_the_body_for_embedded_input_fields(
    tmp_path: Path, embedding: dict[str, Any] | None, needs: bool
) -> None:
    route = _config(tmp_path / "s.sqlite", embedding).routes[0]
    assert RoutePlan(route, b"", b"", []).needs_input is needs


# --- end to end: the embedded stack, a real OpenAI-compatible model server on loopback -------


def _chat_reply(seen: Seen) -> Reply:
    """A chat model that answers with the words of the last message, reversed."""
    prompt = orjson.loads(seen.body)["messages"][-1]["content"]
    answer = " ".join(reversed(prompt.split()))
    doc = {
        "id": "c1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer},
             "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }  # fmt: skip
    return Reply(body=orjson.dumps(doc), headers=JSON_HEADERS)


async def test_a_topic_shift_through_the_proxy_is_flagged_within_100_requests(
    tmp_path: Path,
) -> None:
    """Prompts through the proxy to a real chat server: the first 100 fill the reference, 60
    more of the same topic are ``stable``; 100 prompts on another topic make the prompt field
    and production's answers ``major`` on the API and the metrics."""
    prod = await ModelServer(_chat_reply).start()
    cand = await ModelServer(_chat_reply).start()
    emb = {"fields": ["$.messages[-1].content"], "outputs": True, "reference_size": 100,
           "min_count": 50}  # fmt: skip
    cfg = parse_config(
        {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "comparator": {"state_path": str(tmp_path / "state.sqlite")},
            "routes": [
                {
                    "name": "chat",
                    "protocol": "openai",
                    "task": "text",
                    "production": {"name": "llm-a", "url": prod.url, "timeout_s": 2},
                    "candidates": [{"name": "llm-b", "url": cand.url, "fraction": 1.0}],
                    "drift": {"embedding": emb},
                }
            ],
        },
        environ={},
    )
    rng = np.random.default_rng(9)

    async def send(stack: Stack, prompts: list[str]) -> None:
        port = stack.proxy_port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for p in prompts:
                body = {"model": "m", "messages": [{"role": "user", "content": p}]}
                r = await client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200
        await settle(stack.dataplane)

    async def drift(admin: httpx.AsyncClient, field: str, n: int) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while True:
            doc = (await admin.get("/v1/routes/chat/production")).json()["drift"]
            if doc.get(field, {}).get("n") == n or time.monotonic() > deadline:
                out: dict[str, Any] = doc[field]
                return out
            await asyncio.sleep(0.05)

    try:
        async with embedded_stack(cfg) as stack:
            api = f"http://127.0.0.1:{stack.admin_port}"
            async with httpx.AsyncClient(base_url=api) as admin:
                await send(stack, texts(rng, 160, topic=0))
                same = await drift(admin, PROMPT, 60)
                assert same["state"] == "stable" and same["reference_n"] == 100, same
                await send(stack, texts(rng, 100, topic=1))
                moved = await drift(admin, PROMPT, 160)
                answers = await drift(admin, ANSWER, 160)
                metrics = (await admin.get("/metrics")).text
            shown = await _scorecard_row(api, PROMPT)
    finally:
        await prod.stop()
        await cand.stop()
    assert moved["state"] == "major" and moved["p_value"] < 0.001, moved
    assert answers["state"] == "major", answers
    assert moved["counts"] == {"items": 260}
    lab = f'field="{PROMPT}",route="chat"'
    assert f'shadowroute_drift_state{{{lab},state="major"}} 1.0' in metrics
    if shown is not None:  # the scorecard's drift table, in headless Chromium
        state, note = shown
        assert state.lower() == "major"
        mmd2, p, shift = note.split(" · ")
        assert float(mmd2.removeprefix("MMD² ")) == pytest.approx(moved["mmd2"], rel=0.05)
        assert float(p.removeprefix("p ")) == pytest.approx(moved["p_value"], rel=0.05)
        assert float(shift.removeprefix("centroid shift ")) == pytest.approx(
            moved["centroid_shift"], abs=1e-3
        )


async def _scorecard_row(admin: str, field: str) -> tuple[str, str] | None:
    """The state badge and the embedding note of ``field``'s drift row on the scorecard page
    (None when Playwright is not installed)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    from test_scorecard import CHROMIUM, CHROMIUM_ARGS

    row = f'tr[data-drift-field="{field}"]'
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{admin}/")
            await page.wait_for_selector(f'{row} [data-field="embedding"]', timeout=15_000)
            state = await page.inner_text(f"{row} .badge")
            note = await page.inner_text(f'{row} [data-field="embedding"]')
        finally:
            await browser.close()
    assert errors == []
    return state, note


def test_a_new_embedding_model_starts_the_field_again(tmp_path: Path) -> None:
    """Sums of another embedder or other features do not add: after a change of ``dims`` the
    restored field starts again (counted), and a merged view keeps one model's sums."""
    cfg = _config(tmp_path / "s.sqlite", EMB | {"outputs": False})
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    rng = np.random.default_rng(8)
    engine.process(0, _traffic(rng, 0, 50, T0, topic=0), [])
    engine.process(1, _traffic(rng, 100, 80, T0, topic=0), [])
    engine.store.close()
    other = _config(tmp_path / "s.sqlite", EMB | {"outputs": False, "dims": 32})
    again = Engine(other, Store(tmp_path / "s.sqlite"))
    again.process(0, _traffic(rng, 200, 20, T0 + 1, topic=0), [])
    state = again.production("chat", 0)
    assert isinstance(state, ProductionState)
    field = state.embedding[PROMPT]
    assert field.reference.n == 20 and field.reference.sum_x.size == 32
    assert field.model == "hashing-lexical/32/128/1/0"
    assert state.counts["embedding_drift_restarts"] == 1
    view = StateView()
    view.update(again.snapshot())
    merged = view.production("chat")
    assert merged is not None
    kept = merged.embedding[PROMPT]
    # partition 1 still has the old model's 80 items (no record since the change)
    assert kept.reference.n == 80 and kept.counts["partitions_with_other_model"] == 1
