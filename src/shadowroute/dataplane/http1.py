"""HTTP/1.1 head handling for the proxy: header filtering, head building, error responses.

Pure byte functions, tested without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

HOP_BY_HOP = frozenset(
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
REQUEST_REBUILT = frozenset(
    {b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
     b"x-forwarded-host"}
)  # fmt: skip

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in Connection (they are hop-by-hop too)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


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


def client_response_head(
    head: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    dechunk: bool,
    close: bool,
    keep_alive_header: bool,
    rid_header: bytes,
    request_id: bytes,
) -> bytes:
    """Rewrite an upstream response head for the client: hop-by-hop headers removed (except
    Transfer-Encoding when the body is passed through chunked), the request id added when the
    upstream did not echo it, and our own Connection header."""
    lines = head.split(b"\r\n")
    drop = HOP_BY_HOP | connection_tokens(headers)
    out = [lines[0]]
    has_rid = False
    for line in lines[1:]:
        if not line:
            continue
        name = line.split(b":", 1)[0].strip().lower()
        if name in drop and not (name == b"transfer-encoding" and not dechunk):
            continue
        if name == rid_header:
            has_rid = True
        out.append(line)
    if not has_rid:
        out.append(rid_header + b": " + request_id)
    if close:
        out.append(b"connection: close")
    elif keep_alive_header:
        out.append(b"connection: keep-alive")
    out.append(b"\r\n")
    return b"\r\n".join(out)


class RequestHead:
    """What the proxy needs from a client's request headers, read in one pass."""

    __slots__ = (
        "chunked", "common", "control", "expect", "host", "length", "request_id", "upgrade",
        "xff",
    )  # fmt: skip

    def __init__(self) -> None:
        self.common = b""
        self.host: bytes | None = None
        self.xff: bytes | None = None
        self.request_id: bytes | None = None
        self.control: bytes | None = None
        self.chunked = False
        self.length: bytes | None = None
        self.expect = False
        self.upgrade = b""


def read_request_head(
    headers: list[tuple[bytes, bytes]], rid_header: bytes, control_header: bytes
) -> RequestHead:
    """One pass over the client's headers: the block forwarded upstream (hop-by-hop and
    rebuilt headers left out) and the values the proxy acts on."""
    out = RequestHead()
    kept: list[tuple[bytes, bytes]] = []
    tokens: frozenset[bytes] = frozenset()
    for name, value in headers:
        low = name.lower()
        if low in HOP_BY_HOP:
            if low == b"connection":
                tokens = tokens | {t.strip().lower() for t in value.split(b",")}
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
        kept.append((low, name + b": " + value + b"\r\n"))
    if tokens:
        out.common = b"".join(line for low, line in kept if low not in tokens)
    else:
        out.common = b"".join(line for _, line in kept)
    return out


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
