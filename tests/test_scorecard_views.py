"""The scorecard's per-class views, text similarity, automatic drift, label delay in human
units, the interval shown once when labels come in one batch, and "exact match" (not
"accuracy") on text routes — in headless Chromium against a real embedded stack with real
model servers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from proxyutil import settle
from shadowroute.core.config import parse_config
from shadowroute.runtime import embedded_stack
from test_outcomes import _json
from test_scorecard import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, signed
from upstreams import ModelServer, Seen

pw_api = pytest.importorskip("playwright.async_api")

CLASSES = ["cat", "dog", "owl"]
N = 150


def _k(seen: Seen) -> int:
    return int(orjson.loads(seen.body)["instances"][0]["k"])


def _truth(k: int) -> str:
    return CLASSES[k % 3]


def _fixed(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "n/a"


async def test_per_class_views_similarity_and_one_batch_of_labels(tmp_path: Path) -> None:
    # production is wrong on owls one time in two; the candidate on dogs one time in five
    prod = await ModelServer(
        lambda s: _json({"predictions": ["cat" if _k(s) % 6 == 2 else _truth(_k(s))]})
    ).start()
    cand = await ModelServer(
        lambda s: _json({"predictions": ["owl" if _k(s) % 15 == 1 else _truth(_k(s))]})
    ).start()
    text_prod = await ModelServer(lambda s: _json({"predictions": ["the cat sat"]})).start()
    text_cand = await ModelServer(lambda s: _json({"predictions": ["the cat sat down"]})).start()

    def route(name: str, prefix: str, task: str, p: ModelServer, c: ModelServer) -> dict[str, Any]:
        return {
            "name": name,
            "path_prefix": prefix,
            "protocol": "kserve-v1",
            "task": task,
            "production": {"name": f"{name}-prod", "url": p.url},
            "candidates": [{"name": f"{name}-cand", "url": c.url}],
            "policy": {"min_pairs": 10, "min_labelled": 10},
            "drift": {"auto": True, "max_fields": 2},
        }

    cfg = parse_config(
        {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "comparator": {"state_path": str(tmp_path / "state.sqlite")},
            "routes": [
                route("cls", "/cls", "classification", prod, cand),
                route("txt", "/txt", "text", text_prod, text_cand),
            ],
        },
        environ={},
    )
    try:
        async with embedded_stack(cfg) as stack, pw_api.async_playwright() as pw:
            proxy = f"http://127.0.0.1:{stack.proxy_port}"
            admin = f"http://127.0.0.1:{stack.admin_port}"
            async with httpx.AsyncClient(base_url=proxy) as client:
                for k in range(N):
                    body = {"instances": [{"k": k, "size": k % 7, "colour": "red", "x": 1}]}
                    r = await client.post("/cls", json=body, headers={"x-request-id": f"c-{k}"})
                    assert r.status_code == 200
                for k in range(20):
                    body = {"instances": [{"k": k}]}
                    r = await client.post("/txt", json=body, headers={"x-request-id": f"t-{k}"})
                    assert r.status_code == 200
            await settle(stack.dataplane)
            async with httpx.AsyncClient(base_url=admin) as client:
                # every label in one batch
                labels = [{"id": f"c-{k}", "label": _truth(k)} for k in range(N)]
                labels += [{"id": f"t-{k}", "label": "the cat sat"} for k in range(20)]
                assert (await client.post("/v1/labels", json=labels)).status_code in (200, 202)
                for _ in range(200):
                    d = (await client.get("/v1/routes/cls/candidates/cls-cand/decision")).json()
                    t = (await client.get("/v1/routes/txt/candidates/txt-cand/decision")).json()
                    if d["labelled"] >= N and t["labelled"] >= 20:
                        break
                    await asyncio.sleep(0.05)
                scores = (await client.get("/v1/routes/cls/candidates/cls-cand/scores")).json()
                tscores = (await client.get("/v1/routes/txt/candidates/txt-cand/scores")).json()
                production = (await client.get("/v1/routes/cls/production")).json()
                tproduction = (await client.get("/v1/routes/txt/production")).json()
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 2400})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{admin}/")
                card = '[data-candidate="cls-cand"]'
                await page.wait_for_selector(f"{card} table.per-class", timeout=15_000)
                seen: dict[str, Any] = {"rows": {}}
                for item in scores["classes"]["per_class"]:
                    row = f'{card} tr[data-class="{item["class"]}"]'
                    seen["rows"][item["class"]] = [
                        await page.inner_text(f"{row} td.support"),
                        await page.inner_text(f"{row} td.recall-diff"),
                        await page.inner_text(f"{row} td.recall-interval"),
                    ]
                conf = f'{card} table.confusion[data-side="production"]'
                seen["owl_as_cat"] = await page.inner_text(
                    f'{conf} tr[data-label="owl"] td:nth-of-type(1)'
                )
                seen["interval_now"] = await page.locator(f"{card} .interval-now").count()
                seen["interval_n"] = await page.get_attribute(f"{card} .interval-now", "data-n")
                seen["band"] = await page.locator(f"{card} svg.interval-chart").count()
                tcard = '[data-candidate="txt-cand"]'
                await page.wait_for_selector(f"{tcard} .similarity", timeout=15_000)
                seen["similarity"] = await page.inner_text(f'{tcard} [data-field="similarity"] b')
                seen["text_metric"] = await page.inner_text(
                    f'{tcard} tr[data-metric="exact_match"] td:first-child'
                )
                tsection = await page.inner_text('section[data-route="txt"]')
                seen["drift_auto"] = await page.inner_text(
                    'section[data-route="cls"] [data-field="drift-auto"]'
                )
                seen["durations"] = await page.evaluate(
                    "[850, 42000, 11520000, 187200000, 3600000].map(duration)"
                )
                seen["delay"] = await page.inner_text(
                    'section[data-route="cls"] [data-field="label-delay"]'
                )
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "scorecard-views.png"), full_page=True)
            finally:
                await browser.close()
    finally:
        for s in (prod, cand, text_prod, text_cand):
            await s.stop()
    assert errors == []
    views = scores["classes"]
    assert views["classes"] == ["cat", "dog", "owl"]
    for item in views["per_class"]:
        rd = item["recall_diff"]
        assert seen["rows"][item["class"]] == [
            str(item["support"]),
            signed(rd["estimate"]),
            f"[{signed(rd['lower'])}, {signed(rd['upper'])}]",
        ]
    # production calls owls cats one time in two: 25 of the 50 owls
    owl = views["confusion"]["labels"].index("owl")
    assert seen["owl_as_cat"] == str(views["confusion"]["production"][owl][0]) == "25"
    # the labels came in one batch: one interval, at every labelled pair, no made-up history
    assert seen["interval_now"] == 1 and seen["band"] == 0 and seen["interval_n"] == str(N)
    assert seen["similarity"] == _fixed(tscores["similarity"]["mean"])
    assert 0.0 < tscores["similarity"]["mean"] < 1.0
    assert seen["text_metric"] == "exact match"
    assert tproduction["metric"] == "exact_match" and "accuracy" not in tsection
    auto = production["drift_auto"]
    assert auto["fields"] == ["$.instances[*].k", "$.instances[*].size"]
    assert auto["untracked_values"] == 2 * N  # colour and x
    assert seen["drift_auto"].startswith("automatic: 2 of at most 2 input fields tracked")
    assert f"{2 * N} values of further fields counted" in seen["drift_auto"]
    assert seen["durations"] == ["850 ms", "42 s", "3 h 12 min", "2 d 4 h", "1 h"]
    assert " / " in seen["delay"] and "n/a" not in seen["delay"]
