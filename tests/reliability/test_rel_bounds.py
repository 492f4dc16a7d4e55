"""Bounds on what one client or one upstream can make the data plane hold: flow control
towards production, a paused client resumed when its connection arrives, the production body
copied for the record, a deadline for request heads and a cap on client connections. Each
bound is hit on purpose, counted (``shadowroute_limits_hit_total``) and shown harmless to the
next client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import yaml
from relhelp import report

from playbook import Playbook
from proxyutil import free_port, make_config, running_proxy, settle
from shadowroute.dataplane.mirror import MirrorExchange
from shadowroute.dataplane.server import DataPlane, listen_socket
from shadowroute.dataplane.turns import CLOSES_PER_TURN
from shadowroute.dataplane.upstream import UpstreamConnection
from upstreams import ModelServer, Reply

BIG_BODY_MIB = 48


def _config(prod_url: str, *, proxy: dict[str, Any] | None = None, **top: Any) -> Any:
    return make_config(
        prod_url,
        production={"name": "prod-v1", "url": prod_url, "timeout_s": 10, "version": "1"},
        top={"proxy": proxy or {}, **top},
    )


def limits(dp: DataPlane) -> dict[str, int]:
    assert dp.proxy is not None
    return dict(getattr(dp.proxy.stats, "limits", {}))


async def until_open(dp: DataPlane, n: int) -> None:
    async with asyncio.timeout(5):
        while dp.proxy is None or dp.proxy.stats.open_connections != n:
            await asyncio.sleep(0.01)


def post_head(length: int) -> bytes:
    return (
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: proxy.local\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % length
    )


async def read_response(reader: asyncio.StreamReader, timeout: float = 20) -> tuple[bytes, bytes]:
    async with asyncio.timeout(timeout):
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        length = int(head.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
        return head, await reader.readexactly(length)


class _StallingProduction(asyncio.Protocol):
    """Reads a request head, stops reading for ``stall_s``, then reads the body whole and
    answers with the number of body bytes it got."""

    def __init__(self, server: StallingProduction) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.length = -1
        self.got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.live.append(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.length < 0:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            self.length = int(head.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
            data = self.buf[end + 4 :]
            self.transport.pause_reading()
            loop = asyncio.get_running_loop()
            loop.call_later(self.server.stall_s, self.transport.resume_reading)
        self.got += len(data)
        if self.got >= self.length:
            self.server.received.append(self.got)
            body = b"%d" % self.got
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )


class StallingProduction:
    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.received: list[int] = []
        self.live: list[asyncio.Transport] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _StallingProduction(self), "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self.live:
            t.abort()
        await asyncio.sleep(0.01)


def buffered_for_production(dp: DataPlane) -> int:
    """Bytes the data plane holds for production right now: its connections' write buffers
    and any body queued before a connection."""
    assert dp.proxy is not None
    total = 0
    for route in dp.proxy.routes:
        for conn in route.prod_pool._all:
            if conn.transport is not None:
                total += conn.transport.get_write_buffer_size()
    for client in dp.proxy.connections:
        req = client.active
        if req is not None:
            total += req.out_size + sum(map(len, req.up_pending))
    return total


async def test_a_production_that_stops_reading_pauses_the_client() -> None:
    """One client pushes 48 MiB at a production that reads nothing for 1.5 s: the data plane
    holds at most about its buffer bound, not the upload, and the whole body arrives once
    production reads again."""
    prod = StallingProduction(stall_s=1.5)
    url = await prod.start()
    size = BIG_BODY_MIB << 20
    try:
        async with running_proxy(_config(url)) as (dp, _):  # the default bound: 1 MiB
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)

            async def upload() -> None:
                writer.write(post_head(size))
                block = b"b" * (1 << 20)
                for _ in range(BIG_BODY_MIB):
                    writer.write(block)
                    await writer.drain()

            task = asyncio.get_running_loop().create_task(upload())
            peak = 0
            t_end = time.monotonic() + 1.2
            while time.monotonic() < t_end:
                peak = max(peak, buffered_for_production(dp))
                await asyncio.sleep(0.01)
            head, body = await read_response(reader)
            await task
            writer.close()
            report(
                "bounds: production stops reading a 48 MiB upload",
                peak_buffered_kib=peak // 1024,
                limits=limits(dp),
                status=head[9:12].decode(),
            )
            assert head.startswith(b"http/1.1 200") and body == b"%d" % size
            assert prod.received == [size]
            assert peak < 3 << 20, peak  # the bound (1 MiB) plus what one read brings
            assert limits(dp).get("upstream_backpressure", 0) >= 1
    finally:
        await prod.close()


async def test_a_production_that_never_reads_gets_a_504_and_frees_the_upload() -> None:
    """Production reads the head and then nothing: the client is paused, gets 504 at the
    timeout, and the upstream connection (with what it buffered) is closed."""
    prod = StallingProduction(stall_s=3600)
    url = await prod.start()
    size = BIG_BODY_MIB << 20
    try:
        cfg = make_config(
            url, production={"name": "prod-v1", "url": url, "timeout_s": 1, "version": "1"}
        )
        async with running_proxy(cfg) as (dp, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)

            async def upload() -> None:
                writer.write(post_head(size))
                block = b"b" * (1 << 20)
                with contextlib.suppress(OSError):
                    for _ in range(BIG_BODY_MIB):
                        writer.write(block)
                        await writer.drain()

            task = asyncio.get_running_loop().create_task(upload())
            peak = 0
            t0 = time.perf_counter()
            reading = asyncio.get_running_loop().create_task(read_response(reader))
            while not reading.done():
                peak = max(peak, buffered_for_production(dp))
                await asyncio.sleep(0.01)
            head, _ = reading.result()
            answered_s = time.perf_counter() - t0
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            writer.close()
            await asyncio.sleep(0.05)
            left = buffered_for_production(dp)
            report(
                "bounds: production never reads a 48 MiB upload (timeout 1 s)",
                status=head[9:12].decode(),
                answered_s=round(answered_s, 2),
                peak_buffered_kib=peak // 1024,
                buffered_after_kib=left // 1024,
            )
            assert head.startswith(b"http/1.1 504")
            assert answered_s < 3
            assert peak < 3 << 20, peak
            assert left == 0
    finally:
        await prod.close()


async def test_a_large_upload_on_a_cold_pool_is_resumed_when_the_connection_arrives() -> None:
    prod = await ModelServer(lambda s: Reply(body=b"%d" % len(s.body))).start()
    size = 20 << 20
    try:
        async with running_proxy(_config(prod.url)) as (dp, _):
            results = []
            for _ in range(3):  # each on a cold pool: production closes after each answer
                reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
                t0 = time.perf_counter()
                head = post_head(size).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                writer.write(head + b"u" * size)
                got = await read_response(reader)
                results.append((got[0][9:12].decode(), round(time.perf_counter() - t0, 2)))
                writer.close()
                assert got[0].startswith(b"http/1.1 200") and got[1] == b"%d" % size
                dp.proxy.routes[0].prod_pool._idle.clear() if dp.proxy else None
            report("bounds: 20 MiB uploads on a cold pool", results=results)
    finally:
        await prod.stop()


async def test_production_body_over_the_capture_cap_reaches_the_client_whole() -> None:
    big = orjson.dumps({"predictions": [1.5], "pad": "p" * (3 << 20)})
    prod = await ModelServer(
        lambda s: Reply(body=big, headers=[(b"content-type", b"application/json")])
    ).start()
    try:
        cfg = _config(prod.url, records={"max_response_bytes": 1 << 20})
        async with running_proxy(cfg) as (dp, sink):
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
            body = b'{"instances": [[1]]}'
            writer.write(post_head(len(body)) + body)
            head, got = await read_response(reader)
            writer.close()
            await settle(dp)
            records = sink.all_decoded()
            report(
                "bounds: 3 MiB production answer, 1 MiB capture cap",
                client_bytes=len(got),
                record_error=records[0]["production"]["error"],
                limits=limits(dp),
            )
            assert got == big
            assert records[0]["production"]["error"] == "too_large"
            assert records[0]["production"]["output"] is None
            assert limits(dp) == {"response_too_large": 1}
    finally:
        await prod.stop()


async def test_slowloris_heads_get_408_and_are_closed() -> None:
    prod = await ModelServer().start()
    try:
        cfg = _config(prod.url, proxy={"head_timeout_s": 1.0})
        async with running_proxy(cfg) as (dp, _):
            n = 20
            conns = [await asyncio.open_connection("127.0.0.1", dp.port) for _ in range(n)]
            silent = await asyncio.open_connection("127.0.0.1", dp.port)
            head = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: h\r\nx-pad: " + b"a" * 100

            async def trickle(w: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError):
                    for byte in head:
                        w.write(bytes([byte]))
                        await asyncio.sleep(0.2)
                        if w.is_closing():
                            return

            tasks = [asyncio.get_running_loop().create_task(trickle(w)) for _, w in conns]
            t0 = time.perf_counter()

            async def answer(r: asyncio.StreamReader) -> bytes:
                # A client still writing when the proxy closes reads its 408, not a reset: the
                # proxy shuts its side and drops what still comes (lingering close).
                try:
                    return await r.read()
                except ConnectionResetError:
                    return b"(reset)"

            try:
                async with asyncio.timeout(10):  # read each until the proxy closes it
                    outs = await asyncio.gather(*(answer(r) for r, _ in [*conns, silent]))
            finally:
                closed_in = time.perf_counter() - t0
                for t in tasks:
                    t.cancel()
                for _, w in [*conns, silent]:
                    w.close()
            statuses = {o[:12] for o in outs}
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
            body = b'{"instances": [[1]]}'
            writer.write(post_head(len(body)) + body)
            ok, _ = await read_response(reader)
            writer.close()
            report(
                "bounds: 20 slowloris heads and a silent connection, head timeout 1 s",
                statuses=sorted(s.decode() for s in statuses),
                closed_within_s=round(closed_in, 2),
                limits=limits(dp),
            )
            assert statuses == {b"HTTP/1.1 408"}, statuses
            assert outs[-1].startswith(b"HTTP/1.1 408")  # the silent one reads its answer
            assert closed_in < 5.0  # 1 s, checked every 0.5 s (slack for a loaded machine)
            assert limits(dp).get("head_timeout") == n + 1
            assert ok.startswith(b"http/1.1 200")
    finally:
        await prod.stop()


async def test_a_flood_of_late_heads_is_refused_a_batch_per_loop_turn() -> None:
    """Idle connections opened together time out together: the sweep refuses at most
    ``sweep_batch`` of them per turn of the event loop (800 refusals in one turn held every
    other client up for milliseconds in the hostile soak), and all of them get their 408."""
    prod = await ModelServer().start()
    try:
        cfg = _config(prod.url, proxy={"head_timeout_s": 1.0})
        async with running_proxy(cfg) as (dp, _):
            assert dp.proxy is not None
            stats = dp.proxy.stats
            batch = dp.sweep_batch  # the default, SWEEP_BATCH
            assert batch >= 1
            n = 40
            conns = [await asyncio.open_connection("127.0.0.1", dp.port) for _ in range(n)]
            loop = asyncio.get_running_loop()
            seen: list[int] = []  # 408s so far, at each turn of the loop
            stop = False

            def turn() -> None:
                seen.append(stats.rejected["408"])
                if not stop:
                    loop.call_soon(turn)

            loop.call_soon(turn)
            try:
                async with asyncio.timeout(10):
                    outs = await asyncio.gather(*(r.read() for r, _ in conns))
            finally:
                stop = True
                for _, w in conns:
                    w.close()
            steps = [b - a for a, b in itertools.pairwise(seen)]
            report(f"bounds: 40 late heads, sweep batch {batch}", most_in_one_turn=max(steps))
            assert all(o.startswith(b"HTTP/1.1 408") for o in outs)
            assert seen[-1] == n and stats.limits["head_timeout"] == n
            assert max(steps) <= batch, max(steps)
    finally:
        await prod.stop()


async def test_the_sweep_looks_at_a_slice_of_the_open_connections_per_turn() -> None:
    """Looking at every open connection each second is work too (~0.5 µs each: a flood's
    850 in one turn held the other clients ~0.4 ms). A turn looks at ``sweep_slice`` of them
    at most, and the sweep still looks at every one (and refuses each late head)."""
    prod = await ModelServer().start()
    try:
        cfg = _config(prod.url, proxy={"head_timeout_s": 30.0})
        async with running_proxy(cfg) as (dp, _):
            assert dp.proxy is not None
            n = 300
            conns = [await asyncio.open_connection("127.0.0.1", dp.port) for _ in range(n)]
            try:
                await until_open(dp, n)
                loop = asyncio.get_running_loop()
                dp.sweep_slice = 64
                t0 = time.perf_counter()
                turns = list(dp.sweep_turns(loop.time()))
                took = time.perf_counter() - t0
                report("bounds: sweep of 300 idle connections", turns=len(turns), ms=took * 1e3)
                assert sum(turns) == n and max(turns) <= 64 and len(turns) >= n // 64
                assert dp.proxy.stats.limits.get("head_timeout", 0) == 0  # none due yet
                # An hour later every head is late: all refused, still a slice at a time.
                t0 = time.perf_counter()
                late = list(dp.sweep_turns(loop.time() + 3600))
                took = time.perf_counter() - t0
                report("bounds: 300 late heads refused", turns=len(late), ms=took * 1e3)
                assert sum(late) == n and max(late) <= dp.sweep_batch
                assert dp.proxy.stats.limits["head_timeout"] == n
                outs = await asyncio.gather(*(r.read() for r, _ in conns))
                assert all(o.startswith(b"HTTP/1.1 408") for o in outs)
            finally:
                for _, w in conns:
                    w.close()
    finally:
        await prod.stop()


async def test_connections_their_clients_ended_together_are_closed_a_few_per_turn() -> None:
    """A client that ends hundreds of connections at once (a flood going away): the data plane
    closes at most ``CLOSES_PER_TURN`` of them per turn of the loop (closing 900 in the turn
    it read their ends held every other client up for ~13 ms), closes every one, and serves
    a request meanwhile."""
    prod = await ModelServer().start()
    try:
        async with running_proxy(_config(prod.url)) as (dp, _):
            assert dp.proxy is not None
            stats = dp.proxy.stats
            n = 5 * CLOSES_PER_TURN + 3
            conns = [await asyncio.open_connection("127.0.0.1", dp.port) for _ in range(n)]
            await until_open(dp, n)
            probe_r, probe_w = await asyncio.open_connection("127.0.0.1", dp.port)
            loop = asyncio.get_running_loop()
            seen: list[int] = []  # open connections, at each turn of the loop
            stop = False

            def turn() -> None:
                seen.append(stats.open_connections)
                if not stop:
                    loop.call_soon(turn)

            for _, w in conns:
                w.close()
            loop.call_soon(turn)
            try:
                probe_w.write(post_head(2) + b"{}")
                head, _ = await read_response(probe_r, timeout=10)
                await until_open(dp, 1)  # only the probe is left
            finally:
                stop = True
                probe_w.close()
                for _, w in conns:
                    await w.wait_closed()
            closed = [a - b for a, b in itertools.pairwise(seen)]
            report("bounds: 43 connections ended at once", most_closed_in_one_turn=max(closed))
            assert head.startswith(b"http/1.1 200")
            assert max(closed) <= CLOSES_PER_TURN, closed
            assert dp.proxy.closes.__len__() == 0
    finally:
        await prod.stop()


async def test_connections_over_the_cap_get_503() -> None:
    prod = await ModelServer().start()
    try:
        cfg = _config(prod.url, proxy={"max_connections": 5})
        async with running_proxy(cfg) as (dp, _):
            held = [await asyncio.open_connection("127.0.0.1", dp.port) for _ in range(5)]
            try:
                await until_open(dp, 5)
                r, w = await asyncio.open_connection("127.0.0.1", dp.port)
                async with asyncio.timeout(5):
                    refused = await r.read()
                w.close()
                held[0][1].close()
                await until_open(dp, 4)
                reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
                body = b'{"instances": [[1]]}'
                writer.write(post_head(len(body)) + body)
                ok, _ = await read_response(reader)
                writer.close()
            finally:
                for _, hw in held:
                    hw.close()
            assert dp.proxy is not None
            report(
                "bounds: connection cap 5",
                refused=refused[:12].decode(),
                limits=limits(dp),
                open=dp.proxy.stats.open_connections,
            )
            assert refused.startswith(b"HTTP/1.1 503") and b"connection: close" in refused
            assert ok.startswith(b"http/1.1 200")
            assert limits(dp) == {"max_connections": 1}
            assert dp.proxy.stats.rejected["503"] == 1
    finally:
        await prod.stop()


# --- what one answer or one request can put into a record --------------------------------------


def _mirrored(prod_url: str, cand_url: str, **records: Any) -> Any:
    return make_config(
        prod_url,
        [{"name": "cand", "url": cand_url}],
        production={"name": "prod-v1", "url": prod_url, "timeout_s": 10, "version": "1"},
        capture={"input": True},
        top={"records": records} if records else {},
    )


async def _one(dp: DataPlane, body: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
    writer.write(post_head(len(body)) + body)
    try:
        return await read_response(reader)
    finally:
        writer.close()


def _predictions(n: int) -> Reply:
    body = orjson.dumps({"predictions": [0.25] * n})
    return Reply(body=body, headers=[(b"content-type", b"application/json")])


async def test_too_many_predictions_are_not_recorded() -> None:
    prod = await ModelServer(lambda s: _predictions(20_000)).start()
    cand = await ModelServer(lambda s: _predictions(3)).start()
    try:
        cfg = _mirrored(prod.url, cand.url, max_predictions=1000)
        async with running_proxy(cfg) as (dp, sink):
            head, got = await _one(dp, b'{"instances": [[1], [2], [3]]}')
            await settle(dp)
            (rec,) = sink.decoded()
            report(
                "bounds: 20000 predictions, cap 1000",
                production=rec["production"]["error"],
                candidate=rec["candidate"]["error"],
                limits=limits(dp),
            )
            assert got == _predictions(20_000).body  # the client gets all of it
            assert rec["production"]["error"] == "too_large"
            assert rec["production"]["output"] is None
            assert rec["candidate"]["error"] is None and rec["candidate"]["output"] == [0.25] * 3
            assert limits(dp) == {"predictions_too_large": 1}
    finally:
        await prod.stop()
        await cand.stop()


async def test_too_many_instances_are_not_recorded() -> None:
    prod = await ModelServer().start()
    cand = await ModelServer().start()
    try:
        cfg = _mirrored(prod.url, cand.url, max_instances=1000)
        async with running_proxy(cfg) as (dp, sink):
            body = orjson.dumps({"instances": [[i] for i in range(5000)]})
            head, got = await _one(dp, body)
            await settle(dp)
            (rec,) = sink.decoded()
            report(
                "bounds: 5000 instances, cap 1000",
                input=rec["input"],
                production=rec["production"]["error"],
                limits=limits(dp),
            )
            assert (
                head.startswith(b"http/1.1 200") and len(orjson.loads(got)["predictions"]) == 5000
            )
            assert rec["input"] is None
            assert rec["production"]["error"] == "too_large"
            assert rec["candidate"]["error"] == "too_large"
            assert limits(dp) == {"instances_too_large": 1}
    finally:
        await prod.stop()
        await cand.stop()


async def test_a_request_body_of_too_many_values_is_not_parsed() -> None:
    """A captured body that may hold more JSON values than ``records.max_json_values`` is not
    parsed on the event loop (a 1 MB body of 250,000 tiny instances took 50-70 ms): the record
    goes without its input, both predictions are still compared, and it is counted."""
    prod = await ModelServer().start()
    cand = await ModelServer().start()
    try:
        cfg = _mirrored(prod.url, cand.url, max_json_values=1000)
        async with running_proxy(cfg) as (dp, sink):
            wide = orjson.dumps({"instances": [list(range(1, 1500))]})  # one instance
            head, got = await _one(dp, wide)
            small = orjson.dumps({"instances": [[1, 2], [3, 4]]})
            await _one(dp, small)
            await settle(dp)
            wide_rec, small_rec = sorted(sink.decoded(), key=lambda r: r["input"] is not None)
            report(
                "bounds: a 1500-value body, max_json_values 1000",
                input=wide_rec["input"], limits=limits(dp),
            )  # fmt: skip
            assert head.startswith(b"http/1.1 200") and orjson.loads(got)["predictions"] == [2.0]
            assert wide_rec["input"] is None
            assert wide_rec["production"]["output"] == [2.0]
            assert wide_rec["candidate"]["output"] == [2.0]
            assert small_rec["input"] == {"instances": [[1, 2], [3, 4]]}
            assert limits(dp) == {"input_too_large": 1}
    finally:
        await prod.stop()
        await cand.stop()


async def test_an_answer_of_too_many_values_is_not_parsed() -> None:
    prod = await ModelServer(lambda s: _predictions(2000)).start()
    cand = await ModelServer(lambda s: _predictions(1)).start()
    try:
        cfg = _mirrored(prod.url, cand.url, max_json_values=1000)
        async with running_proxy(cfg) as (dp, sink):
            head, got = await _one(dp, b'{"instances": [[1]]}')
            await settle(dp)
            (rec,) = sink.decoded()
            assert got == _predictions(2000).body  # the client gets all of it
            assert rec["production"]["error"] == "too_large"
            assert rec["candidate"]["error"] is None and rec["candidate"]["output"] == [0.25]
            assert limits(dp) == {"extract_too_large": 1}
    finally:
        await prod.stop()
        await cand.stop()


# A candidate answer's framing: announced past the cap, announced within it but longer (a
# lying length is the upstream parser's to refuse; the exchange still stops at the cap), and
# chunked (no length: read up to the first piece past the cap).
_BIG_HEADS = {
    "announced": b"content-length: %d" % (10 << 20),
    "chunked": b"transfer-encoding: chunked",
}


@pytest.mark.parametrize("framing", list(_BIG_HEADS))
def test_a_big_candidate_answer_is_cut_at_the_record_cap(framing: str) -> None:
    """A candidate answer over ``records.max_response_bytes`` is not read past the cap: an
    answer whose Content-Length is over it ends at its head, one without a length at the first
    piece past it. The exchange ends there (``too_large``, nothing kept) and its connection is
    closed, so 128 mirrors in flight of 15 MiB each hold no 1.9 GiB, no join runs on the loop,
    and the rest of a hostile candidate's answer is never read (in the hostile soak, reading
    12 MiB answers to their end to reuse the connection made the worker's busiest bursts; reading
    the first MiB of each before giving up cost the clients' p99 under a candidate pushing
    17 MiB answers). Counted as ``candidate_too_large``; the breaker takes it as an answer.
    (Played on the real mirror exchange, without sockets; the socket tests below check the
    records.)"""
    cfg = _mirrored("http://127.0.0.1:9000", "http://127.0.0.1:9001", max_response_bytes=64 << 10)
    pb = Playbook(cfg)
    try:
        assert pb.proxy.routes[0].runtimes
        target = pb.proxy.routes[0].runtimes[0].target
        for status in (200, 503):
            outcomes: list[Any] = []
            ex = MirrorExchange(target, b"", outcomes.append)
            conn = UpstreamConnection(target.pool)  # the connection's reading of the head:
            conn.content_length = (10 << 20) if framing == "announced" else -1
            ex.moved(conn)
            piece = b"x" * (16 << 10)
            head = b"HTTP/1.1 %d X\r\n%s\r\n\r\n" % (status, _BIG_HEADS[framing])
            ex.on_head(status, head, head.lower())
            assert len(outcomes) == (1 if framing == "announced" else 0)
            for i in range(640):  # 10 MiB
                ex.on_body(piece)
                if i == 4:  # 80 KiB read: past the cap, the outcome is in
                    assert len(outcomes) == 1
            ex.on_complete()  # (a connection closed delivers nothing more; ignored anyway)
            [result] = outcomes
            assert result.error == "too_large" and result.body is None
            assert result.status == status
        assert pb.proxy.stats.limits["candidate_too_large"] == 2
        assert target.breaker.state == "closed"  # an answer, not a failure
        assert pb.proxy.stats.mirrors[(target.route, target.name, "too_large")] == 2
    finally:
        pb.close()


@pytest.mark.parametrize("status", [200, 204, 304])
def test_a_length_at_the_cap_or_on_a_bodiless_status_is_not_cut(status: int) -> None:
    """The cut at the head is for answers that will be past the cap: a Content-Length equal to
    the cap is read whole, and a 204 or 304 (no body, whatever length it names) is an answer."""
    cfg = _mirrored("http://127.0.0.1:9000", "http://127.0.0.1:9001", max_response_bytes=64 << 10)
    pb = Playbook(cfg)
    try:
        assert pb.proxy.routes[0].runtimes
        target = pb.proxy.routes[0].runtimes[0].target
        outcomes: list[Any] = []
        ex = MirrorExchange(target, b"", outcomes.append)
        length = (64 << 10) if status == 200 else (10 << 20)
        conn = UpstreamConnection(target.pool)
        conn.content_length = length
        ex.moved(conn)
        head = b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (status, length)
        ex.on_head(status, head, head.lower())
        if status == 200:
            ex.on_body(b"x" * length)
        ex.on_complete()
        [result] = outcomes
        assert result.error is None and result.status == status
        assert result.body == (b"x" * length if status == 200 else b"")
        assert "candidate_too_large" not in pb.proxy.stats.limits
    finally:
        pb.close()


async def test_a_big_candidate_answer_is_cut_on_a_real_connection() -> None:
    """Against a real candidate answering 4 MiB: each mirror's record says ``too_large``,
    each cut is counted, the client is served, and the next mirror goes out on a new
    connection (the cut one is closed, never reused half-read)."""
    prod = await ModelServer(lambda s: _predictions(1)).start()
    big = _predictions(800_000)  # ~4 MiB
    cand = await ModelServer(lambda s: big).start()
    try:
        cfg = _mirrored(prod.url, cand.url, max_response_bytes=64 << 10)
        async with running_proxy(cfg) as (dp, sink):
            for _ in range(3):
                head, got = await _one(dp, b'{"instances": [[1]]}')
                assert head.startswith(b"http/1.1 200") and got == _predictions(1).body
                await settle(dp)
            recs = sink.decoded()
            report("bounds: 4 MiB candidate answers, cap 64 KiB", limits=limits(dp))
            assert len(recs) == 3
            assert all(r["candidate"]["error"] == "too_large" for r in recs)
            assert all(r["production"]["output"] == [0.25] for r in recs)
            assert limits(dp).get("candidate_too_large") == 3
    finally:
        await prod.stop()
        await cand.stop()


async def test_an_answer_announced_past_the_cap_ends_at_its_head() -> None:
    """A candidate whose head announces 2 MiB (cap 64 KiB) and then sends nothing more: the
    record says ``too_large`` at once, with no byte of the body read. Had the proxy waited for
    the body, the mirror would have ended in its ``timeout``."""
    prod = await ModelServer(lambda s: _predictions(1)).start()
    announced = Reply(raw=b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (2 << 20))
    cand = await ModelServer(lambda s: announced).start()
    try:
        cfg = _mirrored(prod.url, cand.url, max_response_bytes=64 << 10)
        async with running_proxy(cfg) as (dp, sink):
            head, got = await _one(dp, b'{"instances": [[1]]}')
            assert head.startswith(b"http/1.1 200") and got == _predictions(1).body
            await settle(dp)
            (rec,) = sink.decoded()
            assert rec["candidate"]["error"] == "too_large"
            assert rec["candidate"]["status"] == 200
            assert limits(dp) == {"candidate_too_large": 1}
            mirrors = {k[2]: v for k, v in dp.stats.mirrors.items() if k[1] == "cand"}
            assert mirrors == {"sent": 1, "too_large": 1}
    finally:
        await prod.stop()
        await cand.stop()


async def test_a_huge_candidate_answer_does_not_stall_the_loop() -> None:
    """A 15 MiB candidate answer (under the mirror's 16 MiB cap) is not parsed for the record
    on the event loop: other clients' requests are not held up while it is recorded."""
    prod = await ModelServer(lambda s: _predictions(1)).start()
    huge = _predictions(1_500_000)  # ~7.5 MiB, made once (not on the loop during the test)
    cand = await ModelServer(lambda s: huge).start()
    try:
        async with running_proxy(_mirrored(prod.url, cand.url)) as (dp, sink):
            loop = asyncio.get_running_loop()
            gaps: list[float] = []
            stop = False

            async def ticker() -> None:
                last = loop.time()
                while not stop:
                    await asyncio.sleep(0.002)
                    now = loop.time()
                    gaps.append(now - last)
                    last = now

            tick = loop.create_task(ticker())
            await _one(dp, b'{"instances": [[1]]}')
            await settle(dp, timeout=10)
            stop = True
            await tick
            (rec,) = sink.decoded()
            worst_ms = max(gaps) * 1000
            report(
                "bounds: 7.5 MiB candidate answer",
                candidate=rec["candidate"]["error"],
                worst_loop_gap_ms=round(worst_ms, 1),
                limits=limits(dp),
            )
            assert rec["candidate"]["error"] == "too_large"
            assert limits(dp).get("candidate_too_large") == 1
            assert worst_ms < 150, worst_ms
    finally:
        await prod.stop()
        await cand.stop()


# --- a port another process already serves ---------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "0"])
def test_serve_refuses_a_port_another_process_serves(tmp_path: Path, workers: str) -> None:
    """A second ``serve`` on a port a running one holds (its workers bind with SO_REUSEPORT)
    must not start and silently take a share of the traffic."""
    holder = listen_socket("127.0.0.1", 0, reuse_port=True)  # as a running worker holds it
    port = holder.getsockname()[1]
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [{"name": "r", "protocol": "kserve-v1",
                    "production": {"name": "p", "url": "http://127.0.0.1:1"}}],
    }  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "shadowroute", "serve", "-c", str(path), "--workers", workers]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    finally:
        holder.close()
    report("ops: serve on a port already served", workers=workers, exit=out.returncode)
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"127.0.0.1:{port} is already in use" in out.stderr
    assert "Traceback" not in out.stderr


async def test_a_deeply_nested_input_does_not_lose_the_record() -> None:
    """orjson encodes at most 255 levels: a captured body nested 300 deep used to make the
    record unencodable, and the record was dropped."""
    prod = await ModelServer().start()
    cand = await ModelServer().start()
    try:
        async with running_proxy(_mirrored(prod.url, cand.url)) as (dp, sink):
            deep = b'{"instances": [[1]], "x": ' + b"[" * 300 + b"]" * 300 + b"}"
            head, got = await _one(dp, deep)
            await settle(dp)
            records = sink.decoded()
            report("bounds: input nested 300 deep", records=len(records), limits=limits(dp))
            assert head.startswith(b"http/1.1 200")
            assert len(records) == 1 and records[0]["input"] is None
            assert records[0]["production"]["output"] == [2.0]
            assert limits(dp) == {"input_unencodable": 1}
    finally:
        await prod.stop()
        await cand.stop()


async def test_a_refused_client_still_sending_reads_the_answer_not_a_reset() -> None:
    """A request refused while its body is still coming (here a Content-Length past 2^63):
    the client reads the 400 and then the end of the stream, not a reset that destroys the
    answer (the proxy shuts its side and reads what still comes, up to a bound)."""
    prod = await ModelServer().start()
    try:
        async with running_proxy(_config(prod.url)) as (dp, _):
            outs = []
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
                head = post_head(0).replace(b"Content-Length: 0", b"Content-Length: %d" % (1 << 63))
                writer.write(head + b"x" * (256 << 10))
                try:
                    async with asyncio.timeout(10):
                        outs.append(await reader.read())
                except ConnectionResetError:
                    outs.append(b"(reset)")
                writer.close()
            report(
                "bounds: refused with 256 KiB still being sent",
                answers=sorted({o[:12].decode() for o in outs}),
                limits=limits(dp),
            )
            assert all(o.startswith(b"HTTP/1.1 400") for o in outs), [o[:40] for o in outs]
    finally:
        await prod.stop()


async def test_a_lingering_close_is_bounded_in_bytes_and_time() -> None:
    """What a refused client still sends is read for at most 1 MiB and 2 s: one that sends
    more, or keeps trickling, is cut off, and each cut is counted."""
    prod = await ModelServer().start()
    try:
        async with running_proxy(_config(prod.url)) as (dp, _):
            bad = b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n"
            # A flood after the refusal: cut at 1 MiB.
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
            writer.write(bad)
            with contextlib.suppress(OSError):
                for _ in range(64):  # 4 MiB at most
                    writer.write(b"z" * (64 << 10))
                    await writer.drain()
            with contextlib.suppress(OSError):
                async with asyncio.timeout(10):
                    await reader.read()
            writer.close()
            # A trickle after the refusal: cut after 2 s.
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port)
            writer.write(bad)
            t0 = time.perf_counter()

            async def trickle() -> None:
                with contextlib.suppress(OSError):
                    for _ in range(40):
                        await asyncio.sleep(0.25)
                        writer.write(b"z")

            task = asyncio.get_running_loop().create_task(trickle())
            try:
                async with asyncio.timeout(10):
                    answer = await reader.read()
                while limits(dp).get("linger_timeout", 0) < 1 and time.perf_counter() - t0 < 8:
                    await asyncio.sleep(0.1)
                cut_after = time.perf_counter() - t0
            finally:
                task.cancel()
                writer.close()
            report(
                "bounds: lingering close after a refusal",
                trickle_cut_after_s=round(cut_after, 2),
                limits=limits(dp),
            )
            assert answer.startswith(b"HTTP/1.1 400")
            assert limits(dp).get("linger_bytes") == 1
            assert limits(dp).get("linger_timeout") == 1
            assert 1.9 <= cut_after < 6.0
    finally:
        await prod.stop()
