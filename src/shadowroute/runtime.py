"""Wiring for ``shadowroute serve``: the one place that knows data plane, streams, comparator
and API. Resources start in order and stop in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web

from shadowroute import build_info
from shadowroute.api.app import ControlContext, create_app
from shadowroute.api.labels import LabelWriter, SinkLabelWriter, label_routes
from shadowroute.api.metrics import (
    DataPlaneCollector,
    KafkaSinkCollector,
    RecordFlow,
    new_registry,
)
from shadowroute.api.scorecard import scorecard_routes
from shadowroute.api.scores import ScoresCollector, score_routes
from shadowroute.comparator.embedded import Comparator
from shadowroute.comparator.reader import Reader, ScoresReader, StateView, Verdicts
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config
from shadowroute.core.label_rules import LabelRules
from shadowroute.core.records import LabelRecord
from shadowroute.dataplane.server import DataPlane, listen_socket
from shadowroute.dataplane.stats import DataPlaneStats
from shadowroute.oplog import Sample, Watch, sample_of, startup_lines, watch_loop
from shadowroute.stream.jsonl import JsonlSink
from shadowroute.stream.kafka import KafkaSink
from shadowroute.stream.sink import ChannelSink, FanoutSink, Sink

log = logging.getLogger("shadowroute")
ops_log = logging.getLogger("shadowroute.ops")


def pair_sinks(config: Config, extra: list[Sink] | None = None) -> tuple[Sink, list[KafkaSink]]:
    """The sink pair records go to, from the config, and the Kafka sinks among them."""
    sinks: list[Sink] = list(extra or [])
    kafka: list[KafkaSink] = []
    if config.records.jsonl_path:
        sinks.append(
            JsonlSink(
                config.records.jsonl_path,
                max_bytes=config.records.jsonl_max_bytes,
                keep=config.records.jsonl_keep,
            )
        )
    if config.transport.kind == "kafka":
        kafka.append(KafkaSink.for_pairs(config.transport))
        sinks.append(kafka[-1])
    return FanoutSink(sinks), kafka


class StartError(RuntimeError):
    """A process of ``serve`` cannot start for a reason of its configuration or of this
    machine (an address in use); ``str()`` says which in one line."""


@contextlib.asynccontextmanager
async def admin_server(ctx: ControlContext, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(create_app(ctx), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartError(
            f"admin plane: cannot listen on {host}:{port} (admin.port): {exc.strerror or exc}"
        ) from None
    try:
        yield runner
    finally:
        await runner.cleanup()


def admin_port(runner: web.AppRunner) -> int:
    server = runner.addresses[0]
    return int(server[1])


def dataplane_flow(dp: DataPlane) -> RecordFlow:
    """The data plane's record queue depth and the records it lost (queue full, sink write
    failed, record not built)."""
    q = dp.queue
    flow = RecordFlow(len(q))
    flow.dropped["queue_full"] = q.dropped_total - q.failed_total
    flow.dropped["sink_failed"] = q.failed_total
    flow.dropped["build_failed"] = dp.proxy.recorder.build_failed if dp.proxy else 0
    return flow


def spool_losses(flow: RecordFlow, pair_sinks: Sequence[KafkaSink]) -> RecordFlow:
    """``flow`` plus the pair records the Kafka sinks could not keep (spool full)."""
    for s in pair_sinks:
        flow.dropped["spool_full"] += s.records_dropped
    return flow


def dataplane_circuits(dp: DataPlane) -> list[tuple[str, str, bool]]:
    """(route, candidate, open) for every candidate of the data plane."""
    if dp.proxy is None:
        return []
    return [(t.route, t.name, t.breaker.state != "closed") for t in dp.proxy.targets()]


def ops_sample(
    stats: Callable[[], DataPlaneStats],
    flow: Callable[[], RecordFlow],
    circuits: Callable[[], Iterable[tuple[str, str, bool]]],
) -> Callable[[], Sample]:
    """What the operator's log watches, from the same sources as ``/metrics``."""

    def sample() -> Sample:
        s = stats()
        return sample_of(s.mirrors, s.mirror_errors, flow().dropped, circuits())

    return sample


@contextlib.asynccontextmanager
async def operator_log(
    config: Config, sample: Callable[[], Sample], listen: str, admin: str
) -> AsyncIterator[None]:
    """Say what is served where, then log changes of state until the block ends."""
    for line in startup_lines(config, listen, admin):
        ops_log.info("%s", line)
    o = config.ops_log
    watch = Watch(
        min_mirrors=o.min_mirrors,
        fail_share=o.fail_share,
        recover_share=o.recover_share,
        repeat_s=o.repeat_s,
    )
    task = asyncio.get_running_loop().create_task(
        watch_loop(sample, interval_s=o.interval_s, watch=watch)
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def dataplane_context(
    config: Config, dp: DataPlane, pair_kafka: Sequence[KafkaSink] = ()
) -> ControlContext:
    registry = new_registry()
    registry.register(
        DataPlaneCollector(
            lambda: dp.stats,
            lambda: spool_losses(dataplane_flow(dp), pair_kafka),
            lambda: dp.proxy.mirroring if dp.proxy else False,
            lambda: dataplane_circuits(dp),
        )
    )
    return ControlContext(
        config=config,
        registry=registry,
        ready=lambda: dp.ready,
        get_mirroring=lambda: dp.proxy.mirroring if dp.proxy else False,
        set_mirroring=dp.set_mirroring,
        revisions=dp.revisions,
        set_revision=dp.set_revision,
    )


@dataclass
class Stack:
    """What ``embedded_stack`` runs, with the ports it got."""

    config: Config
    dataplane: DataPlane
    comparator: Comparator | None
    admin_runner: web.AppRunner
    sample: Callable[[], Sample]
    """The counters the operator's log watches."""

    @property
    def proxy_port(self) -> int:
        return self.dataplane.port

    @property
    def admin_port(self) -> int:
        return admin_port(self.admin_runner)


class ComparatorLabelWriter:
    """Labels from ``POST /v1/labels`` straight to the embedded comparator."""

    def __init__(self, comparator: Comparator) -> None:
        self.comparator = comparator

    async def write_labels(self, labels: Sequence[LabelRecord]) -> Sequence[str] | None:
        """Returns once the labels are committed (so a 202 survives a crash)."""
        return await self.comparator.commit_labels(labels)


async def verify_kafka_topics(config: Config, timeout_s: float = 10.0) -> None:
    """At start: pairs and labels must have the same partition count, or labels would not
    meet their pairs; that is a configuration error (``CopartitionError``). A broker that
    cannot be reached, or topics not created yet, are not: records spool until Kafka is
    there, and this is logged."""
    from shadowroute.stream.kafka import CopartitionError, check_copartitioned

    t = config.transport
    assert t.bootstrap is not None
    try:
        async with asyncio.timeout(timeout_s):
            await check_copartitioned(t.bootstrap, t.security, t.topic_prefix)
    except CopartitionError as exc:
        if "missing" in str(exc):
            log.warning("%s; records spool until they exist (`shadowroute topics create`)", exc)
            return
        raise
    except Exception as exc:
        log.warning("cannot check the Kafka topics now (%r); records spool until Kafka is up", exc)


def kafka_collector(sinks: list[KafkaSink]) -> KafkaSinkCollector:
    collector = KafkaSinkCollector(sinks)
    for s in sinks:
        s.latency_hook = collector.hook(s.topic)
    return collector


def control_plane(
    config: Config,
    ctx: ControlContext,
    scores: ScoresReader | None,
    labels: LabelWriter | None,
) -> ControlContext:
    """Add the score API, labels intake, scorecard and comparator metrics to a context."""
    routes = list(ctx.extra_routes)
    if scores is not None:
        routes += score_routes(scores)
        ctx.registry.register(ScoresCollector(scores))
    if labels is not None:
        routes += label_routes(labels, LabelRules.of(config))
    routes += scorecard_routes()
    ctx.extra_routes = routes
    return ctx


@contextlib.asynccontextmanager
async def embedded_stack(config: Config) -> AsyncIterator[Stack]:
    """The data plane, and with the embedded transport the comparator, plus the admin plane.

    Start order: comparator → data plane → admin. Stop order: readiness off, the data plane
    drains (in-flight requests, mirrors, the record queue into the channel), the comparator
    flushes and closes, the admin plane goes last. Ports 0 in the config pick free ports.
    """
    comparator: Comparator | None = None
    label_writer: LabelWriter | None = None
    extra: list[Sink] = []
    kafka_labels: KafkaSink | None = None
    if config.transport.kind == "embedded":
        comparator = Comparator(config)
        await comparator.start()
        extra.append(ChannelSink(comparator))
        label_writer = ComparatorLabelWriter(comparator)
    else:
        await verify_kafka_topics(config)
        kafka_labels = KafkaSink.for_labels(config.transport)
        await kafka_labels.start()
        label_writer = SinkLabelWriter(kafka_labels)
    try:
        sink, kafka = pair_sinks(config, extra)
        pair_kafka = list(kafka)
        if kafka_labels is not None:
            kafka.append(kafka_labels)
        dp = DataPlane(
            config,
            sink,
            sock=listen_socket(config.listen.host, config.listen.port, reuse_port=False),
        )
        await dp.start()
        try:
            ctx = control_plane(
                config,
                dataplane_context(config, dp, pair_kafka),
                comparator.reader if comparator is not None else None,
                label_writer,
            )
            if kafka:
                ctx.registry.register(kafka_collector(kafka))
            async with admin_server(ctx, config.admin.host, config.admin.port) as runner:
                sample = ops_sample(
                    lambda: dp.stats,
                    lambda: spool_losses(dataplane_flow(dp), pair_kafka),
                    lambda: dataplane_circuits(dp),
                )
                stack = Stack(config, dp, comparator, runner, sample)
                try:
                    yield stack
                finally:
                    await dp.stop()
        finally:
            await dp.stop()
    finally:
        if comparator is not None:
            await comparator.close()
        if kafka_labels is not None:
            await kafka_labels.close()


async def run_compare(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    group_instance_id: str | None = None,
    session_timeout_ms: int = 10_000,
) -> None:
    """``shadowroute compare``: the comparator group member, the scores follower and the API
    (on ``admin``), until ``stop`` is set (or SIGTERM/SIGINT when not given).

    Start order: the labels sink, the group member, the follower, then the admin plane. Stop
    order: the admin plane, then the member and the follower finish their batch (30 s at
    most) and stop; the labels sink and the history store go last.

    ``group_instance_id`` makes the member static: restarted under the same id it gets its
    partitions back at once, without waiting for its old session to time out."""
    from shadowroute.comparator.kafka_source import (
        ConsumerLagCollector,
        KafkaComparator,
        ScoresFollower,
    )

    comparator = KafkaComparator(
        config, group_instance_id=group_instance_id, session_timeout_ms=session_timeout_ms
    )
    history = Store(config.comparator.state_path)
    view = StateView()
    verdicts = Verdicts(config, view, history)
    follower = ScoresFollower(config, view, verdicts)
    reader = Reader(config, view, verdicts, history)
    registry = new_registry()
    registry.register(ConsumerLagCollector(comparator))
    # Labels posted to this API go to the labels topic, keyed to their pair's partition.
    labels_sink = KafkaSink.for_labels(config.transport)
    await labels_sink.start()
    try:
        tasks: list[asyncio.Task[None]] = []
        try:
            await comparator.start()
            await follower.start()
            ctx = control_plane(
                config,
                ControlContext(config=config, registry=registry, ready=lambda: True),
                reader,
                SinkLabelWriter(labels_sink),
            )
            async with admin_server(ctx, config.admin.host, config.admin.port):
                tasks = [
                    asyncio.create_task(comparator.run()),
                    asyncio.create_task(follower.run()),
                ]
                waiter = asyncio.create_task(stop.wait() if stop else wait_for_signal())
                done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                for t in done:
                    if t is not waiter and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        finally:
            comparator.stopping.set()
            follower.stopping.set()
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=30)  # a batch in progress ends
                for t in late:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            await follower.stop()
            await comparator.stop()
    finally:
        await labels_sink.close()
        history.close()


def freeze_startup_heap() -> None:
    """Put everything allocated during start-up (modules, the config, the routes) out of the
    cyclic collector's reach, once a process serves. Under load a full collection otherwise
    walks those objects every few seconds, stopping the event loop for 20-30 ms each time (the
    whole 64-connection p99 on the proxy benchmark). Objects made later are collected as
    usual; frozen ones are still freed by reference counting."""
    gc.collect()
    gc.freeze()


async def wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve(config: Config) -> None:
    """Run the stack until SIGTERM/SIGINT, then shut down gracefully."""
    async with embedded_stack(config) as stack:
        freeze_startup_heap()
        log.info(
            "proxy on %s:%d, admin/API on %s:%d (%s)",
            config.listen.host, stack.proxy_port, config.admin.host, stack.admin_port,
            build_info.describe(),
        )  # fmt: skip
        listen = f"{config.listen.host}:{stack.proxy_port}"
        admin = f"{config.admin.host}:{stack.admin_port}"
        async with operator_log(config, stack.sample, listen, admin):
            await wait_for_signal()
        log.info("shutting down: readiness off, draining")
