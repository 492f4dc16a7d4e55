"""Delivery of events to one destination (a webhook, the Kafka events topic): a bounded
queue, one worker, retries with exponential backoff and jitter, bounded in attempts and time.

Nothing here runs on the proxy's path: ``offer`` never waits (a full queue drops the event
and counts it, ``queue_full``). Each event is delivered at least once: a failed attempt is
retried with the same event id (a webhook's ``webhook-id``, the receiver's idempotency key)
until ``max_attempts`` or ``give_up_after_s``; then it is given up and counted.

Failed attempts are counted by reason in ``retries`` (``http_5xx``, ``http_429``,
``http_4xx``, ``http_3xx``, ``timeout``, ``connect``, ``kafka``, ``error``); events given up
in ``failed`` (``queue_full``, ``rejected``: a 4xx other than 408/429, not retried,
``attempts_exhausted``, ``expired``, ``shutdown``: still queued when the grace ran out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shadowroute.events.cloudevents import CloudEvent, rfc3339

__all__ = [
    "DeliveryError",
    "DeliveryStats",
    "Destination",
    "RetryPolicy",
    "Worker",
    "backoff_delay",
]

log = logging.getLogger("shadowroute.events")

FAILURE_REASONS = ("queue_full", "rejected", "attempts_exhausted", "expired", "shutdown")
"""Why an event was given up for a destination (``failed``)."""


class DeliveryError(Exception):
    """One attempt failed: ``reason`` (a short token), whether to try again, and the
    receiver's ``Retry-After`` in seconds when it gave one."""

    def __init__(
        self, reason: str, detail: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    give_up_after_s: float = 900.0


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """The pause after failed attempt ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)``
    capped at ``cap``, the upper half of it drawn at random ("equal jitter": never less than
    half, so retries of many events do not bunch up and never spin).

    >>> [backoff_delay(a, 1.0, 10.0, lambda: 1.0) for a in (1, 2, 3, 4, 5)]
    [1.0, 2.0, 4.0, 8.0, 10.0]
    >>> backoff_delay(3, 1.0, 10.0, lambda: 0.0)
    2.0
    """
    d = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return d / 2.0 + rand() * d / 2.0


@dataclass
class DeliveryStats:
    """What happened to one destination's deliveries (``GET /v1/events/deliveries``)."""

    name: str
    kind: str
    target: str
    """The URL (query left out) or the topic."""
    delivered: int = 0
    attempts: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None
    last_event_id: str | None = None

    def to_json(self, queued: int, capacity: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "queued": queued,
            "queue_size": capacity,
            "delivered": self.delivered,
            "attempts": self.attempts,
            "failed": sum(self.failed.values()),
            "failed_by_reason": dict(sorted(self.failed.items())),
            "retries_by_reason": dict(sorted(self.retries.items())),
            "last_error": self.last_error,
            "last_error_at": None if self.last_error_at is None else rfc3339(self.last_error_at),
            "last_delivered_at": (
                None if self.last_delivered_at is None else rfc3339(self.last_delivered_at)
            ),
            "last_event_id": self.last_event_id,
        }


class Destination:
    """Where events go; subclasses send one event (raising ``DeliveryError``)."""

    kind = "destination"

    def __init__(self, name: str, target: str, policy: RetryPolicy) -> None:
        self.name = name
        self.policy = policy
        self.stats = DeliveryStats(name, self.kind, target)

    def accepts(self, event: CloudEvent) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def send(self, event: CloudEvent) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class Worker:
    """A destination's queue and the task that empties it, one event at a time (so one
    subject's events arrive in order)."""

    def __init__(
        self,
        dest: Destination,
        queue_size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.dest = dest
        self.queue_size = queue_size
        self.queue: asyncio.Queue[tuple[CloudEvent, float]] = asyncio.Queue(queue_size)
        self.clock = clock
        self.wall = wall
        self._task: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        """Set at close: nothing is tried after it."""
        self._wake = asyncio.Event()

    @property
    def stats(self) -> DeliveryStats:
        return self.dest.stats

    def offer(self, event: CloudEvent) -> bool:
        """Queue ``event`` if the destination takes it; never waits. False: dropped."""
        if not self.dest.accepts(event):
            return True
        if self._deadline is not None:
            self._fail("shutdown", "the process is stopping")
            return False
        try:
            self.queue.put_nowait((event, self.clock()))
        except asyncio.QueueFull:
            self._fail("queue_full", f"queue full ({self.queue_size} events waiting)")
            return False
        return True

    def _fail(self, reason: str, detail: str) -> None:
        self.stats.failed[reason] += 1
        self.stats.last_error = detail
        self.stats.last_error_at = self.wall()

    async def start(self) -> None:
        await self.dest.start()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"events-{self.dest.name}"
        )

    async def _run(self) -> None:
        while True:
            event, queued = await self.queue.get()
            try:
                await self._deliver(event, queued)
            except asyncio.CancelledError:  # close: the grace ran out during an attempt
                self._fail("shutdown", "the process stopped during a delivery attempt")
                raise
            except Exception:  # a bug must not stop the worker
                log.exception("event delivery to %s failed", self.dest.name)
                self._fail("attempts_exhausted", "internal error")
            finally:
                self.queue.task_done()

    async def _deliver(self, event: CloudEvent, queued: float) -> None:
        p = self.dest.policy
        s = self.stats
        attempt = 0
        while True:
            if self._deadline is not None and self.clock() >= self._deadline:
                self._fail("shutdown", "the process stopped before the event was delivered")
                return
            attempt += 1
            s.attempts += 1
            try:
                await self.dest.send(event)
            except DeliveryError as exc:
                s.retries[exc.reason] += 1
                detail = f"{exc.reason}: {exc}"
                s.last_error, s.last_error_at = detail, self.wall()
                if not exc.retryable:
                    self._fail("rejected", detail)
                    log.warning("event %s to %s refused: %s", event["id"], self.dest.name, detail)
                    return
                if attempt >= p.max_attempts:
                    self._fail("attempts_exhausted", f"{attempt} attempts, last {detail}")
                    log.warning("event %s to %s given up: %s", event["id"], self.dest.name, detail)
                    return
                delay = backoff_delay(attempt, p.backoff_s, p.max_backoff_s)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, p.max_backoff_s))
                if self.clock() + delay - queued > p.give_up_after_s:
                    self._fail("expired", f"not delivered within {p.give_up_after_s:g} s: {detail}")
                    return
                if not await self._pause(delay):
                    self._fail("shutdown", f"the process stopped before a retry: {detail}")
                    return
                continue
            s.delivered += 1
            s.last_delivered_at = self.wall()
            s.last_event_id = event["id"]
            return

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` before a retry; False when the retry would come after the
        shutdown deadline (the process is stopping: give the event up now)."""
        resume = self.clock() + delay
        if self._deadline is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        if self._deadline is not None:
            if resume > self._deadline:
                return False
            await asyncio.sleep(max(0.0, resume - self.clock()))
        return True

    async def close(self, grace_s: float) -> None:
        """Deliver what is queued within ``grace_s``; what is left then is given up
        (``shutdown``)."""
        self._deadline = self.clock() + grace_s
        self._wake.set()  # a retry pause ends now; the next attempt sees the deadline
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), grace_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self.queue.empty():
            self.queue.get_nowait()
            self._fail("shutdown", "the process stopped before the event was delivered")
        await self.dest.close()
