"""``serve --workers N``: N data-plane processes share the listening port (SO_REUSEPORT).

The supervisor (this process) runs the admin plane and owns the record sink. Each worker runs
one data plane and ships its records and a counter snapshot to the supervisor over a Unix
socket pair; the supervisor sends control messages (the mirroring switch) the other way.

Frames: 4-byte big-endian length, 1-byte type, payload. Types: ``R`` a record batch
(repeated 4-byte key length, key, 4-byte value length, value), ``S`` a JSON counter snapshot
(``ready``; ``stats``, the data plane's counters; ``records``, its record queue depth and the
records it lost by reason; ``circuits``, ``[route, candidate, open]`` per candidate), ``M``
mirroring on/off (payload ``1``/``0``), ``V`` a model's revision (JSON
``[route, model, revision or null]``), ``F`` a candidate's fraction set live (JSON
``[route, candidate, fraction]``, 0 while it is off), ``C`` a reloaded config (a pickle of
``(Config, {(route, candidate): fraction})``: the very object the supervisor checked, its
secrets included, which a JSON dump would mask; the channel is a socket pair between this
process and the children it forked, nobody else's). A worker starts with the supervisor's
settings at fork time (the state file's, and whatever changed since); workers apply frames
in the order sent.

The supervisor's /metrics adds the workers' counters up; a circuit is open there when it is
open in any worker; the records lost are the workers' plus the supervisor's own (a sink write
that failed, the Kafka spool full).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any, Final

import orjson

from shadowroute import build_info
from shadowroute.api.app import ControlContext
from shadowroute.api.metrics import DataPlaneCollector, RecordFlow, max_circuits, new_registry
from shadowroute.core.config import Config
from shadowroute.core.revision import LiveRevisions
from shadowroute.dataplane.server import DataPlane, check_port_free, listen_socket
from shadowroute.dataplane.stats import DataPlaneStats
from shadowroute.runtime.admin import admin_port, admin_server, control_plane
from shadowroute.runtime.backend import RecordsBackend, records_backend, verify_kafka_topics
from shadowroute.runtime.control import LiveControl, attach, open_settings
from shadowroute.runtime.events import event_service
from shadowroute.runtime.lifecycle import (
    freeze_startup_heap,
    on_sighup,
    stop_on_sigterm,
    wait_for_signal,
)
from shadowroute.runtime.observe import (
    dataplane_circuits,
    dataplane_flow,
    operator_log,
    ops_sample,
    spool_losses,
)
from shadowroute.runtime.reload import Loader, Reloader, reload_in_order
from shadowroute.stream.sink import KeyValue, Sink

log = logging.getLogger("shadowroute.workers")
_LEN = struct.Struct(">I")


def encode_frame(kind: bytes, payload: bytes) -> bytes:
    return _LEN.pack(len(payload) + 1) + kind + payload


def encode_records(batch: Sequence[KeyValue]) -> bytes:
    return b"".join(_LEN.pack(len(k)) + k + _LEN.pack(len(v)) + v for k, v in batch)


def decode_records(payload: bytes) -> list[KeyValue]:
    out: list[KeyValue] = []
    i, n = 0, len(payload)
    while i < n:
        (kl,) = _LEN.unpack_from(payload, i)
        key = payload[i + 4 : i + 4 + kl]
        i += 4 + kl
        (vl,) = _LEN.unpack_from(payload, i)
        out.append((key, payload[i + 4 : i + 4 + vl]))
        i += 4 + vl
    return out


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        (length,) = _LEN.unpack(await reader.readexactly(4))
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
    return body[:1], body[1:]


class PipeSink:
    """A worker's sink: record batches go to the supervisor."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def start(self) -> None:
        return None

    async def write(self, batch: Sequence[KeyValue]) -> None:
        self._writer.write(encode_frame(b"R", encode_records(batch)))
        await self._writer.drain()

    async def close(self) -> None:
        await self._writer.drain()


Fractions = dict[tuple[str, str], float]
"""Each candidate's effective fraction (0: off)."""


async def _worker(
    config: Config, chan: socket.socket, index: int, start: tuple[bool, Fractions]
) -> None:
    # Bind first: a worker that cannot has opened nothing else to leave behind.
    sock = listen_socket(config.listen.host, config.listen.port, reuse_port=True)
    reader, writer = await asyncio.open_unix_connection(sock=chan)
    stats = DataPlaneStats()
    dp = DataPlane(config, PipeSink(writer), sock=sock, stats=stats)
    dp.mirroring, dp.fractions = start[0], dict(start[1])
    await dp.start()
    freeze_startup_heap()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_on_sigterm(stop)

    async def control() -> None:
        while (frame := await read_frame(reader)) is not None:
            kind, payload = frame
            if kind == b"M":
                dp.set_mirroring(payload == b"1")
            elif kind == b"V":
                route, model, revision = orjson.loads(payload)
                dp.set_revision(route, model, revision)
            elif kind == b"F":
                route, cand, fraction = orjson.loads(payload)
                dp.set_fraction(route, cand, float(fraction))
            elif kind == b"C":
                new_config, fractions = pickle.loads(payload)  # our own child: see the docstring
                try:
                    dp.reload(new_config, fractions)
                except Exception:  # the old routes keep serving; the channel stays read
                    log.exception("worker %d could not apply the reloaded config", index)
                else:
                    log.info("worker %d serves the reloaded config", index)
        stop.set()  # supervisor gone

    def snapshot(ready: bool) -> bytes:
        snap = {
            "ready": ready,
            "stats": stats.snapshot(),
            "records": dataplane_flow(dp).to_json(),
            "circuits": dataplane_circuits(dp),
        }
        return encode_frame(b"S", orjson.dumps(snap))

    async def report() -> None:
        while True:
            writer.write(snapshot(dp.ready))
            await asyncio.sleep(0.5)

    tasks = [loop.create_task(control()), loop.create_task(report())]
    await stop.wait()
    await dp.stop()
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    with contextlib.suppress(ConnectionError):  # the supervisor may be gone already
        writer.write(snapshot(False))
        await writer.drain()
    writer.close()
    log.info("worker %d stopped", index)


PR_SET_PDEATHSIG: Final = 1  # prctl(2)


def _die_with(supervisor: int) -> None:
    """Ask the kernel (Linux) to send this worker SIGTERM when its supervisor dies, however
    it dies (a kill -9 too): the end-of-file on the channel says the same, this is the
    second line. A supervisor already gone by now: stop at once."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the channel's end-of-file alone
        pass
    if os.getppid() != supervisor:
        os._exit(0)


def _worker_main(
    config: Config,
    chan: socket.socket,
    index: int,
    inherited: list[socket.socket],
    supervisor: int | None = None,
    control: tuple[bool, Fractions] | None = None,
) -> None:
    import uvloop

    from shadowroute.dataplane.malloc import fix_malloc_thresholds

    fix_malloc_thresholds()  # multi-MiB bodies go back when freed; a streamed heap top stays
    if supervisor is not None:
        _die_with(supervisor)
    # Close the supervisor's ends of the other workers' channels that the fork copied here,
    # so each worker sees end-of-file (and stops) when the supervisor goes away.
    for other in inherited:
        other.close()
    try:
        if control is None:
            control = (config.mirror.enabled, {})
        uvloop.run(_worker(config, chan, index, control))
    except OSError as exc:
        # An address in use, a file gone: one line and a non-zero exit (the supervisor sees
        # the channel close and stops serve), no traceback.
        text = exc.strerror or str(exc)
        print(f"error: worker {index}: {text}", file=sys.stderr, flush=True)
        sys.exit(EXIT_WORKER_FAILED)


EXIT_WORKER_FAILED = 3
"""A worker's exit code when it could not serve (printed its reason on stderr)."""


class WorkerSet:
    """The supervisor's view of its workers: merged counters, readiness, control."""

    def __init__(self, n: int, mirroring: bool = True) -> None:
        self.n = n
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.flows: dict[int, RecordFlow] = {}
        self.circuit_states: dict[int, list[tuple[str, str, bool]]] = {}
        self.ready_flags: dict[int, bool] = {}
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.mirroring = mirroring
        """The switch as the workers have it: they start from ``mirror.enabled`` too."""
        self.sink_failed = 0
        """Records the supervisor's sink failed to take (a write that raised)."""
        self.stopping = False
        self.revisions: LiveRevisions | None = None

    def stats(self) -> DataPlaneStats:
        total = DataPlaneStats()
        for snap in self.snapshots.values():
            total.add_snapshot(snap)
        return total

    def records(self) -> RecordFlow:
        """The workers' record queues and losses, plus the records this process lost."""
        total = RecordFlow()
        for flow in self.flows.values():
            total.add(flow)
        total.dropped["sink_failed"] += self.sink_failed
        return total

    def circuits(self) -> list[tuple[str, str, bool]]:
        return max_circuits(self.circuit_states.values())

    def ready(self) -> bool:
        if self.stopping:
            return False
        return len(self.ready_flags) == self.n and all(self.ready_flags.values())

    def set_mirroring(self, enabled: bool) -> None:
        self.mirroring = enabled
        for w in self.writers.values():
            w.write(encode_frame(b"M", b"1" if enabled else b"0"))

    def set_revision(self, route: str, model: str, revision: str | None) -> None:
        if self.revisions is not None:
            self.revisions.set(route, model, revision)
        for w in self.writers.values():
            w.write(encode_frame(b"V", orjson.dumps([route, model, revision])))

    def set_fraction(self, route: str, candidate: str, fraction: float) -> None:
        for w in self.writers.values():
            w.write(encode_frame(b"F", orjson.dumps([route, candidate, fraction])))

    def reload(self, config: Config, fractions: Fractions) -> None:
        """Every worker serves ``config``'s routes (checked by ``runtime.reload``)."""
        if self.revisions is not None:
            self.revisions.reconfigure(config)
        frame = encode_frame(b"C", pickle.dumps((config, fractions)))
        for w in self.writers.values():
            w.write(frame)

    async def wait_started(
        self, pumps: Sequence[asyncio.Future[None]], timeout_s: float, pause_s: float = 0.05
    ) -> str | None:
        """Until every worker has reported that it serves: None; else why not, in words.
        A pump that ended (its worker closed the channel: it exited) before its worker was
        ready means that worker could not start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.ready():
            for i, pump in enumerate(pumps):
                if pump.done():
                    return f"worker {i} could not start"
            if loop.time() > deadline:
                waiting = sorted(set(range(self.n)) - {i for i, r in self.ready_flags.items() if r})
                return f"worker(s) {waiting} not ready after {timeout_s:g} s"
            await asyncio.sleep(pause_s)
        return None

    async def pump(self, index: int, reader: asyncio.StreamReader, sink: Sink) -> None:
        while (frame := await read_frame(reader)) is not None:
            kind, payload = frame
            if kind == b"R":
                batch = decode_records(payload)
                try:
                    await sink.write(batch)
                except Exception:
                    # Counted and logged; the worker's records keep flowing (a pump that
                    # stopped here would fill the pipe and the worker's queue, unseen).
                    self.sink_failed += len(batch)
                    log.exception("sink write failed; %d records dropped", len(batch))
            elif kind == b"S":
                doc = orjson.loads(payload)
                self.snapshots[index] = doc["stats"]
                if "records" in doc:
                    self.flows[index] = RecordFlow.from_json(doc["records"])
                self.circuit_states[index] = [
                    (str(r), str(c), bool(o)) for r, c, o in doc.get("circuits", ())
                ]
                self.ready_flags[index] = bool(doc["ready"])


START_TIMEOUT_S = 60.0
"""How long the supervisor waits for every worker to serve before it gives up."""


async def supervise(config: Config, n: int, reload_from: Loader | None = None) -> int:
    """Run ``n`` workers and the supervisor's side until SIGTERM/SIGINT (0), or until a worker
    cannot serve, at start or later (1: the others are stopped too; ``serve`` never runs on
    with part of its processes gone)."""
    # Another process on the port would share it with the workers (SO_REUSEPORT): refuse.
    check_port_free(config.listen.host, config.listen.port)
    if config.transport.kind == "kafka":
        # A configuration error stops us before any worker exists.
        await verify_kafka_topics(config)
    settings = open_settings(config)  # a bad state file stops us before any worker exists
    workers = WorkerSet(n, mirroring=settings.mirroring)
    workers.revisions = LiveRevisions(config)
    # Fork the workers before this process opens SQLite files or Kafka connections.
    procs, channels = _fork_workers(config, n, (settings.mirroring, settings.effective()))
    control = LiveControl(config, settings, workers.set_fraction, workers.set_mirroring)
    pumps: list[asyncio.Task[None]] = []
    try:
        async with records_backend(config, topics_checked=True) as backend:
            sink = backend.pairs
            await sink.start()
            try:
                for i, parent in enumerate(channels):
                    reader, writer = await asyncio.open_unix_connection(sock=parent)
                    workers.writers[i] = writer
                    pumps.append(asyncio.create_task(workers.pump(i, reader, sink)))
                return await _serve(config, workers, backend, procs, pumps, control, reload_from)
            finally:
                workers.stopping = True
                await _stop_workers(config, procs, pumps)  # a no-op after a stop
                await sink.close()
    finally:
        workers.stopping = True
        await _stop_workers(config, procs, pumps)  # when the backend could not start


def _fork_workers(
    config: Config, n: int, control: tuple[bool, Fractions] | None = None
) -> tuple[list[multiprocessing.process.BaseProcess], list[socket.socket]]:
    """``n`` worker processes, and the supervisor's end of each one's channel."""
    ctx_mp = multiprocessing.get_context("fork")
    procs: list[multiprocessing.process.BaseProcess] = []
    channels: list[socket.socket] = []
    for i in range(n):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = ctx_mp.Process(
            target=_worker_main,
            args=(config, child, i, [parent, *channels], os.getpid(), control),
            name=f"worker-{i}",
            daemon=True,  # never outlive the supervisor, whatever stops it
        )
        proc.start()
        child.close()
        procs.append(proc)
        channels.append(parent)
    return procs, channels


async def _serve(
    config: Config,
    workers: WorkerSet,
    backend: RecordsBackend,
    procs: Sequence[multiprocessing.process.BaseProcess],
    pumps: Sequence[asyncio.Task[None]],
    control: LiveControl,
    reload_from: Loader | None = None,
) -> int:
    """The supervisor's admin plane while the workers serve; the exit code."""
    pair_kafka = backend.pair_kafka
    registry = new_registry()
    registry.register(
        DataPlaneCollector(
            workers.stats,
            lambda: spool_losses(workers.records(), pair_kafka),
            lambda: workers.mirroring,
            workers.circuits,
        )
    )
    ctx = ControlContext(
        config=config,
        registry=registry,
        ready=workers.ready,
        get_mirroring=lambda: workers.mirroring,
        set_mirroring=workers.set_mirroring,
        revisions=workers.revisions,
        set_revision=workers.set_revision,
    )
    attach(ctx, control)
    ctx = control_plane(config, ctx, backend.scores, backend.labels, backend.kafka)

    async def reload(new: Config) -> None:
        effective = control.settings.effective
        await reload_in_order(
            ctx.config, new, backend.comparator, lambda c: workers.reload(c, effective(c))
        )
        control.rebase(new)
        ctx.config = new

    async with (
        event_service(config, ctx, backend.scores, workers.circuits),
        admin_server(ctx, config.admin.host, config.admin.port) as runner,
    ):
        failed = await workers.wait_started(pumps, START_TIMEOUT_S)
        if failed is not None:
            log.error("%s; stopping (see the worker's error above)", failed)
            return 1
        freeze_startup_heap()
        if reload_from is not None:
            on_sighup(Reloader(reload_from, lambda: ctx.config, reload, control.reloads).request)
        log.info(
            "%d workers serving on %s:%d (%s)",
            workers.n, config.listen.host, config.listen.port, build_info.describe(),
        )  # fmt: skip
        sample = ops_sample(
            workers.stats, lambda: spool_losses(workers.records(), pair_kafka), workers.circuits
        )
        listen = f"{config.listen.host}:{config.listen.port}"
        admin = f"{config.admin.host}:{admin_port(runner)}"
        async with operator_log(config, sample, listen, admin):
            rc = await _until_stopped(procs, pumps)
        log.info("stopping workers")
        # Readiness off; the admin plane (metrics, labels) stays up while they drain.
        workers.stopping = True
        await _stop_workers(config, procs, pumps)
    return rc


async def _until_stopped(
    procs: Sequence[multiprocessing.process.BaseProcess], pumps: Sequence[asyncio.Task[None]]
) -> int:
    """Until SIGTERM/SIGINT (0), or until a worker exits on its own (1: it cannot serve any
    more, and a ``serve`` with part of its workers gone would look healthy while it is not)."""
    signalled = asyncio.get_running_loop().create_task(wait_for_signal())
    done, _ = await asyncio.wait([signalled, *pumps], return_when=asyncio.FIRST_COMPLETED)
    if signalled in done:
        return 0
    signalled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await signalled
    gone = next(i for i, p in enumerate(pumps) if p in done)
    procs[gone].join(timeout=2)
    log.error(
        "worker %d stopped on its own (exit code %s); stopping serve", gone, procs[gone].exitcode
    )
    return 1


async def _stop_workers(
    config: Config,
    procs: Sequence[multiprocessing.process.BaseProcess],
    pumps: Sequence[asyncio.Task[None]],
) -> None:
    """SIGTERM to every worker, their last records read within the drain time, then gone."""
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    grace = config.proxy.shutdown_timeout_s + config.proxy.mirror_drain_s + 5
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*pumps, return_exceptions=True), grace)
    for t in pumps:
        t.cancel()
    for p in procs:
        await asyncio.to_thread(p.join, 1)
        if p.is_alive():
            p.kill()


def serve_workers(config: Config, n: int, reload_from: Loader | None = None) -> int:
    import uvloop

    return uvloop.run(supervise(config, n, reload_from))
