"""Ground truth arriving late: labels are scheduled with a random delay and POSTed to
``/v1/labels`` as JSON lines, in small batches, as an outcome system would."""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from dataclasses import dataclass

import aiohttp
import orjson


@dataclass
class FeederStats:
    scheduled: int = 0
    posted: int = 0
    accepted: int = 0
    failed: int = 0


class LabelFeeder:
    """Holds labels until they are due, then posts them.

    Usage::

        feeder = LabelFeeder(session, "http://127.0.0.1:9090", random.Random(0))
        feeder.schedule("req-1", 1)          # due 0.5–3 s from now
        await feeder.run(stop)               # posts until ``stop`` is set and all are sent
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        rng: random.Random,
        delay_s: tuple[float, float] = (0.5, 3.0),
        tick_s: float = 0.2,
        token: str | None = None,
    ) -> None:
        self.session = session
        self.url = api_url.rstrip("/") + "/v1/labels"
        self.rng = rng
        self.delay_s = delay_s
        self.tick_s = tick_s
        self.headers = {"Content-Type": "application/x-ndjson"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.stats = FeederStats()
        self._heap: list[tuple[float, str, int | str]] = []

    def schedule(self, request_id: str, label: int | str, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        due = t + self.rng.uniform(*self.delay_s)
        heapq.heappush(self._heap, (due, request_id, label))
        self.stats.scheduled += 1

    @property
    def pending(self) -> int:
        return len(self._heap)

    def due(self, now: float) -> list[tuple[str, int | str]]:
        out: list[tuple[str, int | str]] = []
        while self._heap and self._heap[0][0] <= now:
            _, rid, label = heapq.heappop(self._heap)
            out.append((rid, label))
        return out

    @staticmethod
    def encode(batch: list[tuple[str, int | str]], ts_ms: int) -> bytes:
        return b"".join(
            orjson.dumps({"v": 1, "id": rid, "label": label, "ts": ts_ms}) + b"\n"
            for rid, label in batch
        )

    async def post(self, batch: list[tuple[str, int | str]]) -> None:
        if not batch:
            return
        body = self.encode(batch, int(time.time() * 1000))
        self.stats.posted += len(batch)
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as resp:
                doc = await resp.json(content_type=None)
                accepted = int(doc.get("accepted", 0)) if isinstance(doc, dict) else 0
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.stats.failed += len(batch)
            return
        self.stats.accepted += accepted
        self.stats.failed += len(batch) - accepted

    async def run(self, stop: asyncio.Event, max_s: float = 3600.0) -> None:
        """Post due labels every tick; once ``stop`` is set, finish the pending ones and return
        (the latest label is due at most ``delay_s[1]`` after the last request)."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            await self.post(self.due(time.monotonic()))
            if stop.is_set() and not self._heap:
                return
            await asyncio.sleep(self.tick_s)
