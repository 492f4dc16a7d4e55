"""The traffic generator: test-split rows sent through the proxy at a bounded rate, each with
its own ``x-request-id``; each request's true label goes to the label feeder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

from shadowroute.demo.models import FloatArray, IntArray
from shadowroute.demo.oip import infer_request
from shadowroute.demo.scenarios import Shift


@dataclass
class TrafficStats:
    planned: int = 0
    sent: int = 0
    ok: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    shifted: bool = False

    def p50_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else None


def is_shifted(shift: Shift | None, fraction_done: float) -> bool:
    return shift is not None and fraction_done >= shift.at


def shifted_row(row: FloatArray, shift: Shift | None, fraction_done: float) -> FloatArray:
    """The row as the client sends it at this point of the run."""
    if shift is None or not is_shifted(shift, fraction_done):
        return row
    out = row.copy()
    out[list(shift.features)] *= shift.factor
    return out


@dataclass(frozen=True)
class TrafficPlan:
    url: str
    """The proxy's infer URL."""
    rate: float
    duration_s: float
    run_tag: str
    """Prefix of request ids, unique per run."""
    max_in_flight: int = 64
    timeout_s: float = 10.0
    shift: Shift | None = None

    @property
    def total(self) -> int:
        return max(1, int(self.rate * self.duration_s))


OnLabel = Callable[[str, Any], None]


async def _one(
    session: aiohttp.ClientSession,
    plan: TrafficPlan,
    body: bytes,
    request_id: str,
    stats: TrafficStats,
) -> None:
    headers = {"Content-Type": "application/json", "x-request-id": request_id}
    t0 = time.perf_counter()
    try:
        async with session.post(
            plan.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(plan.timeout_s)
        ) as resp:
            await resp.read()
            good = resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        good = False
    if good:
        stats.ok += 1
        stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
    else:
        stats.failed += 1


Body = Callable[[int, float], tuple[bytes, Any]]
"""The ``i``-th request's body at ``fraction`` of the run, and its true label."""


def row_bodies(x: FloatArray, y: IntArray, shift: Shift | None) -> Body:
    """Open Inference requests for the rows of ``x``, in turn, shifted from ``shift.at``."""

    def body(i: int, fraction: float) -> tuple[bytes, Any]:
        row = shifted_row(x[i % len(x)], shift, fraction)
        return orjson.dumps(infer_request(row)), int(y[i % len(y)])

    return body


async def send_traffic(
    session: aiohttp.ClientSession,
    plan: TrafficPlan,
    body_for: Body,
    on_label: OnLabel,
    stats: TrafficStats,
) -> None:
    """Send ``plan.total`` requests (``body_for``), one every ``1/rate`` s, with at most
    ``max_in_flight`` outstanding; returns when all have completed."""
    stats.planned = plan.total
    slots = asyncio.Semaphore(plan.max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()

    async def fire(body: bytes, rid: str) -> None:
        try:
            await _one(session, plan, body, rid, stats)
        finally:
            slots.release()

    for i in range(plan.total):
        delay = start + i / plan.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        fraction = i / plan.total
        stats.shifted = is_shifted(plan.shift, fraction)
        rid = f"{plan.run_tag}-{i:06d}"
        body, label = body_for(i, fraction)
        task = asyncio.create_task(fire(body, rid), name=f"demo-request-{i}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        stats.sent += 1
        on_label(rid, label)
    if tasks:
        await asyncio.wait(tasks, timeout=plan.timeout_s + 1)
