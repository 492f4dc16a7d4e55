"""The data plane's deadline buckets: timeouts fire on time (never early, at most a tick late),
ended exchanges are skipped, and one failing holder does not strand the others.

The buckets run on a virtual clock (``VirtualLoop``: timers fire in order at their time, or as
late or as early as a test says), so "at most a tick late" is exact and no load on the machine
can move it; one test runs them on the real event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Any

import pytest

from shadowroute.dataplane.deadlines import Deadlines

TICK = 0.01


class VirtualLoop(asyncio.AbstractEventLoop):
    """What ``Deadlines`` uses of a loop (``time``, ``call_at``, the exception handler), on a
    clock that moves only in ``run_until``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self.errors: list[dict[str, Any]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def get_debug(self) -> bool:
        return False

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self)
        self._seq += 1
        heapq.heappush(self.timers, (when, self._seq, handle))
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def run_until(self, t: float, late: float = 0.0) -> None:
        """Run the timers due by ``t`` in order, each ``late`` seconds after its time (negative:
        early, as uvloop's millisecond clock may be); the clock ends at ``t``."""
        while self.timers and self.timers[0][0] + late <= t:
            when, _, handle = heapq.heappop(self.timers)
            if handle.cancelled():
                continue
            self.now = max(self.now, when + late)
            handle._run()
        self.now = max(self.now, t)

    def pending(self) -> int:
        return sum(not h.cancelled() for *_, h in self.timers)


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

    def lateness(self) -> float:
        assert self.fired_at is not None, f"{self.name} did not fire"
        return self.fired_at - self.due

    def on_time(self) -> bool:
        """Fired no earlier than due, at most a tick late (on the virtual clock, exactly)."""
        return 0.0 <= self.lateness() <= TICK + 1e-9

    def end(self) -> None:
        self.deadline = math.inf

    def on_timeout(self) -> None:
        self.fired_at = self.loop.time()
        self.fired.append(self.name)
        self.deadline = math.inf


@pytest.fixture()
def vloop() -> VirtualLoop:
    return VirtualLoop()


def test_timeouts_fire_in_order_never_early_and_at_most_a_tick_late(vloop: VirtualLoop) -> None:
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    times = (0.08, 0.02, 0.05, 0.0501, 0.031)
    holders = [Holder(vloop, f"h{t}", fired) for t in times]
    for h, t in zip(holders, times, strict=True):
        h.wait(deadlines, t)  # the later bucket first: the timer must be re-armed earlier
    vloop.run_until(vloop.now + 0.2)
    assert fired == ["h0.02", "h0.031", "h0.05", "h0.0501", "h0.08"]
    assert all(h.on_time() for h in holders), [h.lateness() for h in holders]
    assert len(deadlines) == 0 and vloop.pending() == 0


def test_a_timer_that_fires_early_fires_nothing_early(vloop: VirtualLoop) -> None:
    """uvloop keeps time in milliseconds, so a timer may run a little before its time: the
    bucket waits for its end and the timer is armed again."""
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    h = Holder(vloop, "h", fired)
    h.wait(deadlines, 0.02)
    vloop.run_until(h.due + TICK - 0.0006, late=-0.0005)
    assert fired == [] and vloop.pending() == 1
    vloop.run_until(h.due + 2 * TICK)
    assert fired == ["h"] and h.on_time()


def test_a_late_loop_fires_every_due_bucket_in_one_turn(vloop: VirtualLoop) -> None:
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    holders = [Holder(vloop, f"h{k}", fired) for k in range(5)]
    for k, h in enumerate(holders):
        h.wait(deadlines, 0.02 + k * TICK)
    vloop.run_until(vloop.now + 0.5, late=0.3)  # the loop was busy for 0.3 s
    assert fired == [f"h{k}" for k in range(5)]
    assert all(h.lateness() >= 0.0 for h in holders)
    assert len(deadlines) == 0


def test_an_exchange_that_ended_in_time_is_skipped(vloop: VirtualLoop) -> None:
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    done, slow = Holder(vloop, "done", fired), Holder(vloop, "slow", fired)
    done.wait(deadlines, 0.02)
    slow.wait(deadlines, 0.02)
    done.end()
    vloop.run_until(vloop.now + 0.08)
    assert fired == ["slow"] and slow.on_time()


def test_a_reused_holder_times_out_on_its_new_deadline_only(vloop: VirtualLoop) -> None:
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    h = Holder(vloop, "h", fired)
    h.wait(deadlines, 0.02)
    h.end()
    h.wait(deadlines, 0.1)  # a pooled connection's next exchange
    vloop.run_until(vloop.now + 0.05)
    assert fired == []  # the first bucket came due and found a later deadline
    vloop.run_until(vloop.now + 0.1)
    assert fired == ["h"]
    assert h.on_time()


def test_a_deadline_moved_just_past_its_bucket_waits_for_it(vloop: VirtualLoop) -> None:
    """The next exchange's deadline a little after the bucket the holder sits in: the bucket
    comes due first and must move the holder on, not fire it early."""
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    h = Holder(vloop, "h", fired)
    h.wait(deadlines, 0.02)
    bucket_end = h.timeout_key * TICK
    vloop.run_until(vloop.now + 0.01)
    h.end()
    h.wait(deadlines, bucket_end + 0.001 - vloop.now)  # 1 ms past the bucket's end
    vloop.run_until(bucket_end)
    assert fired == []
    vloop.run_until(bucket_end + 3 * TICK)
    assert fired == ["h"] and h.on_time(), h.lateness()


def test_a_pooled_holder_keeps_one_entry_whatever_the_rate(vloop: VirtualLoop) -> None:
    """A connection that starts exchange after exchange (each ending in time) stays in one
    bucket; when it comes due the holder moves to its latest deadline's bucket."""
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    h = Holder(vloop, "h", fired)
    for _ in range(1000):
        h.wait(deadlines, 0.05)
        h.end()
        h.wait(deadlines, 0.05)
    assert len(deadlines) == 1
    vloop.run_until(vloop.now + 0.02)
    h.end()
    h.wait(deadlines, 0.2)  # a long timeout after short ones: found when the old bucket is due
    assert len(deadlines) == 1
    vloop.run_until(vloop.now + 0.1)
    assert fired == [] and len(deadlines) == 1  # moved on, not fired
    vloop.run_until(vloop.now + 0.2)
    assert fired == ["h"] and h.on_time()
    assert len(deadlines) == 0


def test_a_shorter_deadline_moves_the_holder_earlier(vloop: VirtualLoop) -> None:
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    h = Holder(vloop, "h", fired)
    h.wait(deadlines, 0.3)
    h.end()
    h.wait(deadlines, 0.03)
    vloop.run_until(vloop.now + 0.1)
    assert fired == ["h"] and h.on_time()
    vloop.run_until(vloop.now + 0.25)
    assert fired == ["h"]  # the old, later bucket found nothing to do


def test_a_failing_holder_does_not_strand_the_others(vloop: VirtualLoop) -> None:
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []

    class Broken(Holder):
        def on_timeout(self) -> None:
            raise RuntimeError("boom")

    broken, fine = Broken(vloop, "broken", fired), Holder(vloop, "fine", fired)
    later = Holder(vloop, "later", fired)
    broken.wait(deadlines, 0.02)
    fine.wait(deadlines, 0.02)
    later.wait(deadlines, 0.05)
    vloop.run_until(vloop.now + 0.08)
    assert fired == ["fine", "later"]
    assert len(vloop.errors) == 1 and isinstance(vloop.errors[0]["exception"], RuntimeError)


def test_close_drops_pending_deadlines(vloop: VirtualLoop) -> None:
    deadlines = Deadlines(vloop, TICK)
    fired: list[str] = []
    h = Holder(vloop, "h", fired)
    h.wait(deadlines, 0.02)
    deadlines.close()
    h.wait(deadlines, 0.02)  # ignored once closed
    vloop.run_until(vloop.now + 0.06)
    assert fired == []
    assert len(deadlines) == 0 and vloop.pending() == 0


async def test_on_the_real_loop_timeouts_fire_in_order_and_never_early() -> None:
    """The same buckets on the running event loop (uvloop in the data plane's tests): order and
    "never early" hold; how late a busy machine runs them is not asserted here."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    fired: list[str] = []
    holders = [Holder(loop, f"h{t}", fired) for t in (0.08, 0.02, 0.05)]
    for h, t in zip(holders, (0.08, 0.02, 0.05), strict=True):
        h.wait(deadlines, t)
    for _ in range(200):  # at most 10 s
        if len(fired) == 3:
            break
        await asyncio.sleep(0.05)
    assert fired == ["h0.02", "h0.05", "h0.08"]
    # uvloop's clock is in milliseconds: a timer may run up to 1 ms before its time
    assert all(h.lateness() >= -0.001 for h in holders), [h.lateness() for h in holders]
    assert len(deadlines) == 0


def test_tick_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="tick_s"):
            Deadlines(loop, 0)
    finally:
        loop.close()
