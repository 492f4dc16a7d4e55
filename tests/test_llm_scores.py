"""openai routes in the comparator: TTFT sketches, ITL, token and cost sums in the mergeable
state; the ttft_p99_ratio and cost_ratio guardrails; end to end through the embedded stack
(API scores and decision, Prometheus metrics)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from documented import assert_documented
from openai_upstreams import OpenAIStandIn, started
from proxyutil import make_config, settle
from shadowroute.comparator.aggregates import CandidateState, PairRow, new_candidate_state
from shadowroute.core.config import Price, parse_config
from shadowroute.core.stats.policy import COST, TTFT, decide
from shadowroute.runtime import embedded_stack

T0 = 1_764_100_000_000


def facts(ttft: float, itl: float | None, tin: int | None, tout: int, counted: bool = False) -> Any:
    return {
        "ttft_ms": ttft,
        "itl_ms": itl,
        "tokens_in": tin,
        "tokens_out": tout,
        "tokens_counted": counted,
        "streamed": itl is not None,
    }


def state() -> CandidateState:
    cfg = make_config("http://127.0.0.1:9", [{"name": "c", "url": "http://127.0.0.1:9"}],
                      protocol="openai", task="text")  # fmt: skip
    return new_candidate_state(cfg.routes[0], "c", ["hour"])


def rows(n: int, prod_ttft: float, cand_ttft: float, start: int = 0) -> list[PairRow]:
    return [
        PairRow(T0 + i, None, None, 500.0, 600.0, ["a"], ["a"],
                facts(prod_ttft + i % 7, 10.0, 20, 100), facts(cand_ttft + i % 7, 5.0, 20, 300))
        for i in range(start, start + n)
    ]  # fmt: skip


def test_llm_sums_and_sketches() -> None:
    s = state()
    s.add_pairs(rows(10, 100.0, 300.0))
    # a pair whose candidate failed, and one from a non-LLM record: neither side's sums move
    failed = facts(90.0, None, None, 8, True)
    s.add_pairs([PairRow(T0, None, "timeout", 1.0, None, ["a"], None, failed, None)])
    s.add_pairs([PairRow(T0, None, None, 1.0, 1.0, ["a"], ["a"])])
    m = s.llm_scores((Price(input_per_million=1.0, output_per_million=2.0), None))
    assert m["production"]["answers"] == 11 and m["candidate"]["answers"] == 10
    assert m["production"]["tokens_out"] == 1008 and m["candidate"]["tokens_out"] == 3000
    assert m["production"]["tokens_counted"] == 1 and m["candidate"]["tokens_counted"] == 0
    assert m["production"]["itl_ms"] == 10.0 and m["production"]["itl_n"] == 10
    assert m["production"]["mean_tokens_in"] == 20.0
    assert m["ttft_ms"]["production"]["n"] == 11 and m["ttft_ms"]["candidate"]["n"] == 10
    ratio = m["ttft_ms"]["ratio"]["p50"]
    assert ratio is not None and 2.5 < ratio < 3.5
    # no candidate price: no cost
    assert m["cost"] == {"pairs": 10, "production": None, "candidate": None, "ratio": None}
    prices = (Price(input_per_million=1.0, output_per_million=2.0),) * 2
    cost = s.llm_scores(prices)["cost"]
    assert cost["production"] == pytest.approx((20 * 1.0 + 100 * 2.0) / 1e6)
    assert cost["candidate"] == pytest.approx((20 * 1.0 + 300 * 2.0) / 1e6)
    assert cost["ratio"] == pytest.approx(620 / 220)
    assert s.scores(prices)["llm"]["cost"] == cost
    assert "llm" not in state().scores()


def test_merge_and_stored_form() -> None:
    a, b, whole = state(), state(), state()
    a.add_pairs(rows(30, 100.0, 200.0))
    b.add_pairs(rows(30, 100.0, 200.0, start=30))
    whole.add_pairs(rows(60, 100.0, 200.0))
    merged = a.merge(b)
    assert merged.llm_scores() == whole.llm_scores()
    again = CandidateState.from_dict(orjson.loads(orjson.dumps(merged.to_dict())))
    assert again.llm_scores() == whole.llm_scores()
    # a state without TTFTs (other routes, or stored before them) has no TTFT sketches in it
    assert "ttft_prod" not in state().to_dict()
    old = merged.to_dict()
    del old["ttft_prod"], old["ttft_cand"]
    assert CandidateState.from_dict(old).ttft_prod.count == 0


def _ms(x: float) -> str:
    return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"


async def _scorecard(admin: str) -> dict[str, Any]:
    """What the scorecard page shows of the candidate's LLM figures (headless Chromium)."""
    pw_api = pytest.importorskip("playwright.async_api")
    from test_scorecard import CHROMIUM, CHROMIUM_ARGS

    seen: dict[str, Any] = {"errors": []}
    async with pw_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 2000})
            page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
            await page.goto(f"{admin}/")
            table = '[data-candidate="slow"] table.llm-table'
            await page.wait_for_selector(table, timeout=15_000)
            for key, sel in {
                "cand_ttft_p99": 'tr[data-side="candidate"] td.ttft-p99',
                "prod_ttft_p50": 'tr[data-side="production"] td.ttft-p50',
                "cost_ratio": 'tr[data-side="ratio"] td.cost',
                "cand_tokens_out": 'tr[data-side="candidate"] td.tokens-out',
            }.items():
                seen[key] = await page.inner_text(f"{table} {sel}")
        finally:
            await browser.close()
    return seen


def _policy(**guards: Any) -> Any:
    price = {"input_per_million": 1, "output_per_million": 1}  # (the evidence takes its own)
    url = "http://127.0.0.1:9"
    cfg = make_config(url, [{"name": "c", "url": url, "price": price}],
                      protocol="openai", task="text",
                      production={"name": "p", "url": url, "price": price},
                      policy={"min_pairs": 20, "primary_metric": "agreement",
                              "guardrails": {"latency_p95_ratio": None, **guards}})  # fmt: skip
    return cfg.routes[0].policy


def test_ttft_guardrail_evidence() -> None:
    s = state()
    s.add_pairs(rows(50, 100.0, 400.0))
    policy = _policy(ttft_p99_ratio=1.5)
    d = decide(policy, "text", s.metrics(), None, s.pairs, 0, ttft=(s.ttft_prod, s.ttft_cand))
    assert d.verdict == "reject"
    ev = d.metrics[TTFT]
    assert set(ev) == {"estimate", "lower", "upper", "n", "threshold", "status"}
    assert ev["status"] == "fail" and ev["n"] == 50 and ev["threshold"] == 1.5
    assert 3.0 < ev["estimate"] < 4.5
    assert any(r.startswith(f"shown worse: {TTFT}: p99 candidate/production") for r in d.reasons)
    # within the ratio plus the slack: passes
    fast = state()
    fast.add_pairs(rows(50, 100.0, 120.0))
    d = decide(policy, "text", fast.metrics(), None, fast.pairs, 0,
               ttft=(fast.ttft_prod, fast.ttft_cand))  # fmt: skip
    assert d.metrics[TTFT]["status"] == "pass"
    # no TTFTs yet: inconclusive, the verdict holds
    d = decide(policy, "text", {}, None, 0, 0)
    assert d.metrics[TTFT]["status"] == "inconclusive" and d.verdict == "hold"
    assert any("no time-to-first-token observations yet" in r for r in d.reasons)


def test_cost_guardrail_evidence() -> None:
    s = state()
    s.add_pairs(rows(50, 100.0, 100.0))
    policy = _policy(cost_ratio=1.5)
    cheap = Price(input_per_million=1.0, output_per_million=1.0)
    d = decide(policy, "text", s.metrics(), None, s.pairs, 0,
               costs=s.mean_costs((cheap, cheap)))  # fmt: skip
    ev = d.metrics[COST]
    assert ev["status"] == "fail" and ev["estimate"] == pytest.approx(320 / 120)
    assert ev["n"] == 50
    assert d.verdict == "reject"
    assert any("mean cost per request candidate/production" in r for r in d.reasons)
    lower = Price(input_per_million=0.1, output_per_million=0.1)
    d = decide(policy, "text", s.metrics(), None, s.pairs, 0,
               costs=s.mean_costs((cheap, lower)))  # fmt: skip
    assert d.metrics[COST]["status"] == "pass"
    d = decide(policy, "text", s.metrics(), None, s.pairs, 0, costs=s.mean_costs((cheap, None)))
    assert d.metrics[COST]["status"] == "inconclusive"
    assert any("needs a price on both models" in r for r in d.reasons)


def test_price_config() -> None:
    route = {
        "name": "chat",
        "protocol": "openai",
        "task": "text",
        "production": {"name": "p", "url": "http://127.0.0.1:9",
                       "price": {"input_per_million": 0.5, "output_per_million": 1.5}},
        "candidates": [],
    }  # fmt: skip
    cfg = parse_config({"routes": [route]}, environ={})
    price = cfg.routes[0].production.price
    assert price is not None and price.cost(1e6, 2e6) == 3.5
    for bad in ({"input_per_million": -1, "output_per_million": 1}, {"input_per_million": 1}):
        route["production"]["price"] = bad  # type: ignore[index]
        try:
            parse_config({"routes": [route]}, environ={})
        except ValueError as exc:
            assert "price" in str(exc)
        else:
            raise AssertionError(f"accepted {bad}")


def test_llm_settings_only_on_openai_routes() -> None:
    price = {"input_per_million": 1, "output_per_million": 2}

    def problem(
        protocol: str, *, guards: dict[str, Any] | None = None, priced: bool = False
    ) -> str:
        route: dict[str, Any] = {
            "name": "r",
            "protocol": protocol,
            "task": "text" if protocol == "openai" else "regression",
            "production": {"name": "p", "url": "http://127.0.0.1:9"},
            "candidates": [{"name": "c", "url": "http://127.0.0.1:9"}],
            "policy": {"guardrails": guards or {}},
        }
        if priced:
            route["production"]["price"] = price
        try:
            parse_config({"routes": [route]}, environ={})
        except ValueError as exc:
            return str(exc)
        return ""

    assert "need protocol 'openai'" in problem("kserve-v1", guards={"ttft_p99_ratio": 1.5})
    assert "price (models ['p']) needs protocol 'openai'" in problem("kserve-v1", priced=True)
    assert "cost_ratio needs a price on every model" in problem("openai", guards={"cost_ratio": 1})
    assert "none on ['c']" in problem("openai", guards={"cost_ratio": 1}, priced=True)
    assert problem("openai", guards={"ttft_p99_ratio": 1.5}, priced=True) == ""


async def test_embedded_stack_shows_ttft_cost_and_rejects_a_slow_first_token(
    tmp_path: Path,
) -> None:
    async with started(
        OpenAIStandIn("prod", first_token_s=0.01),
        OpenAIStandIn("slow", first_token_s=0.15),
    ) as (prod, slow):
        route = {
            "name": "chat",
            "protocol": "openai",
            "task": "text",
            "production": {"name": "prod", "url": prod.url, "timeout_s": 5,
                           "price": {"input_per_million": 1.0, "output_per_million": 2.0}},
            "candidates": [{"name": "slow", "url": slow.url, "fraction": 1.0, "timeout_s": 5,
                            "price": {"input_per_million": 3.0, "output_per_million": 6.0}}],
            "policy": {"min_pairs": 12, "primary_metric": "agreement",
                       "guardrails": {"ttft_p99_ratio": 2.0, "cost_ratio": 2.0}},
        }  # fmt: skip
        cfg = parse_config(
            {
                "listen": {"port": 0},
                "admin": {"port": 0},
                "comparator": {"state_path": str(tmp_path / "state.sqlite")},
                "routes": [route],
            },
            environ={},
        )
        async with embedded_stack(cfg) as stack:
            body = orjson.dumps(
                {
                    "messages": [{"role": "user", "content": "one two three"}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            )
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.proxy_port}") as c:
                for _ in range(12):
                    r = await c.post("/v1/chat/completions", content=body)
                    assert r.status_code == 200
            await settle(stack.dataplane, timeout=5.0)
            base = "/v1/routes/chat/candidates/slow"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.admin_port}") as a:
                for _ in range(200):
                    d = (await a.get(f"{base}/decision")).json()
                    if d["pairs"] >= 12:
                        break
                    await asyncio.sleep(0.05)
                scores = (await a.get(f"{base}/scores")).json()
                metrics = (await a.get("/metrics")).text
            card = await _scorecard(f"http://127.0.0.1:{stack.admin_port}")
    assert_documented(scores, "Scores")
    assert_documented(d, "Decision")
    # the scorecard shows the same figures
    assert card["errors"] == []
    assert card["cand_ttft_p99"] == _ms(scores["llm"]["ttft_ms"]["candidate"]["p99"])
    assert card["prod_ttft_p50"] == _ms(scores["llm"]["ttft_ms"]["production"]["p50"])
    assert card["cost_ratio"] == f"{scores['llm']['cost']['ratio']:.3f}" == "3.000"
    assert card["cand_tokens_out"] == "3.0"
    assert d["verdict"] == "reject", d["reasons"]
    assert d["metrics"][TTFT]["status"] == "fail"
    # same tokens, three times the price: a cost ratio of 3
    assert d["metrics"][COST]["status"] == "fail" and d["metrics"][COST][
        "estimate"
    ] == pytest.approx(3.0)
    llm = scores["llm"]
    assert llm["production"]["answers"] == 12 and llm["candidate"]["tokens_out"] == 36
    assert llm["ttft_ms"]["candidate"]["p50"] > llm["ttft_ms"]["production"]["p50"]
    assert llm["cost"]["ratio"] == pytest.approx(3.0)
    assert 'shadowroute_llm_ratio{candidate="slow",ratio="cost",route="chat"} 3.0' in metrics
    assert (
        'shadowroute_llm_ttft_ms{candidate="slow",quantile="p99",route="chat",side="production"}'
    ) in metrics
    assert (
        'shadowroute_llm_tokens_total{candidate="slow",direction="out",route="chat",'
        'side="candidate"} 36.0'
    ) in metrics
    assert (
        'shadowroute_candidate_metric_estimate{candidate="slow",metric="cost_ratio",route="chat"}'
        " 3.0"
    ) in metrics
