"""openai routes through the real data plane: each side's streaming facts in the pair record
(``llm``), the bound on timed pieces, and the client's stream never waiting for the record."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from openai_upstreams import OpenAIStandIn, started
from proxyutil import make_config, running_proxy, settle
from shadowroute.core.config import Config
from shadowroute.core.records import decode_pair

PROMPT = "the quick brown fox jumps over the lazy dog"


def llm_config(prod: str, cands: list[tuple[str, str]], **top: Any) -> Config:
    return make_config(
        prod,
        [{"name": name, "url": url, "fraction": 1.0, "timeout_s": 5} for name, url in cands],
        name="chat",
        protocol="openai",
        task="text",
        top=top,
    )


def chat(stream: bool, usage: bool = True, max_tokens: int | None = None) -> bytes:
    doc: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
    if max_tokens is not None:
        doc["max_tokens"] = max_tokens
    if stream:
        doc["stream"] = True
        if usage:
            doc["stream_options"] = {"include_usage": True}
    return orjson.dumps(doc)


async def test_streamed_answers_carry_ttft_itl_and_tokens() -> None:
    async with started(
        OpenAIStandIn("prod", first_token_s=0.05, token_gap_s=0.02),
        OpenAIStandIn("slow", first_token_s=0.3, token_gap_s=0.01),
        OpenAIStandIn("nousage", token_gap_s=0.01, usage=False),
    ) as (prod, slow, nousage):
        cfg = llm_config(prod.url, [("slow", slow.url), ("nousage", nousage.url)])
        async with running_proxy(cfg) as (dp, sink):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                r = await client.post("/v1/chat/completions", content=chat(True))
                assert r.status_code == 200
                assert b"data: [DONE]" in r.content
            await settle(dp, timeout=5.0)
            recs = {r["candidate"]["model"]: r for r in sink.decoded()}
    assert set(recs) == {"slow", "nousage"}
    for rec in recs.values():
        decode_pair(orjson.dumps(rec))  # what the decoders accept
    p = recs["slow"]["production"]["llm"]
    words = len(PROMPT.split())
    assert p["streamed"] is True and p["tokens_counted"] is False
    assert (p["tokens_in"], p["tokens_out"]) == (words, words)
    assert 45.0 <= p["ttft_ms"] < recs["slow"]["production"]["latency_ms"]
    assert 15.0 <= p["itl_ms"] < 200.0
    s = recs["slow"]["candidate"]["llm"]
    assert s["ttft_ms"] >= 290.0 and s["ttft_ms"] > p["ttft_ms"]
    assert s["tokens_out"] == words and s["tokens_counted"] is False
    n = recs["nousage"]["candidate"]["llm"]
    # no usage: the content events are counted, the prompt's characters / 4
    assert n["tokens_counted"] is True
    assert n["tokens_out"] == words
    assert n["tokens_in"] == -(-len(PROMPT) // 4)


async def test_whole_answers_have_latency_as_ttft_and_no_itl() -> None:
    async with started(OpenAIStandIn("prod"), OpenAIStandIn("cand", first_token_s=0.05)) as (
        prod,
        cand,
    ):
        cfg = llm_config(prod.url, [("cand", cand.url)])
        async with running_proxy(cfg) as (dp, sink):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                r = await client.post("/v1/chat/completions", content=chat(False))
                assert r.json()["choices"][0]["message"]["content"] == PROMPT
            await settle(dp, timeout=5.0)
            (rec,) = sink.decoded()
    for side in ("production", "candidate"):
        llm = rec[side]["llm"]
        assert llm["streamed"] is False and llm["itl_ms"] is None
        assert llm["ttft_ms"] == rec[side]["latency_ms"]
        assert llm["tokens_out"] == len(PROMPT.split()) and llm["tokens_counted"] is False
    assert rec["candidate"]["llm"]["ttft_ms"] >= 45.0


async def test_failing_and_malformed_candidates_have_no_llm() -> None:
    async with started(
        OpenAIStandIn("prod"),
        OpenAIStandIn("down", fail=True),
        OpenAIStandIn("bad", malformed=True),
    ) as (prod, down, bad):
        cfg = llm_config(prod.url, [("down", down.url), ("bad", bad.url)])
        async with running_proxy(cfg) as (dp, sink):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                for stream in (True, False):
                    r = await client.post("/v1/chat/completions", content=chat(stream))
                    assert r.status_code == 200
            await settle(dp, timeout=5.0)
            recs = sink.decoded()
    assert len(recs) == 4
    for rec in recs:
        assert rec["production"]["llm"] is not None
        cand = rec["candidate"]
        assert "llm" not in cand
        assert cand["error"] == ("http_5xx" if cand["model"] == "down" else "extract_failed")


async def test_non_llm_routes_carry_no_llm() -> None:
    from upstreams import ModelServer

    prod, cand = ModelServer(), ModelServer()
    await prod.start()
    await cand.start()
    try:
        cfg = make_config(prod.url, [{"name": "c", "url": cand.url, "fraction": 1.0}])
        async with running_proxy(cfg) as (dp, sink):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                r = await client.post("/v1/models/m:predict", content=b'{"instances": [[1]]}')
                assert r.status_code == 200
            await settle(dp)
            (rec,) = sink.decoded()
            assert not dp.proxy.routes[0].timed  # type: ignore[union-attr]
    finally:
        await prod.stop()
        await cand.stop()
    assert "llm" not in rec["production"] and "llm" not in rec["candidate"]


async def test_timed_pieces_are_bounded_and_counted() -> None:
    long = " ".join(f"w{i}" for i in range(60))
    body = orjson.dumps(
        {"messages": [{"role": "user", "content": long}], "stream": True,
         "stream_options": {"include_usage": True}}
    )  # fmt: skip
    async with started(
        OpenAIStandIn("prod", token_gap_s=0.003), OpenAIStandIn("cand", token_gap_s=0.003)
    ) as (prod, cand):
        cfg = llm_config(prod.url, [("cand", cand.url)], records={"max_stream_pieces": 16})
        async with running_proxy(cfg) as (dp, sink):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                r = await client.post("/v1/chat/completions", content=body)
                assert r.content.count(b"data: ") == 60 + 4  # the client gets every event
            await settle(dp, timeout=5.0)
            (rec,) = sink.decoded()
            assert dp.stats.limits["stream_pieces"] == 2  # production's and the candidate's
    for side in ("production", "candidate"):
        llm = rec[side]["llm"]
        assert llm["tokens_out"] == 60  # from usage, whatever was timed
        assert llm["ttft_ms"] is not None and llm["itl_ms"] is not None


async def test_the_client_stream_is_not_delayed() -> None:
    """The client reads production's first event while production is still streaming (and a
    slower candidate has not even started answering)."""
    async with started(
        OpenAIStandIn("prod", first_token_s=0.02, token_gap_s=0.4),
        OpenAIStandIn("cand", first_token_s=1.0),
    ) as (prod, cand):
        cfg = llm_config(prod.url, [("cand", cand.url)])
        async with running_proxy(cfg) as (dp, sink):
            loop = asyncio.get_running_loop()
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client,
                client.stream(
                    "POST", "/v1/chat/completions", content=chat(True, max_tokens=4)
                ) as r,
            ):
                sent = loop.time()
                chunks = r.aiter_raw()
                got = b""
                while b'"content"' not in got:
                    got += await anext(chunks)
                first = loop.time()
                assert not prod.finished, "the first event came only after production ended"
                assert first - sent < 0.35  # words come 0.4 s apart; the first after 0.02 s
                rest = b"".join([c async for c in chunks])
            assert b"data: [DONE]" in got + rest
            await settle(dp, timeout=5.0)
            (rec,) = sink.decoded()
    assert rec["production"]["llm"]["ttft_ms"] < 350.0
    assert rec["production"]["llm"]["itl_ms"] >= 300.0
    assert rec["candidate"]["llm"]["ttft_ms"] >= 950.0


async def test_a_prompt_too_large_to_count_is_left_uncounted_and_counted() -> None:
    """Without usage, the tokens in are counted from the prompt; a prompt over
    records.max_json_values is not parsed for it (the limit ``prompt_too_large``)."""
    many = [{"role": "user", "content": "w"} for _ in range(60)]  # 1 + 60 * 3 values > 100
    body = orjson.dumps({"messages": many})
    async with started(OpenAIStandIn("prod", usage=False), OpenAIStandIn("c", usage=False)) as (
        prod,
        cand,
    ):
        cfg = llm_config(prod.url, [("c", cand.url)], records={"max_json_values": 100})
        async with running_proxy(cfg) as (dp, sink):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                assert (await client.post("/v1/chat/completions", content=body)).status_code == 200
                await settle(dp, timeout=5.0)  # records in request order
                small = await client.post("/v1/chat/completions", content=chat(False))
                assert small.status_code == 200
            await settle(dp, timeout=5.0)
            big, ok = sink.decoded()
            assert dp.stats.limits["prompt_too_large"] == 1  # once per request, not per side
    for side in ("production", "candidate"):
        assert big[side]["llm"]["tokens_in"] is None
        assert big[side]["llm"]["tokens_counted"] is True  # tokens out: counted
        assert ok[side]["llm"]["tokens_in"] == -(-len(PROMPT) // 4)


async def test_completions_streamed_and_whole() -> None:
    async with started(
        OpenAIStandIn("prod", token_gap_s=0.01), OpenAIStandIn("cand", token_gap_s=0.01)
    ) as (prod, cand):
        cfg = llm_config(prod.url, [("cand", cand.url)])
        async with running_proxy(cfg) as (dp, sink):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
                for stream in (True, False):
                    doc: dict[str, Any] = {"model": "m", "prompt": PROMPT, "stream": stream}
                    if stream:
                        doc["stream_options"] = {"include_usage": True}
                    r = await client.post("/v1/completions", content=orjson.dumps(doc))
                    assert r.status_code == 200
                    # the streamed candidate may still be streaming when the client has
                    # production's whole answer: settle so the records come in request order
                    await settle(dp, timeout=5.0)
            streamed, whole = sink.decoded()
    words = len(PROMPT.split())
    for rec, is_stream in ((streamed, True), (whole, False)):
        assert rec["production"]["output"] == [PROMPT]
        for side in ("production", "candidate"):
            llm = rec[side]["llm"]
            assert llm["streamed"] is is_stream
            assert (llm["tokens_in"], llm["tokens_out"]) == (words, words)
            assert (llm["itl_ms"] is not None) is is_stream
