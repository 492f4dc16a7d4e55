"""A real HTTP/1.1 model server on loopback that closes idle keep-alive connections on its own
clock, the way uvicorn does (a timer armed when an answer is written, cancelled by the next
byte), for the keep-alive tests. It can announce ``Keep-Alive: timeout=N, max=M``, say
``Connection: close`` (and keep the socket open anyway), or, for chosen requests, close the
connection after reading the request without answering (``drop``) or after part of the
status line (``partial``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools
import orjson

Action = Callable[["Received"], str]
"""What to do with a request: ``answer``, ``drop`` or ``partial``."""


@dataclass
class Received:
    n: int  # over all connections, from 0
    conn: int  # the connection's number, from 0
    nth_on_conn: int  # from 0: 1 or more means the connection was reused
    method: bytes
    body: bytes


class _Conn(asyncio.Protocol):
    def __init__(self, server: KeepAliveServer) -> None:
        self.server = server
        self.id = len(server.conns)
        server.conns.append(self)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.count = 0
        self.timer: asyncio.TimerHandle | None = None
        self.closed_idle = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        server = self.server
        got = Received(
            len(server.received),
            self.id,
            self.count,
            self.parser.get_method(),
            b"".join(self.body),
        )
        self.count += 1
        server.received.append(got)
        action = server.action(got)
        if server.delay_s:
            asyncio.get_running_loop().call_later(server.delay_s, self._act, action)
        else:
            self._act(action)

    def _act(self, action: str) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if action == "drop":
            t.close()
            return
        if action == "partial":
            t.write(b"HTTP/1.1 200 OK\r\n")
            t.close()
            return
        t.write(self.server.answer())
        if self.server.idle_s is not None:
            self.timer = asyncio.get_running_loop().call_later(self.server.idle_s, self._idle)

    def _idle(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.closed_idle = True
            self.transport.close()


class KeepAliveServer:
    """``idle_s``: close a connection idle this long after an answer (None: never).
    ``announce``: the ``Keep-Alive`` header value sent with each answer. ``close_header``:
    each answer says ``Connection: close`` (the socket stays open: a client must not reuse it
    all the same). ``action``: per request, ``answer`` / ``drop`` / ``partial``."""

    def __init__(
        self,
        idle_s: float | None = 0.5,
        *,
        announce: bytes | None = None,
        close_header: bool = False,
        delay_s: float = 0.0,
        action: Action | None = None,
    ) -> None:
        self.idle_s = idle_s
        self.announce = announce
        self.close_header = close_header
        self.delay_s = delay_s
        self.action: Action = action or (lambda r: "answer")
        self.conns: list[_Conn] = []
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None

    def answer(self) -> bytes:
        body = orjson.dumps({"predictions": [1.0]})
        head = [b"HTTP/1.1 200 OK", b"content-type: application/json"]
        head.append(b"content-length: %d" % len(body))
        if self.announce is not None:
            head.append(b"keep-alive: " + self.announce)
        if self.close_header:
            head.append(b"connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> KeepAliveServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Conn(self), "127.0.0.1", 0, reuse_address=True
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def close_connection(self, conn: int) -> None:
        """Close connection ``conn`` now, as an idle timeout would."""
        t = self.conns[conn].transport
        if t is not None:
            t.close()
