"""Security: write endpoints need the token, no open proxy, secrets never leave the process
(records, log lines, Kafka), request-id header injection refused."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from relhelp import post, report
from relkafka import consume_keys, kafka_proxy, kafka_transport, unique_prefix, wait_delivered
from test_rel_hostile_input import TOKEN, ListWriter, control_context

from proxyutil import make_config, running_proxy, settle
from shadowroute.api.app import ControlContext, create_app
from shadowroute.stream.kafka import create_topics
from upstreams import ModelServer, raw_request

SECRET = "s3cr3t-Zq81"


async def test_write_endpoints_refuse_without_the_token() -> None:
    cfg = make_config("http://127.0.0.1:1", top={"admin": {"token": TOKEN}})
    state = {"on": True}
    ctx = control_context(
        cfg, ListWriter(), get_mirroring=lambda: state["on"],
        set_mirroring=lambda v: state.__setitem__("on", v),
    )  # fmt: skip
    runner = web.AppRunner(create_app_for(ctx))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    label = b'{"id": "a", "label": 1}'
    results = {}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for auth in (None, "Bearer wrong", "Basic " + TOKEN, "Bearer " + TOKEN):
                h = {"Authorization": auth} if auth else {}
                put = await c.put("/v1/mirroring", content=b'{"enabled": false}', headers=h)
                ndjson = {**h, "Content-Type": "application/x-ndjson"}
                lab = await c.post("/v1/labels", content=label, headers=ndjson)
                results[auth or "none"] = (put, lab)
    finally:
        await runner.cleanup()
    statuses = {k: [p.status_code, lab.status_code] for k, (p, lab) in results.items()}
    report("security: write endpoints need the token", statuses=statuses)
    for auth, (put, lab) in results.items():
        if auth == "Bearer " + TOKEN:
            assert put.status_code == 200 and lab.status_code == 202
        else:
            for r in (put, lab):
                assert r.status_code == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert r.json()["error"]
    assert state["on"] is False  # only the authorised PUT changed anything


def create_app_for(ctx: ControlContext) -> web.Application:
    return create_app(ctx)


async def test_no_open_proxy_only_configured_upstreams_are_reached() -> None:
    prod = await ModelServer().start()
    cand = await ModelServer().start()
    bystander = await ModelServer().start()  # must never see a request
    b = f"127.0.0.1:{bystander.port}".encode()
    attempts = {
        "absolute-uri": b"GET http://" + b + b"/x HTTP/1.1\r\nHost: " + b + b"\r\n\r\n",
        "absolute-uri-post": post().replace(b"POST /v1", b"POST http://" + b + b"/v1", 1),
        "connect": b"CONNECT " + b + b" HTTP/1.1\r\nHost: " + b + b"\r\n\r\n",
        "host-header": post().replace(b"Host: proxy.local", b"Host: " + b),
        "x-forwarded-host": post(extra=b"X-Forwarded-Host: " + b + b"\r\n"),
        "authority-path": b"GET //" + b + b"/x HTTP/1.1\r\nHost: " + b + b"\r\n\r\n",
        "userinfo": b"GET @" + b + b"/x HTTP/1.1\r\nHost: h\r\n\r\n",
        "upgrade": b"GET / HTTP/1.1\r\nHost: " + b + b"\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
    }
    statuses = {}
    try:
        async with running_proxy(make_config(prod.url, [{"name": "c", "url": cand.url}])) as (
            dp, _,
        ):  # fmt: skip
            for name, raw in attempts.items():
                if b"Connection: close" not in raw:
                    raw = raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
                out = await raw_request(dp.port, raw, timeout=5)
                statuses[name] = int(out.split(b" ", 2)[1]) if out else None
            await settle(dp)
    finally:
        for s in (prod, cand, bystander):
            await s.stop()
    report(
        "security: no open proxy", statuses=statuses, bystander_connections=bystander.connections
    )
    assert bystander.connections == 0 and bystander.seen == []
    for name in ("absolute-uri", "absolute-uri-post", "connect", "userinfo"):
        assert statuses[name] in (400, 405), (name, statuses)
    # Requests that were forwarded went to the configured production (and candidate) only.
    assert all(s.url.startswith(b"/") for s in prod.seen + cand.seen)


@pytest.mark.kafka
async def test_secrets_never_reach_records_logs_or_kafka(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prod = await ModelServer().start()
    cand = await ModelServer().start()
    transport = kafka_transport(kafka_bootstrap, unique_prefix(), tmp_path / "spool")
    await create_topics(transport)
    cfg = make_config(
        prod.url,
        [{"name": "c", "url": cand.url}],
        capture={
            "input": True,
            "drop_fields": ["ssn", "card.number"],
            "sensitive_headers": ["x-api-key"],
        },
    )
    body = b'{"instances": [[1.5]], "ssn": "%s", "card": {"number": "%s", "exp": "12/30"}}' % (
        SECRET.encode(),
        SECRET.encode(),
    )
    secrets = (
        b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
        b"Cookie: session=" + SECRET.encode() + b"\r\n"
        b"X-Api-Key: " + SECRET.encode() + b"\r\n"
    )
    caplog.set_level(logging.DEBUG)
    try:
        async with kafka_proxy(cfg, transport) as (dp, sink):
            outs = [
                await raw_request(dp.port, post(body, rid=b"sec-%d" % i, extra=secrets
                                                 + b"Connection: close\r\n"))
                for i in range(20)
            ]  # fmt: skip
            # refused and failing requests log too: they must not log the secrets either
            await raw_request(dp.port, post(body, rid=b"bad id", extra=secrets))
            await raw_request(dp.port, b"GET /x HTTP/1.1\r\n" + secrets + b"\x00\r\n\r\n")
            await settle(dp)
            await wait_delivered(sink)
    finally:
        await cand.stop()
        await prod.stop()
    keys, values = await consume_keys(kafka_bootstrap, f"{transport.topic_prefix}.pairs", 20)
    log_text = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    report(
        "security: secrets never leave the process",
        kafka_records=len(values),
        log_lines=len(caplog.records),
        secret_in_kafka=sum(SECRET.encode() in v for v in values),
        secret_in_logs=log_text.count(SECRET),
    )
    assert all(o.startswith(b"HTTP/1.1 200") for o in outs)
    assert len(values) == 20  # one pair record per request
    assert not any(SECRET.encode() in v for v in values)
    assert all(b'"exp"' in v for v in values if b'"input":{' in v)  # redaction kept the rest
    assert SECRET not in log_text
    assert len(caplog.records) > 0
    # and the production model itself still got what the client sent
    assert prod.seen[0].headers[b"authorization"] == b"Bearer " + SECRET.encode()


@pytest.mark.parametrize(
    "rid",
    [b"a\rb", b"a b", b"a\tb", b"x" * 129, b"a,b", b'a"b', b"a\x7fb", b"\xc3\xa9", b""],
    ids=["cr", "space", "tab", "over-long", "comma", "quote", "del", "non-ascii", "empty"],
)
async def test_request_id_injection_is_rejected(rid: bytes) -> None:
    prod = await ModelServer().start()
    try:
        async with running_proxy(make_config(prod.url)) as (dp, _):
            raw = post(extra=b"x-request-id: " + rid + b"\r\nConnection: close\r\n")
            out = await raw_request(dp.port, raw)
            lf = await raw_request(
                dp.port,
                post(extra=b"x-request-id: a\nx-injected: 1\r\nConnection: close\r\n"),
            )
    finally:
        await prod.stop()
    assert out.startswith(b"HTTP/1.1 400"), out[:100]
    assert b'"error"' in out
    # a bare LF ends the header line: the injected line is just another header, never a
    # second request, and nothing unsafe is echoed back
    assert b"\r\nx-injected" not in lf.split(b"\r\n\r\n")[0]
    assert all(b"x-injected: 1\r\n" not in s.url for s in prod.seen)
    assert prod.seen == [] or all(s.headers.get(b"x-request-id") == b"a" for s in prod.seen)
