"""The judge as a paired metric, end to end in embedded mode: real OpenAI-compatible production
and candidate servers behind the real proxy, the in-process channel, the embedded comparator's
assessor calling a real judge and embeddings stand-in, and the verdict.

The Done-when case of issue 19: a candidate faster than production but worse by the judge is
rejected with the judge metric's interval as the reason."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from documented import assert_documented
from judge_upstreams import EmbeddingServer, JudgeServer
from proxyutil import running_dataplane, settle
from shadowroute.api.scores import ScoresCollector, score_routes
from shadowroute.comparator.assessor import AssessorCollector
from shadowroute.comparator.embedded import Comparator
from shadowroute.core.config import Config, parse_config
from shadowroute.stream.sink import ChannelSink
from upstreams import ModelServer, Reply, Seen

ROUTE, PROD, CAND = "chat", "big-llm", "fast-llm"


def chat_server(answer: str, delay: float) -> ModelServer:
    def reply(seen: Seen) -> Reply:
        question = orjson.loads(seen.body)["messages"][-1]["content"]
        body = {
            "id": "c1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"{answer} to {question}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }
        return Reply(
            body=orjson.dumps(body),
            headers=[(b"content-type", b"application/json")],
            delay=delay,
        )

    return ModelServer(reply)


def make_config(state: Path, prod: str, cand: str, judge: str, embed: str, **policy: Any) -> Config:
    route = {
        "name": ROUTE,
        "path_prefix": "/v1/chat/completions",
        "protocol": "openai",
        "task": "text",
        "production": {"name": PROD, "url": prod, "timeout_s": 5},
        "candidates": [{"name": CAND, "url": cand, "fraction": 1.0, "timeout_s": 5}],
        "judge": {
            "url": judge,
            "model": "judge-1",
            "rubric": "Prefer the answer that is correct and helpful.",
            "sample_fraction": 1.0,
            "rate_per_s": 1000,
        },
        "similarity": {"url": embed, "model": "embed-1", "rate_per_s": 1000},
        "policy": {"primary_metric": "judge", "min_pairs": 40, **policy},
    }
    return parse_config(
        {"routes": [route], "listen": {"port": 0}, "comparator": {"state_path": str(state)}},
        environ={},
    )


async def test_faster_but_worse_candidate_is_rejected_on_the_judge(tmp_path: Path) -> None:
    prod = await chat_server("GOOD answer", delay=0.03).start()
    cand = await chat_server("meh answer", delay=0.0).start()
    judge = await JudgeServer("good").start()
    embed = await EmbeddingServer("good").start()
    cfg = make_config(tmp_path / "s.sqlite", prod.url, cand.url, judge.url, embed.url)
    comp = Comparator(cfg, flush_interval_s=0.05)
    await comp.start()
    try:
        async with running_dataplane(cfg, ChannelSink(comp)) as dp:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                for i in range(60):
                    body = {"model": "x", "messages": [{"role": "user", "content": f"q{i}"}]}
                    r = await client.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200
                    # the client gets production's answer, untouched
                    assert r.json()["choices"][0]["message"]["content"] == f"GOOD answer to q{i}"
            await settle(dp)
        assert comp.assessor is not None
        await comp.flush()
        await comp.assessor.drain()
        await comp.flush()

        d = comp.reader.decision(ROUTE, CAND)
        assert d["verdict"] == "reject", d["reasons"]
        ev = d["metrics"]["judge"]
        assert ev["status"] == "fail" and ev["n"] == 60 and ev["estimate"] == -1.0
        assert ev["upper"] is not None and ev["upper"] < 0
        assert any(r.startswith("shown worse: judge: estimate -1") for r in d["reasons"])
        assert "interval [" in d["reasons"][0]
        # the latency guardrail passes: the candidate is faster
        assert d["metrics"]["latency_p95_ratio"]["status"] == "pass"

        app = web.Application()
        app.add_routes(score_routes(comp.reader))
        async with TestClient(TestServer(app)) as api:
            scores = await (await api.get(f"/v1/routes/{ROUTE}/candidates/{CAND}/scores")).json()
        assert_documented(scores, "Scores")
        j = scores["judge"]
        assert (j["wins"], j["ties"], j["losses"], j["unparseable"], j["failed"]) == (
            0, 0, 60, 0, 0,
        )  # fmt: skip
        assert j["calls"] == 120 and j["metric"]["n"] == 60
        sim = scores["embedding_similarity"]
        assert sim["n"] == 60 and 0 < sim["mean"] < 1 and sim["calls"] == 60
        assert scores["latency_ms"]["ratio"]["p50"] < 1  # faster
        assessor = scores["assessor"]
        assert assessor["judge"]["calls"] == 120 and assessor["judge"]["budget_left"] == 9880
        assert assessor["similarity"]["calls"] == 60 and assessor["judge"]["breaker"] == "closed"

        registry = CollectorRegistry()
        registry.register(ScoresCollector(comp.reader))
        registry.register(AssessorCollector(comp.assessor))
        text = generate_latest(registry).decode()
        assert (
            'shadowroute_judge_results_total{candidate="fast-llm",result="loss",route="chat"} 60.0'
            in (text)
        )
        assert 'shadowroute_assess_calls_total{kind="judge",route="chat"} 120.0' in text
        assert 'shadowroute_assess_budget_left{kind="judge",route="chat"} 9880.0' in text

        # judged requests carried their prompt; every judge call was blinded
        assert len(judge.seen) == 120
        assert all(PROD not in str(b) and CAND not in str(b) for b in judge.seen)
    finally:
        await comp.close()
        for s in (prod, cand):
            await s.stop()
        await judge.stop()
        await embed.stop()

    # the judge's evidence persists like the other aggregates
    again = Comparator(cfg, flush_interval_s=0.05)
    try:
        assert again.reader.decision(ROUTE, CAND)["metrics"]["judge"]["n"] == 60
        assert again.assessor is not None
        assert again.assessor.stats()[ROUTE]["judge"]["budget_spent"] == 120
    finally:
        await again.close()


async def test_judge_failures_never_block_other_metrics(tmp_path: Path) -> None:
    """With the judge down, pairs are still scored and the verdict holds on the judge
    (inconclusive), naming it; the failures are counted."""
    prod = await chat_server("GOOD answer", delay=0.0).start()
    cand = await chat_server("GOOD answer", delay=0.0).start()
    judge = await JudgeServer("failing").start()
    cfg = make_config(
        tmp_path / "s.sqlite", prod.url, cand.url, judge.url, "http://127.0.0.1:9",
        min_pairs=5,
    )  # fmt: skip
    comp = Comparator(cfg, flush_interval_s=0.05)
    await comp.start()
    try:
        async with running_dataplane(cfg, ChannelSink(comp)) as dp:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                for i in range(10):
                    body = {"messages": [{"role": "user", "content": f"q{i}"}]}
                    r = await client.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200
            await settle(dp)
        assert comp.assessor is not None
        await comp.flush()
        await comp.assessor.drain()
        await asyncio.sleep(0)
        await comp.flush()
        d = comp.reader.decision(ROUTE, CAND)
        assert d["pairs"] == 10
        assert d["verdict"] == "hold"
        assert d["metrics"]["judge"]["status"] == "inconclusive"
        assert d["metrics"]["error_rate"]["n"] == 10
        scores = comp.reader.scores(ROUTE, CAND)
        # the breaker opens after 5 consecutive failures (a few more may be in flight then)
        failed = scores["judge"]["failed"]
        assert 5 <= failed < 10 and scores["judge"]["metric"]["n"] == 0
        assert scores["judge"]["failures"] == {"http_5xx": failed}
        st = comp.assessor.stats()[ROUTE]
        assert st["judge"]["skipped"] == {"circuit_open": 10 - failed}
        assert st["judge"]["breaker"] == "open"
        sim_failed = sum(st["similarity"]["failures"].values())
        assert st["similarity"]["failures"] == {"connect": sim_failed} and sim_failed >= 5
    finally:
        await comp.close()
        await prod.stop()
        await cand.stop()
        await judge.stop()


async def test_a_judge_that_is_down_never_holds_up_a_guardrail(tmp_path: Path) -> None:
    """The judge down and not the primary metric: a candidate much slower than production is
    rejected on its latency as it would be without a judge; the judge's failures are
    counted."""
    prod = await chat_server("GOOD answer", delay=0.0).start()
    cand = await chat_server("GOOD answer", delay=0.06).start()
    judge = await JudgeServer("failing").start()
    cfg = make_config(
        tmp_path / "s.sqlite", prod.url, cand.url, judge.url, "http://127.0.0.1:9",
        min_pairs=20, primary_metric=None,
    )  # fmt: skip
    comp = Comparator(cfg, flush_interval_s=0.05)
    await comp.start()
    try:
        async with running_dataplane(cfg, ChannelSink(comp)) as dp:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                for i in range(30):
                    body = {"messages": [{"role": "user", "content": f"q{i}"}]}
                    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
                    await asyncio.sleep(0.07)  # one mirror at a time: no candidate queueing
            await settle(dp)
        assert comp.assessor is not None
        await comp.flush()
        await comp.assessor.drain()
        await comp.flush()
        d = comp.reader.decision(ROUTE, CAND)
        assert d["verdict"] == "reject", d["reasons"]
        assert d["metrics"]["latency_p95_ratio"]["status"] == "fail"
        assert "judge" not in d["metrics"]  # not a verdict metric on this route
        st = comp.assessor.stats()[ROUTE]["judge"]
        assert st["failures"].get("http_5xx", 0) >= 10 and st["breaker"] == "open"
    finally:
        await comp.close()
        await prod.stop()
        await cand.stop()
        await judge.stop()
