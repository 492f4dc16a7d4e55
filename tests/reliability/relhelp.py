"""Helpers for the fault, load and soak suite: a keep-alive load generator that measures
client latency, percentiles, a mid-response-reset server and process probes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

LONG = os.environ.get("SHADOWROUTE_LONG", "") not in ("", "0")
"""Run the long forms (``SHADOWROUTE_LONG=1``)."""

BODY = b'{"instances": [[1.5], [2.5]]}'

# Tolerance for comparing client p99 with a faulty vs a healthy candidate.
P99_RATIO = 1.10
P99_SLACK_MS = 0.3


def post(body: bytes = BODY, *, rid: bytes | None = None, extra: bytes = b"") -> bytes:
    rid_line = b"x-request-id: " + rid + b"\r\n" if rid is not None else b""
    return (
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: proxy.local\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n%s"
        % (len(body), rid_line, extra, body)
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def normalize(status_line: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A response with the proxy's own per-hop headers (request id, Connection) left out."""
    keep = [
        n.lower() + b":" + v.strip()
        for n, v in headers
        if n.lower() not in (b"x-request-id", b"connection", b"keep-alive")
    ]
    return b"\r\n".join([status_line, *keep]) + b"\r\n\r\n" + body


Response = tuple[bytes, list[tuple[bytes, bytes]], bytes]


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    headers: list[tuple[bytes, bytes]] = []
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
        if name.lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return lines[0], headers, body


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    responses: Counter[bytes] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    started: float = 0.0
    elapsed_s: float = 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def merge(self, other: LoadResult) -> None:
        self.latencies_ms += other.latencies_ms
        self.responses.update(other.responses)
        self.statuses.update(other.statuses)
        self.errors += other.errors
        self.elapsed_s += other.elapsed_s

    def summary(self) -> str:
        return (
            f"n={len(self.latencies_ms)} p50={self.p(50):.2f}ms p99={self.p(99):.2f}ms "
            f"max={max(self.latencies_ms, default=math.nan):.1f}ms errors={self.errors}"
        )


async def run_load(
    port: int,
    make_request: Callable[[int], bytes],
    *,
    total: int,
    concurrency: int,
    rate: float | None = None,
    max_s: float = 120.0,
    keep_bodies: bool = True,
    on_response: Callable[[int, float], None] | None = None,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """Send ``total`` requests over ``concurrency`` keep-alive connections (closed loop, or
    paced at ``rate`` requests/s overall) and time each one. Bounded by ``max_s`` (and ends
    early once ``stop`` is set)."""
    result = LoadResult()
    counter = iter(range(total))
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    deadline = t_start + max_s
    interval = concurrency / rate if rate else 0.0

    async def worker(w: int) -> None:
        reader = writer = None
        next_at = t_start + (interval * w / concurrency if interval else 0.0)
        try:
            for i in counter:
                if loop.time() > deadline or (stop is not None and stop.is_set()):
                    return
                if interval:
                    delay = next_at - loop.time()
                    next_at += interval
                    if delay > 0:
                        await asyncio.sleep(delay)
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                data = make_request(i)
                t0 = time.perf_counter()
                try:
                    writer.write(data)
                    status_line, headers, body = await asyncio.wait_for(read_response(reader), 30)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                    result.errors += 1
                    writer.close()
                    reader = writer = None
                    continue
                ms = (time.perf_counter() - t0) * 1000.0
                result.latencies_ms.append(ms)
                status = int(status_line.split(b" ", 2)[1])
                result.statuses[status] += 1
                if keep_bodies:
                    result.responses[normalize(status_line, headers, body)] += 1
                if on_response is not None:
                    on_response(i, ms)
                if any(n.lower() == b"connection" and v.lower() == b"close" for n, v in headers):
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    result.elapsed_s = time.perf_counter() - t0
    return result


async def direct_response(port: int, request: bytes) -> bytes:
    """Production's own answer to ``request``, normalized like the load generator's."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        status_line, headers, body = await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return normalize(status_line, headers, body)


class _HalfThenAbort(asyncio.Protocol):
    def __init__(self, server: HalfThenAbortServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.live.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.live.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf or self.transport is None:
            return
        self.buf = b""
        self.server.requests += 1
        body = self.server.body
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % len(body)
        )
        self.transport.write(head + body[: len(body) // 2])
        transport = self.transport
        asyncio.get_running_loop().call_later(0.005, transport.abort)


class HalfThenAbortServer:
    """Answers every request with its head and half its body, then resets (RST) the
    connection."""

    def __init__(self, body: bytes = b'{"predictions": [2.5, 3.5], "pad": "' + b"x" * 4000 + b'"}'):
        self.body = body
        self.requests = 0
        self.live: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> HalfThenAbortServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HalfThenAbort(self), "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self.live):
                t.abort()
            self._server = None


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def report(check: str, **figures: object) -> None:
    """Print a figure line and, when ``SHADOWROUTE_RELIABILITY_REPORT`` names a file, append
    it there as JSON (``scripts/reliability`` turns that file into the table of
    docs/reliability.md)."""
    line = {"check": check, "long": LONG, **figures}
    print(f"\nFIGURE {json.dumps(line)}")
    path = os.environ.get("SHADOWROUTE_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


@dataclass
class Comparison:
    healthy: LoadResult
    faulty: LoadResult
    attempts: int
    faulty_requests: int
    """Requests sent to the faulty side over all attempts."""

    @property
    def bound_ms(self) -> float:
        return self.healthy.p(99) * P99_RATIO + P99_SLACK_MS

    @property
    def within(self) -> bool:
        return self.faulty.p(99) <= self.bound_ms


async def compare_p99(
    good_port: int,
    bad_port: int,
    request: bytes,
    *,
    per_side: int = 2000,
    block: int = 100,
    rate: float = 800.0,
    concurrency: int = 8,
    attempts: int = 3,
) -> Comparison:
    """Client latency through two proxies, measured in interleaved blocks (ABBA order) so
    that noise from a shared machine falls on both alike. A measurement whose faulty p99 is
    over the bound is repeated, up to ``attempts`` times in all: a real regression fails every
    attempt, a burst of noise from other processes rarely does twice."""
    sent_bad = 0
    result: Comparison | None = None
    for attempt in range(1, attempts + 1):
        healthy, faulty = LoadResult(), LoadResult()
        for b in range(per_side // block):
            order = ((good_port, healthy), (bad_port, faulty))
            for port, acc in order if b % 2 == 0 else order[::-1]:
                acc.merge(
                    await run_load(
                        port, lambda i: request, total=block, concurrency=concurrency, rate=rate
                    )
                )
                if port == bad_port:
                    sent_bad += block
        result = Comparison(healthy, faulty, attempt, sent_bad)
        if result.within:
            break
    assert result is not None
    return result
