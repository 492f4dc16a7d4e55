"""The judge through the whole embedded stack (``serve``'s proxy, comparator and admin plane):
the scores API, the decision, ``/metrics`` and the scorecard in headless Chromium show the
judge's results, its interval, the embedding similarity and the assessor's budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from judge_upstreams import EmbeddingServer, JudgeServer
from proxyutil import settle
from shadowroute.runtime import embedded_stack
from test_judge_e2e import CAND, ROUTE, chat_server, make_config
from test_scorecard import CHROMIUM, CHROMIUM_ARGS, signed

pw_api = pytest.importorskip("playwright.async_api")
N = 50


async def test_the_scorecard_shows_the_judge(tmp_path: Path) -> None:
    prod = await chat_server("GOOD answer", delay=0.02).start()
    cand = await chat_server("meh answer", delay=0.0).start()
    judge = await JudgeServer("good").start()
    embed = await EmbeddingServer("good").start()
    cfg = make_config(tmp_path / "s.sqlite", prod.url, cand.url, judge.url, embed.url)
    cfg = cfg.model_copy(update={"admin": cfg.admin.model_copy(update={"port": 0})})
    try:
        async with embedded_stack(cfg) as stack, pw_api.async_playwright() as pw:
            proxy = f"http://127.0.0.1:{stack.proxy_port}"
            admin = f"http://127.0.0.1:{stack.admin_port}"
            async with httpx.AsyncClient(base_url=proxy) as client:
                for i in range(N):
                    body = {"messages": [{"role": "user", "content": f"q{i}"}]}
                    r = await client.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200
            await settle(stack.dataplane)
            async with httpx.AsyncClient(base_url=admin) as client:
                path = f"/v1/routes/{ROUTE}/candidates/{CAND}"
                for _ in range(200):
                    scores = (await client.get(f"{path}/scores")).json()
                    if scores.get("judge", {}).get("losses") == N:
                        break
                    await asyncio.sleep(0.05)
                assert scores["judge"]["losses"] == N
                decision = (await client.get(f"{path}/decision")).json()
                metrics = (await client.get("/metrics")).text
            assert decision["verdict"] == "reject"
            assert f'shadowroute_assess_calls_total{{kind="judge",route="{ROUTE}"}} {2 * N}.0' in (
                metrics
            )
            assert "shadowroute_embedding_similarity_mean{" in metrics
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 2400})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{admin}/")
                card = f'[data-candidate="{CAND}"]'
                await page.wait_for_selector(f"{card} .judge", timeout=15_000)

                async def field(name: str) -> str:
                    return await page.inner_text(f'{card} [data-field="{name}"] b')

                assert await field("judge-losses") == str(N)
                assert await field("judge-wins") == "0"
                assert await field("judge-estimate") == signed(-1.0)
                assert await field("judge-calls") == str(2 * N)
                assert await field("judge-budget") == str(10_000 - 2 * N)
                assert await field("judge-breaker") == "closed"
                assert await field("embedding-n") == str(N)
                mean = scores["embedding_similarity"]["mean"]
                assert await field("embedding-mean") == f"{mean:.3f}"
                assert errors == []
            finally:
                await browser.close()
    finally:
        for s in (prod, cand):
            await s.stop()
        await judge.stop()
        await embed.stop()
