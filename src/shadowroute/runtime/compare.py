"""``shadowroute compare``: the Kafka comparator's process, a consumer-group member that
scores pairs and labels, a follower of the scores topic, and the score API."""

from __future__ import annotations

import asyncio
import contextlib

from shadowroute.api.app import ControlContext
from shadowroute.api.labels import SinkLabelWriter
from shadowroute.api.metrics import new_registry
from shadowroute.comparator.kafka_source import (
    ConsumerLagCollector,
    KafkaComparator,
    ScoresFollower,
)
from shadowroute.comparator.reader import Reader, StateView, Verdicts
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config
from shadowroute.runtime.admin import admin_server, control_plane
from shadowroute.runtime.backend import kafka_labels
from shadowroute.runtime.events import event_service
from shadowroute.runtime.lifecycle import on_sighup, wait_for_signal
from shadowroute.runtime.reload import Loader, Reloader, Reloads, ReloadsCollector

BATCH_GRACE_S = 30.0
"""How long a batch in progress may take to finish once the process is asked to stop."""


async def run_compare(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    group_instance_id: str | None = None,
    session_timeout_ms: int = 10_000,
    reload_from: Loader | None = None,
) -> None:
    """``shadowroute compare``: the comparator group member, the scores follower and the API
    (on ``admin``), until ``stop`` is set (or SIGTERM/SIGINT when not given).

    Start order: the labels sink, the group member, the follower, then the admin plane. Stop
    order: the admin plane, then the member and the follower finish their batch (30 s at
    most) and stop; the labels sink and the history store go last.

    ``group_instance_id`` makes the member static: restarted under the same id it gets its
    partitions back at once, without waiting for its old session to time out.

    On SIGHUP the config is read again from ``reload_from`` (``runtime.reload``): the member
    scores the reloaded routes from its next batch, and the verdicts, the score API and the
    events follow them."""

    comparator = KafkaComparator(
        config, group_instance_id=group_instance_id, session_timeout_ms=session_timeout_ms
    )
    history = Store(config.comparator.state_path)
    view = StateView()
    verdicts = Verdicts(config, view, history)
    follower = ScoresFollower(config, view, verdicts)
    reader = Reader(config, view, verdicts, history)
    reader.assessor = comparator.assessor  # the judge's calls made by this member
    registry = new_registry()
    registry.register(ConsumerLagCollector(comparator))
    try:
        # Labels posted to this API go to the labels topic, keyed to their pair's partition.
        async with kafka_labels(config) as labels_sink:
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

                async def reload(new: Config) -> None:
                    await comparator.reconfigure(new)
                    verdicts.config = reader.config = ctx.config = new
                    await asyncio.to_thread(verdicts.refresh)

                reloads = Reloads()
                ctx.registry.register(ReloadsCollector(reloads))
                async with (
                    event_service(config, ctx, reader, None),
                    admin_server(ctx, config.admin.host, config.admin.port),
                ):
                    if reload_from is not None:
                        reloader = Reloader(reload_from, lambda: ctx.config, reload, reloads)
                        on_sighup(reloader.request)
                    tasks = [
                        asyncio.create_task(comparator.run()),
                        asyncio.create_task(follower.run()),
                    ]
                    await _until_stopped(stop, tasks)
            finally:
                comparator.stopping.set()
                follower.stopping.set()
                await _finish(tasks)
                await follower.stop()
                await comparator.stop()
    finally:
        history.close()


async def _until_stopped(stop: asyncio.Event | None, tasks: list[asyncio.Task[None]]) -> None:
    """Until ``stop`` (or a signal), or until a task ends; a task that failed raises here."""
    waiter = asyncio.create_task(stop.wait() if stop else wait_for_signal())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    for t in done:
        if t is not waiter and (exc := t.exception()) is not None:
            raise exc


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    """A batch in progress ends (``BATCH_GRACE_S`` at most); what is still running then is
    cancelled."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=BATCH_GRACE_S)
    for t in late:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
