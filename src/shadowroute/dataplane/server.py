"""The data plane's lifecycle: listen, serve, and shut down gracefully.

``DataPlane`` owns the listening socket, the proxy state, the record queue and its pump. Stop
order: readiness off → stop accepting → let in-flight client requests finish (idle keep-alive
connections are closed) → give in-flight mirrors a deadline → build the last records → flush
the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from typing import cast

from shadowroute.core.config import Config
from shadowroute.core.revision import LiveRevisions
from shadowroute.dataplane.proxy import ClientConnection, Proxy
from shadowroute.dataplane.recorder import Recorder
from shadowroute.dataplane.stats import DataPlaneStats
from shadowroute.stream.queue import RecordQueue
from shadowroute.stream.sink import Sink

log = logging.getLogger("shadowroute.dataplane")

SWEEP_BATCH = 2
"""Connections the idle sweep refuses or closes per turn of the event loop at most. A refusal
(the answer written, the write side shut, the lingering read set up) is ~10 µs of the loop's
time, and its client's reconnection and close follow on the same loop: with 32 a turn, each
flood's deadline gave the hostile soak's worker ~15-25 turns a second over 0.5 ms; from 8 to
2, an idle flood's turns over 0.1 ms fell by about half (``benchmarks/README.md``)."""
SWEEP_SLICE = 128
"""Connections the idle sweep looks at per turn of the event loop at most."""


class PortInUse(OSError):
    """The client port is already served by another process."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"{host}:{port} is already in use by another process (is another shadowroute "
            "serving it?); refusing to start",
        )


def check_port_free(host: str, port: int) -> None:
    """Raise ``PortInUse`` when another socket is bound to ``host:port``. The workers of
    ``serve --workers N`` bind with SO_REUSEPORT, which would let a second, unrelated server on
    the same port take a share of the traffic silently; their supervisor checks first with a
    bind that does not share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port) from None
            raise


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class DataPlane:
    def __init__(
        self,
        config: Config,
        sink: Sink,
        *,
        sock: socket.socket | None = None,
        stats: DataPlaneStats | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.stats = stats or DataPlaneStats()
        self.queue = RecordQueue(config.records.queue_size)
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._pump: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.proxy: Proxy | None = None
        self.revisions = LiveRevisions(config)
        """Each model's revision; ``set_revision`` changes it, records carry it."""
        self.fractions: dict[tuple[str, str], float] = {}
        """Candidates' fractions set live (0: off), over the config's: ``set_fraction``;
        what is set before ``start`` applies from the first request."""
        self.mirroring = config.mirror.enabled
        """The global switch (``set_mirroring``); set before ``start``, it applies from the
        first request."""
        self.ready = False
        self._stopped = False

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        rcfg = self.config.records
        recorder = Recorder(
            loop,
            self.queue,
            self.stats,
            max_body=rcfg.max_response_bytes,
            max_predictions=rcfg.max_predictions,
            max_instances=rcfg.max_instances,
            max_values=rcfg.max_json_values,
        )
        recorder.stamps = self.revisions.stamps()
        self.proxy = proxy = Proxy(self.config, loop, recorder)
        proxy.mirroring = self.mirroring
        for (route, cand), fraction in self.fractions.items():
            proxy.set_fraction(route, cand, fraction)
        await self.sink.start()
        self._pump = loop.create_task(self.queue.pump(self.sink), name="record-pump")
        sock = self._sock or listen_socket(
            self.config.listen.host, self.config.listen.port, reuse_port=False
        )
        self._server = await loop.create_server(
            lambda: cast(asyncio.Protocol, ClientConnection(proxy)), sock=sock, backlog=1024
        )
        self._sweeper = loop.create_task(self._sweep_idle(), name="idle-sweeper")
        self.ready = True
        log.info("proxy listening on %s:%d", self.config.listen.host, self.port)

    sweep_batch = SWEEP_BATCH
    sweep_slice = SWEEP_SLICE

    async def _sweep_idle(self) -> None:
        """Close idle keep-alive connections, and refuse (408) heads that take too long, a
        turn of the event loop at a time (``sweep_turns``)."""
        idle_s = self.config.proxy.idle_timeout_s
        head_s = self.config.proxy.head_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, idle_s / 2, head_s / 2))
            for _ in self.sweep_turns(loop.time()):
                await asyncio.sleep(0)  # the other clients' reads and writes first

    def sweep_turns(self, now: float) -> Iterator[int]:
        """One sweep of the open connections, cut into turns of the event loop: yields after
        each turn the number of connections it looked at. A turn looks at no more than
        ``sweep_slice`` connections and refuses or closes no more than ``sweep_batch``: a
        flood of idle connections opened together times out together, and refusing 800 of
        them in one turn (an answer, a write and a shutdown each) held every other client up
        for several milliseconds; merely looking at 850 open ones takes ~0.4 ms."""
        assert self.proxy is not None
        idle_s = self.config.proxy.idle_timeout_s
        conns = list(self.proxy.connections)
        looked = acted = 0
        for conn in conns:
            looked += 1
            if conn.transport is None:
                pass  # closed during an earlier turn of this sweep
            elif conn.linger_expired(now) or conn.head_timeout(now):
                acted += 1
            elif conn.idle and now - conn.last_active > idle_s:
                conn.close()
                acted += 1
            if acted >= self.sweep_batch or looked >= self.sweep_slice:
                yield looked
                looked = acted = 0
        if looked:
            yield looked

    def set_mirroring(self, enabled: bool) -> None:
        self.mirroring = enabled
        if self.proxy is not None:
            self.proxy.mirroring = enabled

    def set_fraction(self, route: str, candidate: str, fraction: float) -> None:
        """A candidate's fraction from the next request on (0: no mirrors)."""
        self.fractions[(route, candidate)] = fraction
        if self.proxy is not None:
            self.proxy.set_fraction(route, candidate, fraction)

    def reload(self, config: Config, fractions: dict[tuple[str, str], float]) -> None:
        """Serve ``config``'s routes from the next request on, with these fractions (those
        of the candidates it has); open connections stay, requests in flight finish as they
        were planned. Only the routes may differ from the running config
        (``core.reload.refusals``)."""
        if self.proxy is not None:  # first: when it raises, nothing has changed
            self.proxy.reload(config, fractions)
        self.config = config
        self.fractions = dict(fractions)
        self.revisions.reconfigure(config)
        if self.proxy is not None:
            self.proxy.recorder.stamps = self.revisions.stamps()

    def set_revision(self, route: str, model: str, revision: str | None) -> None:
        """A model's revision from now on (None: the config's); records built from now on
        carry it, and the comparator starts fresh evidence for it."""
        self.revisions.set(route, model, revision)
        if self.proxy is not None:
            self.proxy.recorder.stamps = self.revisions.stamps()

    async def stop(self) -> None:
        """Graceful shutdown; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.ready = False
        proxy = self.proxy
        assert proxy is not None and self._server is not None
        proxy.draining = True
        self._server.close()
        cfg = self.config.proxy
        loop = asyncio.get_running_loop()
        for conn in list(proxy.connections):
            if conn.idle:
                conn.close()
        deadline = loop.time() + cfg.shutdown_timeout_s
        while proxy.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(proxy.connections):
            log.warning("closing a client connection still busy at the shutdown deadline")
            conn.close()
        targets = proxy.targets()
        deadline = loop.time() + cfg.mirror_drain_s
        while any(t.in_flight for t in targets) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for t in targets:
            for ex in list(t.active):
                ex.cancel()
        proxy.recorder.flush()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.queue.close()
        if self._pump is not None:
            await self._pump
        await self.sink.close()
        proxy.close_pools()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        log.info("proxy stopped")
