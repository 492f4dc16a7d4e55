"""Upstream keep-alive: pooled connections to servers that close idle connections on their own
clock, ``Keep-Alive``/``Connection: close`` honoured, and the one safe resend of a request that
met a closed connection (``shadowroute.dataplane.keepalive``). Real servers on loopback."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from kaserver import KeepAliveServer, Received
from playbook import Recording
from proxyutil import free_port, make_config, running_proxy, settle, wait_ready
from shadowroute.core.config import Breaker, Candidate, ProxySettings
from shadowroute.dataplane import keepalive
from shadowroute.dataplane.deadlines import Deadlines
from shadowroute.dataplane.mirror import MirrorExchange, MirrorTarget
from shadowroute.dataplane.stats import DataPlaneStats
from shadowroute.dataplane.upstream import Outcome, UpstreamConnection, UpstreamPool

BODY = b'{"instances": [[1.5]]}'


def post(body: bytes = BODY) -> bytes:
    return (
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: proxy.local\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


GET = b"GET /v1/models/m HTTP/1.1\r\nHost: proxy.local\r\n\r\n"


class Client:
    """One keep-alive client connection to the proxy."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> tuple[int, float]:
        """Status and seconds taken; status 0 when the connection broke."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        t0 = time.perf_counter()
        self.writer.write(request)
        try:
            async with asyncio.timeout(10):
                head = await self.reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            return 0, time.perf_counter() - t0
        if b"connection: close" in head.lower():
            self.close()
        return int(head.split(b" ", 2)[1]), time.perf_counter() - t0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def events(dp: object, role: str = "production") -> Counter[str]:
    proxy = dp.proxy  # type: ignore[attr-defined]
    return Counter({event: v for (_, _, r, event), v in proxy.stats.upstream.items() if r == role})


# --- the rules, without sockets ---------------------------------------------------------------


def test_default_idle_expiry_is_below_common_server_timeouts() -> None:
    assert ProxySettings().upstream_keepalive_s == keepalive.DEFAULT_IDLE_S
    assert keepalive.DEFAULT_IDLE_S < 2.0  # gunicorn's keep-alive timeout; uvicorn's is 5 s


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"timeout=5, max=100", (5.0, 100)),
        (b"timeout=5", (5.0, -1)),
        (b"max=0", (-1.0, 0)),
        (b"TIMEOUT = 2 ; MAX = 3", (2.0, 3)),
        (b'timeout="1.5"', (1.5, -1)),
        (b"timeout=-1, max=x", (-1.0, -1)),
        (b"timeout=1e9", (-1.0, -1)),
        (b"timeout=99999999999999", (-1.0, -1)),
        (b"", (-1.0, -1)),
        (b"garbage", (-1.0, -1)),
        (b"timeout=., max=1.9", (-1.0, 1)),
    ],
)
def test_keep_alive_header_values(value: bytes, expected: tuple[float, int]) -> None:
    assert keepalive.parse_keep_alive(value) == expected


@pytest.mark.parametrize(
    ("announced", "default", "limit"),
    [
        (-1.0, 1.5, 1.5),  # nothing announced: the pool's expiry
        (5.0, 1.5, 1.5),  # uvicorn's 5 s: the pool's shorter expiry wins
        (2.0, 1.5, 1.5),
        (1.0, 1.5, 0.75),  # 1 s less the 0.25 s minimum margin
        (10.0, 30.0, 9.0),  # 10% margin on a long timeout
        (0.25, 1.5, 0.0),  # too short to reuse at all
        (0.0, 1.5, 0.0),
    ],
)
def test_announced_idle_limit(announced: float, default: float, limit: float) -> None:
    assert keepalive.announced_limit(announced, default) == pytest.approx(limit)


@pytest.mark.parametrize(
    ("request_bytes", "repeatable"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"HEAD / HTTP/1.1\r\n\r\n", True),
        (b"PUT /x HTTP/1.1\r\n\r\n", True),
        (b"DELETE /x HTTP/1.1\r\n\r\n", True),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"PATCH / HTTP/1.1\r\n\r\n", False),
        (b"POST / HTTP/1.1\r\nIdempotency-Key: a1\r\n\r\n{}", True),
        (b"POST / HTTP/1.1\r\nx-idempotency-key: a1\r\n\r\n{}", True),
        # the name in the body is not a header
        (b"POST / HTTP/1.1\r\n\r\n\r\nidempotency-key: 1", False),
        (b"GETX / HTTP/1.1\r\n\r\n", False),
    ],
)
def test_idempotent_requests(request_bytes: bytes, repeatable: bool) -> None:
    assert keepalive.idempotent(request_bytes) is repeatable


# reused, answered, whole, written, repeatable -> resent
RESEND_TABLE = [
    (True, False, True, True, True, True),  # GET met a keep-alive close: the standard resend
    (True, False, True, False, False, True),  # POST, nothing written yet: the server never saw it
    (True, False, True, True, False, False),  # POST written, no answer: may have been acted on
    (True, True, True, True, True, False),  # a byte of the answer came: never
    (True, True, True, False, False, False),
    (False, False, True, True, True, False),  # a fresh connection: a server failure, not a race
    (False, False, True, False, False, False),
    (True, False, False, True, True, False),  # the request is not held whole (streamed body)
    (True, False, False, False, False, False),
]


@pytest.mark.parametrize(
    ("reused", "answered", "whole", "written", "repeatable", "resent"), RESEND_TABLE
)
def test_resend_rule(
    reused: bool, answered: bool, whole: bool, written: bool, repeatable: bool, resent: bool
) -> None:
    assert (
        keepalive.may_resend(
            reused=reused,
            answered=answered,
            whole=whole,
            written=written,
            repeatable=repeatable,
        )
        is resent
    )


# --- through the proxy, against servers that close idle connections ---------------------------


async def _load(
    port: int, request: bytes, *, clients: int, each: int, pauses: tuple[float, float]
) -> list[tuple[int, float]]:
    rng = random.Random(7)
    out: list[tuple[int, float]] = []

    async def one() -> None:
        c = Client(port)
        try:
            for _ in range(each):
                await asyncio.sleep(rng.uniform(*pauses))
                out.append(await c.send(request))
        finally:
            c.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return out


async def _direct_ms(url: str, request: bytes, n: int = 20) -> float:
    port = int(url.rsplit(":", 1)[1])
    c = Client(port)
    times = []
    for _ in range(n):
        status, s = await c.send(request)
        assert status == 200
        times.append(s * 1000.0)
    c.close()
    return sorted(times)[n // 2]


async def test_no_stalls_when_the_server_closes_idle_connections_after_our_expiry() -> None:
    """A gunicorn/uvicorn-like server (closes idle connections after 0.4 s, says nothing)
    behind a proxy whose expiry is below it (as the default 1.5 s is below 2 s and 5 s): 200
    POSTs paused around both timeouts, none slow, none failed, and the candidate's recorded
    latency stays near its direct latency."""
    async with (
        KeepAliveServer(idle_s=0.4, delay_s=0.002) as prod,
        KeepAliveServer(idle_s=0.4, delay_s=0.002) as cand,
    ):
        direct = await _direct_ms(cand.url, post())
        cfg = make_config(
            prod.url,
            [{"name": "c", "url": cand.url, "fraction": 1.0}],
            top={"proxy": {"upstream_keepalive_s": 0.3}},
        )
        async with running_proxy(cfg) as (dp, sink):
            results = await _load(dp.port, post(), clients=4, each=50, pauses=(0.15, 0.55))
            await settle(dp)
            assert len(results) == 200
            assert Counter(s for s, _ in results) == {200: 200}
            assert max(t for _, t in results) < 1.0
            records = sink.decoded()
            assert len(records) == 200
            assert [r for r in records if r["candidate"]["error"]] == []
            lat = sorted(r["candidate"]["latency_ms"] for r in records)
            ev = events(dp)
            print(
                f"FIGURE keepalive post: max client {max(t for _, t in results) * 1000:.1f} ms, "
                f"candidate p50 {lat[100]:.2f} ms (direct {direct:.2f} ms), max {lat[-1]:.1f} ms, "
                f"production {dict(ev)}, candidate {dict(events(dp, 'candidate'))}"
            )
            assert lat[100] < direct + 20.0, (lat[100], direct)
            assert lat[-1] < 1000.0
            assert ev["idle_expired"] + ev["idle_closed_by_server"] > 0
            assert ev["not_resent"] == 0


async def test_no_failures_when_the_server_closes_sooner_than_our_expiry() -> None:
    """A server closing idle connections after 0.1 s, below the proxy's default expiry, says
    nothing: the close is seen as it arrives (the connection leaves the pool at once, no
    timeout), and a GET that meets a close in flight is sent again. 200 GETs, none failed."""
    async with (
        KeepAliveServer(idle_s=0.1) as prod,
        KeepAliveServer(idle_s=0.1) as cand,
    ):
        cfg = make_config(
            prod.url,
            [{"name": "c", "url": cand.url, "fraction": 1.0}],
            mirror_methods=["GET"],
        )
        async with running_proxy(cfg) as (dp, sink):
            results = await _load(dp.port, GET, clients=4, each=50, pauses=(0.05, 0.25))
            await settle(dp)
            assert Counter(s for s, _ in results) == {200: 200}
            assert max(t for _, t in results) < 1.0
            ev = events(dp)
            records = sink.decoded()
            print(
                f"FIGURE keepalive get: max client {max(t for _, t in results) * 1000:.1f} ms, "
                f"candidate max {max(r['candidate']['latency_ms'] for r in records):.1f} ms, "
                f"production {dict(ev)}, candidate {dict(events(dp, 'candidate'))}"
            )
            assert ev["idle_closed_by_server"] > 0
            assert ev["not_resent"] == 0
            assert [r for r in records if r["candidate"]["error"]] == []
            assert max(r["candidate"]["latency_ms"] for r in records) < 1000.0


async def test_keep_alive_timeout_announced_by_the_server_is_honoured() -> None:
    """``Keep-Alive: timeout=1``: reused after 0.4 s idle, not after 0.9 s (1 s less the
    margin), although the proxy's own expiry is 1.5 s and the server would still answer."""
    async with KeepAliveServer(idle_s=5.0, announce=b"timeout=1") as prod:
        cfg = make_config(prod.url)
        async with running_proxy(cfg) as (dp, _):
            c = Client(dp.port)
            assert (await c.send(post()))[0] == 200
            await asyncio.sleep(0.4)
            assert (await c.send(post()))[0] == 200
            assert len(prod.conns) == 1
            await asyncio.sleep(0.9)
            assert (await c.send(post()))[0] == 200
            assert len(prod.conns) == 2
            assert events(dp)["idle_expired"] == 1
            c.close()


async def test_keep_alive_max_zero_ends_the_connection() -> None:
    async with KeepAliveServer(idle_s=5.0, announce=b"timeout=5, max=0") as prod:
        cfg = make_config(prod.url)
        async with running_proxy(cfg) as (dp, _):
            c = Client(dp.port)
            for _ in range(3):
                assert (await c.send(post()))[0] == 200
            assert len(prod.conns) == 3
            assert events(dp)["keep_alive_max"] == 3
            c.close()


async def test_connection_close_is_never_reused() -> None:
    """The server says ``Connection: close`` but leaves the socket open: the proxy closes it
    and opens a new one for every request, production and candidate alike."""
    async with (
        KeepAliveServer(idle_s=None, close_header=True) as prod,
        KeepAliveServer(idle_s=None, close_header=True) as cand,
    ):
        cfg = make_config(prod.url, [{"name": "c", "url": cand.url, "fraction": 1.0}])
        async with running_proxy(cfg) as (dp, sink):
            c = Client(dp.port)
            for _ in range(5):
                assert (await c.send(post()))[0] == 200
            await settle(dp)
            c.close()
            assert [r.nth_on_conn for r in prod.received] == [0] * 5
            assert [r.nth_on_conn for r in cand.received] == [0] * 5
            assert len(prod.conns) == len(cand.conns) == 5
            assert events(dp)["connection_close"] == 5
            assert events(dp, "candidate")["connection_close"] == 5
            assert all(r["candidate"]["error"] is None for r in sink.decoded())


def _drop_second_on_first_conn(r: Received) -> str:
    return "drop" if (r.conn, r.nth_on_conn) == (0, 1) else "answer"


def _partial_second_on_first_conn(r: Received) -> str:
    return "partial" if (r.conn, r.nth_on_conn) == (0, 1) else "answer"


async def test_get_on_a_reused_connection_closed_before_any_answer_is_sent_again() -> None:
    async with KeepAliveServer(idle_s=None, action=_drop_second_on_first_conn) as prod:
        async with running_proxy(make_config(prod.url)) as (dp, _):
            c = Client(dp.port)
            assert (await c.send(GET))[0] == 200
            status, took = await c.send(GET)
            assert status == 200 and took < 1.0
            c.close()
            # the copy went on a new connection; the server saw the GET twice
            assert [(r.conn, r.nth_on_conn, r.method) for r in prod.received] == [
                (0, 0, b"GET"),
                (0, 1, b"GET"),
                (1, 0, b"GET"),
            ]
            assert events(dp)["resent"] == 1


async def test_post_written_on_a_reused_connection_is_not_sent_again() -> None:
    """The same close after a POST was written: it may have been acted on, so the client gets
    a 502 and the server saw the POST once."""
    async with KeepAliveServer(idle_s=None, action=_drop_second_on_first_conn) as prod:
        async with running_proxy(make_config(prod.url)) as (dp, _):
            c = Client(dp.port)
            assert (await c.send(post()))[0] == 200
            assert (await c.send(post()))[0] == 502
            c.close()
            assert len(prod.received) == 2
            ev = events(dp)
            assert ev["resent"] == 0 and ev["not_resent"] == 1


async def test_never_sent_again_once_a_byte_of_the_answer_arrived() -> None:
    async with KeepAliveServer(idle_s=None, action=_partial_second_on_first_conn) as prod:
        async with running_proxy(make_config(prod.url)) as (dp, _):
            c = Client(dp.port)
            assert (await c.send(GET))[0] == 200
            assert (await c.send(GET))[0] in (0, 502)
            c.close()
            assert len(prod.received) == 2
            assert events(dp)["resent"] == 0


async def test_a_fresh_connection_closed_before_answering_is_not_sent_again() -> None:
    async with KeepAliveServer(idle_s=None, action=lambda r: "drop") as prod:
        async with running_proxy(make_config(prod.url)) as (dp, _):
            c = Client(dp.port)
            assert (await c.send(GET))[0] == 502
            c.close()
            assert len(prod.received) == 1
            assert events(dp)["resent"] == 0


# --- the pool itself, with the data plane's own exchanges (mirrors) -----------------------------
# The exchanges are the compiled classes: the compiled build allows no subclass of them here.


class Mirrors:
    """A candidate's pool and mirror target against ``url``, with the outcomes its mirrors
    gave."""

    def __init__(self, url: str, keepalive_s: float = 30.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadlines = Deadlines(self.loop)
        self.pool = UpstreamPool(self.loop, url, self.deadlines, keepalive_s=keepalive_s)
        cfg = Candidate(name="c", url=url)
        self.target = MirrorTarget("r", cfg, self.pool, Breaker(), DataPlaneStats())
        self.outcomes: list[Outcome] = []

    def exchange(self, request: bytes) -> MirrorExchange:
        return MirrorExchange(self.target, request, self.outcomes.append)

    async def send(self, request: bytes) -> Outcome:
        n = len(self.outcomes)
        assert self.target.send(request, self.outcomes.append) is None
        await _until(lambda: len(self.outcomes) > n)
        return self.outcomes[n]

    def event(self, name: str) -> int:
        return self.pool.events[("", "", "", name)]

    def close(self) -> None:
        self.pool.close()
        self.deadlines.close()

    def reused_connection(self) -> tuple[UpstreamConnection, Recording]:
        """A pooled connection that carried an exchange before, on a recording transport:
        its server's close is delivered by hand."""
        conn = UpstreamConnection(self.pool)
        transport = Recording()
        conn.connection_made(transport)
        conn.reused = True
        return conn, transport


async def _until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_idle_connection_closed_by_the_server_leaves_the_pool_at_once() -> None:
    async with KeepAliveServer(idle_s=None) as srv:
        m = Mirrors(srv.url)
        try:
            assert (await m.send(GET)).status == 200
            assert len(m.pool._idle) == 1
            srv.close_connection(0)
            await _until(lambda: not m.pool._idle)  # as the close arrives: no request needed
            assert m.event("idle_closed_by_server") == 1
            assert (await m.send(GET)).status == 200
            assert len(srv.conns) == 2
        finally:
            m.close()


async def test_a_mirror_whose_connection_closed_before_it_was_written_is_sent_again() -> None:
    """A mirror writes at the end of the loop turn: its reused connection may close after the
    exchange started and before the request went out. The server never saw it, so even a POST
    is sent again, on a new connection."""
    async with KeepAliveServer(idle_s=None) as srv:
        m = Mirrors(srv.url)
        try:
            conn, transport = m.reused_connection()
            conn.start(m.exchange(post()), 5.0)
            conn.connection_lost(None)  # the server's close, before anything was written
            await _until(lambda: bool(m.outcomes))
            assert transport.sent == b""
            assert m.outcomes[0].status == 200 and m.outcomes[0].error is None
            assert [(r.conn, r.method, r.body) for r in srv.received] == [(0, b"POST", BODY)]
            assert m.event("resent") == 1
        finally:
            m.close()


async def test_a_written_post_whose_connection_closed_is_not_sent_again() -> None:
    async with KeepAliveServer(idle_s=None) as srv:
        m = Mirrors(srv.url)
        try:
            conn, transport = m.reused_connection()
            ex = m.exchange(post())
            conn.start(ex, 5.0)
            conn.write(post())  # what the mirror's batched write does
            conn.connection_lost(None)
            await _until(lambda: bool(m.outcomes))
            assert transport.sent == post()
            assert m.outcomes[0].error == "reset"
            assert srv.received == [] and srv.conns == []
            assert m.event("not_resent") == 1 and m.event("resent") == 0
        finally:
            m.close()


async def test_a_resend_given_up_when_the_exchange_is_abandoned() -> None:
    async with KeepAliveServer(idle_s=None) as srv:
        m = Mirrors(srv.url)
        try:
            conn, _ = m.reused_connection()
            conn.start(m.exchange(GET), 5.0)
            conn.connection_lost(None)
            assert conn.resend_of is not None  # a new connection is being opened
            conn.abandon()  # the exchange's owner gave up meanwhile (a client gone, shutdown)
            await _until(lambda: len(srv.conns) == 1)
            await asyncio.sleep(0.05)
            assert m.outcomes == [] and srv.received == []  # the copy was never written
            assert len(m.pool._idle) == 1  # the new connection went to the pool unused
        finally:
            m.close()


async def test_a_pooled_connection_left_paused_reads_again() -> None:
    """A client slow to read pauses production's connection; its last write may do so after
    the connection went back to the pool. The pooled connection reads again, so its server's
    close (and its next answer) are seen."""
    async with KeepAliveServer(idle_s=None) as srv:
        m = Mirrors(srv.url)
        try:
            conn, transport = m.reused_connection()

            def done(outcome: Outcome) -> None:
                conn.pause_reading()  # what the slow client's backpressure does

            conn.start(MirrorExchange(m.target, GET, done), 5.0)
            conn.data_received(KeepAliveServer().answer())
            assert list(m.pool._idle) == [conn]
            assert transport.is_reading()
        finally:
            m.close()


# --- uvicorn, the server of the report ----------------------------------------------------------

_UVICORN_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = b'{"predictions": [1.0]}'
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.slow
async def test_uvicorn_closing_idle_connections_gives_no_stalls(tmp_path: Path) -> None:
    """uvicorn (``--timeout-keep-alive 1``) as production and candidate, the proxy's expiry
    below it (0.75 s, as the default 1.5 s is below uvicorn's default 5 s): 40 POSTs paused
    0.5–1.3 s, around both timeouts. None slow, none failed, no candidate error, and the
    candidate's recorded latency near its direct latency."""
    (tmp_path / "ka_app.py").write_text(_UVICORN_APP)
    ports = [free_port(), free_port()]
    procs = []
    for port in ports:
        args = ["-m", "uvicorn", "ka_app:app", "--app-dir", str(tmp_path), "--host"]
        args += ["127.0.0.1", "--port", str(port), "--timeout-keep-alive", "1"]
        args += ["--log-level", "warning"]
        procs.append(await asyncio.create_subprocess_exec(sys.executable, *args))
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url in urls:
            await wait_ready(url + "/")
        direct = await _direct_ms(urls[1], post())
        cfg = make_config(
            urls[0],
            [{"name": "c", "url": urls[1], "fraction": 1.0}],
            top={"proxy": {"upstream_keepalive_s": 0.75}},
        )
        async with running_proxy(cfg) as (dp, sink):
            results = await _load(dp.port, post(), clients=2, each=20, pauses=(0.5, 1.3))
            await settle(dp)
            assert Counter(s for s, _ in results) == {200: 40}
            assert max(t for _, t in results) < 1.0
            records = sink.decoded()
            assert len(records) == 40
            assert [r for r in records if r["candidate"]["error"]] == []
            lat = sorted(r["candidate"]["latency_ms"] for r in records)
            print(
                f"FIGURE keepalive uvicorn: max client {max(t for _, t in results) * 1000:.1f} "
                f"ms, candidate p50 {lat[20]:.2f} ms (direct {direct:.2f} ms), max "
                f"{lat[-1]:.1f} ms, production {dict(events(dp))}"
            )
            assert lat[20] < direct + 20.0
            assert lat[-1] < 1000.0
            assert events(dp)["not_resent"] == 0
    finally:
        for proc in procs:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
