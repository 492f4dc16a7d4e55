"""The byte-level framing helpers of the data plane, without sockets."""

from __future__ import annotations

import pytest

from playbook import Recording
from shadowroute.dataplane import http1

BODY = b"5\r\nhello\r\n1a;ext=1\r\n" + b"z" * 26 + b"\r\n0\r\nx-trailer: 1\r\n\r\n"
AFTER = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED"


@pytest.mark.parametrize("extra", [b"", AFTER, b"\r\n"])
def test_chunked_end_is_found_wherever_the_reads_split(extra: bytes) -> None:
    data = BODY + extra
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1, 7):
            c = http1.ChunkedEnd()
            ends = []
            base = 0
            for part in (data[:i], data[i:j], data[j:]):
                if ends:
                    break
                end = c.feed(part)
                if end >= 0:
                    ends.append(base + end)
                base += len(part)
            assert ends == [len(BODY)], (i, j)


def test_chunked_end_refuses_an_endless_size_line() -> None:
    c = http1.ChunkedEnd()
    with pytest.raises(ValueError):
        c.feed(b"f" * (http1.MAX_CHUNK_LINE + 1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"0", 0),
        (b" 42 ", 42),
        (b"9223372036854775807", (1 << 63) - 1),
        (b"9223372036854775808", None),
        (b"18446744073709551615", None),
        (b"99999999999999999999999", None),
        (b"-1", None),
        (b"+1", None),
        (b"1_0", None),
        (b"0x10", None),
        (b"", None),
        (b"1, 1", None),
    ],
)
def test_content_length_values(value: bytes, expected: int | None) -> None:
    assert http1.content_length(value) == expected


def _client_head(head: bytes, *, dechunk: bool = False) -> bytes:
    return http1.client_response_head(
        head,
        head.lower(),
        dechunk=dechunk,
        close=False,
        keep_alive_header=False,
        rid_mark=b"\r\nx-request-id:",
        rid_prefix=b"x-request-id: ",
        request_id=b"r1",
    )


def test_connection_cannot_name_framing_or_the_request_id_away() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Request-Id, x-other\r\n"
        b"Content-Length: 5\r\nX-Request-Id: up-1\r\nX-Other: 1\r\nServer: s\r\n\r\n"
    )
    assert _client_head(head) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Request-Id: up-1\r\nServer: s\r\n\r\n"
    )


def test_connection_naming_transfer_encoding_keeps_a_chunked_body_framed() -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert b"Transfer-Encoding: chunked\r\n" in _client_head(head)
    # De-chunked for an HTTP/1.0 client: the header goes (the proxy frames by closing).
    assert b"Transfer-Encoding" not in _client_head(head, dechunk=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"0", 0),
        (b" 42 ", 42),
        (b"\t7\t", 7),
        (b"9223372036854775807", (1 << 63) - 1),
        (b"9223372036854775808", -1),
        (b"99999999999999999999999", -1),
        (b"-1", -1),
        (b"+1", -1),
        (b"1_0", -1),
        (b"0x10", -1),
        (b"", -1),
        (b"1, 1", -1),
    ],
)
def test_length_at_reads_a_value_up_to_its_line_end(value: bytes, expected: int) -> None:
    head = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length:" + value + b"\r\nX-A: 1\r\n\r\n"
    at = head.lower().find(http1.CONTENT_LENGTH) + len(http1.CONTENT_LENGTH)
    assert http1.length_at(head, at) == expected
    assert http1.length_at(head[: at + len(value)], at) == -1  # no line end: not a value


@pytest.mark.parametrize(
    ("response", "outcome"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "complete"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "bad"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\nhello!", "bad"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "bad"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", "bad"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n", "extra"),
    ],
)
def test_upstream_framing_by_content_length(response: bytes, outcome: str) -> None:
    """What llhttp refuses never reaches the length read by hand; a length-framed response
    ends exactly at its length, and bytes after it condemn the connection."""
    import asyncio

    from shadowroute.core.config import parse_config
    from shadowroute.dataplane.mirror import MirrorExchange
    from shadowroute.dataplane.proxy import Proxy
    from shadowroute.dataplane.recorder import Recorder
    from shadowroute.dataplane.stats import DataPlaneStats
    from shadowroute.dataplane.upstream import Outcome, UpstreamConnection
    from shadowroute.stream.queue import RecordQueue

    route = {
        "name": "r",
        "jsonpath": "$.y",
        "production": {"name": "p", "url": "http://127.0.0.1:9"},
        "candidates": [{"name": "c", "url": "http://127.0.0.1:10"}],
    }
    config = parse_config({"routes": [route]}, environ={})
    loop = asyncio.new_event_loop()
    try:
        stats = DataPlaneStats()
        proxy = Proxy(config, loop, Recorder(loop, RecordQueue(1 << 20), stats))
        target = proxy.routes[0].candidates[0].target
        conn = UpstreamConnection(target.pool)
        transport = Recording()
        conn.connection_made(transport)
        outcomes: list[Outcome] = []
        ex = MirrorExchange(target, b"", outcomes.append)
        conn.start(ex, 5.0)
        conn.data_received(response)
        assert len(outcomes) == 1
        if outcome == "bad":
            assert outcomes[0].error == "bad_response"
            assert transport.closed
        else:
            assert outcomes[0].error is None
            assert outcomes[0].body == b"hello"
            assert transport.closed == (outcome == "extra")
            assert stats.framing["extra_bytes"] == (1 if outcome == "extra" else 0)
    finally:
        loop.close()
