"""Playbooks for the data plane, without sockets: the real protocol objects (a client's
``ClientConnection``, production's pooled ``UpstreamConnection``) on transports that only
record. A test feeds raw client bytes and raw production bytes in, and reads what each side
was sent, and whether it was closed or paused. The event loop runs only when a test asks for
a turn (``turn``): no timer fires, no socket is opened; production connections are handed to
the pool ready-made.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httptools

from shadowroute.core.config import Config
from shadowroute.dataplane.planner import Head
from shadowroute.dataplane.proxy import ClientConnection, Proxy
from shadowroute.dataplane.recorder import Recorder
from shadowroute.dataplane.stats import DataPlaneStats
from shadowroute.dataplane.upstream import UpstreamConnection
from shadowroute.stream.queue import RecordQueue


class Recording(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self, peer: tuple[str, int] = ("10.1.2.3", 40000)) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closed = False
        self.eof = False  # write_eof: the proxy shut its side (a lingering close)
        self.paused = False
        self.peer = peer
        self.lost = False  # connection_lost was delivered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        assert not self.eof, "write after write_eof"
        self.sent += data

    @property
    def ended(self) -> bool:
        """The proxy is done sending on this connection: closed, or its side shut."""
        return self.closed or self.eof

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def take(self) -> bytes:
        out = bytes(self.sent)
        self.sent.clear()
        return out

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def one_iteration(loop: asyncio.AbstractEventLoop) -> None:
    """Exactly one iteration of ``loop``: the callbacks ready now run, and what they schedule
    waits for the next."""
    loop.call_soon(loop.stop)
    loop.run_forever()


class Playbook:
    """One client connection through the data plane to production, played by hand."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.new_event_loop()  # run a turn at a time, on request
        self.stats = DataPlaneStats()
        self.queue = RecordQueue(config.records.queue_size)
        self.recorder = Recorder(self.loop, self.queue, self.stats)
        self.proxy = Proxy(config, self.loop, self.recorder)
        self.client = ClientConnection(self.proxy)
        self.client_t = Recording()
        self.client.connection_made(self.client_t)
        self.upstreams: list[tuple[UpstreamConnection, Recording]] = []
        self.ready_upstream()

    @property
    def pool(self) -> Any:
        return self.proxy.routes[0].prod_pool

    def ready_upstream(self) -> None:
        """Put a fresh production connection in the pool (as if it had just been opened)."""
        conn = UpstreamConnection(self.pool)
        t = Recording(("127.0.0.1", 9000))
        conn.connection_made(t)
        conn.idle_since = time.monotonic()
        self.pool._all.add(conn)
        self.pool._idle.append(conn)
        self.upstreams.append((conn, t))

    def client_sends(self, data: bytes) -> None:
        self.client.data_received(data)
        self._settle()

    def production_sends(self, data: bytes, index: int = -1) -> None:
        conn, _ = self.upstreams[index]
        conn.data_received(data)
        self._settle()

    def turn(self) -> None:
        """One turn of the event loop: what the data plane scheduled with ``call_soon`` runs
        (no timer fires)."""
        self.loop.run_until_complete(asyncio.sleep(0))
        self._settle()

    def iteration(self) -> None:
        """Exactly one iteration of the event loop (``one_iteration``)."""
        one_iteration(self.loop)
        self._settle()

    def another_client(self) -> tuple[ClientConnection, Recording]:
        """A second client connection to the same data plane, with a production connection of
        its own ready in the pool."""
        self.ready_upstream()
        conn = ClientConnection(self.proxy)
        t = Recording()
        conn.connection_made(t)
        return conn, t

    def upstream(self, index: int = -1) -> Recording:
        return self.upstreams[index][1]

    def _settle(self) -> None:
        """Deliver connection_lost to what was closed, as the loop would after this step."""
        for conn, t in self.upstreams:
            if t.closed and not t.lost:
                t.lost = True
                conn.connection_lost(None)
        if self.client_t.closed and not self.client_t.lost:
            self.client_t.lost = True
            self.client.connection_lost(None)

    def close(self) -> None:
        self.proxy.close_pools()
        self.loop.close()


def split_request(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Request line, headers (lower-cased names) and what follows the head."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    headers = {}
    for h in lines:
        name, _, value = h.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return line, headers, rest


class _HeadReader:
    """httptools callbacks that keep one request head, read as the data plane reads it (the
    parser's flags inside ``on_headers_complete``)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: Head | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.head = Head(
            parser.get_method(),
            self.url,
            self.headers,
            upgrade=parser.should_upgrade(),
            keep_alive=parser.should_keep_alive(),
            http10=parser.get_http_version() == "1.0",
        )


def head_of(raw: bytes) -> Head:
    """The ``Head`` llhttp reads from the raw bytes of a request head (what the data plane
    hands its planner), without a socket."""
    reader = _HeadReader()
    with contextlib.suppress(httptools.HttpParserUpgrade):  # an upgrade's head is whole
        reader.parser.feed_data(raw)
    assert reader.head is not None, f"not a whole head: {raw!r}"
    return reader.head
