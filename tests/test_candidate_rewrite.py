"""Candidates served under their own names: the path, the model name in it and the headers a
candidate is sent. Against real model servers (aiohttp, Open Inference v2 paths as MLServer
and KServe serve them): a server answers only under its own model name, as they do."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxyutil import make_config, running_proxy, settle
from shadowroute.core.config import ConfigError, Rewrite, parse_config
from shadowroute.dataplane.rewrite import Rewriter, replace_model, without_headers
from upstreams import raw_request


class OipServer:
    """An Open Inference (v2) model server serving one model, ``name``, whose prediction is
    the first input's first value plus ``add``; anything else is 404, as model servers do."""

    def __init__(self, name: str, add: float) -> None:
        self.name = name
        self.add = add
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def infer(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if request.match_info["model"] != self.name:
            return web.json_response({"error": f"Model {request.match_info['model']} not found"},
                                     status=404)  # fmt: skip
        doc = await request.json()
        x = float(doc["inputs"][0]["data"][0])
        out = {"name": "out", "shape": [1], "datatype": "FP64", "data": [x + self.add]}
        return web.json_response({"model_name": self.name, "outputs": [out]})

    async def __aenter__(self) -> OipServer:
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        app.router.add_post("/v2/models/{model}/versions/{v}/infer", self.infer)
        app.router.add_post("/predict", self.fixed)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def fixed(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        doc = await request.json()
        out = {"name": "out", "shape": [1], "datatype": "FP64",
               "data": [float(doc["inputs"][0]["data"][0]) + self.add]}  # fmt: skip
        return web.json_response({"model_name": self.name, "outputs": [out]})

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[tuple[OipServer, OipServer]]:
    async with OipServer("fraud", 1.0) as prod, OipServer("fraud-v2", 2.0) as cand:
        yield prod, cand


def oip_request(path: bytes, x: int, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [x]}]})
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n" + extra
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )  # fmt: skip


def config(prod_url: str, cand: dict[str, Any]) -> Any:
    return make_config(prod_url, [cand], protocol="openinference", path_prefix="/v2/models/fraud")


async def test_a_candidate_under_its_own_model_name_is_compared() -> None:
    async with servers() as (prod, cand):
        cfg = config(prod.url, {"name": "fraud-v2", "url": cand.url,
                                "rewrite": {"model": "fraud-v2"}})  # fmt: skip
        async with running_proxy(cfg) as (dp, sink):
            for i in range(20):
                path = b"/v2/models/fraud/infer" if i % 2 else b"/v2/models/fraud/versions/3/infer"
                out = await raw_request(dp.port, oip_request(path + b"?trace=%d" % i, i))
                assert out.startswith(b"HTTP/1.1 200"), out
                assert b'"model_name": "fraud"' in out  # the client gets production's answer
            await settle(dp)
    records = sink.decoded()
    assert len(records) == 20
    for rec in records:
        assert rec["candidate"]["status"] == 200 and rec["candidate"]["error"] is None
        assert rec["candidate"]["output"][0] == rec["production"]["output"][0] + 1.0
    assert all(p.startswith("/v2/models/fraud-v2/") for p in cand.paths)
    assert "/v2/models/fraud-v2/versions/3/infer?trace=0" in cand.paths
    assert all(p.startswith("/v2/models/fraud/") for p in prod.paths)


async def test_without_a_rewrite_the_candidate_answers_404_and_it_shows() -> None:
    """What the rewrite is for: the same candidate without it fails every mirror."""
    async with servers() as (prod, cand):
        cfg = config(prod.url, {"name": "fraud-v2", "url": cand.url})
        async with running_proxy(cfg) as (dp, sink):
            for i in range(5):
                out = await raw_request(dp.port, oip_request(b"/v2/models/fraud/infer", i))
                assert out.startswith(b"HTTP/1.1 200")
            await settle(dp)
    assert [r["candidate"]["error"] for r in sink.decoded()] == ["http_4xx"] * 5


async def test_a_fixed_path_and_headers_of_its_own() -> None:
    async with servers() as (prod, cand):
        cfg = config(
            prod.url,
            {
                "name": "fraud-v2",
                "url": cand.url,
                "headers": {"X-Api-Key": "candidate-key"},
                "rewrite": {"path": "/predict", "remove_headers": ["X-Debug"]},
            },
        )
        extra = b"X-Api-Key: client-key\r\nX-Debug: 1\r\nX-Keep: k\r\n"
        async with running_proxy(cfg) as (dp, sink):
            out = await raw_request(dp.port, oip_request(b"/v2/models/fraud/infer?a=1", 7, extra))
            assert out.startswith(b"HTTP/1.1 200")
            await settle(dp)
    assert cand.paths == ["/predict?a=1"]
    seen = cand.headers[0]
    assert seen["x-api-key"] == "candidate-key"  # its own header replaced the client's
    assert "x-debug" not in seen and seen["x-keep"] == "k"
    # production is sent what the client sent
    assert prod.headers[0]["x-api-key"] == "client-key" and prod.headers[0]["x-debug"] == "1"
    [rec] = sink.decoded()
    assert rec["candidate"]["output"] == [9.0] and rec["production"]["output"] == [8.0]


# --- the pure parts ------------------------------------------------------------------------------

TARGETS = {
    # case: (route prefix, rewrite, client target, candidate target)
    "model_kserve": ("/v1/models/m", {"model": "m2"}, b"/v1/models/m:predict",
                     b"/v1/models/m2:predict"),
    "model_oip_version": ("/", {"model": "m2"}, b"/v2/models/m/versions/1/infer?x=1",
                          b"/v2/models/m2/versions/1/infer?x=1"),
    "model_tfserving_labels": ("/", {"model": "m2"}, b"/v1/models/m/labels/stable:classify",
                               b"/v1/models/m2/labels/stable:classify"),
    "model_absent": ("/", {"model": "m2"}, b"/predict", b"/predict"),
    "prefix": ("/score", {"path_prefix": "/api/score"}, b"/score/a?b=c", b"/api/score/a?b=c"),
    "prefix_and_model": ("/v1/models/m", {"path_prefix": "/v1/models/m", "model": "m9"},
                         b"/v1/models/m:predict", b"/v1/models/m9:predict"),
    "fixed": ("/x", {"path": "/only"}, b"/x/y?q", b"/only?q"),
    "fixed_with_tail": ("/x", {"path": "/base{tail}"}, b"/x/y/z", b"/base/y/z"),
    "nothing": ("/", {}, b"/a?b", b"/a?b"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TARGETS))
def test_the_target_a_candidate_is_sent(case: str) -> None:
    prefix, rewrite, url, expected = TARGETS[case]
    rw = Rewriter(prefix.encode(), Rewrite.model_validate(rewrite), frozenset())
    assert rw.target(url) == expected


def test_headers_left_out_by_name_in_any_case() -> None:
    block = b"Accept: */*\r\nX-Debug: 1\r\nx-debug: 2\r\nX-Debugger: 3\r\n"
    assert without_headers(block, frozenset({b"x-debug"})) == b"Accept: */*\r\nX-Debugger: 3\r\n"
    assert without_headers(b"", frozenset({b"a"})) == b""
    assert replace_model(b"/v2/models//infer", b"m") == b"/v2/models//infer"


BAD = {
    "both_paths": ({"rewrite": {"path": "/a", "path_prefix": "/b"}}, "kserve-v1", "not both"),
    "relative_path": ({"rewrite": {"path": "a"}}, "kserve-v1", "must start with '/'"),
    "path_with_query": ({"rewrite": {"path": "/a?b=1"}}, "kserve-v1", "'?'"),
    "path_with_space": ({"rewrite": {"path_prefix": "/a b"}}, "kserve-v1", "spaces"),
    "bad_model_name": ({"rewrite": {"model": "a/b"}}, "kserve-v1", "rewrite.model"),
    "model_without_model_path": ({"rewrite": {"model": "m2"}}, "openai", "names the model in"),
    "bad_header": ({"rewrite": {"remove_headers": ["X: y"]}}, "kserve-v1", "not header names"),
    "unknown_key": ({"rewrite": {"modle": "m2"}}, "kserve-v1", "modle"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_rewrite_is_a_config_error(case: str) -> None:
    cand, protocol, words = BAD[case]
    doc = {
        "routes": [
            {
                "name": "r",
                "protocol": protocol,
                "task": "regression" if protocol != "openai" else "text",
                "production": {"name": "p", "url": "http://p:1"},
                "candidates": [{"name": "c", "url": "http://c:1", **cand}],
            }
        ]
    }
    with pytest.raises(ConfigError) as err:
        parse_config(doc, environ={})
    assert words in str(err.value)
