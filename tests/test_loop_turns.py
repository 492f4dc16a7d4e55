"""Work many connections want at once takes turns (playbooks, without sockets): bulk reads,
and closing the connections clients ended.

Given a readable socket, the event loop (libuv) reads it again and again in one wakeup, up to
32 reads of 256 kB: one upload, or one big answer from production or a candidate, then holds
every other connection of the worker for milliseconds. After a read of ``BULK_READ`` bytes or
more the data plane stops reading that connection until the loop has had a turn, and reads
it again then, unless it was paused meanwhile for a reason of its own (backpressure). And
connections whose clients ended them with nothing pending are closed ``CLOSES_PER_TURN`` per
turn, not all in the turn their ends were read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from playbook import Playbook, Recording, one_iteration, split_request
from proxyutil import make_config
from shadowroute.dataplane.proxy import ClientConnection
from shadowroute.dataplane.turns import CLOSES_PER_TURN, Turns
from shadowroute.dataplane.upstream import BULK_READ

CONFIG = make_config("http://127.0.0.1:9000")


@pytest.fixture
def pb() -> Iterator[Playbook]:
    p = Playbook(CONFIG)
    yield p
    p.close()


def upload_head(length: int) -> bytes:
    return b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % length


def test_a_long_client_read_gives_the_loop_a_turn_then_reads_on(pb: Playbook) -> None:
    body = b"u" * (3 * BULK_READ)
    pb.client_sends(upload_head(len(body)) + body[:BULK_READ])
    assert pb.client_t.paused  # until the loop served the others
    pb.turn()
    assert not pb.client_t.paused
    pb.client_sends(body[BULK_READ:])
    pb.turn()
    pb.production_sends(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    _, _, sent = split_request(bytes(pb.upstream().sent))
    assert sent == body  # every byte forwarded, in order
    assert pb.client_t.sent.startswith(b"HTTP/1.1 200 OK") and not pb.client_t.paused


def test_short_reads_never_pause(pb: Playbook) -> None:
    body = b"u" * (BULK_READ - 1)
    pb.client_sends(upload_head(len(body)))
    pb.client_sends(body)
    assert not pb.client_t.paused
    pb.production_sends(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert not pb.upstream().paused


def test_a_client_paused_for_backpressure_stays_paused_after_its_turn(pb: Playbook) -> None:
    """The turn ends; the proxy's own reason to pause (pipelined requests over the bound)
    does not: only that reason's end resumes it."""
    get = b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"
    pipelined = get * 34
    pb.client_sends(pipelined + b"x-pad: " + b"p" * BULK_READ)
    assert pb.client_t.paused
    pb.turn()
    assert pb.client_t.paused and pb.client.paused


def test_a_long_answer_from_production_takes_turns(pb: Playbook) -> None:
    pb.client_sends(b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n")
    answer = b"a" * (2 * BULK_READ)
    pb.production_sends(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(answer))
    pb.production_sends(answer[:BULK_READ])
    assert pb.upstream().paused
    pb.turn()
    assert not pb.upstream().paused
    pb.production_sends(answer[BULK_READ:])
    pb.turn()
    assert pb.client_t.sent.endswith(answer)
    assert not pb.upstream().paused and not pb.upstream().closed  # pooled, reading


def test_production_paused_for_a_slow_client_stays_paused_after_its_turn(pb: Playbook) -> None:
    pb.client_sends(b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n")
    pb.production_sends(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (4 * BULK_READ))
    pb.production_sends(b"a" * BULK_READ)
    pb.client.pause_writing()  # the client's socket is full: stop reading production
    pb.turn()
    assert pb.upstream().paused
    pb.client.resume_writing()
    assert not pb.upstream().paused


def test_long_readers_read_again_one_per_turn(pb: Playbook) -> None:
    """Three uploads at once: after their long reads, one of them reads again per turn of the
    loop, oldest first, so a turn copies one chunk of theirs, not three."""
    clients = [(pb.client, pb.client_t), pb.another_client(), pb.another_client()]
    body = b"u" * (4 * BULK_READ)
    for conn, _ in clients:
        conn.data_received(upload_head(len(body)) + body[:BULK_READ])
    assert [t.paused for _, t in clients] == [True, True, True]
    assert len(pb.proxy.turns) == 3
    for i in range(3):
        pb.iteration()
        assert [t.paused for _, t in clients] == [j > i for j in range(3)]
    assert len(pb.proxy.turns) == 0
    # each reads its next chunk; they queue again, in the order they read
    for conn, _ in reversed(clients):
        conn.data_received(body[BULK_READ : 2 * BULK_READ])
    pb.iteration()
    assert [t.paused for _, t in clients] == [True, True, False]


def test_a_long_reader_closed_while_waiting_gives_its_turn_away(pb: Playbook) -> None:
    other, other_t = pb.another_client()
    body = b"u" * (2 * BULK_READ)
    pb.client_sends(upload_head(len(body)) + body[:BULK_READ])
    other.data_received(upload_head(len(body)) + body[:BULK_READ])
    pb.client.connection_lost(None)  # the first uploader went away while waiting
    pb.iteration()  # its turn: nothing to resume
    pb.iteration()
    assert not other_t.paused


def test_bulk_turns_run_one_waiter_per_turn_oldest_first() -> None:
    loop = asyncio.new_event_loop()
    try:
        turns = Turns(loop)
        ran: list[str] = []
        for name in "abc":
            turns.wait(lambda name=name: ran.append(name))
        for expected in ("a", "ab", "abc", "abc"):
            one_iteration(loop)
            assert "".join(ran) == expected
        turns.wait(lambda: ran.append("d"))  # idle again: the next turn runs it
        one_iteration(loop)
        assert "".join(ran) == "abcd" and len(turns) == 0
    finally:
        loop.close()


def test_turns_run_up_to_per_turn_callbacks_a_turn() -> None:
    loop = asyncio.new_event_loop()
    try:
        turns = Turns(loop, per_turn=3)
        ran: list[int] = []
        for i in range(7):
            turns.wait(lambda i=i: ran.append(i))
        for expected in (3, 6, 7, 7):
            one_iteration(loop)
            assert ran == list(range(expected))
        assert len(turns) == 0
        with pytest.raises(ValueError, match="at least 1"):
            Turns(loop, per_turn=0)
    finally:
        loop.close()


def test_clients_ended_together_are_closed_a_few_per_turn(pb: Playbook) -> None:
    n = 2 * CLOSES_PER_TURN + 3
    clients = []
    for _ in range(n):
        conn, t = ClientConnection(pb.proxy), Recording()
        conn.connection_made(t)
        clients.append((conn, t))
    for conn, _ in clients:
        assert conn.eof_received() is True  # kept open for now: closed at its turn
    assert not any(t.closed for _, t in clients)
    for expected in (CLOSES_PER_TURN, 2 * CLOSES_PER_TURN, n, n):
        pb.iteration()
        assert sum(t.closed for _, t in clients) == expected
    assert [t.closed for _, t in clients] == [True] * n  # oldest first, none left behind


def test_a_half_closed_client_with_a_request_pending_is_answered_first(pb: Playbook) -> None:
    pb.client_sends(b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n")
    assert pb.client.eof_received() is True
    pb.iteration()
    assert not pb.client_t.closed and len(pb.proxy.closes) == 0  # not queued: it waits
    pb.production_sends(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert pb.client_t.sent.startswith(b"HTTP/1.1 200 OK") and pb.client_t.ended


def test_a_connection_closed_while_waiting_for_its_turn_is_left_alone(pb: Playbook) -> None:
    assert pb.client.eof_received() is True
    pb.client_t.close()  # e.g. the sweep closed it first
    pb.client.connection_lost(None)
    pb.iteration()  # its turn: nothing to close
    assert len(pb.proxy.closes) == 0


def test_idle_pooled_connections_the_server_ended_are_closed_a_few_per_turn(pb: Playbook) -> None:
    """A model server restarting ends every pooled connection at once: each leaves the pool
    (never handed out again) and is counted at once, and is closed at its turn."""
    for _ in range(CLOSES_PER_TURN + 2):
        pb.ready_upstream()
    ups = list(pb.upstreams)
    for conn, _ in ups:
        assert conn.eof_received() is True
        assert not conn.usable
    assert pb.pool.events[(*pb.pool.labels, "idle_closed_by_server")] == len(ups)
    assert not any(t.closed for _, t in ups)
    pb.iteration()
    assert sum(t.closed for _, t in ups) == CLOSES_PER_TURN
    pb.iteration()
    assert all(t.closed for _, t in ups)
    assert pb.pool.events[(*pb.pool.labels, "idle_closed_by_server")] == len(ups)  # once each
    # the next request goes to a live connection, none of those
    pb.ready_upstream()
    pb.client_sends(b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n")
    assert all(t.sent == b"" for _, t in ups)
    assert pb.upstream().sent.startswith(b"GET /p HTTP/1.1")
