"""Pooled keep-alive HTTP/1.1 connections to one upstream, as asyncio protocols.

An ``Exchange`` is whoever waits for one response (the client's production request, or a
mirror). A pooled ``UpstreamConnection`` feeds it the response as it arrives: the raw head, the
raw body bytes (for byte-exact forwarding) and, when asked, the de-chunked body pieces. No task
and no client object is created per request; a task runs only to open a new connection.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final, cast

import httptools

from shadowroute.dataplane import http1, keepalive
from shadowroute.dataplane.deadlines import Deadlines
from shadowroute.dataplane.planner import UpstreamTarget
from shadowroute.dataplane.turns import CLOSES_PER_TURN, Turns

MAX_RESPONSE_HEAD: Final = 64 << 10
# A read at least this long means more may be waiting. Given the chance, the loop (libuv) goes
# on reading the same socket, up to 32 reads of 256 kB in one wakeup: one upload or one big
# answer then holds every other connection of the worker for milliseconds. After such a read
# the connection stops reading until the loop has served the others, and the long readers
# read again one per turn (``turns.Turns``).
BULK_READ: Final = 64 << 10
KEEP_ALIVE: Final = b"\r\nkeep-alive:"
# Bound once: a module attribute looked up on every use costs more than the use.
_monotonic: Final = time.monotonic
_INF: Final = math.inf


class Exchange:
    """Receives one upstream response. Subclasses override what they need."""

    __slots__ = ()

    head_only = False  # a response to HEAD: no body whatever the headers say
    wants_body = False  # call on_body with de-chunked pieces

    def on_interim(self, head: bytes) -> None:
        """A 1xx response other than 101."""

    def on_head(self, status: int, head: bytes, low: bytes) -> None:
        """The response head: raw bytes, ending with the blank line, and ``head.lower()``
        (search it with the marks in ``http1``)."""
        raise NotImplementedError

    def on_raw(self, data: bytes) -> None:
        """Raw body bytes exactly as the upstream framed them."""

    def on_upgrade(self, head: bytes, rest: bytes) -> bool:
        """A 101 response: return True to take the connection over as a tunnel."""
        return False

    def on_tunnel(self, data: bytes) -> None:
        """Bytes from the upstream after a 101, when the exchange took the tunnel."""

    def flush(self) -> None:
        """Called after each chunk from the upstream has been handled (writes may batch)."""

    def on_body(self, piece: bytes) -> None:
        """A de-chunked body piece (only when ``wants_body``)."""

    def on_complete(self) -> None:
        raise NotImplementedError

    def on_fail(self, reason: str) -> None:
        """The exchange failed: ``connect``, ``reset``, ``timeout`` or ``bad_response``."""
        raise NotImplementedError

    def pause_source(self) -> None:
        """The connection's write buffer is full: stop producing request bytes."""

    def resume_source(self) -> None:
        """The write buffer drained: request bytes are welcome again."""

    def whole_request(self) -> bytes | None:
        """The whole request, when the exchange holds it (a mirror does): it may then be sent
        again on a new connection even if none of it was written yet."""
        return None

    def moved(self, conn: UpstreamConnection) -> None:
        """The request was sent again on ``conn`` (the first connection closed before any byte
        of the answer: ``keepalive.may_resend``); the answer comes from there."""


class Outcome:
    """What one upstream (production or a candidate) did with one request, for the record."""

    __slots__ = (
        "body",
        "content_encoding",
        "content_type",
        "error",
        "latency_ms",
        "model",
        "status",
        "times",
        "version",
    )

    def __init__(
        self,
        model: str,
        version: str | None,
        status: int | None,
        latency_ms: float | None,
        body: bytes | None,
        content_encoding: bytes | None,
        content_type: bytes | None,
        error: str | None,
        times: list[float] | None = None,
    ) -> None:
        # A plain class: a dataclass's generated __init__ would run interpreted, on every
        # request, even in the compiled build.
        self.model = model
        self.version = version
        self.status = status
        self.latency_ms = latency_ms
        self.body = body
        self.content_encoding = content_encoding
        self.content_type = content_type
        self.error = error
        self.times = times
        """``openai`` routes: when each body piece arrived, flat as ``[offset, ms, offset, ms,
        ...]`` (the piece's first byte's offset in ``body``, milliseconds since the request
        was started); None on other routes."""


def time_piece(
    times: list[float], offset: int, ms: float, max_times: int, limits: Counter[str]
) -> None:
    """Note that an ``openai`` answer's body piece starting at ``offset`` arrived ``ms`` after
    the request was started (``Outcome.times``); past ``max_times`` entries one ``-1`` marks
    the rest as not timed, counted as ``limits_hit{limit="stream_pieces"}``."""
    if len(times) < max_times:
        times.append(float(offset))
        times.append(ms)
    elif len(times) == max_times:
        times.append(-1.0)
        limits["stream_pieces"] += 1


class UpstreamConnection:
    """One pooled connection (an asyncio protocol: the loop calls it by name)."""

    __slots__ = (
        "_buf",
        "_chunks",
        "_closed",
        "_complete",
        "_extra",
        "_in_body",
        "_keep_alive",
        "_left",
        "_parser",
        "_until_close",
        "answered",
        "content_length",
        "deadline",
        "exchange",
        "idle_limit",
        "idle_since",
        "pool",
        "read_paused",
        "replay",
        "request_done",
        "resend_of",
        "reused",
        "sent",
        "timeout_key",
        "transport",
        "tunnel",
        "write_paused",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.tunnel: Exchange | None = None
        self.deadline = math.inf  # loop time by which the exchange must end
        self.timeout_key = 0  # kept by Deadlines
        self.idle_since = 0.0
        self._closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._buf = b""
        self._in_body = False
        self._complete = False
        self._until_close = False
        self._keep_alive = False
        # The response's framing, followed by hand so that nothing after its end is taken
        # for part of it: Content-Length bytes still to come (-1: not length-framed), or the
        # chunked body's scanner.
        self._left = -1
        self._chunks: http1.ChunkedEnd | None = None
        # The Content-Length of the answer whose head arrived last (-1: none, or not plain
        # digits), set before ``Exchange.on_head``: a mirror gives up an answer that says it is
        # past the record's cap without reading any of it.
        self.content_length = -1
        self._extra = False  # bytes came after the end of the response
        # The request was written whole (its owner says so when it streams a body): only then
        # may the connection carry another one.
        self.request_done = True
        self.write_paused = False  # the transport's write buffer is over its high-water mark
        self.read_paused = False  # the data plane stopped reading it (a client slow to read)
        # Keep-alive (``keepalive``): idle for this long at most before reuse (the pool's
        # default, or less when the server announced its own timeout); whether the connection
        # carried an exchange before this one; and, on a reused connection, the request bytes
        # written for this exchange (kept for a resend while no byte of the answer came).
        self.idle_limit = pool.keepalive_s
        self.reused = False
        self.answered = False  # a byte of this exchange's answer arrived
        self.sent = 0  # request bytes written in this exchange (counted on reused connections)
        self.replay: list[bytes] = []
        self.resend_of: Exchange | None = None  # the exchange being sent again elsewhere

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = t = cast(asyncio.Transport, transport)
        if self.pool.write_high:
            t.set_write_buffer_limits(high=self.pool.write_high)

    def connection_lost(self, exc: Exception | None) -> None:
        by_us = self._closed
        self._closed = True
        pool = self.pool
        pool.discard(self)
        try:
            if self.tunnel is not None:
                self.tunnel.on_fail("reset")
                return
            ex = self.exchange
            if ex is None:
                if not by_us:  # an idle connection the server closed: seen at once
                    pool.count("idle_closed_by_server")
                return
            if self._in_body and self._until_close:
                self._finish()
                return
            if not self.answered and self.reused and self._resend(ex):
                return
            self._fail("reset")
        finally:
            # The parser's callbacks are bound to this connection and the transport refers
            # back to it: dropped, reference counting frees it now instead of the cyclic
            # collector some time later.
            self._parser = httptools.HttpResponseParser(None)
            self.transport = None
            self.tunnel = None

    def eof_received(self) -> bool | None:
        """The server closed its side: the connection is never used again. An idle one is
        closed at its turn of the loop (``turns``: a server restarting ends every pooled
        connection at once); otherwise the transport closes it now, and ``connection_lost``
        follows."""
        pool = self.pool
        pool.discard(self)
        t = self.transport
        if self.exchange is None and self.tunnel is None and not self._closed and t is not None:
            pool.count("idle_closed_by_server")
            self._closed = True  # not usable; connection_lost does not count it again
            pool.closes.wait(t.close)  # a no-op if it was closed meanwhile
            return True
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.exchange
        if ex is not None:
            ex.pause_source()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.exchange
        if ex is not None:
            ex.resume_source()

    def data_received(self, data: bytes) -> None:
        self.answered = True
        if len(data) >= BULK_READ:
            self._take_turns()
        if self.tunnel is not None:
            self.tunnel.on_tunnel(data)
            return
        if self.exchange is None:
            # Bytes with no request outstanding: the connection is unusable.
            self.pool.framing["extra_bytes"] += 1
            self.close()
            return
        try:
            self._received(data)
        except httptools.HttpParserError:
            self._fail("bad_response")
            return
        ex = self.current()
        if ex is not None:
            ex.flush()

    def current(self) -> Exchange | None:
        """The exchange being answered. A call, not ``self.exchange``: the checks above narrow
        the attribute, and handling the response may have ended the exchange since."""
        return self.exchange

    # --- httptools callbacks -------------------------------------------------------------

    def on_headers_complete(self) -> None:
        # llhttp forgets the flag once the message is complete: read it now.
        self._keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._complete = True

    # --- response handling ---------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if self._in_body:
            self._body(data)
            return
        buf = self._buf + data if self._buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_RESPONSE_HEAD:
                self._fail("bad_response")
            else:
                self._buf = buf
            return
        self._buf = b""
        head, rest = buf[: end + 4], buf[end + 4 :]
        self._complete = False
        try:  # noqa: SIM105 - no context-manager object per response on the hot path
            self._parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # a 101: the head is parsed and llhttp stops; what follows is the new protocol
        status = self._parser.get_status_code()
        ex = self.exchange
        assert ex is not None
        if 100 <= status < 200 and status != 101:
            ex.on_interim(head)
            if rest:
                self._received(rest)
            return
        if status == 101:
            if ex.on_upgrade(head, rest):
                self.tunnel = ex
                self._reset_state()
                self.pool.discard(self)
            else:
                self._fail("bad_response")
            return
        low = head.lower()
        if self._keep_alive and low.find(KEEP_ALIVE) >= 0:
            self._announced(head, low)
        # llhttp has read the head: it refuses a second Content-Length and one beside a
        # Transfer-Encoding, so the first Content-Length line is the framing when there is one.
        # The common case costs one search and one pass over the digits. Read before the
        # exchange sees the head, which may then give up an answer announced too long.
        at = low.find(http1.CONTENT_LENGTH)
        self.content_length = length = (
            http1.length_at(head, at + len(http1.CONTENT_LENGTH)) if at >= 0 else -1
        )
        ex.on_head(status, head, low)
        if self.exchange is not ex:  # the exchange gave up (client gone, answer too long)
            return
        if ex.head_only or status in (204, 304) or self._complete:
            if ex.head_only:
                self._parser = httptools.HttpResponseParser(self)
            if rest:
                self._extra = True  # never the client's: the connection is closed
            self._finish()
            return
        if at >= 0:
            if length < 0:  # llhttp accepted it, so this does not happen; refuse anyway
                raise httptools.HttpParserError("invalid content-length")
            self._left = length
        elif low.find(http1.TRANSFER_ENCODING) >= 0:
            te = http1.header_value(low, low, http1.TRANSFER_ENCODING)
            if te is not None and te.endswith(b"chunked"):
                self._chunks = http1.ChunkedEnd()
            else:
                self._until_close = True  # another coding last: read until the close
        else:
            self._until_close = True
        self._in_body = True
        if rest:
            self._body(rest)

    def _body(self, data: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        # Where the response ends in this read, if it does: what follows is never forwarded.
        end = -1
        left = self._left
        if left >= 0:
            if len(data) >= left:
                end = left
            else:
                self._left = left - len(data)
        elif self._chunks is not None:
            try:
                end = self._chunks.feed(data)
            except ValueError:
                raise httptools.HttpParserError("invalid chunk size line") from None
        if 0 <= end < len(data):
            self._extra = True
            data = data[:end]
        self._parser.feed_data(data)
        if self.exchange is not ex:
            return
        if self._complete != (end >= 0):
            # llhttp and the framing followed here disagree on where the response ends.
            raise httptools.HttpParserError("response framing mismatch")
        ex.on_raw(data)
        if self._complete and self.exchange is ex:
            self._finish()

    def on_body(self, piece: bytes) -> None:
        ex = self.exchange
        if ex is not None and ex.wants_body:
            ex.on_body(piece)

    def _announced(self, head: bytes, low: bytes) -> None:
        """The server said how long it keeps this connection idle, or how many more requests
        it takes (``Keep-Alive: timeout=N, max=M``)."""
        value = http1.header_value(head, low, KEEP_ALIVE)
        if value is None:
            return
        timeout, most = keepalive.parse_keep_alive(value)
        self.idle_limit = keepalive.announced_limit(timeout, self.pool.keepalive_s)
        if most == 0:
            self._keep_alive = False
            self.pool.count("keep_alive_max")

    def _reset_state(self) -> None:
        self._in_body = False
        self._complete = False
        self._until_close = False
        self._left = -1
        self._chunks = None
        self.deadline = _INF

    def _finish(self) -> None:
        ex = self.exchange
        # Reused only when both directions ended exactly on their framing, and the server did
        # not say it closes (``Connection: close``, ``Keep-Alive: max=0``, HTTP/1.0).
        keep = not self._until_close and self._keep_alive and not self._closed
        if self.replay:
            self.replay.clear()
        if not self._keep_alive:
            self.pool.count("connection_close")
        if self._extra:
            keep = False
            self._extra = False
            self.pool.framing["extra_bytes"] += 1
        elif not self.request_done:
            keep = False
            self.pool.framing["early_answer"] += 1
        self._reset_state()
        self.exchange = None
        if keep:
            self.pool.release(self)
        else:
            self.close()
        if ex is not None:
            ex.on_complete()
            if keep and self.read_paused and self.current() is None and not self._closed:
                # Paused for a client slow to read (its last write may do it, after the
                # release): an idle connection must read, or the server's close (and the
                # next answer) would go unseen until a timeout.
                self.resume_reading()

    def _fail(self, reason: str) -> None:
        ex = self.exchange
        self._reset_state()
        self.exchange = None
        if self.replay:
            self.replay.clear()
        self.close()
        if ex is not None:
            ex.on_fail(reason)

    def _resend(self, ex: Exchange) -> bool:
        """The server closed this reused connection before any byte of the answer: send the
        request again on a new connection when ``keepalive.may_resend`` allows it. True when
        that is under way (the exchange then goes on there)."""
        pool = self.pool
        sent = self.sent
        whole = ex.whole_request()
        data = whole
        if data is None and 0 < sent <= keepalive.REPLAY_MAX:
            replay = self.replay
            data = replay[0] if len(replay) == 1 else b"".join(replay)
        if not keepalive.may_resend(
            reused=True,
            answered=False,
            whole=data is not None and self.request_done,
            written=sent > 0,
            repeatable=data is not None and keepalive.idempotent(data),
        ):
            pool.count("not_resent")
            return False
        assert data is not None
        deadline = self.deadline
        self._reset_state()
        self.exchange = None
        self.replay.clear()
        self.resend_of = ex
        pool.resend(self, ex, data, deadline)
        return True

    # --- used by the owner of the exchange -----------------------------------------------

    def start(self, exchange: Exchange, timeout_s: float) -> None:
        """Begin an exchange; its owner sets ``request_done = False`` while it still has
        request bytes to write."""
        self.exchange = exchange
        self.request_done = True
        self.answered = False
        self.sent = 0
        pool = self.pool
        self.deadline = pool.loop.time() + timeout_s
        pool.deadlines.add(self)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self.reused:  # kept for a resend (``_resend``) up to a bound
            n = self.sent + len(data)
            self.sent = n
            if n <= keepalive.REPLAY_MAX:
                self.replay.append(data)

    def _take_turns(self) -> None:
        """Let the loop serve other connections before this one reads again: its turn comes
        after the other long readers' (``turns``)."""
        t = self.transport
        if t is not None and not self.read_paused:
            t.pause_reading()
            self.pool.turns.wait(self._turn_again)

    def _turn_again(self) -> None:
        t = self.transport
        if t is not None and not self.read_paused and not self._closed:
            t.resume_reading()

    def pause_reading(self) -> None:
        """Stop reading the answer (the client is slow to read it)."""
        t = self.transport
        if t is not None:
            self.read_paused = True
            t.pause_reading()

    def resume_reading(self) -> None:
        t = self.transport
        if t is not None:
            self.read_paused = False
            t.resume_reading()

    def on_timeout(self) -> None:
        """The deadline passed (called by ``Deadlines``)."""
        if self.exchange is not None:
            self._fail("timeout")

    def abandon(self) -> None:
        """The exchange's owner no longer wants the response: drop the connection (and a
        resend of its request still under way)."""
        self.exchange = None
        self.resend_of = None
        self._reset_state()
        if self.replay:
            self.replay.clear()
        self.close()

    def close(self) -> None:
        self._closed = True
        t = self.transport
        if t is not None:
            if t.get_write_buffer_size():
                # Request bytes production has not read: they are never wanted once the
                # connection is given up, and a graceful close would keep them (and the
                # connection) until production reads them, which it may never do.
                t.abort()
            else:
                t.close()

    @property
    def usable(self) -> bool:
        return not self._closed and self.transport is not None and not self.transport.is_closing()


Acquired = Callable[[UpstreamConnection | None, str | None], None]


class UpstreamPool:
    """Idle keep-alive connections to one upstream (scheme, host, port).

    An idle connection is reused only while it has been idle for less than its limit
    (``keepalive``); one the server closes is dropped as soon as the close arrives. What the
    connections did is counted in ``events`` under ``(*labels, event)``: ``resent``,
    ``not_resent``, ``idle_expired``, ``idle_closed_by_server``, ``connection_close``,
    ``keep_alive_max``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        url: str,
        deadlines: Deadlines,
        *,
        max_idle: int = 256,
        keepalive_s: float = keepalive.DEFAULT_IDLE_S,
        connect_timeout_s: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        framing: Counter[str] | None = None,
        write_high: int = 0,
        events: Counter[tuple[str, str, str, str]] | None = None,
        labels: tuple[str, str, str] = ("", "", ""),
        turns: Turns | None = None,
        closes: Turns | None = None,
    ) -> None:
        target = UpstreamTarget(url)
        # The data plane's counter of connection events (shared by its pools), and this
        # pool's (route, model, role) in it.
        self.events: Counter[tuple[str, str, str, str]] = (
            events if events is not None else Counter()
        )
        self.labels = labels
        # Connections closed because a direction did not end on its framing, by reason
        # (``early_answer``, ``extra_bytes``): the data plane's counter, shared by its pools.
        self.framing: Counter[str] = framing if framing is not None else Counter()
        # The connections' write-buffer high-water mark (0: the loop's default): above it the
        # exchange is asked to stop producing request bytes (``Exchange.pause_source``).
        self.write_high = write_high
        self.loop = loop
        self.deadlines = deadlines  # the exchanges' timeouts (owned by the data plane's Proxy)
        # Where a connection waits to read again after a long read (the data plane's, shared
        # by its pools and its client connections).
        self.turns = turns if turns is not None else Turns(loop)
        # Where an idle connection the server ended waits to be closed (the data plane's).
        self.closes = closes if closes is not None else Turns(loop, CLOSES_PER_TURN)
        self.scheme = target.scheme
        self.host = target.host
        self.port = target.port
        self.host_header = target.host_header
        self.base_path = target.base_path
        self.max_idle = max_idle
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.ssl: ssl.SSLContext | None = None
        if target.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        self._idle: deque[UpstreamConnection] = deque()
        self._all: set[UpstreamConnection] = set()
        self._connecting: set[asyncio.Task[Any]] = set()
        self.closed = False

    def count(self, event: str) -> None:
        route, model, role = self.labels
        self.events[(route, model, role, event)] += 1

    def acquire(self, on_ready: Acquired) -> None:
        """Call ``on_ready(conn, None)`` with a live connection (at once when one is idle) or
        ``on_ready(None, reason)`` when none can be had."""
        now = _monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                if now - conn.idle_since < conn.idle_limit:
                    on_ready(conn, None)
                    return
                self.count("idle_expired")
            conn.close()
        if self.closed:
            on_ready(None, "connect")
            return
        task = self.loop.create_task(self._connect())
        self._connecting.add(task)
        task.add_done_callback(lambda t: self._connected(t, on_ready))

    async def _connect(self) -> UpstreamConnection:
        async with asyncio.timeout(self.connect_timeout_s):
            _, proto = await self.loop.create_connection(
                lambda: cast(asyncio.Protocol, UpstreamConnection(self)),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )
        return cast(UpstreamConnection, proto)

    def _connected(self, task: asyncio.Task[UpstreamConnection], on_ready: Acquired) -> None:
        self._connecting.discard(task)
        if task.cancelled():
            on_ready(None, "connect")
            return
        exc = task.exception()
        if exc is not None:
            on_ready(None, "timeout" if isinstance(exc, TimeoutError) else "connect")
            return
        conn = task.result()
        self._all.add(conn)
        on_ready(conn, None)

    def release(self, conn: UpstreamConnection) -> None:
        idle = self._idle
        if self.closed or len(idle) >= self.max_idle or conn.idle_limit <= 0:
            conn.close()
            return
        now = _monotonic()
        conn.idle_since = now
        conn.reused = True
        if idle:
            # The oldest idle connection is never taken while newer ones are (last in, first
            # out): close it here once it is past its limit, so it is not left to the server.
            old = idle[0]
            if now - old.idle_since >= old.idle_limit:
                idle.popleft()
                self.count("idle_expired")
                old.close()
        idle.append(conn)

    def resend(self, old: UpstreamConnection, ex: Exchange, data: bytes, deadline: float) -> None:
        """Send ``data`` (the whole request of ``ex``, which ``old`` was carrying when its
        server closed it) on a new connection; the exchange goes on there. Given up when the
        exchange's owner abandons ``old`` meanwhile."""
        self.count("resent")
        if self.closed:
            old.resend_of = None
            ex.on_fail("reset")
            return
        task = self.loop.create_task(self._connect())
        self._connecting.add(task)
        task.add_done_callback(lambda t: self._resent(t, old, ex, data, deadline))

    def _resent(
        self,
        task: asyncio.Task[UpstreamConnection],
        old: UpstreamConnection,
        ex: Exchange,
        data: bytes,
        deadline: float,
    ) -> None:
        self._connecting.discard(task)
        wanted = old.resend_of is ex
        old.resend_of = None
        conn: UpstreamConnection | None = None
        reason = "connect"
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                conn = task.result()
                self._all.add(conn)
            elif isinstance(exc, TimeoutError):
                reason = "timeout"
        if not wanted:
            if conn is not None:
                self.release(conn)
            return
        if conn is None:
            ex.on_fail(reason)
            return
        conn.start(ex, max(deadline - self.loop.time(), 0.001))
        ex.moved(conn)
        conn.write(data)

    def discard(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        self.closed = True
        for task in list(self._connecting):
            task.cancel()
        for conn in list(self._all):
            if conn.exchange is None:
                conn.close()
        self._idle.clear()
