"""Framing: the proxy must never let a client's bytes or production's bytes be read as a
message they are not. Upstream connections are reused only when both directions ended exactly
on their framing; what production sends after its response never reaches the client; framing
headers survive production's Connection header; a malformed body is refused at once; lengths
a server may read as negative are refused.

Each case is played twice where it can be: as raw bytes against a production that records
every byte it received (``RawUpstream``), and against a stock aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from rawupstream import INJECTED, RawUpstream, response
from relhelp import report

from proxyutil import make_config, running_proxy, settle
from shadowroute.dataplane.server import DataPlane
from upstreams import ModelServer


def _config(prod_url: str, cand_url: str | None = None, timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    cands = [{"name": "cand", "url": cand_url}] if cand_url else []
    return make_config(
        prod_url,
        cands,
        production={"name": "prod-v1", "url": prod_url, "timeout_s": timeout_s, "version": "1"},
    )


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def read_one(reader: asyncio.StreamReader, *, head_only: bool = False) -> tuple[bytes, bytes]:
    """One response: its head (lower-cased) and body (chunked bodies returned raw)."""
    async with asyncio.timeout(5):
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        if head_only or head.startswith((b"http/1.1 204", b"http/1.1 304")):
            return head, b""
        if b"\r\ntransfer-encoding: chunked" in head:
            body = await reader.readuntil(b"\r\n0\r\n")
            while True:  # trailer lines, then the blank line
                line = await reader.readuntil(b"\r\n")
                body += line
                if line == b"\r\n":
                    return head, body
        length = int(head.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
        return head, await reader.readexactly(length)


def post(path: bytes, body: bytes, *, rid: bytes | None = None, extra: bytes = b"") -> bytes:
    rid_line = b"x-request-id: " + rid + b"\r\n" if rid else b""
    return b"POST %s HTTP/1.1\r\nHost: proxy.local\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
        path,
        len(body),
        rid_line,
        extra,
        body,
    )


async def until(cond, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition never held"
        await asyncio.sleep(0.01)


def framing(dp: DataPlane) -> dict[str, int]:
    assert dp.proxy is not None
    return dict(getattr(dp.proxy.stats, "framing", {}))


# --- early answers ----------------------------------------------------------------------------

HIDDEN = b"GET /admin HTTP/1.1\r\nHost: forged.example\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


async def test_early_answer_playbook_upstream_bytes() -> None:
    """Production answers 404 after the head: its connection is closed, never pooled; the rest
    of the client's body (a request in disguise) is read and dropped; the client's next request
    goes on a new connection and is served."""
    up = await RawUpstream(
        lambda n: response(b"nope", status=b"404 Not Found") if n == 0 else response(b"ok"),
        answer_on="head",
    ).start()
    cand = await ModelServer().start()
    try:
        async with (
            running_proxy(_config(up.url, cand.url)) as (dp, sink),
            client(dp.port) as (r, w),
        ):
            first = b"x" * 10
            w.write(post(b"/v1/models/m:predict", first + HIDDEN)[: -len(HIDDEN)])
            head, body = await read_one(r)
            assert head.startswith(b"http/1.1 404") and body == b"nope"
            await until(lambda: up.conns[0].eof)  # closed, not pooled
            w.write(HIDDEN + post(b"/v1/models/m:predict", b'{"instances": [[1]]}'))
            head, body = await read_one(r)
            assert head.startswith(b"http/1.1 200") and body == b"ok"
            await settle(dp)
            stats = dp.proxy.stats if dp.proxy else None
            assert stats is not None
            report(
                "framing: early answer (raw)",
                upstream_connections=len(up.conns),
                framing=dict(stats.framing),
                mirrors={"|".join(k): v for k, v in stats.mirrors.items()},
            )
            sent = bytes(up.conns[0].data)
            assert sent.endswith(b"\r\n\r\n" + first)  # the head and what was read before the 404
            assert all(b"/admin" not in c.data for c in up.conns)
            assert [c.urls for c in up.conns] == [[b"/v1/models/m:predict"]] * 2
            assert framing(dp) == {"early_answer": 1}
            assert stats.mirrors[("fraud", "cand", "early_answer")] == 1
            assert len(cand.seen) == 1  # only the second request was mirrored
            assert len(sink.all_decoded()) == 1
    finally:
        await up.stop()
        await cand.stop()


def aiohttp_app(seen: list[dict[str, str]]) -> web.Application:
    """Stock aiohttp: /echo reads the body; any other path is a 404 that never reads it."""

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        seen.append(
            {
                "path": request.path,
                "host": request.headers.get("Host", ""),
                "xff": request.headers.get("X-Forwarded-For", ""),
                "rid": request.headers.get("x-request-id", ""),
                "head_bytes": str(
                    len(request.method) + 1 + len(request.raw_path) + 11 + 2
                    + sum(len(k) + 2 + len(v) + 2 for k, v in request.raw_headers)
                ),
            }
        )  # fmt: skip
        return await handler(request)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=b"echo:%d" % len(body))

    async def admin(request: web.Request) -> web.Response:
        return web.Response(body=b"SECRET")

    app = web.Application(middlewares=[record])
    app.router.add_post("/echo", echo)
    app.router.add_get("/admin", admin)
    return app


@contextlib.asynccontextmanager
async def aiohttp_production() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    runner = web.AppRunner(aiohttp_app(seen))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def test_a_request_hidden_in_a_body_never_reaches_aiohttp_as_a_request() -> None:
    """The smuggling case: request 1 goes to a path aiohttp answers 404 without reading the
    body, its length chosen so that aiohttp would take request 2's head (as the proxy rebuilds
    it) for the rest of that body, and request 2's body is a request with a forged Host and
    X-Forwarded-For. Production must see it as a body, never as a request."""
    async with aiohttp_production() as (url, seen):
        async with running_proxy(_config(url)) as (dp, _), client(dp.port) as (r, w):
            second_body = HIDDEN
            req2 = post(b"/echo", second_body, rid=b"rid-0000002")
            # Calibrate: the length of request 2's head as the proxy sends it upstream.
            w.write(post(b"/echo", b"y" * len(second_body), rid=b"rid-0000002"))
            head, body = await read_one(r)
            assert body == b"echo:%d" % len(second_body)
            upstream_head = int(seen[-1]["head_bytes"])
            first = b"x" * 16
            req1 = post(b"/nope", first + b"z" * upstream_head, rid=b"rid-0000001")
            w.write(req1[:-upstream_head])
            head, body = await read_one(r)
            assert head.startswith(b"http/1.1 404")
            w.write(b"z" * upstream_head + req2)
            head, body = await read_one(r)
            await asyncio.sleep(0.2)
            report(
                "framing: request hidden in a body (aiohttp)",
                second_answer=body[:40].decode(errors="replace"),
                production_saw=[s["path"] for s in seen],
                framing=framing(dp),
            )
            assert b"SECRET" not in body
            assert head.startswith(b"http/1.1 200") and body == b"echo:%d" % len(second_body)
            assert [s["path"] for s in seen] == ["/echo", "/nope", "/echo"]
            assert all(s["rid"] and s["host"] != "forged.example" for s in seen)
            assert not any("6.6.6.6" in s["xff"] for s in seen)
            assert framing(dp) == {"early_answer": 1}


async def test_a_bystander_is_not_swallowed_after_an_early_answer() -> None:
    """Request 1 claims a long body, aiohttp answers 404 at once and would read on for it; a
    bystander's request must not be written into that connection (it would be eaten as body
    and end in a 504)."""
    async with aiohttp_production() as (url, seen):
        async with running_proxy(_config(url, timeout_s=1.0)) as (dp, _):
            async with client(dp.port) as (r, w), client(dp.port) as (br, bw):
                w.write(post(b"/nope", b"x" * 100_000)[:-99_000])
                head, _ = await read_one(r)
                assert head.startswith(b"http/1.1 404")
                t0 = time.perf_counter()
                bw.write(post(b"/echo", b"hello"))
                head, body = await read_one(br)
                ms = (time.perf_counter() - t0) * 1000
                report(
                    "framing: bystander after an early answer", status=head[9:12].decode(), ms=ms
                )
                assert head.startswith(b"http/1.1 200") and body == b"echo:5"
                assert ms < 500
                assert framing(dp) == {"early_answer": 1}


# --- production's bytes after its response ----------------------------------------------------

CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n"
EXTRA_CASES = {
    "length": response(b"first") + INJECTED,
    "chunked": CHUNKED + INJECTED,
    "chunked_trailer": CHUNKED[:-2] + b"x-t: 1\r\n\r\n" + INJECTED,
    "no_content": b"HTTP/1.1 204 No Content\r\n\r\n" + INJECTED,
    "garbage": response(b"first") + b"\r\n\x00garbage",
    "blank_line": response(b"first") + b"\r\n",
}


@pytest.mark.parametrize("case", list(EXTRA_CASES))
async def test_bytes_after_the_response_never_reach_the_client(case: str) -> None:
    answers = [EXTRA_CASES[case], response(b"second")]
    up = await RawUpstream(lambda n: answers[min(n, 1)]).start()
    try:
        async with running_proxy(_config(up.url)) as (dp, _), client(dp.port) as (r, w):
            w.write(post(b"/p", b"1"))
            head, body = await read_one(r)
            if case == "no_content":
                assert head.startswith(b"http/1.1 204") and body == b""
            else:
                assert body in (
                    b"first",
                    b"5\r\nfirst\r\n0\r\n\r\n",
                    b"5\r\nfirst\r\n0\r\nx-t: 1\r\n\r\n",
                )
            w.write(post(b"/p", b"2"))
            head, body = await read_one(r)
            assert head.startswith(b"http/1.1 200") and body == b"second", (head, body)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    assert await r.read(100) == b""
            assert up.conns[0].eof and len(up.conns) == 2
            assert framing(dp) == {"extra_bytes": 1}
    finally:
        await up.stop()


async def test_injected_response_on_a_pipelined_connection_aiohttp_free() -> None:
    """Two pipelined requests: the bytes production appends to its first answer are not taken
    for the answer to the second."""
    answers = [response(b"first") + INJECTED, response(b"second")]
    up = await RawUpstream(lambda n: answers[min(n, 1)]).start()
    try:
        async with running_proxy(_config(up.url)) as (dp, _), client(dp.port) as (r, w):
            w.write(post(b"/p", b"1") + post(b"/p", b"2"))
            got = [await read_one(r), await read_one(r)]
            assert [b for _, b in got] == [b"first", b"second"]
            assert framing(dp) == {"extra_bytes": 1}
    finally:
        await up.stop()


# --- production's Connection header -----------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
async def test_connection_header_cannot_drop_framing_or_the_request_id(chunked: bool) -> None:
    named = b"connection: keep-alive, content-length, transfer-encoding, x-request-id, x-secret"
    if chunked:
        first = (
            b"HTTP/1.1 200 OK\r\n" + named + b"\r\nx-secret: 1\r\nx-request-id: r-conn-1\r\n"
            b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    else:
        first = response(b"hello", named, b"x-secret: 1", b"x-request-id: r-conn-1")
    answers = [first, response(b"second")]
    up = await RawUpstream(lambda n: answers[min(n, 1)]).start()
    try:
        async with running_proxy(_config(up.url)) as (dp, _), client(dp.port) as (r, w):
            w.write(post(b"/p", b"1", rid=b"r-conn-1"))
            head, body = await read_one(r)
            assert b"\r\nx-request-id: r-conn-1\r\n" in head
            assert b"x-secret" not in head
            if chunked:
                assert b"\r\ntransfer-encoding: chunked\r\n" in head
                assert body == b"5\r\nhello\r\n0\r\n\r\n"
            else:
                assert b"\r\ncontent-length: 5\r\n" in head and body == b"hello"
            w.write(post(b"/p", b"2"))
            head, body = await read_one(r)
            assert body == b"second"
    finally:
        await up.stop()


# --- the client's malformed body --------------------------------------------------------------

CHUNKED_HEAD = b"POST /p HTTP/1.1\r\nHost: proxy.local\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("split", [False, True])
async def test_malformed_chunk_after_a_good_head_is_refused_at_once(split: bool) -> None:
    up = await RawUpstream(lambda n: response(b"ok")).start()
    try:
        async with running_proxy(_config(up.url, timeout_s=5.0)) as (dp, _):
            async with client(dp.port) as (r, w):
                t0 = time.perf_counter()
                good = CHUNKED_HEAD + b"5\r\nhello\r\n"
                bad = b"zz\r\nnot a chunk\r\n0\r\n\r\n"
                if split:
                    w.write(good)
                    await until(lambda: bool(up.conns) and up.conns[0].data.endswith(b"hello\r\n"))
                    w.write(bad)
                else:
                    w.write(good + bad)
                head, body = await read_one(r)
                ms = (time.perf_counter() - t0) * 1000
                assert await r.read() == b""  # closed
            report("framing: malformed chunk", split=split, status=head[9:12].decode(), ms=ms)
            assert head.startswith(b"http/1.1 400") and b'"error"' in body
            assert ms < 1000
            # A connection that carried part of the body is closed (one still connecting when
            # the refusal came carried nothing and may be pooled).
            await until(lambda: all(c.eof for c in up.conns if c.data))
            for c in up.conns:  # production never got a complete request
                assert c.complete == 0 and not c.data.endswith(b"0\r\n\r\n")
            assert up.answered == 0
            if split:
                assert framing(dp) == {"client_aborted": 1}
    finally:
        await up.stop()


@pytest.mark.parametrize(
    "value",
    [b"9223372036854775808", b"18446744073709551615", b"18446744073709551616", b"1" * 30],
)
async def test_content_lengths_past_two_to_the_63_are_refused(value: bytes) -> None:
    up = await RawUpstream(lambda n: response(b"ok")).start()
    try:
        async with running_proxy(_config(up.url)) as (dp, _), client(dp.port) as (r, w):
            w.write(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: " + value + b"\r\n\r\nabc")
            head, body = await read_one(r)
            assert head.startswith(b"http/1.1 400") and b"content-length" in body.lower()
            await asyncio.sleep(0.05)
            assert not any(c.data for c in up.conns)
            assert dp.proxy is not None and dp.proxy.stats.rejected["400"] == 1
    finally:
        await up.stop()
