"""Events in a process that can see changes of state: the detector over its read side (the
scores reader, the data plane's circuits), the bus to Kafka and the webhooks, and the
deliveries endpoint and metrics on its admin plane. Entered before the admin server starts
(it adds its route), left after it stops: pending deliveries get ``events.shutdown_grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import aiohttp

from shadowroute.api.app import ControlContext
from shadowroute.api.events import EventsCollector, event_routes
from shadowroute.core.config import Config
from shadowroute.events.bus import EventBus, Subscriber, watch_loop
from shadowroute.events.delivery import Destination
from shadowroute.events.detect import Detector
from shadowroute.events.kafka import KafkaDestination
from shadowroute.events.source import DecisionReader, snapshot_source
from shadowroute.events.webhook import WebhookDestination
from shadowroute.registry.verdicts import registry_writer


@contextlib.asynccontextmanager
async def event_service(
    config: Config,
    ctx: ControlContext,
    scores: DecisionReader | None,
    circuits: Callable[[], Iterable[tuple[str, str, bool]]] | None,
    subscribers: Sequence[Subscriber] = (),
) -> AsyncIterator[EventBus | None]:
    """The events of this process for the block's length. ``scores``: verdicts, drift,
    production and labels (a process with the reader); ``circuits``: the candidates' breakers
    (a process with the data plane).

    Subscribers get every event: ``subscribers``, and with a ``registry`` section in a
    process with the reader, the registry's verdict writer (docs/registry.md). With
    ``events.enabled`` false there are no destinations; the detector still runs when the
    registry needs its verdict changes, else there is no bus (None)."""
    e = config.events
    writes_registry = config.registry is not None and scores is not None
    if not e.enabled and not writes_registry:
        yield None
        return
    async with contextlib.AsyncExitStack() as stack:
        subscribers = list(subscribers)
        if writes_registry:
            writer = await stack.enter_async_context(registry_writer(config, ctx.registry))
            if writer is not None:
                subscribers.append(writer.on_event)
        dests: list[Destination] = []
        if e.enabled and config.transport.kind == "kafka" and e.kafka:
            dests.append(KafkaDestination(config.transport))
        if e.enabled and e.webhooks:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit_per_host=4), trust_env=False
            )
            stack.push_async_callback(session.close)
            for name, hook in zip(e.webhook_names(), e.webhooks, strict=True):
                dests.append(WebhookDestination(name, hook, session))
        bus = EventBus(dests, queue_size=e.queue_size, subscribers=subscribers)
        ctx.extra_routes = [*ctx.extra_routes, *event_routes(bus)]
        ctx.registry.register(EventsCollector(bus))
        await bus.start()
        stack.push_async_callback(bus.close, e.shutdown_grace_s)
        detector = Detector(
            instance=e.instance or socket.gethostname(),
            labels_stale_after_s=e.labels_stale_after_s,
            psi_alert={r.name: r.drift.psi_alert for r in config.routes},
        )
        snapshot = snapshot_source(lambda: ctx.config, scores, circuits)
        task: asyncio.Task[None] | None = None
        if scores is not None or circuits is not None:
            task = asyncio.get_running_loop().create_task(
                watch_loop(snapshot, detector, bus, interval_s=e.interval_s), name="events-watch"
            )
        try:
            yield bus
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
