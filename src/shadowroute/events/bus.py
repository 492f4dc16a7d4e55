"""The event bus of a process: events from the detector go to every destination's queue
(Kafka, webhooks) and to the subscribers (in-process consumers such as the model registry's
``on_event``); ``watch_loop`` feeds the detector from the read side every ``interval_s``.

Subscribers are ``async def on_event(event: Mapping[str, Any]) -> None`` coroutines, called
with each event document (a ``CloudEvent``) in a task of their own, never waited for by
the detector; one that raises is logged and counted (``subscriber_failures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from shadowroute.events.cloudevents import CloudEvent
from shadowroute.events.delivery import Destination, Worker
from shadowroute.events.detect import Detector, Snapshot

__all__ = ["EventBus", "Subscriber", "watch_loop"]

log = logging.getLogger("shadowroute.events")

Subscriber = Callable[[Mapping[str, Any]], Awaitable[None]]
"""An in-process consumer of events: called with each event document."""


class EventBus:
    """Fans each event out to the destinations' queues and to the subscribers; never waits
    (``publish`` is synchronous)."""

    def __init__(
        self,
        destinations: Sequence[Destination] = (),
        *,
        queue_size: int = 1000,
        subscribers: Sequence[Subscriber] = (),
    ) -> None:
        self.workers = [Worker(d, queue_size) for d in destinations]
        self.subscribers: list[Subscriber] = list(subscribers)
        """Append an ``on_event`` coroutine function here to receive every event."""
        self.emitted: Counter[str] = Counter()
        """Events published, by type."""
        self.subscriber_failures = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def publish(self, event: CloudEvent) -> None:
        self.emitted[event["type"]] += 1
        log.debug("event %s %s (%s)", event["type"], event["subject"], event["id"])
        for w in self.workers:
            w.offer(event)
        for sub in self.subscribers:
            task = asyncio.get_running_loop().create_task(self._call(sub, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, sub: Subscriber, event: CloudEvent) -> None:
        try:
            await sub(event)
        except Exception:
            self.subscriber_failures += 1
            log.exception("event subscriber %r failed on %s", sub, event["id"])

    async def start(self) -> None:
        for w in self.workers:
            await w.start()

    async def close(self, grace_s: float) -> None:
        """Pending deliveries and subscriber calls get ``grace_s`` together; what is left
        then is given up and counted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        await asyncio.gather(*(w.close(grace_s) for w in self.workers))
        if self._tasks:
            left = max(0.0, deadline - loop.time())
            _, late = await asyncio.wait(set(self._tasks), timeout=left)
            for t in late:
                t.cancel()
                self.subscriber_failures += 1
            for t in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    def deliveries(self) -> dict[str, Any]:
        """Every destination's counts and last error (``GET /v1/events/deliveries``)."""
        return {
            "emitted": dict(sorted(self.emitted.items())),
            "subscriber_failures": self.subscriber_failures,
            "destinations": [w.stats.to_json(w.queue.qsize(), w.queue_size) for w in self.workers],
        }


async def watch_loop(
    snapshot: Callable[[], Snapshot],
    detector: Detector,
    bus: EventBus,
    *,
    interval_s: float,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> None:
    """Publish what ``detector`` finds in ``snapshot()`` every ``interval_s``, until
    cancelled. A snapshot that cannot be taken (or read) is logged and the tick skipped."""
    while True:
        try:
            events = detector.observe(snapshot(), clock(), wall())
        except Exception:
            log.exception("cannot read the state for events; trying again")
        else:
            for event in events:
                bus.publish(event)
        await asyncio.sleep(interval_s)
