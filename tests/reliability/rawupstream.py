"""A production server on loopback that answers with exact bytes and keeps every byte it
received, per connection: what the proxy really sent upstream, for framing tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

Script = Callable[[int], bytes]
"""The bytes to answer the n-th request (over all connections) with, written in one call."""


class RawConn(asyncio.Protocol):
    def __init__(self, server: RawUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.urls: list[bytes] = []  # request targets, as this connection's parser saw them
        self.complete = 0  # requests read whole
        self.eof = False  # the proxy closed the connection
        self.bad = False  # the bytes stopped being valid HTTP
        self._parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.conns.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.bad:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.bad = True

    def on_url(self, url: bytes) -> None:
        self.urls.append(url)

    def on_headers_complete(self) -> None:
        if self.server.answer_on == "head":
            self._answer()

    def on_message_complete(self) -> None:
        self.complete += 1
        if self.server.answer_on == "complete":
            self._answer()

    def _answer(self) -> None:
        n = self.server.answered
        self.server.answered += 1
        if self.transport is not None:
            self.transport.write(self.server.script(n))


class RawUpstream:
    """``answer_on``: ``complete`` answers each request once read whole; ``head`` answers as
    soon as its head is read, without waiting for the body (an early answer)."""

    def __init__(self, script: Script, answer_on: str = "complete") -> None:
        self.script = script
        self.answer_on = answer_on
        self.answered = 0
        self.conns: list[RawConn] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> RawUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: RawConn(self), "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for c in self.conns:
                if c.transport is not None:
                    c.transport.abort()
            self._server = None


def response(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    """A Content-Length response with ``extra`` header lines."""
    head = [b"HTTP/1.1 " + status, b"content-type: text/plain", *extra]
    head.append(b"content-length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


INJECTED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED"
