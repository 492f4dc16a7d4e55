"""Framing playbooks, without sockets: raw client bytes in, the bytes production is sent (or
the refusal the client gets) out; raw production bytes in, the bytes the client gets out.
The same cases run over real sockets in tests/reliability/test_rel_framing.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from playbook import Playbook, split_request
from proxyutil import make_config

CONFIG = make_config("http://127.0.0.1:9000")
HEAD = b"POST /p HTTP/1.1\r\nHost: h\r\nx-request-id: pb-1\r\n"


@pytest.fixture
def pb() -> Iterator[Playbook]:
    p = Playbook(CONFIG)
    yield p
    p.close()


# --- client bytes in: upstream bytes or a refusal out -------------------------------------------

FORWARDED = {
    "content_length": (
        HEAD + b"Content-Length: 3\r\n\r\nabc",
        {b"content-length": b"3"},
        b"abc",
    ),
    "chunked_rechunked": (
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: t\r\n\r\n",
        {b"transfer-encoding": b"chunked"},
        b"3\r\nabc\r\n0\r\n\r\n",  # chunk extensions and trailers are hop-by-hop
    ),
    "connection_cannot_drop_length": (
        HEAD + b"Connection: content-length, x-a\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi",
        {b"content-length": b"2"},
        b"hi",
    ),
}


@pytest.mark.parametrize("case", list(FORWARDED))
def test_forwarded_request_framing(pb: Playbook, case: str) -> None:
    data, headers, body = FORWARDED[case]
    pb.client_sends(data)
    line, got, rest = split_request(pb.upstream().take())
    assert line == b"POST /p HTTP/1.1"
    for name, value in headers.items():
        assert got[name] == value
    assert b"x-a" not in got and got[b"x-request-id"] == b"pb-1"
    assert rest == body
    assert pb.client_t.sent == b""  # nothing for the client until production answers


REFUSED = {
    "length_2_63": HEAD + b"Content-Length: 9223372036854775808\r\n\r\nabc",
    "length_2_64_minus_1": HEAD + b"Content-Length: 18446744073709551615\r\n\r\nabc",
    "length_2_64": HEAD + b"Content-Length: 18446744073709551616\r\n\r\nabc",
    "length_not_digits": HEAD + b"Content-Length: 0x10\r\n\r\nabc",
    "two_lengths": HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "length_and_chunked": HEAD
    + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "chunked_not_last": HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "space_before_colon": HEAD + b"Content-Length : 3\r\n\r\nabc",
    "bad_chunk_in_first_read": HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_before_anything_complete_reaches_production(pb: Playbook, case: str) -> None:
    pb.client_sends(REFUSED[case])
    out = bytes(pb.client_t.sent)
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert b"connection: close" in out and pb.client_t.ended
    sent = bytes(pb.upstream().sent)
    # Production got nothing, or a body cut short on a connection that is now closed.
    assert sent == b"" or (pb.upstream().closed and not sent.endswith(b"0\r\n\r\n"))


def test_malformed_chunk_after_production_got_the_head(pb: Playbook) -> None:
    pb.client_sends(HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert pb.upstream().sent.endswith(b"5\r\nhello\r\n")
    pb.client_sends(b"zz\r\nmore\r\n0\r\n\r\n")
    assert pb.client_t.sent.startswith(b"HTTP/1.1 400 ") and pb.client_t.ended
    assert pb.upstream().closed and pb.upstream().sent.endswith(b"5\r\nhello\r\n")
    assert pb.stats.framing == {"client_aborted": 1}


# --- production bytes in: client bytes out --------------------------------------------------------

OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
INJECTED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED"
ANSWERS = {
    "length_then_injected": (OK_HEAD + b"first" + INJECTED, b"first", "extra_bytes"),
    "chunked_then_injected": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n" + INJECTED,
        b"5\r\nfirst\r\n0\r\n\r\n",
        "extra_bytes",
    ),
    "no_content_then_injected": (b"HTTP/1.1 204 No Content\r\n\r\n" + INJECTED, b"", "extra_bytes"),
    "exact": (OK_HEAD + b"first", b"first", None),
}


@pytest.mark.parametrize("case", list(ANSWERS))
def test_nothing_after_the_response_reaches_the_client(pb: Playbook, case: str) -> None:
    answer, body, counted = ANSWERS[case]
    pb.client_sends(HEAD + b"Content-Length: 1\r\n\r\nx")
    pb.upstream().take()
    pb.production_sends(answer)
    out = bytes(pb.client_t.sent)
    head, _, got = out.partition(b"\r\n\r\n")
    assert got == body and b"INJECTED" not in out
    assert b"\r\nx-request-id: pb-1" in head
    assert pb.upstream().closed == (counted is not None)
    assert pb.stats.framing == ({counted: 1} if counted else {})
    assert not pb.client_t.ended  # the client's connection is fine


def test_bytes_after_the_response_split_across_reads(pb: Playbook) -> None:
    pb.client_sends(HEAD + b"Content-Length: 1\r\n\r\nx")
    pb.production_sends(OK_HEAD + b"fir")
    pb.production_sends(b"st" + INJECTED)
    assert pb.client_t.sent.endswith(b"\r\n\r\nfirst") and pb.upstream().closed


def test_connection_header_keeps_framing_and_the_request_id(pb: Playbook) -> None:
    pb.client_sends(HEAD + b"Content-Length: 1\r\n\r\nx")
    pb.production_sends(
        b"HTTP/1.1 200 OK\r\nconnection: content-length, x-request-id, x-secret\r\n"
        b"x-secret: s\r\nx-request-id: pb-1\r\ncontent-length: 5\r\n\r\nfirst"
    )
    out = bytes(pb.client_t.sent)
    assert b"\r\ncontent-length: 5\r\n" in out and b"\r\nx-request-id: pb-1\r\n" in out
    assert b"x-secret" not in out and out.endswith(b"first")
    assert not pb.upstream().closed  # a well-framed answer: the connection is reused


def test_early_answer_closes_production_and_drops_the_rest_of_the_body(pb: Playbook) -> None:
    hidden = b"GET /admin HTTP/1.1\r\nHost: forged\r\n\r\n"
    pb.client_sends(HEAD + b"Content-Length: %d\r\n\r\nxxxx" % (4 + len(hidden)))
    pb.production_sends(b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope")
    assert pb.client_t.sent.endswith(b"nope") and pb.upstream().closed
    before = bytes(pb.upstream().sent)
    pb.ready_upstream()
    pb.client_sends(hidden + HEAD + b"Content-Length: 2\r\n\r\nok")
    assert bytes(pb.upstream(0).sent) == before  # nothing more on the closed connection
    line, headers, rest = split_request(bytes(pb.upstream(1).sent))
    assert line == b"POST /p HTTP/1.1" and rest == b"ok"
    assert b"/admin" not in pb.upstream(0).sent + pb.upstream(1).sent
    assert pb.stats.framing == {"early_answer": 1}


def test_head_deadline_spares_a_client_the_proxy_is_not_reading(pb: Playbook) -> None:
    """A pipelining client paused by the proxy (too many requests queued) is not blamed for
    the head it could not finish sending; one that stalls on its own is."""
    get = b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"
    pb.client_sends(get * 34 + b"GET /p HT")
    assert pb.client_t.paused
    late = pb.loop.time() + 3600
    assert not pb.client.head_timeout(late)
    slow = Playbook(CONFIG)
    try:
        slow.client_sends(b"GET /p HT")
        assert slow.client.head_timeout(late)
        assert slow.client_t.sent.startswith(b"HTTP/1.1 408 ") and slow.client_t.ended
        assert slow.stats.limits == {"head_timeout": 1}
    finally:
        slow.close()
