"""Real HTTP model servers for tests, on loopback, with controllable behaviour.

``ModelServer`` is a small HTTP/1.1 server (asyncio + httptools) that answers with exact bytes,
so tests can compare what the client got through the proxy with what the server sent. Its
``behave`` hook decides per request: answer, delay, hang, reset, stream chunks, trickle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools
import orjson


@dataclass
class Seen:
    method: bytes
    url: bytes
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    delay: float = 0.0
    chunks: list[bytes] | None = None  # send chunked, one chunk per item
    chunk_gap: float = 0.0
    reset: bool = False  # close the connection without answering
    hang: bool = False  # never answer
    close: bool = False  # Connection: close after this response
    raw: bytes | None = None  # send these bytes verbatim

    def to_bytes(self) -> bytes:
        head = [b"HTTP/1.1 %d %s" % (self.status, b"OK" if self.status < 400 else b"ERR")]
        head += [n + b": " + v for n, v in self.headers]
        if self.chunks is None:
            head.append(b"content-length: %d" % len(self.body))
        else:
            head.append(b"transfer-encoding: chunked")
        if self.close:
            head.append(b"connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + (self.body if self.chunks is None else b"")


Behaviour = Callable[[Seen], Reply | Awaitable[Reply]]


def kserve_reply(seen: Seen) -> Reply:
    """A KServe v1 answer: one prediction per instance, the instance's first value + 1."""
    try:
        doc = orjson.loads(seen.body) if seen.body else {"instances": [[0]]}
        preds = [float(row[0]) + 1.0 for row in doc.get("instances", [[0]])]
    except (orjson.JSONDecodeError, TypeError, ValueError, KeyError, IndexError):
        return Reply(status=400, body=b'{"error":"bad input"}')
    return Reply(
        body=orjson.dumps({"predictions": preds}),
        headers=[(b"content-type", b"application/json"), (b"x-model", b"prod")],
    )


class _Conn(asyncio.Protocol):
    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._queue: asyncio.Queue[Seen | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections += 1
        self.server.live.add(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.live.discard(self)
        self._queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport:
                self.transport.close()

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        seen = Seen(self.parser.get_method(), self._url, self._headers, b"".join(self._body))
        self.server.seen.append(seen)
        self._queue.put_nowait(seen)

    async def _serve(self) -> None:
        while True:
            seen = await self._queue.get()
            if seen is None or self.transport is None or self.transport.is_closing():
                return
            reply = self.server.behave(seen)
            if not isinstance(reply, Reply):
                reply = await reply
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.hang:
                await asyncio.sleep(3600)
            if self.transport.is_closing():
                return
            if reply.reset:
                self.transport.abort()
                return
            if reply.raw is not None:
                self.transport.write(reply.raw)
            else:
                self.transport.write(reply.to_bytes())
                for ch in reply.chunks or []:
                    if reply.chunk_gap:
                        await asyncio.sleep(reply.chunk_gap)
                    self.transport.write(b"%x\r\n%s\r\n" % (len(ch), ch))
                if reply.chunks is not None:
                    self.transport.write(b"0\r\n\r\n")
            self.server.answered += 1
            if reply.close or seen.headers.get(b"connection", b"").lower() == b"close":
                self.transport.close()
                return


class ModelServer:
    def __init__(self, behave: Behaviour = kserve_reply) -> None:
        self.behave = behave
        self.seen: list[Seen] = []
        self.connections = 0
        self.answered = 0
        self.live: set[_Conn] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ModelServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for c in list(self.live):
                if c.transport is not None:
                    c.transport.abort()
                if c._task is not None:
                    c._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await c._task
            self._server = None


async def raw_request(
    port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 5.0
) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything read until the peer closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
                if not read_until_close:
                    break
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return out


def split_response(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Status line, headers (lower-cased names) and body of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, body


JSON_HEADERS = [(b"content-type", b"application/json")]


def parity_reply(seen: Seen) -> Reply:
    """A KServe v1 classifier: instance ``[k]`` is predicted ``k % 2``."""
    k = int(orjson.loads(seen.body)["instances"][0][0])
    return Reply(body=orjson.dumps({"predictions": [k % 2]}), headers=JSON_HEADERS)


def not_found_reply(seen: Seen) -> Reply:
    """A model server that does not have the model: 404 to everything."""
    return Reply(status=404, body=b'{"error": "model not found"}', headers=JSON_HEADERS)


@contextlib.asynccontextmanager
async def parity_servers() -> AsyncIterator[tuple[ModelServer, ModelServer, ModelServer]]:
    """(production, an identical candidate, a candidate answering 404), started."""
    prod = ModelServer(parity_reply)
    good = ModelServer(parity_reply)
    missing = ModelServer(not_found_reply)
    for s in (prod, good, missing):
        await s.start()
    try:
        yield prod, good, missing
    finally:
        for s in (prod, good, missing):
            await s.stop()
