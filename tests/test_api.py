"""The control plane over real HTTP: health, metrics, mirroring switch, labels intake, OpenAPI."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import httpx
import orjson
import pytest
from aiohttp import web

from proxyutil import make_config, running_proxy
from shadowroute.api.app import ControlContext, create_app
from shadowroute.api.labels import KAFKA_NOTE, label_routes
from shadowroute.api.metrics import DataPlaneCollector, new_registry
from shadowroute.api.openapi import document
from shadowroute.core.config import Config
from shadowroute.core.records import LabelRecord
from shadowroute.runtime.admin import dataplane_context
from upstreams import ModelServer, raw_request


class ListWriter:
    def __init__(self) -> None:
        self.labels: list[LabelRecord] = []

    async def write_labels(self, labels: Sequence[LabelRecord]) -> None:
        self.labels.extend(labels)


@pytest.fixture
async def prod() -> AsyncIterator[ModelServer]:
    s = await ModelServer().start()
    yield s
    await s.stop()


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_health_metrics_and_mirroring_switch(prod: ModelServer) -> None:
    cfg = make_config(
        prod.url, [{"name": "c", "url": prod.url}], top={"admin": {"token": "s3cret"}}
    )
    async with running_proxy(cfg) as (dp, _):
        ctx = dataplane_context(cfg, dp)
        runner, base = await serve_app(create_app(ctx))
        try:
            await raw_request(dp.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            async with httpx.AsyncClient(base_url=base) as c:
                assert (await c.get("/healthz")).json() == {"status": "ok"}
                assert (await c.get("/readyz")).status_code == 200
                text = (await c.get("/metrics")).text
                for family in DataPlaneCollector.FAMILIES:
                    assert f"# TYPE {family.exposed} {family.kind}" in text, family
                assert 'shadowroute_requests_total{class="2xx",route="fraud"} 1.0' in text
                assert "request_id" not in text
                r = await c.put("/v1/mirroring", json={"enabled": False})
                assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
                auth = {"Authorization": "Bearer s3cret"}
                r = await c.put("/v1/mirroring", json={"enabled": "no"}, headers=auth)
                assert r.status_code == 400
                r = await c.put("/v1/mirroring", json={"enabled": False}, headers=auth)
                assert r.json() == {"enabled": False}
                assert dp.proxy is not None and dp.proxy.mirroring is False
                assert (await c.get("/v1/mirroring")).json() == {"enabled": False}
                routes = (await c.get("/v1/routes")).json()["routes"]
                assert routes[0]["name"] == "fraud"
                assert routes[0]["candidates"][0]["name"] == "c"
            dp.ready = False
            async with httpx.AsyncClient(base_url=base) as c:
                assert (await c.get("/readyz")).status_code == 503
        finally:
            await runner.cleanup()


async def test_labels_intake_good_bad_and_mixed(prod: ModelServer) -> None:
    cfg = make_config(prod.url, top={"admin": {"token": "tok"}})
    writer = ListWriter()
    app = create_app(bare_context(cfg))
    app.router.add_routes(label_routes(writer))
    runner, base = await serve_app(app)
    auth = {"Authorization": "Bearer tok", "Content-Type": "application/x-ndjson"}
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            ts = int(time.time() * 1000) - 60_000
            good = b'{"id": "a", "label": 1}\n{"id": "b", "label": 0, "ts": %d}\n' % ts
            r = await c.post("/v1/labels", content=good)
            assert r.status_code == 401
            assert writer.labels == []
            r = await c.post("/v1/labels", content=good, headers=auth)
            assert r.status_code == 202, r.text
            assert r.json() == {
                "accepted": 2, "rejected": 0, "duplicates": 0, "conflicts": 0, "committed": False,
                "matched": None, "waiting": None, "note": KAFKA_NOTE,
            }  # fmt: skip
            mixed = b'{"id": "c", "label": 1}\nnot json\n{"label": 3}\n{"id": "d", "label": 2}\n'
            r = await c.post("/v1/labels", content=mixed, headers=auth)
            assert r.status_code == 400
            body = r.json()
            assert body["accepted"] == 2 and body["rejected"] == 2
            assert [e["line"] for e in body["errors"]] == [2, 3]
            assert body["errors"][0]["reason"] == "unparseable"
            arr = orjson.dumps([{"id": "e", "label": "cat"}])
            r = await c.post(
                "/v1/labels", content=arr, headers={**auth, "Content-Type": "application/json"}
            )
            assert r.status_code == 202
            r = await c.post("/v1/labels", content=b"", headers=auth)
            assert r.status_code == 400
        # nothing good was dropped, in order
        assert [lab.id for lab in writer.labels] == ["a", "b", "c", "d", "e"]
        assert writer.labels[1].ts == ts
    finally:
        await runner.cleanup()


def bare_context(cfg: Config) -> ControlContext:
    return ControlContext(config=cfg, registry=new_registry(), ready=lambda: True)


async def test_openapi_describes_every_route(prod: ModelServer) -> None:
    cfg = make_config(prod.url)
    app = create_app(bare_context(cfg))
    app.router.add_routes(label_routes(ListWriter()))
    served = set()
    for resource in app.router.resources():
        info = resource.get_info()
        served.add(info.get("path") or info.get("formatter"))
    doc = document()
    documented = set(doc["paths"])
    assert served <= documented, served - documented
    runner, base = await serve_app(app)
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            got = (await c.get("/openapi.json")).json()
        assert got["openapi"].startswith("3.1")
        assert got["paths"].keys() == documented
    finally:
        await runner.cleanup()
