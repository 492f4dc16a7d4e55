"""The scorecard page in headless Chromium (Playwright), against real demo runs on the embedded
stack: it renders, shows the verdicts and the numbers the API gives, and updates itself."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shadowroute.api.scorecard import ASSETS, scorecard_routes

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def signed(x: Any) -> str:
    """The page's number format for differences."""
    return f"{x:+.3f}" if isinstance(x, int | float) else "n/a"


# --- asset serving (no browser) ----------------------------------------------------------------


async def test_assets_are_served_from_the_package_and_nothing_else() -> None:
    app = web.Application()
    app.add_routes(scorecard_routes())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                html = await r.text()
            assert '<script src="/static/app.js">' in html and "https://" not in html
            for name, ctype in ASSETS.items():
                async with s.get(f"{base}/static/{name}") as r:
                    assert r.status == 200 and r.content_type == ctype
                    assert r.headers["Cache-Control"] == "no-cache"
            for bad in ("nope.js", "..%2F__init__.py", "%2e%2e%2fapi%2fapp.py"):
                async with s.get(f"{base}/static/{bad}") as r:
                    assert r.status == 404
    finally:
        await runner.cleanup()


# --- the page on a real demo run ---------------------------------------------------------------

pw_api = pytest.importorskip("playwright.async_api")
pytest.importorskip("sklearn", reason="the demo extra (scikit-learn) is not installed")


async def _api(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as r:
        assert r.status == 200, url
        doc: dict[str, Any] = await r.json()
        return doc


async def _polls(page: Any) -> int:
    return int(await page.evaluate("Number(document.body.dataset.polls || 0)"))


async def _wait_polls(page: Any, more: int, timeout_s: float = 15) -> None:
    start = await _polls(page)
    deadline = time.monotonic() + timeout_s
    while await _polls(page) < start + more:
        assert time.monotonic() < deadline, "the page stopped polling"
        await asyncio.sleep(0.2)


async def _watch(browser: Any, scenario: str, candidate: str, verdict: str) -> dict[str, Any]:
    from shadowroute.demo.run import DemoOptions, DemoResult, run_demo

    page = await browser.new_page(viewport={"width": 1280, "height": 1600})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: dict[str, Any] = {"errors": errors}
    card = f'[data-candidate="{candidate}"]'

    async def on_verdict(result: DemoResult) -> None:
        # Traffic and labels are done, the stack still listens: the page must settle on
        # exactly what the API says.
        base = f"{result.admin_url}/v1/routes/cancer"
        await _wait_polls(page, 2)
        async with aiohttp.ClientSession() as s:
            decision = await _api(s, f"{base}/candidates/{candidate}/decision")
            scores = await _api(s, f"{base}/candidates/{candidate}/scores")
            history = await _api(s, f"{base}/candidates/{candidate}/history")
            production = await _api(s, f"{base}/production")
        await _wait_polls(page, 1)
        seen["api"] = decision
        seen["badge"] = await page.inner_text(f"{card} .badge.verdict")
        seen["pairs"] = await page.inner_text(f'{card} [data-field="pairs"] b')
        seen["labelled"] = await page.inner_text(f'{card} [data-field="labelled"] b')
        seen["revision"] = await page.inner_text(f'{card} [data-field="revision"] b')
        seen["reasons"] = await page.locator(f"{card} ul.reasons li").all_inner_texts()
        seen["metrics"] = {}
        seen["needed"] = {}
        for name in decision["metrics"]:
            row = f'{card} tr[data-metric="{name}"]'
            seen["metrics"][name] = [
                await page.inner_text(f"{row} td.{k}") for k in ("estimate", "lower", "upper")
            ]
            seen["needed"][name] = await page.inner_text(f"{row} td.needed")
        seen["labels_waiting"] = await page.inner_text('[data-field="labels-waiting"]')
        seen["labels_waiting_api"] = production["labels"]["waiting"]
        seen["history_rows"] = await page.locator(f"{card} table.history tbody tr").count()
        seen["history_api"] = len(history["history"])
        seen["drift_rows"] = await page.locator("tr[data-drift-field]").count()
        seen["drift_api"] = len(production["drift"])
        seen["latency_bars"] = await page.locator(f"{card} svg.latency-chart rect").count()
        seen["p50_api"] = scores["latency_ms"]["production"]["p50"]
        seen["band"] = await page.locator(f"{card} svg.interval-chart polygon.band").count()
        seen["quality_points"] = await page.locator("svg.quality-chart circle").count()
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"scorecard-{scenario}.png"
        await page.screenshot(path=str(shot), full_page=True)
        seen["screenshot"] = shot

    demo = asyncio.create_task(
        run_demo(
            DemoOptions(scenario=scenario, duration_s=20, port=0, interactive=False),  # type: ignore[arg-type]
            out=io.StringIO(),
            on_start=started.set_result,
            on_verdict=on_verdict,
        )
    )
    url = await asyncio.wait_for(started, 60)
    await page.goto(url + "/")
    await page.wait_for_selector(f"{card} .badge.verdict", timeout=15_000)
    # It updates by itself: the pair count grows while traffic flows.
    first = int(await page.inner_text(f'{card} [data-field="pairs"] b'))
    await _wait_polls(page, 2)
    second = int(await page.inner_text(f'{card} [data-field="pairs"] b'))
    seen["growth"] = (first, second)
    result = await demo
    seen["exit_code"] = result.exit_code
    seen["verdict_expected"] = verdict
    await page.close()
    return seen


def _needed_text(needed: dict[str, Any] | None) -> str:
    """What the page shows in a metric's "more needed (estimate)" cell."""
    if needed is None:
        return ""
    if needed["more"] is None:
        return "n/a"
    return f"≈{needed['more']:,} {needed['unit']}"


async def test_scorecard_shows_what_the_api_says_on_real_demo_runs() -> None:
    async with pw_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            better, worse = await asyncio.gather(
                _watch(browser, "better", "gbm-30feat", "promote"),
                _watch(browser, "worse", "lr-2feat", "reject"),
            )
        finally:
            await browser.close()
    for seen in (better, worse):
        api = seen["api"]
        assert seen["exit_code"] == 0
        assert seen["errors"] == []
        assert seen["badge"].lower() == seen["verdict_expected"] == api["verdict"]
        assert seen["pairs"] == str(api["pairs"]) and seen["labelled"] == str(api["labelled"])
        rev = api["revision"]["candidate"]  # the revision the evidence is about
        assert seen["revision"] == (rev["revision"] or f"v{rev['version']}")
        assert seen["reasons"] == api["reasons"]
        for name, ev in api["metrics"].items():
            assert seen["metrics"][name] == [signed(ev[k]) for k in ("estimate", "lower", "upper")]
            assert seen["needed"][name] == _needed_text(ev.get("needed"))
        assert seen["labels_waiting"] == str(seen["labels_waiting_api"])
        assert seen["history_rows"] == seen["history_api"] >= 1
        assert seen["drift_rows"] == seen["drift_api"] == 7  # six inputs and the output
        assert seen["latency_bars"] == 6 and seen["p50_api"] > 0
        assert seen["band"] == 1  # the interval drawn as it narrowed
        assert seen["quality_points"] >= 1
        first, second = seen["growth"]
        assert second > first, "the page did not update with new data"
        assert seen["screenshot"].stat().st_size > 20_000


async def test_scorecard_shows_the_noise_floor(tmp_path: Path) -> None:
    """A route with a noise candidate: each other candidate's card shows the floor the API
    gives, and the noise candidate's card says hold."""
    from shadowroute.runtime import embedded_stack
    from test_outcomes import _answer, _config, _drive, _k, _settled, _truth
    from upstreams import ModelServer

    prod = await ModelServer(lambda s: _answer(_truth(_k(s)) if _k(s) % 5 else 0)).start()
    good = await ModelServer(lambda s: _answer(_truth(_k(s)))).start()
    cfg = _config(tmp_path, prod.url, [{"name": "good", "url": good.url}], noise={"fraction": 1})
    try:
        async with embedded_stack(cfg) as stack, pw_api.async_playwright() as pw:
            await _drive(stack, 200, _truth)
            cand = await _settled(stack, "good", 200, 200)
            noise = await _settled(stack, "noise", 200, 200)
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1600})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"http://127.0.0.1:{stack.admin_port}/")
                floor = '[data-candidate="good"] .noise-floor'
                await page.wait_for_selector(floor, timeout=15_000)
                disagreement = await page.inner_text(f'{floor} [data-field="noise-disagreement"] b')
                pairs = await page.inner_text(f'{floor} [data-field="noise-pairs"] b')
                acc = await page.inner_text(f'{floor} tr[data-floor-metric="accuracy"] td.estimate')
                badge = await page.inner_text('[data-candidate="noise"] .badge.verdict')
                no_floor = await page.locator('[data-candidate="noise"] .noise-floor').count()
            finally:
                await browser.close()
    finally:
        await prod.stop()
        await good.stop()
    assert errors == []
    f = cand["noise_floor"]
    assert disagreement == f"{100 * f['disagreement']:.1f}%" and pairs == str(f["pairs"]) == "200"
    assert acc == signed(f["metrics"]["accuracy"]["estimate"])
    assert badge.lower() == noise["verdict"] == "hold" and no_floor == 0
