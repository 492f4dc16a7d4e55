"""The Kafka sink's pure parts, without a broker or a running event loop: the linger buffer,
the hand-over's bookkeeping (what the producer took, what it did not, in order), the grouping
by partition, the in-flight registry and the failure episodes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from aiokafka.partitioner import DefaultPartitioner

from shadowroute.stream.delivery import Episode, InFlight
from shadowroute.stream.handover import HandOver, group_by_partition
from shadowroute.stream.linger import Linger

KeyValue = tuple[bytes, bytes]


def recs(n: int, start: int = 0, size: int = 10) -> list[KeyValue]:
    return [(f"k{i}".encode(), bytes(size)) for i in range(start, start + n)]


# --- linger ------------------------------------------------------------------------------------


def test_linger_keeps_records_in_order_and_counts_value_bytes() -> None:
    linger = Linger(flush_bytes=1000)
    assert not linger and len(linger) == 0
    linger.begin(5.0)
    assert not linger.add(recs(3, size=10))
    assert not linger.add(recs(2, start=3, size=7))
    assert len(linger) == 5 and linger.bytes == 44
    records, since = linger.take()
    assert records == recs(3, size=10) + recs(2, start=3, size=7)
    assert since == 5.0
    assert not linger and linger.bytes == 0 and linger.take() == ([], 5.0)


def test_linger_says_full_once_the_values_reach_flush_bytes() -> None:
    linger = Linger(flush_bytes=100)
    linger.begin(0.0)
    assert not linger.add(recs(9, size=10))  # 90 bytes
    assert linger.add(recs(1, start=9, size=10))  # exactly 100
    assert linger.add(recs(1, start=10, size=1))  # still full
    linger.take()
    linger.begin(1.0)
    assert linger.add(recs(1, size=500))  # one record over the bound at once
    assert linger.add([]) is True and len(linger) == 1


def test_linger_take_hands_over_its_list_and_starts_a_new_one() -> None:
    linger = Linger(flush_bytes=1 << 20)
    linger.begin(1.0)
    linger.add(recs(2))
    first, _ = linger.take()
    linger.begin(2.0)
    linger.add(recs(1, start=2))
    assert first == recs(2), "a taken batch is not changed by later writes"
    assert linger.take() == (recs(1, start=2), 2.0)


def test_linger_refuses_a_bound_that_is_never_reached_sensibly() -> None:
    with pytest.raises(ValueError, match="flush_bytes"):
        Linger(flush_bytes=0)


# --- grouping ----------------------------------------------------------------------------------


def test_groups_follow_the_java_partitioner_and_keep_write_order() -> None:
    batch = recs(200)
    groups = group_by_partition(batch, 6)
    oracle = DefaultPartitioner()
    all_parts = list(range(6))
    for partition, chunk in groups:
        assert all(oracle(k, all_parts, all_parts) == partition for k, _ in chunk)
        assert chunk == [kv for kv in batch if kv in chunk], "write order within a partition"
    assert sorted(kv for _, chunk in groups for kv in chunk) == sorted(batch)
    firsts = [chunk[0] for _, chunk in groups]
    assert firsts == sorted(firsts, key=batch.index), "groups in order of first appearance"


def test_one_partition_is_one_group() -> None:
    assert group_by_partition(recs(5), 1) == [(0, recs(5))]


# --- hand-over bookkeeping ---------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop only to make futures with: it never runs."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_a_handover_not_started_has_everything_unhanded() -> None:
    groups = [(0, recs(2)), (1, recs(3, start=2))]
    handing = HandOver(groups)
    assert not handing.finished
    assert handing.unhanded() == recs(5)
    assert handing.unhanded_groups() == groups


def test_a_handover_knows_what_was_taken_part_way(loop: asyncio.AbstractEventLoop) -> None:
    groups = [(0, recs(4)), (1, recs(3, start=4)), (2, recs(1, start=7))]
    handing = HandOver(groups)
    f1, f2 = loop.create_future(), loop.create_future()
    handing.took(f1, recs(4)[:2])
    assert handing.unhanded() == recs(8)[2:]
    handing.took(f2, recs(4)[2:])
    handing.next_group()
    assert handing.unhanded_groups() == groups[1:]
    assert handing.handed == [(f1, 0, recs(4)[:2]), (f2, 0, recs(4)[2:])]


def test_a_group_given_up_keeps_its_rest_and_the_next_group_comes(
    loop: asyncio.AbstractEventLoop,
) -> None:
    groups = [(0, recs(4)), (1, recs(3, start=4)), (2, recs(2, start=7))]
    handing = HandOver(groups)
    fut = loop.create_future()
    handing.took(fut, recs(4)[:1])
    handing.give_up_group(TimeoutError("no room"))
    # The second group is handed whole, the third not tried yet (e.g. cancelled mid-way).
    handing.took(loop.create_future(), recs(3, start=4))
    handing.next_group()
    assert [type(e) for e in handing.errors] == [TimeoutError]
    assert handing.failed == [(0, recs(4)[1:])]
    assert handing.unhanded_groups() == [(0, recs(4)[1:]), (2, recs(2, start=7))]
    assert handing.unhanded() == recs(4)[1:] + recs(2, start=7)
    handing.give_up_group(TimeoutError("deadline"))
    assert handing.finished
    assert handing.unhanded_groups() == [(0, recs(4)[1:]), (2, recs(2, start=7))]
    assert len(handing.errors) == 2


def test_a_group_given_up_after_all_its_records_leaves_nothing(
    loop: asyncio.AbstractEventLoop,
) -> None:
    handing = HandOver([(3, recs(2))])
    handing.took(loop.create_future(), recs(2))
    handing.give_up_group(TimeoutError())
    assert handing.finished and handing.failed == [] and handing.unhanded() == []


# --- in flight ---------------------------------------------------------------------------------


def test_in_flight_counts_records_and_gives_back_the_unresolved_in_order(
    loop: asyncio.AbstractEventLoop,
) -> None:
    inflight = InFlight()
    futs = [loop.create_future() for _ in range(3)]
    for i, fut in enumerate(futs):
        inflight.add(fut, recs(i + 1, start=10 * i), started=float(i), generation=7)
    assert inflight.records == 6
    futs[1].set_result(None)
    assert inflight.pop(futs[1]) == (recs(2, start=10), 1.0, 7)
    assert inflight.pop(futs[1]) is None
    assert inflight.unresolved() == [recs(1), recs(3, start=20)]
    assert inflight.records == 0
    assert inflight.pop(futs[0]) is None, "taken by unresolved: its resolution is ignored"


# --- failure episodes --------------------------------------------------------------------------


def test_an_episode_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("shadowroute.test.episode")
    caplog.set_level(logging.DEBUG, logger=log.name)
    episode = Episode("p.pairs", log)
    assert not episode.failing and episode.seconds(100.0) == 0.0
    episode.accepted(1.0, 0)  # no episode: nothing to say
    episode.failed("refused", 10.0)
    episode.failed("refused again", 11.0)
    episode.failed("and again", 12.0)
    assert episode.failing and episode.seconds(14.5) == 4.5
    episode.accepted(20.0, 123)
    assert not episode.failing and episode.seconds(30.0) == 0.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "failing (refused)" in warnings[0]
    assert "recovered after 10.0 s (123 bytes" in warnings[1]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 2
