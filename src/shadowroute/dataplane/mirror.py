"""Sending a mirrored copy of a request to one candidate, off the client's path.

Per candidate: a bounded number of mirrors in flight (beyond it the mirror is dropped and
counted), a timeout, a circuit breaker, and no retries — except the one resend the pool makes
when a reused connection was closed by the candidate before any byte of its answer and the
request cannot have been acted on (``keepalive.may_resend``). The outcome goes to a callback.

Mirrors are written once per turn of the event loop, after every request read in that turn has
gone to production: the candidate is then woken once per batch rather than once per request,
which saves the data plane much of the kernel's wake-up work (see benchmarks/README.md). A
mirror's latency is timed from its write (plus any wait for a connection), so the batching
does not count against the candidate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from shadowroute.core.config import Breaker, Candidate
from shadowroute.dataplane import http1
from shadowroute.dataplane.stats import DataPlaneStats
from shadowroute.dataplane.upstream import (
    Exchange,
    Outcome,
    UpstreamConnection,
    UpstreamPool,
    time_piece,
)

MAX_MIRROR_RESPONSE: Final = 16 << 20
# The clocks, bound once: a module attribute looked up on every call costs more than the call.
_perf_counter: Final = time.perf_counter
_monotonic: Final = time.monotonic
NOT_SENT = ("dropped", "circuit_open", "not_mirrored")
"""Record error reasons of a sampled request's mirror that was not sent (``records.ERRORS``)."""


class CircuitBreaker:
    """Closed → open after ``failures`` consecutive failures; after ``open_s`` one probe is let
    through (half-open): success closes the circuit, failure opens it again."""

    __slots__ = ("failures", "open_s", "opened_at", "probing", "streak")

    def __init__(self, cfg: Breaker) -> None:
        self.failures = cfg.failures
        self.open_s = cfg.open_s
        self.streak = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.probing else "open"

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if not self.probing and now - self.opened_at >= self.open_s:
            self.probing = True
            return True
        return False

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.streak = 0
            self.opened_at = None
            self.probing = False
            return
        self.streak += 1
        if self.probing or self.streak >= self.failures:
            self.opened_at = now
            self.probing = False


MirrorDone = Callable[[Outcome], None]


class MirrorTarget:
    """One candidate of one route: its pool, breaker and in-flight bound."""

    def __init__(
        self,
        route: str,
        cfg: Candidate,
        pool: UpstreamPool,
        breaker: Breaker,
        stats: DataPlaneStats,
        keep_bytes: int = 1 << 20,
        *,
        timed: bool = False,
        max_pieces: int = 4096,
    ) -> None:
        self.route = route
        self.cfg = cfg
        self.name = cfg.name
        self.version = cfg.version
        self.pool = pool
        self.breaker = CircuitBreaker(breaker)
        self.stats = stats
        self.in_flight = 0
        self.active: set[MirrorExchange] = set()
        # Read on every mirror: plain attributes, and the counter keys made once.
        self.max_in_flight = cfg.max_in_flight
        self.fraction = cfg.fraction
        self.timeout_s = cfg.timeout_s
        self.cap = min(keep_bytes, MAX_MIRROR_RESPONSE)
        """Answer bytes read for the record (``records.max_response_bytes``, at most
        ``MAX_MIRROR_RESPONSE``): an answer announced or found longer is not read further (its
        connection is closed), and the mirror and the record say ``too_large``."""
        self.timed = timed
        """``openai`` routes: the answer's body pieces are timed (``Outcome.times``)."""
        self.max_times = 2 * max_pieces
        self.latency = stats.latency_of(route, cfg.name, "candidate")
        self._key = (route, cfg.name)
        self._sent = (route, cfg.name, "sent")
        self._ok = (route, cfg.name, "ok")
        self.stats.mirrors_in_flight[self._key] = 0
        self._unsent: list[MirrorExchange] = []  # to be written at the end of this loop turn
        # The candidate's outcome for a sampled request that was not sent, made once: a mirror
        # not sent costs the client's path a counter and a reference, nothing more.
        self.not_sent = {
            reason: Outcome(cfg.name, cfg.version, None, None, None, None, None, reason)
            for reason in NOT_SENT
        }

    def write_soon(self, ex: MirrorExchange) -> None:
        unsent = self._unsent
        if not unsent:
            self.pool.loop.call_soon(self._write_unsent)
        unsent.append(ex)

    def _write_unsent(self) -> None:
        unsent = self._unsent
        self._unsent = []
        now = _perf_counter()
        for ex in unsent:
            ex.send(now)

    def count(self, outcome: str) -> None:
        self.stats.mirrors[(self.route, self.name, outcome)] += 1

    def send(self, request: bytes, done: MirrorDone) -> str | None:
        """Start a mirror; when it is not sent, the reason (``dropped`` at the in-flight
        bound, ``circuit_open``), already counted. ``not_sent[reason]`` is the candidate's
        outcome for the request then."""
        if self.in_flight >= self.max_in_flight:
            self.count("dropped_full")
            return "dropped"
        now = _monotonic()
        if not self.breaker.allow(now):
            self.count("circuit_open")
            return "circuit_open"
        self.in_flight += 1
        self.stats.mirrors_in_flight[self._key] = self.in_flight
        self.stats.mirrors[self._sent] += 1
        ex = MirrorExchange(self, request, done)
        self.active.add(ex)
        ex.start()
        return None

    def finished(self, result: Outcome) -> None:
        self.in_flight -= 1
        self.stats.mirrors_in_flight[self._key] = self.in_flight
        error = result.error
        # An answer cut at the record's cap (``too_large``) is an answer: not a failure.
        self.breaker.record(
            error is None or error == "http_4xx" or error == "too_large", _monotonic()
        )
        if error is None:
            self.stats.mirrors[self._ok] += 1
        else:
            if error == "timeout" or error == "too_large":
                self.count(error)
            else:
                self.count("error")
            self.stats.mirror_errors[(self.route, self.name, error)] += 1
        if result.latency_ms is not None:
            self.latency.observe(result.latency_ms / 1000.0)


class MirrorExchange(Exchange):
    wants_body = True

    __slots__ = (
        "_body",
        "_ce",
        "_conn",
        "_ct",
        "_done",
        "_size",
        "_status",
        "_t0",
        "_times",
        "_wait",
        "_written",
        "request",
        "target",
    )

    def __init__(self, target: MirrorTarget, request: bytes, done: MirrorDone) -> None:
        self.target = target
        self.request = request
        self._done: MirrorDone | None = done
        self._conn: UpstreamConnection | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._status: int | None = None
        self._ce: bytes | None = None
        self._ct: bytes | None = None
        self._t0 = 0.0
        self._times: list[float] | None = [] if target.timed else None
        self._wait = 0.0  # from start to a connection in hand
        self._written = False

    def start(self) -> None:
        self._t0 = _perf_counter()
        self.target.pool.acquire(self._acquired)

    def _acquired(self, conn: UpstreamConnection | None, err: str | None) -> None:
        if conn is None:
            self._finish(None, err or "connect")
            return
        self._conn = conn
        self._wait = wait = _perf_counter() - self._t0
        conn.start(self, max(self.target.timeout_s - wait, 0.001))
        self.target.write_soon(self)

    def send(self, now: float) -> None:
        """Write the request (``now``: the batch's write time), unless the exchange has
        already ended (the connection was lost, or shutdown cancelled it)."""
        conn = self._conn
        if (
            conn is not None
            and conn.exchange is self
            and conn.transport is not None
            and not self._written
        ):
            self._written = True
            self._t0 = now - self._wait
            conn.write(self.request)

    def whole_request(self) -> bytes | None:
        return self.request

    def moved(self, conn: UpstreamConnection) -> None:
        # The pool writes the request there (its first connection closed before answering).
        self._conn = conn
        self._written = True

    def on_head(self, status: int, head: bytes, low: bytes) -> None:
        self._status = status
        conn = self._conn
        if (
            conn is not None
            and conn.content_length > self.target.cap
            and status != 204
            and status != 304
        ):
            # The answer says it is past the record's cap: none of it is read (reading the
            # first ``cap`` bytes of each before giving up cost a MiB per mirror of a hostile
            # candidate, on the event loop the clients share).
            self._too_large()
            return
        if low.find(http1.CONTENT_ENCODING) >= 0:
            self._ce = http1.header_value(head, low, http1.CONTENT_ENCODING)
        self._ct = http1.header_value(head, low, http1.CONTENT_TYPE)

    def _too_large(self) -> None:
        # Past the record's cap the record says ``too_large`` whatever follows, so the rest
        # is not read: the connection is closed. Reading a hostile candidate's many MiB to
        # their end to reuse one connection cost the event loop far more than a new
        # connection (the hostile soak's busiest bursts in the worker).
        self.target.stats.limits["candidate_too_large"] += 1
        if self._conn is not None:
            self._conn.abandon()
        self._finish(self._status, "too_large")

    def on_body(self, piece: bytes) -> None:
        if self._done is None:
            return  # already ended (cut at the record's cap): the rest is not wanted
        self._size = size = self._size + len(piece)
        if size > self.target.cap:
            self._too_large()
            return
        self._body.append(piece)
        times = self._times
        if times is not None:  # an ``openai`` route: when each piece came
            target = self.target
            ms = (_perf_counter() - self._t0) * 1000.0
            time_piece(times, size - len(piece), ms, target.max_times, target.stats.limits)

    def on_complete(self) -> None:
        status = self._status
        error = None
        if status is not None and status >= 500:
            error = "http_5xx"
        elif status is not None and status >= 400:
            error = "http_4xx"
        self._finish(status, error)

    def on_fail(self, reason: str) -> None:
        self._finish(self._status, reason)

    def _finish(self, status: int | None, error: str | None) -> None:
        done = self._done
        if done is None:
            return
        self._done = None
        latency = (_perf_counter() - self._t0) * 1000.0
        body = b"".join(self._body) if error in (None, "http_4xx", "http_5xx") else None
        target = self.target
        result = Outcome(
            target.name,
            target.version,
            status,
            latency if error not in ("connect", "circuit_open") else None,
            body,
            self._ce,
            self._ct,
            error,
            self._times,
        )
        target.active.discard(self)
        target.finished(result)
        done(result)

    def cancel(self) -> None:
        """Give up on the mirror at shutdown: counted as a timeout."""
        if self._conn is not None:
            self._conn.abandon()
        self._finish(self._status, "timeout")
