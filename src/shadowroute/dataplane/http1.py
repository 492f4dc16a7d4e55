"""HTTP/1.1 head handling for the proxy: header filtering, head building, error responses.

Pure byte functions, tested without sockets.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the proxy sets itself (or must not forward) on top of hop-by-hop ones.
REQUEST_REBUILT: Final = frozenset(
    {b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
     b"x-forwarded-host"}
)  # fmt: skip

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(
    status: int, message: str, rid_header: bytes, request_id: bytes | None, *, close: bool
) -> bytes:
    body = orjson.dumps(
        {
            "error": message,
            "status": status,
            "request_id": request_id.decode() if request_id else None,
        }
    )
    head = [
        b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Error")),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
    ]
    if request_id:
        head.append(rid_header + b": " + request_id)
    if close:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


# Header-line marks for searching a lower-cased raw head (``head.lower()``): a header line
# starts right after a CRLF, and its name is followed directly by the colon. The hot path
# searches with ``bytes.find``, not ``in``: CPython's ``bytes.__contains__`` first tries the
# needle as an integer and pays for a formatted TypeError (~7x the cost of the search).
CONTENT_LENGTH: Final = b"\r\ncontent-length:"
TRANSFER_ENCODING: Final = b"\r\ntransfer-encoding:"
CONTENT_ENCODING: Final = b"\r\ncontent-encoding:"
CONTENT_TYPE: Final = b"\r\ncontent-type:"
_HOP_LINE: Final = re.compile(
    rb"\r\n(" + b"|".join(re.escape(n) for n in sorted(HOP_BY_HOP)) + rb"):"
)
_CONNECTION_OPTIONS = frozenset({b"", b"keep-alive", b"close"})
# Headers an upstream's Connection header may name but never takes away: the framing of the
# body the client is about to read (the proxy decides it, and dropping it would leave the body
# unframed on a keep-alive connection). The request id is kept the same way, by its mark.
_NEVER_HOP = frozenset({b"content-length", b"transfer-encoding"})
MAX_CONTENT_LENGTH: Final = (1 << 63) - 1
"""The largest Content-Length accepted from a client (what a signed 64-bit length holds)."""


def header_mark(name: bytes) -> bytes:
    """The mark that finds header ``name`` in a lower-cased raw head."""
    return b"\r\n" + name.lower() + b":"


def header_value(head: bytes, low: bytes, mark: bytes) -> bytes | None:
    r"""The value of the header found by ``mark`` in a raw head (``low`` is
    ``head.lower()``), repeated occurrences joined with ``", "``; None when absent.

    >>> h = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nVary: x\r\nvary:  y \r\n\r\n"
    >>> header_value(h, h.lower(), header_mark(b"Vary")), header_value(h, h.lower(), b"\r\nno:")
    (b'x, y', None)
    """
    i = low.find(mark)
    if i < 0:
        return None
    start = i + len(mark)
    end = low.find(b"\r\n", start)
    if low.find(mark, end) < 0:
        return _trimmed(head, start, end)
    values = []
    while i >= 0:
        start = i + len(mark)
        end = low.find(b"\r\n", start)
        values.append(_trimmed(head, start, end))
        i = low.find(mark, end)
    return values[0] if len(values) == 1 else b", ".join(values)


def _trimmed(data: bytes, start: int, end: int) -> bytes:
    """``data[start:end]`` without the spaces and tabs around it (``.strip(b" \\t")`` with
    one slice and no method call)."""
    while start < end and (data[start] == 32 or data[start] == 9):
        start += 1
    while end > start and (data[end - 1] == 32 or data[end - 1] == 9):
        end -= 1
    return data[start:end]


def client_response_head(
    head: bytes,
    low: bytes,
    *,
    dechunk: bool,
    close: bool,
    keep_alive_header: bool,
    rid_mark: bytes,
    rid_prefix: bytes,
    request_id: bytes,
) -> bytes:
    r"""Rewrite an upstream response head for the client: hop-by-hop headers removed (and
    those named in Connection, but never Content-Length, Transfer-Encoding or the request id:
    the body's framing is not the upstream's to take away), except Transfer-Encoding when the
    body is passed through chunked; the request id header line (``rid_prefix`` +
    ``request_id``) added when the upstream did not echo it (found by ``rid_mark``); and our
    own Connection header. ``low`` is ``head.lower()``, and ``head`` ends with the blank line.

    >>> h = b"HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n"
    >>> client_response_head(h, h.lower(), dechunk=False, close=False, keep_alive_header=False,
    ...                      rid_mark=b"\r\nx-request-id:", rid_prefix=b"x-request-id: ",
    ...                      request_id=b"r1")
    b'HTTP/1.1 200 OK\r\nServer: s\r\nx-request-id: r1\r\n\r\n'
    """
    cuts: list[tuple[int, int]] = []
    options: set[bytes] | None = None
    m = _HOP_LINE.search(low)
    while m is not None:
        name_at, value_at = m.span(1)  # the name (one call); the cut starts with it
        name = low[name_at:value_at]
        value_at += 1  # past the colon
        end = low.find(b"\r\n", value_at)
        if name != b"transfer-encoding" or dechunk:
            if name == b"connection":
                value = _trimmed(low, value_at, end)
                if value != b"keep-alive" and value != b"close":  # names other headers
                    named = {t.strip(b" \t") for t in value.split(b",")} - _CONNECTION_OPTIONS
                    options = named if options is None else options | named
            cuts.append((name_at, end + 2))
        m = _HOP_LINE.search(low, end)
    if options:
        for option in options:  # headers the upstream named hop-by-hop in Connection
            mark = b"\r\n" + option + b":"
            if option in _NEVER_HOP or mark == rid_mark:
                continue  # framing and the request id are never the upstream's to drop
            i = low.find(mark)
            while i >= 0:
                end = low.find(b"\r\n", i + len(mark))
                cuts.append((i + 2, end + 2))
                i = low.find(mark, end)
        cuts.sort()
    pieces: list[bytes] = []
    at = 0
    for start, end in cuts:
        if start >= at:
            pieces.append(head[at:start])
            at = end
    pieces.append(head[at:-2])
    if low.find(rid_mark) < 0:
        pieces.append(rid_prefix)
        pieces.append(request_id)
        pieces.append(b"\r\n")
    if close:
        pieces.append(b"connection: close\r\n")
    elif keep_alive_header:
        pieces.append(b"connection: keep-alive\r\n")
    pieces.append(b"\r\n")
    return b"".join(pieces)


class RequestHead:
    """What the proxy needs from a client's request headers, read in one pass."""

    __slots__ = (
        "chunked", "common", "control", "expect", "host", "length", "private", "request_id",
        "upgrade", "xff",
    )  # fmt: skip

    def __init__(self) -> None:
        self.common = b""
        self.private = b""
        self.host: bytes | None = None
        self.xff: bytes | None = None
        self.request_id: bytes | None = None
        self.control: bytes | None = None
        self.chunked = False
        self.length: bytes | None = None
        self.expect = False
        self.upgrade = b""


def read_request_head(
    headers: list[tuple[bytes, bytes]], rid_header: bytes, control_header: bytes,
    special: frozenset[bytes] = frozenset(), private: frozenset[bytes] = frozenset(),
) -> RequestHead:  # fmt: skip
    r"""One pass over the client's headers: the block forwarded upstream (hop-by-hop and
    rebuilt headers left out) and the values the proxy acts on.

    Names in ``special`` are not in ``common``: those also in ``private`` (client
    credentials) go to ``private``, for production only; the others (client copies of the
    router's own headers) are dropped.

    >>> h = read_request_head(
    ...     [(b"Host", b"a"), (b"Connection", b"X-A"), (b"X-A", b"1"), (b"Accept", b"*/*"),
    ...      (b"X-Request-Id", b"r1")], b"x-request-id", b"x-shadow")
    >>> h.common, h.host, h.request_id
    (b'Accept: */*\r\n', b'a', b'r1')
    """
    out = RequestHead()
    # The forwarded lines as (name, ": ", value, CRLF) pieces, joined once; the lower-cased
    # names beside them, for the rare head whose Connection header names more hop-by-hop ones.
    pieces: list[bytes] = []
    kept: list[bytes] = []
    tokens: set[bytes] | None = None
    for name, value in headers:
        low = name.lower()
        if low in HOP_BY_HOP:
            if low == b"connection":
                named = {t.strip().lower() for t in value.split(b",")}
                tokens = named if tokens is None else tokens | named
            elif low == b"transfer-encoding":
                out.chunked = True
            elif low == b"upgrade":
                out.upgrade += name + b": " + value + b"\r\n"
            continue
        if low in REQUEST_REBUILT:
            if low == b"host":
                out.host = value
            elif low == b"content-length":
                out.length = value
            elif low == b"x-forwarded-for":
                out.xff = value if out.xff is None else out.xff + b", " + value
            elif low == b"expect":
                out.expect = value.strip().lower() == b"100-continue"
            continue
        if low == rid_header:
            out.request_id = value
            continue
        if low == control_header:
            out.control = value.strip().lower()
            continue
        if low in special:
            if low in private:
                out.private += name + b": " + value + b"\r\n"
            continue
        kept.append(low)
        pieces.append(name)
        pieces.append(b": ")
        pieces.append(value)
        pieces.append(b"\r\n")
    if tokens is not None and not tokens.isdisjoint(kept):
        out.common = b"".join(
            [b"".join(pieces[4 * i : 4 * i + 4]) for i, low in enumerate(kept) if low not in tokens]
        )
    else:
        out.common = b"".join(pieces)
    return out


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


def content_length(value: bytes) -> int | None:
    """A client's Content-Length value as a number, or None when it is not plain ASCII digits
    (spaces and tabs around them allowed) or exceeds ``MAX_CONTENT_LENGTH`` (llhttp accepts up
    to 2^64 - 1; no server behind us should be handed a length it may read as negative).

    >>> content_length(b"12"), content_length(b"9223372036854775808"), content_length(b"1_0")
    (12, None, None)
    >>> content_length(b" 7\t"), content_length(b"+7"), content_length(b""), content_length(b"7 7")
    (7, None, None, None)
    """
    n = _length(value, 0, False)
    return n if n >= 0 else None


def length_at(head: bytes, start: int) -> int:
    r"""The Content-Length value that starts at ``start`` in a raw head and ends at its line's
    CR (``start`` is just past the header's colon): the number, or -1 when it is not plain
    ASCII digits (spaces and tabs around them allowed), is longer than 19 digits or exceeds
    ``MAX_CONTENT_LENGTH``. One pass over the value's bytes, no copy.

    >>> h = b"HTTP/1.1 200 OK\r\nContent-Length:  186 \r\n\r\n"
    >>> at = h.lower().find(CONTENT_LENGTH) + len(CONTENT_LENGTH)
    >>> length_at(h, at), length_at(b"x:1_0\r\n", 2), length_at(b"x: 5", 2), length_at(b"x:\r\n", 2)
    (186, -1, -1, -1)
    """
    return _length(head, start, True)


def _length(data: bytes, i: int, to_cr: bool) -> int:
    """The digits from ``i`` (optional spaces and tabs around them) up to the end of ``data``,
    or up to a CR when ``to_cr``: their value, or -1 (not digits, more than 19 of them, over
    ``MAX_CONTENT_LENGTH``, or no CR when one is wanted)."""
    end = len(data)
    while i < end and (data[i] == 32 or data[i] == 9):
        i += 1
    start = i
    n = 0
    while i < end:
        c = data[i]
        if c < 48 or c > 57:
            break
        n = n * 10 + (c - 48)
        i += 1
        if i - start > 19:
            return -1
    if i == start:
        return -1
    while i < end and (data[i] == 32 or data[i] == 9):
        i += 1
    if to_cr:
        if i >= end or data[i] != 13:
            return -1
    elif i != end:
        return -1
    return n if n <= MAX_CONTENT_LENGTH else -1


MAX_CHUNK_LINE: Final = 16 << 10


class ChunkedEnd:
    r"""Follows a chunked body's framing read by read, to find the exact offset where it ends
    (llhttp says that a message ended, not where). Syntax is llhttp's to check: this only
    counts.

    >>> c = ChunkedEnd()
    >>> c.feed(b"3\r\nab"), c.feed(b"c\r\n0\r\nx-t: 1\r\n\r\nHTTP/1.1 200 OK\r\n")
    (-1, 16)
    """

    __slots__ = ("left", "line", "state")

    def __init__(self) -> None:
        self.state = 0  # 0: a size line, 1: chunk data and its CRLF, 2: trailer lines
        self.left = 0  # state 1: bytes of the chunk (and its CRLF) still to come
        self.line = b""  # an incomplete size or trailer line

    def feed(self, data: bytes) -> int:
        """-1 while the body goes on, else the offset in ``data`` just past its end. Raises
        ValueError on a size line that is not hexadecimal or is too long."""
        pos = 0
        n = len(data)
        while pos < n:
            if self.state == 1:
                take = min(self.left, n - pos)
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = 0
                continue
            lf = data.find(b"\n", pos)
            if lf < 0:
                self.line += data[pos:]
                if len(self.line) > MAX_CHUNK_LINE:
                    raise ValueError("chunk line too long")
                return -1
            line = self.line + data[pos:lf] if self.line else data[pos:lf]
            self.line = b""
            pos = lf + 1
            if self.state == 2:
                if not line.rstrip(b"\r"):
                    return pos
                continue
            size = int(line.split(b";", 1)[0].strip(b" \t\r"), 16)
            if size == 0:
                self.state = 2
            else:
                self.state = 1
                self.left = size + 2
        return -1
