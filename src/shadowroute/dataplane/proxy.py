"""The client-facing data plane: one asyncio protocol per client connection.

Requests are parsed with llhttp (httptools). The request head is rebuilt once (hop-by-hop
headers out, forwarding headers and the request id in) and the body bytes are streamed to
production as they arrive; production's response goes back as production framed it. Sampled
requests are mirrored to candidates after the body is complete, and the pairing of both
outcomes into a record happens after the client's response has been written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Final, cast

import httptools

from shadowroute.core import request_id as rid
from shadowroute.core.config import Config, Rewrite, Route
from shadowroute.dataplane import http1
from shadowroute.dataplane.control import ControlGuard
from shadowroute.dataplane.deadlines import Deadlines
from shadowroute.dataplane.mirror import MirrorTarget
from shadowroute.dataplane.planner import (
    CandidatePlan,
    Head,
    Plan,
    Planner,
    Refusal,
    RoutePlan,
    static_headers,
)
from shadowroute.dataplane.recorder import Pairing, Recorder
from shadowroute.dataplane.rewrite import Rewriter
from shadowroute.dataplane.stats import LatencyHistogram
from shadowroute.dataplane.turns import CLOSES_PER_TURN, Turns
from shadowroute.dataplane.upstream import (
    BULK_READ,
    Exchange,
    Outcome,
    UpstreamConnection,
    UpstreamPool,
    time_piece,
)

log = logging.getLogger("shadowroute.proxy")

STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
MAX_PIPELINED: Final = 32
LINGER_S: Final = 2.0
"""How long a connection closed after a refusal keeps reading (and dropping) what the client
still sends, so that the client reads the answer rather than a reset."""
LINGER_BYTES: Final = 1 << 20
"""How much of it is read before the socket is closed anyway."""
# The clocks, bound once: a module attribute looked up on every call costs more than the call.
_perf_counter: Final = time.perf_counter
_wall_time: Final = time.time


class CandidateRuntime(CandidatePlan):
    """A route's candidate: its mirror target and the header bytes its requests carry."""

    def __init__(
        self,
        target: MirrorTarget,
        static: bytes,
        base_path: bytes,
        forward_private: bool = False,
        rewrite: Rewriter | None = None,
    ) -> None:
        super().__init__(target.name, target.fraction)
        self.target = target
        self.static = static
        self.base_path = base_path
        self.forward_private = forward_private
        self.rewrite = rewrite
        """What this candidate's requests change (None: nothing, the common case)."""


class RouteRuntime(RoutePlan):
    """A configured route with its upstream pools and precomputed header bytes."""

    def __init__(self, cfg: Route, proxy: Proxy) -> None:
        loop, pcfg = proxy.loop, proxy.config.proxy
        self._status_keys: dict[int, tuple[str, str]] = {}

        def pool(url: str, model: str, role: str) -> UpstreamPool:
            return UpstreamPool(
                loop,
                url,
                proxy.deadlines,
                max_idle=pcfg.pool_size,
                keepalive_s=pcfg.upstream_keepalive_s,
                connect_timeout_s=pcfg.connect_timeout_s,
                framing=proxy.stats.framing,
                write_high=pcfg.max_body_buffer_bytes,
                events=proxy.stats.upstream,
                labels=(cfg.name, model, role),
                turns=proxy.turns,
                closes=proxy.closes,
            )

        self.prod_pool = prod_pool = pool(cfg.production.url, cfg.production.name, "production")
        prod_headers = {**cfg.production.headers, **cfg.production.secret_header_values()}
        marker = proxy.config.mirror.marker_header.encode() + b": 1\r\n"
        runtimes: list[CandidateRuntime] = []
        for c in cfg.candidates:
            p = pool(c.url, c.name, "candidate")
            target = MirrorTarget(
                cfg.name,
                c,
                p,
                proxy.config.mirror.breaker,
                proxy.stats,
                proxy.max_response,
                timed=cfg.protocol == "openai",
                max_pieces=proxy.config.records.max_stream_pieces,
            )
            headers = {**c.headers, **c.secret_header_values()}
            static = static_headers(p.host_header, headers) + marker
            rewriter = None
            if c.rewrite is not None or headers:
                own = frozenset(h.lower().encode() for h in headers)
                rewriter = Rewriter(cfg.path_prefix.encode(), c.rewrite or Rewrite(), own)
            runtimes.append(
                CandidateRuntime(
                    target, static, p.base_path.encode(), c.forward_private_headers, rewriter
                )
            )
        plans: list[CandidatePlan] = list(runtimes)
        super().__init__(
            cfg,
            prod_pool.base_path.encode(),
            static_headers(prod_pool.host_header, prod_headers),
            plans,
        )
        self.runtimes = runtimes
        """The candidates, as the data plane runs them (the same objects as ``candidates``)."""
        self.prod_timeout = cfg.production.timeout_s
        self.prod_name = cfg.production.name  # for the outcomes (config attributes cost more)
        self.prod_version = cfg.production.version
        self.prod_latency: LatencyHistogram = proxy.stats.latency_of(
            cfg.name, cfg.production.name, "production"
        )
        self.timed = cfg.protocol == "openai"
        """Production's and the candidates' body pieces are timed (``Outcome.times``)."""
        self.max_times = 2 * proxy.config.records.max_stream_pieces

    def status_key(self, status: int) -> tuple[str, str]:
        """The request counter's key for a response with ``status``."""
        keys = self._status_keys
        key = keys.get(status)
        if key is None:
            key = keys[status] = (self.name, STATUS_CLASS.get(status // 100, "xxx"))
        return key

    def pools(self) -> list[UpstreamPool]:
        return [self.prod_pool, *(c.target.pool for c in self.runtimes)]


class Proxy:
    """Shared state of one data-plane process: routes, pools, counters, the recorder."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, recorder: Recorder) -> None:
        self.config = config
        self.loop = loop
        self.recorder = recorder
        self.stats = recorder.stats
        pcfg = config.proxy
        self.rid_header = pcfg.request_id_header.lower().encode()
        self.rid_mark = http1.header_mark(self.rid_header)
        self.rid_prefix = self.rid_header + b": "
        self.control_guard = ControlGuard(
            config.mirror.control_from,
            config.admin.token.get_secret_value() if config.admin.token else None,
        )
        self.capture_limit = config.mirror.capture_limit_bytes
        self.max_header_bytes = pcfg.max_header_bytes
        self.head_timeout = pcfg.head_timeout_s
        self.max_connections = pcfg.max_connections
        self.max_buffered = pcfg.max_body_buffer_bytes
        self.max_response = config.records.max_response_bytes
        self.mirroring = config.mirror.enabled
        self.deadlines = Deadlines(loop)  # every exchange's timeout, for all the pools
        self.turns = Turns(loop)  # long readers read again one per turn (``turns``)
        self.closes = Turns(loop, CLOSES_PER_TURN)  # connections their peers ended (``turns``)
        self.routes = [RouteRuntime(r, self) for r in config.routes]
        self.new_id = rid.IdGenerator()
        self.planner = Planner(config, self.routes, self.new_id)
        """What is done with each request, decided from its head (``planner``): no I/O."""
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.retired: list[RouteRuntime] = []
        """Routes a reload replaced, until their pools close (in-flight requests and mirrors
        finish on them)."""

    def targets(self) -> list[MirrorTarget]:
        return [c.target for r in (*self.routes, *self.retired) for c in r.runtimes]

    def set_fraction(self, route: str, candidate: str, fraction: float) -> None:
        """A candidate's fraction from the next request on (0: off). The planner reads the
        attribute per request; nothing else changes."""
        for r in self.routes:
            if r.name == route:
                for c in r.runtimes:
                    if c.name == candidate:
                        c.fraction = fraction
                        c.target.fraction = fraction

    def reload(self, config: Config, fractions: dict[tuple[str, str], float]) -> None:
        """New routes from the next request on: a route whose config is unchanged is kept (its
        pools, breakers), one changed or added is built anew; requests in flight finish on
        the routes they were planned with, whose pools close after the drain time."""
        old = {r.name: r for r in self.routes}
        routes: list[RouteRuntime] = []
        retired: list[RouteRuntime] = []
        for cfg in config.routes:
            kept = old.pop(cfg.name, None)
            if kept is not None and kept.cfg == cfg:
                routes.append(kept)
                continue
            if kept is not None:
                retired.append(kept)
            routes.append(RouteRuntime(cfg, self))
        retired.extend(old.values())
        self.config = config
        self.routes = routes
        for r in routes:
            for c in r.runtimes:
                f = fractions.get((r.name, c.name))
                if f is not None:
                    c.fraction = f
                    c.target.fraction = f
        self.planner = Planner(config, routes, self.new_id)
        if retired:
            self.retired.extend(retired)
            grace = config.proxy.shutdown_timeout_s + config.proxy.mirror_drain_s
            self.loop.call_later(grace, self._close_retired, retired)

    def _close_retired(self, retired: list[RouteRuntime]) -> None:
        for r in retired:
            for p in r.pools():
                p.close()
            if r in self.retired:
                self.retired.remove(r)

    def close_pools(self) -> None:
        for r in (*self.routes, *self.retired):
            for p in r.pools():
                p.close()
        self.deadlines.close()


class Request(Exchange):
    """One client request, from its head to the end of production's response."""

    # Immutable defaults live on the class: a request sets only what differs (the hot path
    # creates one per request).
    upgrade = False
    request_id = b""
    upstream_head = b""
    mirror_common = b""
    mirror_private = b""
    url = b""
    chunked_in = False
    body_done = False
    expect_continue = False
    keep_alive = True
    http10 = False
    out_size = 0
    prod: UpstreamConnection | None = None
    monitored = False
    mirror_buf: list[bytes] | None = None
    unmirrored: list[CandidateRuntime] | None = None  # sampled; body over the capture limit
    mirror_size = 0
    pairing: Pairing | None = None
    head_sent = False
    dechunk = False
    close_after = False
    done = False
    status: int | None = None
    ce: bytes | None = None
    ct: bytes | None = None
    prod_body: list[bytes] | None = None
    prod_size = 0
    prod_too_large = False
    prod_times: list[float] | None = None  # ``openai`` routes: ``Outcome.times``
    t0 = 0.0

    def __init__(self, conn: ClientConnection, plan: Plan) -> None:
        # The planner matched one of the data plane's own routes: a RouteRuntime, whose
        # candidates are CandidateRuntimes.
        self.conn = conn
        self.route = route = cast(RouteRuntime, plan.route)
        self.method = method = plan.method
        self.head_only = method == b"HEAD"
        self.request_id = plan.request_id
        self.url = plan.url
        self.upstream_head = plan.upstream_head
        self.mirror_common = plan.mirror_common
        self.mirror_private = plan.mirror_private
        self.chunked_in = plan.chunked
        self.expect_continue = plan.expect_continue
        self.keep_alive = plan.keep_alive
        self.http10 = plan.http10
        self.upgrade = plan.upgrade
        self.monitored = plan.monitored
        self.mirror_to: list[CandidateRuntime] = cast(list[CandidateRuntime], plan.mirror_to)
        self.out_buf: list[bytes] = []
        self._out: list[bytes] = []
        self.up_pending: list[bytes] = []
        # What the plan says is counted or set aside.
        skipped = plan.skipped
        if skipped:
            for c in route.runtimes:
                if c not in self.mirror_to:
                    c.target.count(skipped)
        if plan.too_large:
            self._skip_mirrors("too_large")
        elif plan.capture:
            self.mirror_buf = []

    # --- request side ----------------------------------------------------------------

    def begin(self) -> None:
        """This request is now the one being answered on its connection."""
        if self.expect_continue and not self.http10:
            self.conn.write(http1.CONTINUE_100)
        self.t0 = _perf_counter()
        self.route.prod_pool.acquire(self._acquired)

    def _acquired(self, up: UpstreamConnection | None, err: str | None) -> None:
        if self.done:
            if up is not None:
                up.pool.release(up)
            return
        if up is None:
            self.on_fail(err or "connect")
            return
        self.prod = up
        remaining = self.route.prod_timeout - (_perf_counter() - self.t0)
        up.start(self, max(remaining, 0.001))
        up.request_done = self.body_done  # else set when the body ends
        pending = self.up_pending
        pending.append(self.upstream_head)
        if self.out_buf:
            pending.extend(self.out_buf)
            self.out_buf = []
        if self.body_done and self.chunked_in:
            pending.append(http1.LAST_CHUNK)
        conn = self.conn
        if not conn.feeding:
            self.flush_upstream()
        if self.out_size:
            # The client may have been paused while the connection was being opened.
            self.out_size = 0
            if not up.write_paused and len(conn.queue) <= MAX_PIPELINED:
                conn.resume_reading()

    def flush_upstream(self) -> None:
        """Write what is queued for production in one call."""
        pending = self.up_pending
        if pending and self.prod is not None:
            self.prod.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()

    def add_body(self, piece: bytes) -> None:
        if self.done:
            return  # production answered before the body ended: the rest is read and dropped
        if self.mirror_buf is not None:
            self.mirror_size += len(piece)
            if self.mirror_size > self.conn.proxy.capture_limit:
                self._skip_mirrors("too_large")
                self.mirror_buf = None
            else:
                self.mirror_buf.append(piece)
        data = http1.chunk(piece) if self.chunked_in else piece
        if self.prod is not None:
            self.up_pending.append(data)
        else:
            self.out_buf.append(data)
            self.out_size += len(data)
            if self.out_size > self.conn.proxy.max_buffered:
                self.conn.pause_reading()

    def body_complete(self) -> None:
        self.body_done = True
        if self.done:
            # Production answered (or failed) before the body ended, and its connection was
            # not reused: no pair for a request it never read whole.
            if self.status is not None:
                self._skip_mirrors("early_answer")
            self.mirror_to = []
            self.mirror_buf = None
            self.unmirrored = None
            return
        prod = self.prod
        if prod is not None:
            prod.request_done = True
            if self.chunked_in:
                self.up_pending.append(http1.LAST_CHUNK)
        if self.mirror_to or self.monitored or self.unmirrored:
            body = b"".join(self.mirror_buf) if self.mirror_buf is not None else None
            pairing = Pairing(
                self.conn.proxy.recorder,
                self.route.cfg,
                self.request_id,
                int(_wall_time() * 1000),
                body if self.route.needs_input else None,
                monitor=self.monitored,
            )
            self.pairing = pairing
            if self.route.timed:
                pairing.prompt = body  # for the tokens in (read by the recorder)
            if self.mirror_to and body is not None:
                self._send_mirrors(body, pairing)
            if self.unmirrored:
                for c in self.unmirrored:
                    pairing.expected += 1
                    pairing.candidate_done(c.target.not_sent["not_mirrored"])
        self.mirror_buf = None

    def _skip_mirrors(self, outcome: str) -> None:
        for c in self.mirror_to:
            c.target.count(outcome)
        if self.mirror_to:
            self.unmirrored = self.mirror_to  # still recorded, as ``not_mirrored``
            self.mirror_to = []
        if not (self.monitored and self.route.needs_input):
            self.mirror_buf = None

    def _send_mirrors(self, body: bytes, pairing: Pairing) -> None:
        length = b"content-length: %d\r\n\r\n" % len(body)
        for c in self.mirror_to:
            private = self.mirror_private if c.forward_private else b""
            rw = c.rewrite
            if rw is None:
                head = b"".join(
                    (self.method, b" ", c.base_path, self.url, b" HTTP/1.1\r\n",
                     self.mirror_common, private, c.static, length)
                )  # fmt: skip
            else:  # a candidate served under its own name, or with headers of its own
                head = b"".join(
                    (self.method, b" ", c.base_path, rw.target(self.url), b" HTTP/1.1\r\n",
                     rw.headers(self.mirror_common), rw.headers(private), c.static, length)
                )  # fmt: skip
            target = c.target
            pairing.expected += 1  # a mirror not sent is the candidate's outcome too
            reason = target.send(head + body, pairing.candidate_done)
            if reason is not None:
                pairing.candidate_done(target.not_sent[reason])

    # --- response side (Exchange) ------------------------------------------------------

    def on_interim(self, head: bytes) -> None:
        if not self.http10 and not head.startswith(b"HTTP/1.1 100"):
            self.conn.write(head)

    def on_head(self, status: int, head: bytes, low: bytes) -> None:
        self.status = status
        # llhttp has read the head and refuses a Content-Length beside a Transfer-Encoding:
        # a length-framed answer (the common one) costs one search.
        if low.find(http1.CONTENT_LENGTH) >= 0:
            chunked = until_close = False
        elif low.find(http1.TRANSFER_ENCODING) >= 0:
            te = http1.header_value(head, low, http1.TRANSFER_ENCODING)
            chunked = te is not None and te.lower().find(b"chunked") >= 0
            until_close = False
        else:
            chunked = False
            until_close = True
        if self.pairing is not None:
            if low.find(http1.CONTENT_ENCODING) >= 0:
                self.ce = http1.header_value(head, low, http1.CONTENT_ENCODING)
            self.ct = http1.header_value(head, low, http1.CONTENT_TYPE)
            self.prod_body = []
            if self.route.timed:
                self.prod_times = []
        bodiless = self.head_only or status in (204, 304)
        self.dechunk = chunked and self.http10 and not bodiless
        self.close_after = (
            self.close_after
            or not self.keep_alive
            or self.conn.proxy.draining
            or (until_close and not bodiless)
            or self.dechunk
        )
        self.wants_body = self.dechunk or self.pairing is not None
        self.head_sent = True
        proxy = self.conn.proxy
        self._out.append(
            http1.client_response_head(
                head,
                low,
                dechunk=self.dechunk,
                close=self.close_after,
                keep_alive_header=self.http10 and not self.close_after,
                rid_mark=proxy.rid_mark,
                rid_prefix=proxy.rid_prefix,
                request_id=self.request_id,
            )
        )

    def on_raw(self, data: bytes) -> None:
        if not self.dechunk:
            self._out.append(data)

    def on_body(self, piece: bytes) -> None:
        if self.dechunk:
            self._out.append(piece)
        body = self.prod_body
        if body is not None:
            self.prod_size += len(piece)
            if self.prod_size > self.conn.proxy.max_response:
                # The client still gets all of it; the record says too_large.
                self.prod_body = None
                self.prod_too_large = True
                self.wants_body = self.dechunk
                self.conn.proxy.stats.limits["response_too_large"] += 1
            else:
                body.append(piece)
                times = self.prod_times
                if times is not None:  # an ``openai`` route: when each piece came
                    ms = (_perf_counter() - self.t0) * 1000.0
                    limits = self.conn.proxy.stats.limits
                    time_piece(times, self.prod_size - len(piece), ms, self.route.max_times, limits)

    def pause_source(self) -> None:
        """Production's write buffer is full: stop reading the client's body."""
        if not self.body_done and not self.done:
            self.conn.proxy.stats.limits["upstream_backpressure"] += 1
            self.conn.pause_reading()

    def resume_source(self) -> None:
        conn = self.conn
        if conn.paused and conn.active is self and len(conn.queue) <= MAX_PIPELINED:
            conn.resume_reading()

    def moved(self, conn: UpstreamConnection) -> None:
        self.prod = conn  # sent again on a new connection (``keepalive.may_resend``)

    def on_upgrade(self, head: bytes, rest: bytes) -> bool:
        if not self.upgrade:
            return False
        proxy = self.conn.proxy
        self.head_sent = True
        self.conn.write(head + rest)
        proxy.stats.requests[(self.route.name, "1xx")] += 1
        self.conn.start_tunnel(self)
        return True

    def on_tunnel(self, data: bytes) -> None:
        self.conn.write(data)

    def flush(self) -> None:
        """Hand what production sent so far to the client in one write."""
        out = self._out
        if out:
            self.conn.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def on_complete(self) -> None:
        self.flush()
        self.prod = None
        elapsed = _perf_counter() - self.t0
        self.route.prod_latency.observe(elapsed)
        status = self.status or 0
        self.conn.proxy.stats.requests[self.route.status_key(status)] += 1
        self._finish()
        if self.pairing is not None:
            route = self.route
            error = "http_5xx" if status >= 500 else ("http_4xx" if status >= 400 else None)
            if error is None and self.prod_too_large:
                error = "too_large"
            body = b"".join(self.prod_body) if self.prod_body is not None else None
            self.pairing.production_done(
                Outcome(
                    route.prod_name,
                    route.prod_version,
                    status,
                    elapsed * 1000.0,
                    body,
                    self.ce,
                    self.ct,
                    error,
                    self.prod_times,
                )
            )

    def on_fail(self, reason: str) -> None:
        if self.conn.tunnel is self:
            self.conn.close()
            return
        self.flush()
        self.prod = None
        proxy = self.conn.proxy
        if not self.head_sent:
            status = 504 if reason == "timeout" else 502
            message = {
                "timeout": "production did not answer in time",
                "connect": "production is unreachable",
                "reset": "production closed the connection",
                "bad_response": "production sent an invalid response",
            }.get(reason, "production failed")
            self.close_after = True
            self.head_sent = True
            self.conn.write(
                http1.error_response(status, message, proxy.rid_header, self.request_id, close=True)
            )
            proxy.stats.requests[(self.route.name, f"{status}_proxy")] += 1
        else:
            self.close_after = True
            proxy.stats.requests[(self.route.name, "aborted")] += 1
        self._finish()
        if self.pairing is not None:
            route = self.route
            elapsed = (_perf_counter() - self.t0) * 1000.0
            self.pairing.production_done(
                Outcome(
                    route.prod_name, route.prod_version, None, elapsed, None, None, None, reason
                )
            )

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.conn.request_done(self)

    def refuse(self, status: int, message: str) -> None:
        """The client's body turned out malformed while it was being forwarded: production's
        connection is closed (it never gets a complete request) and the client gets
        ``status`` at once if nothing of the answer was sent yet."""
        self.done = True
        self.close_after = True
        proxy = self.conn.proxy
        up = self.prod
        self.prod = None
        if up is not None:
            up.abandon()
            proxy.stats.framing["client_aborted"] += 1
        if not self.head_sent:
            self.head_sent = True
            self.conn.write(
                http1.error_response(status, message, proxy.rid_header, self.request_id, close=True)
            )
        else:
            proxy.stats.requests[(self.route.name, "aborted")] += 1

    def abandon(self) -> None:
        """The client went away before production answered. Production's answer is not
        awaited; the request's pairs are still recorded (production ``abandoned``), with
        whatever the candidates did."""
        self.done = True
        if self.prod is not None:
            self.prod.abandon()
            self.prod = None
        pairing = self.pairing
        if pairing is not None and pairing.production is None:
            route = self.route
            pairing.production_done(
                Outcome(
                    route.prod_name, route.prod_version, None, None, None, None, None, "abandoned"
                )
            )


class ClientConnection:
    """One client connection (an asyncio protocol: the loop calls it by name)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.control_ok = False
        """Whether this client's mirror control header is honoured without the token."""
        self.current: Request | None = None  # being parsed
        self.active: Request | None = None  # being answered
        self.queue: deque[Request] = deque()
        self.closing = False
        self.paused = False
        self.feeding = False
        self.half_closed = False
        self.tunnel: Request | None = None
        self.last_active = 0.0
        self.head_since = 0.0  # loop time the head being read began (or the connection opened)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._header_size = 0  # the head's header lines so far: names, values, 4 bytes each
        self._in_head = False
        self._reject: Refusal | None = None
        self.linger_until = 0.0  # loop time a lingering close ends (0: not lingering)
        self._linger_left = 0

    # --- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        if len(proxy.connections) >= proxy.max_connections:
            self.closing = True
            proxy.stats.rejected["503"] += 1
            proxy.stats.limits["max_connections"] += 1
            self.transport.write(
                http1.error_response(
                    503, "too many client connections", proxy.rid_header, None, close=True
                )
            )
            self.transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b"unknown"
        self.control_ok = proxy.control_guard.trusts(peer[0] if peer else None)
        proxy.connections.add(self)
        proxy.stats.open_connections += 1
        self.last_active = self.head_since = proxy.loop.time()
        self._in_head = True  # until a whole head arrived (``head_timeout``)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.proxy.connections:
            self.proxy.connections.discard(self)
            self.proxy.stats.open_connections -= 1
        self.closing = True
        if self.active is not None and not self.active.done:
            self.active.abandon()
        for req in self.queue:
            req.abandon()
        self.queue.clear()
        self.transport = None
        # Nothing refers to a closed connection but what it refers to: its parser's
        # callbacks are bound to it, and its requests point back at it. Dropping those here
        # lets reference counting free it now; left to the cyclic collector, a flood's
        # thousands of closed connections piled up between full collections (+10 MiB).
        self.parser = httptools.HttpRequestParser(None)
        self.active = self.current = None
        self._reject = None

    def data_received(self, data: bytes) -> None:
        if len(data) >= BULK_READ:
            self._take_turns()
        if self.tunnel is not None:
            up = self.tunnel.prod
            if up is not None:
                up.write(data)
            return
        if self.closing:
            if self.linger_until:  # after a refusal: read and dropped, up to a bound
                self._linger_left -= len(data)
                if self._linger_left < 0:
                    self._end_linger("linger_bytes")
            return
        self.last_active = self.proxy.loop.time()
        self.feeding = True
        try:
            self.parser.feed_data(data)
            if self._in_head:
                # Still inside a head after this chunk: bound what llhttp may buffer.
                self._head_bytes += len(data)
                if self._head_bytes > 2 * self.proxy.max_header_bytes:
                    self._refuse(Refusal(431, "request head too large"))
        except httptools.HttpParserUpgrade:
            req = self.queue[-1] if self.queue else None
            if req is not None and req.upgrade:
                # Bytes after the head belong to the upgraded protocol; keep them for the tunnel.
                end = data.find(b"\r\n\r\n")
                offset = end + 4 if end >= 0 else len(data)
                if offset < len(data):
                    pending = req.up_pending if req.prod is not None else req.out_buf
                    pending.append(data[offset:])
                self.pause_reading()
            else:
                self._refuse(Refusal(501, "connection upgrades are not supported by this proxy"))
        except httptools.HttpParserCallbackError:
            rej = self._reject
            if rej is not None:
                # Raised in a parser callback: its traceback holds that frame, which holds
                # this connection and the refusal itself (a cycle).
                self._reject = None
                rej.__traceback__ = None
            self._refuse(rej or Refusal(400, "bad request"))
        except httptools.HttpParserError as exc:
            self._refuse(Refusal(400, f"malformed HTTP request: {exc}"))
        finally:
            self.feeding = False
        active = self.active
        if active is not None and active.up_pending:
            active.flush_upstream()

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it already sent, then close. With nothing
        pending, the connection is closed a few per turn of the loop (``turns``)."""
        if self.tunnel is not None:
            return None  # let the transport close
        t = self.transport
        if (self.linger_until or self.idle) and t is not None:
            self.closing = True
            self.proxy.closes.wait(t.close)  # a no-op if it was closed meanwhile
            return True
        self.half_closed = True
        return True

    def pause_writing(self) -> None:
        up = self.active.prod if self.active is not None else None
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        up = self.active.prod if self.active is not None else None
        if up is not None:
            up.resume_reading()

    # --- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_size = 0
        self._in_head = True
        self.head_since = self.last_active  # the time of this read

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Limits are checked once the head is complete; until then ``data_received`` bounds
        # what a head may take.
        self._headers.append((name, value))
        self._header_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        parser = self.parser
        proxy = self.proxy
        head = Head(
            parser.get_method(),
            self._url,
            self._headers,
            upgrade=parser.should_upgrade(),
            keep_alive=parser.should_keep_alive(),
            http10=parser.get_http_version() == "1.0",
        )
        head.header_size = self._header_size
        plan = proxy.planner.plan(head, self.peer, self.control_ok, proxy.mirroring)
        if isinstance(plan, Refusal):
            self._reject = plan
            raise plan
        if plan.control_ignored:
            proxy.stats.control_ignored += 1
        req = Request(self, plan)
        self.current = req
        self.queue.append(req)
        if self.active is None:
            self._activate()
        elif len(self.queue) > MAX_PIPELINED:
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.add_body(body)

    def on_message_complete(self) -> None:
        self._in_head = False
        req = self.current
        self.current = None
        if req is not None:
            req.body_complete()

    # --- requests ----------------------------------------------------------------------

    def _activate(self) -> None:
        if not self.queue:
            return
        req = self.queue[0]
        self.active = req
        req.begin()

    def request_done(self, req: Request) -> None:
        if self.queue and self.queue[0] is req:
            self.queue.popleft()
        self.active = None
        if req.close_after or ((self.proxy.draining or self.half_closed) and not self.queue):
            self.close()
            return
        if self.paused and len(self.queue) <= MAX_PIPELINED // 2:
            self.resume_reading()
        if self.queue:
            self._activate()

    def start_tunnel(self, req: Request) -> None:
        """Production accepted an upgrade: from now on bytes flow both ways untouched."""
        self.tunnel = req
        up = req.prod
        if up is not None:
            up.resume_reading()
        self.resume_reading()

    # --- transport helpers -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _take_turns(self) -> None:
        """After a long read (an upload), let the loop serve the other connections before
        this one reads again (``upstream.BULK_READ``), after the other long readers
        (``turns.Turns``)."""
        t = self.transport
        if t is not None and not self.paused:
            t.pause_reading()
            self.proxy.turns.wait(self._turn_again)

    def _turn_again(self) -> None:
        t = self.transport
        if t is not None and not self.paused:
            t.resume_reading()

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.head_since = self.proxy.loop.time()  # a head's time runs while it is read
            self.transport.resume_reading()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def close_lingering(self) -> None:
        """Close after a refusal without destroying the answer: a socket closed with unread
        bytes from the client makes the kernel send a reset, and a client still sending (a
        body, a trickled head) may then read the reset instead of the 4xx. So the answer goes
        out and this side is shut (FIN); what the client still sends is read and dropped
        until it closes too, for at most ``LINGER_S`` or ``LINGER_BYTES`` (then the socket is
        closed, counted as ``linger_timeout`` or ``linger_bytes``)."""
        self.closing = True
        transport = self.transport
        if transport is None or self.linger_until:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.linger_until = self.proxy.loop.time() + LINGER_S
        self._linger_left = LINGER_BYTES
        if self.paused:
            self.paused = False
            transport.resume_reading()
        transport.write_eof()

    def linger_expired(self, now: float) -> bool:
        """Close a lingering connection whose time is up; True when it did."""
        if self.linger_until and now >= self.linger_until:
            self._end_linger("linger_timeout")
            return True
        return False

    def _end_linger(self, limit: str) -> None:
        self.linger_until = 0.0
        self.proxy.stats.limits[limit] += 1
        if self.transport is not None:
            self.transport.close()

    def head_timeout(self, now: float) -> bool:
        """Refuse (408) and close when a request head has been arriving for longer than the
        head timeout; True when it did."""
        if (
            self._in_head
            and not self.closing
            and not self.paused  # not read by us (pipelining, backpressure): not its fault
            and now - self.head_since > self.proxy.head_timeout
        ):
            self.proxy.stats.limits["head_timeout"] += 1
            self._refuse(Refusal(408, "the request head did not arrive in time"))
            return True
        return False

    def _refuse(self, rej: Refusal) -> None:
        """Answer a request we will not forward, then close (the stream may be out of sync)."""
        self.proxy.stats.rejected[str(rej.status)] += 1
        log.info("refused a request from %s: %d %s", self.peer.decode(), rej.status, rej.message)
        self.queue = deque(r for r in self.queue if r is self.active)
        if self.active is None:
            self.write(
                http1.error_response(
                    rej.status, rej.message, self.proxy.rid_header, None, close=True
                )
            )
            self.close_lingering()
        elif not self.active.body_done:
            # The bad bytes are in the body being forwarded: stop it now, answer, close.
            self.active.refuse(rej.status, rej.message)
            self.close_lingering()
        else:
            self.active.close_after = True
            self.pause_reading()
            self.closing = True

    @property
    def idle(self) -> bool:
        return self.active is None and not self.queue
