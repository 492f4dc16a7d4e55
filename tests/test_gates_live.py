"""Deploy gates on a running stack, driven exactly as each tool drives them.

A real proxy in front of real model servers, real traffic and labels: revision ``a`` of the
candidate is better than production, revision ``b`` worse. Argo Rollouts (the shipped
ClusterAnalysisTemplate's URL, jsonPath and conditions), Flagger (the shipped Canary's webhooks,
POSTing its payload), Spinnaker (the shipped stage's URL and statusJsonPath) and CI
(``shadowroute decision``) promote ``a``, stop on ``b``, hold while ``b``'s evidence is short,
and refuse to pass on evidence about another revision than the one they ask about.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from documented import assert_documented
from shadowroute.api.gates import MAX_FLAGGER_BODY
from shadowroute.runtime import embedded_stack
from test_gates import (
    argo_measurement,
    argo_metric,
    argo_run,
    flagger_passes,
    flagger_payload,
    flagger_webhooks,
    spinnaker_stage,
    spinnaker_status,
)
from test_revisions import CAND, ROUTE, TOKEN, _cli, _labels, _serve_config, _servers, _traffic

Doc = dict[str, Any]


class Tools:
    """Each deploy tool, pointed at a running admin API."""

    def __init__(self, client: httpx.AsyncClient, api: str) -> None:
        self.client = client
        self.api = api

    async def argo(self, revision: str) -> tuple[str, list[str]]:
        """An AnalysisRun of the shipped template: its phase and its measurements."""
        metric = argo_metric(self.api, ROUTE, CAND, revision)
        measurements: list[str] = []
        for _ in range(int(metric["inconclusiveLimit"]) + 8):  # bounded: the run ends by then
            r = await self.client.get(metric["provider"]["web"]["url"])
            assert_documented(r.json(), "GateAnswer")
            measurements.append(argo_measurement(metric, r.status_code, r.content))
            it = iter(measurements)
            phase, _ = argo_run(metric, lambda it=it: next(it, None))
            if phase != "Running":
                return phase, measurements
        raise AssertionError(measurements)

    async def flagger(
        self, hook: str, checksum: str, revision: str | None = None
    ) -> httpx.Response:
        webhook = flagger_webhooks(self.api)[hook]
        payload = flagger_payload(webhook, checksum, revision)
        r = await self.client.post(webhook["url"], json=payload)
        assert_documented(r.json(), "GateAnswer")
        return r

    async def spinnaker(self, revision: str) -> str:
        stage = spinnaker_stage(self.api, revision)
        r = await self.client.get(stage["url"])
        return spinnaker_status(stage, r.status_code, r.content)

    async def ci(self, revision: str) -> tuple[int, Doc]:
        code, out = await asyncio.to_thread(
            _cli, ["decision", ROUTE, CAND, "--api", self.api, "--revision", revision]
        )
        return code, json.loads(out)


async def _decision(client: httpx.AsyncClient, base: str, ok: Any) -> Doc:
    for _ in range(300):  # bounded: 30 s
        doc: Doc = (await client.get(f"{base}/decision")).json()
        if ok(doc):
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(doc)


async def test_a_canary_through_the_gates_promotes_the_better_revision_and_stops_the_worse(
    tmp_path: Path,
) -> None:
    async with _servers() as (prod, cand, behave):
        cfg = _serve_config(tmp_path, prod.url, cand.url)
        async with embedded_stack(cfg) as stack, httpx.AsyncClient(timeout=10) as client:
            proxy = f"http://127.0.0.1:{stack.proxy_port}"
            api = f"http://127.0.0.1:{stack.admin_port}"
            base = f"{api}/v1/routes/{ROUTE}/candidates/{CAND}"
            auth = {"authorization": f"Bearer {TOKEN}"}
            tools = Tools(client, api)

            # revision a (the config's): better than production
            await _traffic(client, proxy, 0, 800)
            await _labels(client, api, 0, 800)
            d = await _decision(client, base, lambda d: d["labelled"] == 800)
            assert d["verdict"] == "promote", d["reasons"]

            assert await tools.argo("a") == ("Successful", ["Successful"])
            for hook in ("pre-rollout", "confirm-promotion"):
                r = await tools.flagger(hook, checksum="a")
                assert flagger_passes(r.status_code) and r.status_code == 200, r.text
                body = r.json()
                assert body["verdict"] == "promote" and body["revision"] == "a"
                assert body["flagger"]["name"] == "fraud-v8"
                assert body["decision"]["revision"]["candidate"]["revision"] == "a"
            r = await tools.flagger("rollback", checksum="a")
            assert r.status_code == 412 and not flagger_passes(r.status_code)  # no rollback
            assert await tools.spinnaker("a") == "SUCCEEDED"
            code, doc = await tools.ci("a")
            assert code == 0 and doc["verdict"] == "promote"
            r = await client.get(f"{api}/v1/gates/check/{ROUTE}/{CAND}", params={"revision": "a"})
            assert r.status_code == 200 and r.json()["pass"] is True

            # another revision than the evidence's: nothing passes (metadata.revision, an
            # image digest, is what Flagger asks about when given)
            phase, seen = await tools.argo("sha256:other")
            assert phase == "Inconclusive" and set(seen) == {"Inconclusive"}
            for hook in ("pre-rollout", "confirm-promotion", "rollback"):
                r = await tools.flagger(hook, checksum="a", revision="sha256:other")
                assert r.status_code == 412, (hook, r.text)
                body = r.json()
                assert body["revision"] == "sha256:other" and body["revision_matches"] is False
                assert "evidence is for revision" in body["reasons"][1]
            assert await tools.spinnaker("sha256:other") == "RUNNING"

            # the pipeline rolls out revision b (worse) and says so
            behave.good = False
            r = await client.put(f"{base}/revision", json={"revision": "b"}, headers=auth)
            assert r.status_code == 200
            # no pair of b yet: the evidence is still a's, so b is held, and a's promote
            # does not pass for b
            assert await tools.argo("b") == ("Inconclusive", ["Inconclusive"] * 121)
            r = await tools.flagger("confirm-promotion", checksum="b")
            assert r.status_code == 412 and r.json()["evidence_revision"] == d["revision"]["id"]

            # b's first pairs, unlabelled: evidence about b, too little for a verdict: hold
            await _traffic(client, proxy, 800, 40)
            held = await _decision(client, base, lambda d: d["pairs"] == 40)
            assert held["verdict"] == "hold" and held["revision"]["candidate"]["revision"] == "b"
            phase, seen = await tools.argo("b")
            assert phase == "Inconclusive" and set(seen) == {"Inconclusive"}
            for hook in ("pre-rollout", "confirm-promotion", "rollback"):
                r = await tools.flagger(hook, checksum="b")
                assert r.status_code == 412, (hook, r.text)  # hold: never 5xx, never 204
                assert r.json()["verdict"] == "hold" and r.json()["revision_matches"] is True
            assert await tools.spinnaker("b") == "RUNNING"
            code, doc = await tools.ci("b")
            assert code == 3 and doc["verdict"] == "hold"

            # b's evidence shows it worse: every tool stops it
            await _traffic(client, proxy, 840, 80)
            await _labels(client, api, 800, 120)
            d = await _decision(client, base, lambda d: d["labelled"] == 120)
            assert d["verdict"] == "reject", d["reasons"]
            assert await tools.argo("b") == ("Failed", ["Failed"])
            for hook in ("pre-rollout", "confirm-promotion"):
                r = await tools.flagger(hook, checksum="b")
                assert r.status_code == 412 and r.json()["verdict"] == "reject"
            r = await tools.flagger("rollback", checksum="b")
            assert r.status_code == 200 and r.json()["outcome"] == "pass"  # roll back
            assert await tools.spinnaker("b") == "TERMINAL"
            code, doc = await tools.ci("b")
            assert code == 4 and doc["verdict"] == "reject"

            # the stale revision: a's checksum, asked now that the evidence is b's. a's own
            # verdict was promote, b's is reject: neither counts for a
            phase, _ = await tools.argo("a")
            assert phase == "Inconclusive"
            for hook in ("pre-rollout", "confirm-promotion", "rollback"):
                r = await tools.flagger(hook, checksum="a")
                assert r.status_code == 412, hook
                body = r.json()
                assert body["verdict"] == "hold" and body["decision"]["asked_revision"] == "a"
            assert await tools.spinnaker("a") == "RUNNING"
            r = await client.get(f"{api}/v1/gates/check/{ROUTE}/{CAND}", params={"revision": "a"})
            assert r.status_code == 412

            metrics = (await client.get(f"{api}/metrics")).text
            assert 'shadowroute_gate_requests_total{gate="argo",outcome="pass"} 1.0' in metrics
            assert (
                'shadowroute_gate_requests_total{gate="flagger-rollback",outcome="pass"} 1.0'
                in (metrics)
            )


async def test_bad_gate_requests_get_a_clear_4xx(tmp_path: Path) -> None:
    async with _servers() as (prod, cand, _):
        cfg = _serve_config(tmp_path, prod.url, cand.url)
        async with embedded_stack(cfg) as stack, httpx.AsyncClient(timeout=10) as client:
            api = f"http://127.0.0.1:{stack.admin_port}"
            flagger = f"{api}/v1/gates/flagger/{ROUTE}/{CAND}"
            good = {"name": "fraud-v8", "namespace": "ml", "phase": "Progressing",
                    "checksum": "a", "metadata": {}}  # fmt: skip

            async def expect(r: httpx.Response, status: int, text: str) -> None:
                assert r.status_code == status, r.text
                assert text in r.json()["error"], r.json()

            for kind in ("argo", "spinnaker", "check"):
                url = f"{api}/v1/gates/{kind}"
                await expect(await client.get(f"{url}/nope/{CAND}?revision=a"), 404,
                             "unknown route 'nope'")  # fmt: skip
                await expect(await client.get(f"{url}/{ROUTE}/nope?revision=a"), 404,
                             "has no candidate 'nope'")  # fmt: skip
                await expect(await client.get(f"{url}/{ROUTE}/{CAND}"), 400,
                             "needs the revision deployed")  # fmt: skip
                await expect(await client.get(f"{url}/{ROUTE}/{CAND}?revision="), 400,
                             "needs the revision deployed")  # fmt: skip
                long = {"revision": "x" * 300}
                await expect(await client.get(f"{url}/{ROUTE}/{CAND}", params=long), 400,
                             "printable")  # fmt: skip
            await expect(await client.post(f"{flagger}/confirm-rollout", json=good), 404,
                         "unknown Flagger hook 'confirm-rollout'")  # fmt: skip
            await expect(await client.post(f"{api}/v1/gates/flagger/{ROUTE}/nope/rollback",
                                           json=good), 404, "has no candidate")  # fmt: skip
            hook = f"{flagger}/confirm-promotion"
            await expect(await client.post(hook, content=b"{"), 400, "not JSON")
            await expect(await client.post(hook, json=[good]), 400, "expected a JSON object")
            await expect(await client.post(hook, json={**good, "name": 5}), 400, "'name'")
            await expect(await client.post(hook, json={**good, "metadata": {"revision": 2}}), 400,
                         "'metadata'")  # fmt: skip
            await expect(await client.post(hook, json={**good, "checksum": ""}), 400,
                         "needs the revision deployed")  # fmt: skip
            big = {**good, "metadata": {"k": "x" * MAX_FLAGGER_BODY}}
            await expect(await client.post(hook, json=big), 413, "over")
            r = await client.post(hook, json=good)
            assert r.status_code == 412 and r.json()["verdict"] == "hold"  # no evidence yet

            async def chunked(parts: list[bytes]) -> Any:  # no Content-Length: read bounded
                for part in parts:
                    yield part

            body = json.dumps(good).encode()
            r = await client.post(hook, content=chunked([body[:10], body[10:]]))
            assert r.status_code == 412 and r.json()["flagger"]["checksum"] == "a"
            r = await client.post(hook, content=chunked([b" " * 8192] * 9))
            await expect(r, 413, "over")

            metrics = (await client.get(f"{api}/metrics")).text
            line = 'shadowroute_gate_requests_total{gate="flagger-confirm-promotion",'
            assert line + 'outcome="bad_request"} 7.0' in metrics
            assert 'shadowroute_gate_requests_total{gate="argo",outcome="not_found"} 2.0' in metrics
            assert 'shadowroute_gate_requests_total{gate="flagger",outcome="not_found"} 1.0' in (
                metrics
            )


async def test_with_a_read_token_the_gates_need_it_like_every_read(tmp_path: Path) -> None:
    async with _servers() as (prod, cand, _):
        cfg = _serve_config(tmp_path, prod.url, cand.url)
        admin = cfg.admin.model_copy(update={"read_token": SecretStr("rt")})
        cfg = cfg.model_copy(update={"admin": admin})
        async with embedded_stack(cfg) as stack, httpx.AsyncClient(timeout=10) as client:
            api = f"http://127.0.0.1:{stack.admin_port}"
            hook = f"{api}/v1/gates/flagger/{ROUTE}/{CAND}/confirm-promotion"
            payload = {"name": "fraud-v8", "namespace": "ml", "phase": "Progressing",
                       "checksum": "a"}  # fmt: skip
            argo = f"{api}/v1/gates/argo/{ROUTE}/{CAND}?revision=a"
            assert (await client.post(hook, json=payload)).status_code == 401
            assert (await client.get(argo)).status_code == 401
            for token in ("rt", TOKEN):
                auth = {"authorization": f"Bearer {token}"}
                r = await client.post(hook, json=payload, headers=auth)
                assert r.status_code == 412 and r.json()["verdict"] == "hold"
                r = await client.get(argo, headers=auth)
                assert r.status_code == 200 and r.json()["verdict"] == "hold"
