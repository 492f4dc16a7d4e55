"""The data plane's deadline buckets: timeouts fire on time (never early, at most a tick late),
ended exchanges are skipped, and one failing holder does not strand the others."""

from __future__ import annotations

import asyncio
import math

import pytest

from shadowroute.dataplane.deadlines import Deadlines

TICK = 0.01


class Holder:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, fired: list[str]) -> None:
        self.loop = loop
        self.name = name
        self.fired = fired
        self.deadline = math.inf
        self.timeout_key = 0
        self.due = math.inf  # the last deadline waited for
        self.fired_at: float | None = None

    def wait(self, deadlines: Deadlines, timeout_s: float) -> None:
        self.deadline = self.due = self.loop.time() + timeout_s
        deadlines.add(self)

    def on_time(self) -> bool:
        """Fired no earlier than due (less uvloop's 1 ms clock rounding), at most a tick
        late (plus scheduling slack on a busy machine)."""
        return (
            self.fired_at is not None
            and self.due - 0.001 <= self.fired_at <= self.due + TICK + 0.02
        )

    def end(self) -> None:
        self.deadline = math.inf

    def on_timeout(self) -> None:
        self.fired_at = self.loop.time()
        self.fired.append(self.name)
        self.deadline = math.inf


async def test_timeouts_fire_in_order_never_early_and_at_most_a_tick_late() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    fired: list[str] = []
    holders = [Holder(loop, f"h{t}", fired) for t in (0.08, 0.02, 0.05)]
    for h, t in zip(holders, (0.08, 0.02, 0.05), strict=True):
        h.wait(deadlines, t)  # the later bucket first: the timer must be re-armed earlier
    await asyncio.sleep(0.15)
    assert fired == ["h0.02", "h0.05", "h0.08"]
    assert all(h.on_time() for h in holders), [(h.due, h.fired_at) for h in holders]
    assert len(deadlines) == 0


async def test_an_exchange_that_ended_in_time_is_skipped() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    fired: list[str] = []
    done, slow = Holder(loop, "done", fired), Holder(loop, "slow", fired)
    done.wait(deadlines, 0.02)
    slow.wait(deadlines, 0.02)
    done.end()
    await asyncio.sleep(0.08)
    assert fired == ["slow"]


async def test_a_reused_holder_times_out_on_its_new_deadline_only() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    fired: list[str] = []
    h = Holder(loop, "h", fired)
    h.wait(deadlines, 0.02)
    h.end()
    h.wait(deadlines, 0.1)  # a pooled connection's next exchange
    await asyncio.sleep(0.05)
    assert fired == []  # the first bucket came due and found a later deadline
    await asyncio.sleep(0.1)
    assert fired == ["h"]
    assert h.on_time()


async def test_a_pooled_holder_keeps_one_entry_whatever_the_rate() -> None:
    """A connection that starts exchange after exchange (each ending in time) stays in one
    bucket; when it comes due the holder moves to its latest deadline's bucket."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    fired: list[str] = []
    h = Holder(loop, "h", fired)
    for _ in range(1000):
        h.wait(deadlines, 0.05)
        h.end()
        h.wait(deadlines, 0.05)
    assert len(deadlines) == 1
    await asyncio.sleep(0.02)
    h.end()
    h.wait(deadlines, 0.2)  # a long timeout after short ones: found when the old bucket is due
    assert len(deadlines) == 1
    await asyncio.sleep(0.1)
    assert fired == [] and len(deadlines) == 1  # moved on, not fired
    await asyncio.sleep(0.2)
    assert fired == ["h"] and h.on_time()
    assert len(deadlines) == 0


async def test_a_shorter_deadline_moves_the_holder_earlier() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    fired: list[str] = []
    h = Holder(loop, "h", fired)
    h.wait(deadlines, 0.3)
    h.end()
    h.wait(deadlines, 0.03)
    await asyncio.sleep(0.1)
    assert fired == ["h"] and h.on_time()
    await asyncio.sleep(0.25)
    assert fired == ["h"]  # the old, later bucket found nothing to do


async def test_a_failing_holder_does_not_strand_the_others() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        deadlines = Deadlines(loop, TICK)
        fired: list[str] = []

        class Broken(Holder):
            def on_timeout(self) -> None:
                raise RuntimeError("boom")

        broken, fine = Broken(loop, "broken", fired), Holder(loop, "fine", fired)
        broken.wait(deadlines, 0.02)
        fine.wait(deadlines, 0.02)
        await asyncio.sleep(0.08)
    finally:
        loop.set_exception_handler(None)
    assert fired == ["fine"]
    assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)


async def test_close_drops_pending_deadlines() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    fired: list[str] = []
    h = Holder(loop, "h", fired)
    h.wait(deadlines, 0.02)
    deadlines.close()
    h.wait(deadlines, 0.02)  # ignored once closed
    await asyncio.sleep(0.06)
    assert fired == []
    assert len(deadlines) == 0


def test_tick_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="tick_s"):
            Deadlines(loop, 0)
    finally:
        loop.close()
