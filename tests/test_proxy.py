"""The data plane against real HTTP model servers on loopback."""

from __future__ import annotations

import asyncio
import gzip
import math
from typing import cast

import httpx
import orjson
import pytest

from proxyutil import make_config, running_proxy, settle
from upstreams import ModelServer, Reply, Seen, kserve_reply, raw_request, split_response

BODY = b'{"instances": [[1.5], [2.5]]}'


def post(body: bytes = BODY, *, extra: bytes = b"", close: bool = True) -> bytes:
    conn = b"Connection: close\r\n" if close else b""
    return (
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: proxy.local\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s"
        % (len(body), conn, extra, body)
    )


@pytest.fixture
async def prod() -> ModelServer:
    s = await ModelServer().start()
    yield s
    await s.stop()


@pytest.fixture
async def cand() -> ModelServer:
    s = await ModelServer().start()
    yield s
    await s.stop()


async def test_client_gets_production_response_byte_for_byte(prod: ModelServer) -> None:
    gz = gzip.compress(b'{"predictions":[1,2,3]}')

    def reply(seen: Seen) -> Reply:
        return Reply(
            status=201,
            body=gz,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-encoding", b"gzip"),
                (b"ce-source", b"model-server"),
                (b"keep-alive", b"timeout=5"),
            ],
        )

    prod.behave = reply
    direct = await raw_request(prod.port, post())
    async with running_proxy(make_config(prod.url)) as (dp, _):
        via = await raw_request(dp.port, post())
    d_status, d_headers, d_body = split_response(direct)
    v_status, v_headers, v_body = split_response(via)
    assert v_status == d_status == b"HTTP/1.1 201 OK"
    assert v_body == d_body == gz
    # every end-to-end header production sent reaches the client unchanged
    for name in (b"content-type", b"content-encoding", b"ce-source", b"content-length"):
        assert v_headers[name] == d_headers[name]
    assert b"keep-alive" not in v_headers  # hop-by-hop
    assert v_headers[b"x-request-id"]


async def test_forwarded_request_and_hop_by_hop_headers(prod: ModelServer) -> None:
    async with running_proxy(make_config(prod.url)) as (dp, _):
        extra = (
            b"X-Request-Id: abc-123\r\nKeep-Alive: timeout=5\r\nX-Custom: yes\r\n"
            b"X-Forwarded-For: 10.1.1.1\r\nConnection: close, X-Drop-Me\r\nX-Drop-Me: 1\r\n"
        )
        out = await raw_request(dp.port, post(extra=extra, close=False))
    status, headers, body = split_response(out)
    assert status.startswith(b"HTTP/1.1 200")
    assert headers[b"x-request-id"] == b"abc-123"
    seen = prod.seen[0]
    assert seen.body == BODY
    assert seen.url == b"/v1/models/m:predict"
    assert seen.headers[b"x-request-id"] == b"abc-123"
    assert seen.headers[b"x-custom"] == b"yes"
    assert seen.headers[b"x-forwarded-for"] == b"10.1.1.1, 127.0.0.1"
    assert seen.headers[b"x-forwarded-proto"] == b"http"
    assert seen.headers[b"x-forwarded-host"] == b"proxy.local"
    assert seen.headers[b"host"] == f"127.0.0.1:{prod.port}".encode()
    assert b"keep-alive" not in seen.headers
    assert b"x-drop-me" not in seen.headers


async def test_request_id_generated_and_shared_with_candidate(
    prod: ModelServer, cand: ModelServer
) -> None:
    cfg = make_config(prod.url, [{"name": "c1", "url": cand.url}])
    async with running_proxy(cfg) as (dp, sink):
        out = await raw_request(dp.port, post())
        await settle(dp)
    _, headers, _ = split_response(out)
    rid = headers[b"x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0  # 128 random bits, hex
    assert prod.seen[0].headers[b"x-request-id"] == rid
    assert cand.seen[0].headers[b"x-request-id"] == rid
    assert cand.seen[0].headers[b"x-shadow-request"] == b"1"
    assert cand.seen[0].body == BODY
    [rec] = sink.decoded()
    assert rec["id"] == rid.decode()
    assert rec["production"]["output"] == [2.5, 3.5]
    assert rec["candidate"]["output"] == [2.5, 3.5]


@pytest.mark.parametrize(
    "bad_id", [b"has space", b"a" * 200, b"semi;colon", b'quote"d', b"comma,sep"]
)
async def test_header_injection_via_request_id_is_rejected(
    prod: ModelServer, bad_id: bytes
) -> None:
    async with running_proxy(make_config(prod.url)) as (dp, _):
        out = await raw_request(dp.port, post(extra=b"X-Request-Id: " + bad_id + b"\r\n"))
    status, _, body = split_response(out)
    assert status.startswith(b"HTTP/1.1 400")
    assert b"x-request-id" in body
    assert prod.seen == []


async def test_production_unreachable_gives_502_and_timeout_504() -> None:
    dead = await ModelServer().start()
    url = dead.url
    await dead.stop()
    async with running_proxy(make_config(url)) as (dp, _):
        out = await raw_request(dp.port, post())
    status, headers, body = split_response(out)
    assert status.startswith(b"HTTP/1.1 502")
    assert headers[b"content-type"] == b"application/json"
    assert orjson.loads(body)["error"] == "production is unreachable"

    slow = await ModelServer(lambda s: Reply(body=b"{}", delay=1.0)).start()
    cfg = make_config(slow.url)
    cfg = cfg.model_copy(
        update={
            "routes": [
                cfg.routes[0].model_copy(
                    update={
                        "production": cfg.routes[0].production.model_copy(update={"timeout_s": 0.2})
                    }
                )
            ]
        }
    )
    async with running_proxy(cfg) as (dp, _):
        out = await raw_request(dp.port, post())
        assert dp.stats.requests[("fraud", "504_proxy")] == 1
    await slow.stop()
    status, _, body = split_response(out)
    assert status.startswith(b"HTTP/1.1 504")
    assert orjson.loads(body)["error"] == "production did not answer in time"


async def test_keep_alive_http10_and_pipelining(prod: ModelServer) -> None:
    async with running_proxy(make_config(prod.url)) as (dp, _):
        # three pipelined requests in one write, the last one closes
        three = (
            post(close=False)
            + post(b'{"instances": [[10]]}', close=False)
            + post(b'{"instances": [[20]]}')
        )
        out = await raw_request(dp.port, three)
        assert out.count(b"HTTP/1.1 200") == 3
        bodies = [p.split(b"\r\n\r\n", 1)[1][:40] for p in out.split(b"HTTP/1.1 200")[1:]]
        assert [b.split(b"}")[0] + b"}" for b in bodies] == [
            b'{"predictions":[2.5,3.5]}',
            b'{"predictions":[11.0]}',
            b'{"predictions":[21.0]}',
        ]
        # HTTP/1.0 without keep-alive: answered, then closed
        req10 = b"POST /p HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
        out10 = await raw_request(dp.port, req10)
        status, headers, body = split_response(out10)
        assert status.startswith(b"HTTP/1.1 200") and body == b'{"predictions":[2.5,3.5]}'
        assert headers[b"connection"] == b"close"
        # keep-alive reuse with httpx: one client connection, several requests
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
            for i in range(5):
                r = await client.post("/x", content=b'{"instances": [[%d]]}' % i)
                assert r.json() == {"predictions": [i + 1.0]}
    # the proxy reused its upstream connections rather than opening one per request
    assert prod.connections <= 3


async def test_chunked_request_and_streamed_response_pass_through(prod: ModelServer) -> None:
    release = asyncio.Event()

    async def stream(seen: Seen) -> Reply:
        return Reply(
            headers=[(b"content-type", b"text/event-stream")],
            chunks=[b"data: one\n\n", b"data: two\n\n"],
            chunk_gap=0.0,
        )

    prod.behave = stream
    async with running_proxy(make_config(prod.url)) as (dp, _):
        req = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        out = await raw_request(dp.port, req)
        assert prod.seen[0].body == b"hello world"
        status, headers, body = split_response(out)
        assert headers[b"transfer-encoding"] == b"chunked"
        assert body == b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n"

        # a token stream reaches the client as it is produced, not at the end
        async def held(seen: Seen) -> Reply:
            return Reply(
                headers=[(b"content-type", b"text/event-stream")], chunks=[b"data: first\n\n"]
            )

        prod.behave = held
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        got = b""
        async with asyncio.timeout(3):
            while b"data: first" not in got:
                got += await reader.read(1024)
        writer.close()
        release.set()


async def test_expect_continue_head_204_304(prod: ModelServer) -> None:
    replies = {
        b"/204": Reply(status=204),
        b"/304": Reply(status=304, headers=[(b"etag", b'"x"')]),
    }

    def behave(seen: Seen) -> Reply:
        if seen.method == b"HEAD":
            return Reply(raw=b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        return replies.get(seen.url) or kserve_reply(seen)

    prod.behave = behave
    async with running_proxy(make_config(prod.url)) as (dp, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
        writer.write(
            b"POST /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % len(BODY)
        )
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(BODY)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200")
        body = await reader.readexactly(int(split_response(head + b"")[1][b"content-length"]))
        assert body == b'{"predictions":[2.5,3.5]}'
        # HEAD: the head only, though it announces a length; the connection stays usable
        writer.write(b"HEAD /p HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert b"content-length: 1234" in head
        writer.write(b"GET /204 HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 204")
        writer.write(b"GET /304 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 2)
        assert rest.startswith(b"HTTP/1.1 304") and rest.endswith(b"\r\n\r\n")
        writer.close()
    assert [s.method for s in prod.seen] == [b"POST", b"HEAD", b"GET", b"GET"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
        (b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400),
        (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"NONSENSE\r\n\r\n", 400),
    ],
    ids=[
        "cl-and-te",
        "two-cl",
        "absolute-uri",
        "connect",
        "upgrade",
        "huge-header",
        "many-headers",
        "garbage",
    ],
)
async def test_malformed_and_hostile_requests_are_refused(
    prod: ModelServer, raw: bytes, status: int
) -> None:
    async with running_proxy(make_config(prod.url)) as (dp, _):
        out = await raw_request(dp.port, raw)
        # the proxy still serves good requests afterwards
        ok = await raw_request(dp.port, post())
    assert out.startswith(b"HTTP/1.1 %d" % status), out[:80]
    assert orjson.loads(split_response(out)[2])["error"]
    assert ok.startswith(b"HTTP/1.1 200")
    assert len(prod.seen) == 1  # nothing from the refused request reached production


async def test_routes_by_host_and_prefix_never_elsewhere(
    prod: ModelServer, cand: ModelServer
) -> None:
    cfg = make_config(prod.url, host="models.internal", path_prefix="/v1/")
    async with running_proxy(cfg) as (dp, _):
        wrong_host = await raw_request(dp.port, b"GET /v1/x HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        wrong_path = await raw_request(
            dp.port, b"GET /admin HTTP/1.1\r\nHost: models.internal\r\n\r\n"
        )
        right = await raw_request(
            dp.port,
            b"GET /v1/x HTTP/1.1\r\nHost: models.internal:8080\r\nConnection: close\r\n\r\n",
        )
    assert wrong_host.startswith(b"HTTP/1.1 404")
    assert wrong_path.startswith(b"HTTP/1.1 404")
    assert right.startswith(b"HTTP/1.1 400") or right.startswith(b"HTTP/1.1 200")
    assert [s.url for s in prod.seen] == [b"/v1/x"]


async def test_stale_upstream_connection_is_not_reused(prod: ModelServer) -> None:
    def closing(seen: Seen) -> Reply:
        r = kserve_reply(seen)
        r.close = True
        return r

    prod.behave = closing
    async with running_proxy(make_config(prod.url)) as (dp, _):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
            for _ in range(5):
                r = await client.post("/p", content=BODY)
                assert r.status_code == 200
    assert prod.connections == 5


async def test_observed_mirror_fractions_match_configured(prod: ModelServer) -> None:
    """N requests with fractions f: the mirrored count is Binomial(N, f); we accept ±4σ
    (a false failure about once in 16,000 runs). Sampling is nested: every request mirrored
    to the 20% candidate is also mirrored to the 50% one."""
    c20 = await ModelServer().start()
    c50 = await ModelServer().start()
    cfg = make_config(
        prod.url,
        [
            {"name": "c20", "url": c20.url, "fraction": 0.2},
            {"name": "c50", "url": c50.url, "fraction": 0.5},
        ],
    )
    n = 1500
    async with running_proxy(cfg) as (dp, sink):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
            for i in range(n):
                r = await client.post("/p", content=BODY, headers={"x-request-id": f"req-{i}"})
                assert r.status_code == 200
        await settle(dp)
        stats = dp.stats.mirrors
    for server, f, name in ((c20, 0.2, "c20"), (c50, 0.5, "c50")):
        sd = math.sqrt(n * f * (1 - f))
        assert abs(len(server.seen) - n * f) < 4 * sd, (name, len(server.seen))
        assert stats[("fraud", name, "sent")] == len(server.seen)
        assert stats[("fraud", name, "sampled_out")] == n - len(server.seen)
    ids20 = {s.headers[b"x-request-id"] for s in c20.seen}
    ids50 = {s.headers[b"x-request-id"] for s in c50.seen}
    assert ids20 <= ids50
    await c20.stop()
    await c50.stop()


async def test_force_and_skip_headers_and_global_switch(
    prod: ModelServer, cand: ModelServer
) -> None:
    # The control header is the operator's: honoured from mirror.control_from (or with the
    # admin token; tests/reliability/test_rel_forgery.py covers the rest).
    trusted = {"mirror": {"control_from": ["127.0.0.1"]}}
    cfg = make_config(prod.url, [{"name": "c", "url": cand.url, "fraction": 0.0}], top=trusted)
    async with running_proxy(cfg) as (dp, _):
        await raw_request(dp.port, post())
        await raw_request(dp.port, post(extra=b"X-Shadow-Mirror: force\r\n"))
        await settle(dp)
        assert len(cand.seen) == 1
        assert b"x-shadow-mirror" not in prod.seen[1].headers  # control header not forwarded
        dp.set_mirroring(False)
        await raw_request(dp.port, post(extra=b"X-Shadow-Mirror: force\r\n"))
        await settle(dp)
        assert len(cand.seen) == 1
        dp.set_mirroring(True)
        cfg2 = make_config(prod.url, [{"name": "c", "url": cand.url, "fraction": 1.0}], top=trusted)
    async with running_proxy(cfg2) as (dp, _):
        await raw_request(dp.port, post(extra=b"X-Shadow-Mirror: skip\r\n"))
        await settle(dp)
    assert len(cand.seen) == 1
    assert len(prod.seen) == 4


@pytest.mark.parametrize(
    ("behave", "reason"),
    [
        (lambda s: Reply(reset=True), "reset"),
        (lambda s: Reply(body=b"{}", delay=1.0), "timeout"),
        (lambda s: Reply(status=503, body=b"overloaded"), "http_5xx"),
        (lambda s: Reply(body=b"{not json"), "extract_failed"),
        (lambda s: Reply(hang=True), "timeout"),
    ],
    ids=["reset", "slow", "5xx", "invalid-json", "hang"],
)
async def test_candidate_faults_change_nothing_for_the_client(
    prod: ModelServer, behave: object, reason: str
) -> None:
    bad = await ModelServer(behave).start()  # type: ignore[arg-type]
    cfg = make_config(prod.url, [{"name": "bad", "url": bad.url, "timeout_s": 0.3}])
    direct = split_response(await raw_request(prod.port, post()))
    async with running_proxy(cfg) as (dp, sink):
        via = split_response(await raw_request(dp.port, post()))
        await settle(dp, timeout=3)
        records = sink.decoded()
    await bad.stop()
    assert via[0] == direct[0] and via[2] == direct[2]
    [rec] = records
    assert rec["candidate"]["error"] == reason
    assert rec["production"]["error"] is None and rec["production"]["output"] == [2.5, 3.5]


async def test_candidate_down_is_recorded_as_connect(prod: ModelServer) -> None:
    dead = await ModelServer().start()
    url = dead.url
    await dead.stop()
    async with running_proxy(make_config(prod.url, [{"name": "dead", "url": url}])) as (dp, sink):
        out = await raw_request(dp.port, post())
        await settle(dp)
    assert out.startswith(b"HTTP/1.1 200")
    assert sink.decoded()[0]["candidate"]["error"] == "connect"


async def test_in_flight_mirrors_stay_bounded_under_a_hanging_candidate(prod: ModelServer) -> None:
    hang = await ModelServer(lambda s: Reply(hang=True)).start()
    cfg = make_config(
        prod.url, [{"name": "hang", "url": hang.url, "timeout_s": 30, "max_in_flight": 5}]
    )
    async with running_proxy(cfg) as (dp, sink):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
            for _ in range(40):
                assert (await client.post("/p", content=BODY)).status_code == 200
        target = dp.proxy.targets()[0]  # type: ignore[union-attr]
        assert target.in_flight == 5
        assert dp.stats.mirrors[("fraud", "hang", "sent")] == 5
        assert dp.stats.mirrors[("fraud", "hang", "dropped_full")] == 35
        dp.config.proxy.__dict__["mirror_drain_s"] = 0.1  # don't wait 2 s at shutdown
    await hang.stop()
    # Mirrors cut at shutdown are recorded as timeouts; the 35 dropped ones as the candidate's
    # outcome too (``dropped``): one pair record per sampled request, none production-only.
    errors = sorted(r["candidate"]["error"] for r in sink.decoded())
    assert errors == ["dropped"] * 35 + ["timeout"] * 5
    assert all(r["candidate"]["output"] is None for r in sink.decoded())
    assert sink.monitored() == []


async def test_circuit_breaker_opens_and_recovers(prod: ModelServer) -> None:
    healthy = {"on": False}

    def flaky(seen: Seen) -> Reply:
        return kserve_reply(seen) if healthy["on"] else Reply(status=500, body=b"boom")

    c = await ModelServer(flaky).start()
    cfg = make_config(
        prod.url,
        [{"name": "flaky", "url": c.url}],
        top={"mirror": {"breaker": {"failures": 3, "open_s": 0.3}}},
    )
    async with running_proxy(cfg) as (dp, sink):
        target = dp.proxy.targets()[0]  # type: ignore[union-attr]
        for _ in range(6):
            await raw_request(dp.port, post())
            await settle(dp)
        assert len(c.seen) == 3
        assert target.breaker.state == "open"
        assert dp.stats.mirrors[("fraud", "flaky", "circuit_open")] == 3
        healthy["on"] = True
        await asyncio.sleep(0.35)
        await raw_request(dp.port, post())  # the half-open probe
        await settle(dp)
        assert target.breaker.state == "closed"
        await raw_request(dp.port, post())
        await settle(dp)
        assert len(c.seen) == 5
        errors = [r["candidate"]["error"] for r in sink.decoded()]
    assert errors == ["http_5xx"] * 3 + ["circuit_open"] * 3 + [None, None]
    await c.stop()


async def test_large_bodies_are_forwarded_but_not_mirrored(
    prod: ModelServer, cand: ModelServer
) -> None:
    big = b'{"instances": [[1]], "pad": "' + b"x" * 300_000 + b'"}'
    cfg = make_config(
        prod.url, [{"name": "c", "url": cand.url}], top={"mirror": {"capture_limit_bytes": 100_000}}
    )
    async with running_proxy(cfg) as (dp, sink):
        out = await raw_request(dp.port, post(big))
        chunked = (
            b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (big[:150_000], big[150_000:]))
            + b"0\r\n\r\n"
        )
        out2 = await raw_request(dp.port, chunked)
        await settle(dp)
        assert dp.stats.mirrors[("fraud", "c", "too_large")] == 2
        # still the candidate's pair: recorded, never sent
        assert [r["candidate"]["error"] for r in sink.decoded()] == ["not_mirrored"] * 2
    assert out.startswith(b"HTTP/1.1 200") and out2.startswith(b"HTTP/1.1 200")
    assert [s.body for s in prod.seen] == [big, big]
    assert cand.seen == []


async def test_sensitive_headers_and_fields_never_reach_records(
    prod: ModelServer, cand: ModelServer
) -> None:
    body = b'{"instances": [[1]], "email": "a@b.c", "ssn": "987-65-4321", "amount": 5}'
    cfg = make_config(
        prod.url,
        [{"name": "c", "url": cand.url}],
        capture={"input": True, "drop_fields": ["ssn"], "hash_fields": ["email"]},
    )
    async with running_proxy(cfg) as (dp, sink):
        extra = b"Authorization: Bearer s3cr3t\r\nCookie: session=s3cr3t\r\n"
        await raw_request(dp.port, post(body, extra=extra))
        await settle(dp)
    assert len(sink.records) == 1  # the pair record carries production: no separate record
    assert all(b"s3cr3t" not in v for _, v in sink.records)
    raw = next(v for _, v in sink.records if b'"candidate":null' not in v)
    assert b"s3cr3t" not in raw
    # (a value no request id or timestamp can contain: "123" once matched a random id)
    assert b"987-65-4321" not in raw and b"a@b.c" not in raw
    rec = orjson.loads(raw)
    assert rec["input"]["amount"] == 5
    assert "ssn" not in rec["input"]
    assert rec["input"]["email"].startswith("sha256:")
    # the production model itself still gets the credentials it was sent
    assert prod.seen[0].headers[b"authorization"] == b"Bearer s3cr3t"


async def test_shutdown_drains_in_flight_requests_and_records(
    prod: ModelServer, cand: ModelServer
) -> None:
    prod.behave = lambda s: Reply(body=b'{"predictions":[1]}', delay=0.3)
    cfg = make_config(prod.url, [{"name": "c", "url": cand.url}])
    async with running_proxy(cfg) as (dp, sink):
        port = dp.port
        pending = asyncio.ensure_future(raw_request(port, post()))
        await asyncio.sleep(0.1)
        stop = asyncio.ensure_future(dp.stop())
        await asyncio.sleep(0.05)
        assert not dp.ready
        out = await pending
        await stop
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b'{"predictions":[1]}')
        assert len(sink.decoded()) == 1 and sink.monitored() == []
        assert sink.closed
        # no new connections are accepted once stopped
        with pytest.raises(OSError):
            await raw_request(port, post(), timeout=1)


async def test_production_only_records_monitor_production(prod: ModelServer) -> None:
    """With no candidate, each monitored request still yields a record (candidate null) with
    production's prediction and, when drift fields are configured, the redacted input."""
    body = b'{"instances": [[1], [2]], "secret": "x"}'
    cfg = make_config(
        prod.url,
        monitor_fraction=0.5,
        drift={"fields": ["$.instances[*][0]"]},
        capture={"drop_fields": ["secret"]},
    )
    n = 400
    async with running_proxy(cfg) as (dp, sink):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
            for i in range(n):
                r = await client.post("/p", content=body, headers={"x-request-id": f"m-{i}"})
                assert r.status_code == 200
            r = await client.get("/health")  # not a mirrored method: never recorded
        await settle(dp)
    recs = sink.monitored()
    assert sink.decoded() == []
    assert abs(len(recs) - n / 2) < 4 * math.sqrt(n / 4)
    rec = recs[0]
    assert rec["production"]["output"] == [2.0, 3.0]
    assert rec["input"] == {"instances": [[1], [2]]}
    assert all(r["id"].startswith("m-") for r in recs)


async def test_upgrade_passed_through_when_configured(prod: ModelServer) -> None:
    """With ``proxy.upgrade: pass`` a WebSocket-style upgrade reaches production, and after its
    101 the bytes flow both ways untouched; with the default it is refused (see above)."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = cast(asyncio.Transport, transport)
            self.upgraded = False

        def data_received(self, data: bytes) -> None:
            if not self.upgraded:
                head, _, rest = data.partition(b"\r\n\r\n")
                seen_heads.append(head)
                self.t.write(
                    b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Upgrade: echo\r\nConnection: Upgrade\r\n\r\n"
                )
                self.upgraded = True
                data = rest
            if data:
                self.t.write(b"echo:" + data)

    seen_heads: list[bytes] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with running_proxy(make_config(url, top={"proxy": {"upgrade": "pass"}})) as (dp, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhi"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 101")
        got = b""
        async with asyncio.timeout(2):
            while b"echo:hi" not in got:
                got += await reader.read(100)
        writer.write(b"again")
        async with asyncio.timeout(2):
            while b"echo:again" not in got:
                got += await reader.read(100)
        writer.close()
    server.close()
    assert b"upgrade: echo" in seen_heads[0].lower()


async def test_a_half_closed_client_still_gets_its_answer(prod: ModelServer) -> None:
    async with running_proxy(make_config(prod.url)) as (dp, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
        writer.write(post(close=False) + post(b'{"instances": [[7]]}', close=False))
        writer.write_eof()
        async with asyncio.timeout(3):
            out = await reader.read()
        writer.close()
    assert out.count(b"HTTP/1.1 200") == 2 and out.endswith(b'{"predictions":[8.0]}')
