"""Wiring for ``shadowroute serve``: the one place that knows data plane, streams, comparator
and API. Resources start in order and stop in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from shadowroute.api.app import ControlContext, create_app
from shadowroute.api.metrics import DataPlaneCollector, new_registry
from shadowroute.core.config import Config
from shadowroute.dataplane.server import DataPlane
from shadowroute.stream.jsonl import JsonlSink
from shadowroute.stream.sink import FanoutSink, Sink

log = logging.getLogger("shadowroute")


def pair_sinks(config: Config, extra: list[Sink] | None = None) -> Sink:
    """The sinks pair records go to, from the config."""
    sinks: list[Sink] = list(extra or [])
    if config.records.jsonl_path:
        sinks.append(
            JsonlSink(
                config.records.jsonl_path,
                max_bytes=config.records.jsonl_max_bytes,
                keep=config.records.jsonl_keep,
            )
        )
    if config.transport.kind == "kafka":
        from shadowroute.stream.kafka import KafkaSink

        sinks.append(KafkaSink.for_pairs(config.transport))
    return FanoutSink(sinks)


@contextlib.asynccontextmanager
async def admin_server(ctx: ControlContext, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(create_app(ctx), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    try:
        yield runner
    finally:
        await runner.cleanup()


def admin_port(runner: web.AppRunner) -> int:
    server = runner.addresses[0]
    return int(server[1])


@contextlib.asynccontextmanager
async def running_dataplane(config: Config, sink: Sink) -> AsyncIterator[DataPlane]:
    dp = DataPlane(config, sink)
    await dp.start()
    try:
        yield dp
    finally:
        await dp.stop()


def dataplane_context(config: Config, dp: DataPlane) -> ControlContext:
    registry = new_registry()

    def circuits() -> list[tuple[str, str, bool]]:
        if dp.proxy is None:
            return []
        return [(t.route, t.name, t.breaker.state != "closed") for t in dp.proxy.targets()]

    registry.register(
        DataPlaneCollector(
            lambda: dp.stats,
            dp.queue,
            lambda: dp.proxy.mirroring if dp.proxy else False,
            circuits,
        )
    )
    return ControlContext(
        config=config,
        registry=registry,
        ready=lambda: dp.ready,
        get_mirroring=lambda: dp.proxy.mirroring if dp.proxy else False,
        set_mirroring=dp.set_mirroring,
    )


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
    """Run the proxy and the admin plane until SIGTERM/SIGINT, then shut down gracefully."""
    sink = pair_sinks(config)
    async with running_dataplane(config, sink) as dp:
        ctx = dataplane_context(config, dp)
        async with admin_server(ctx, config.admin.host, config.admin.port):
            log.info("admin on %s:%d", config.admin.host, config.admin.port)
            await wait_for_signal()
            log.info("shutting down: readiness off, draining")
            await dp.stop()
