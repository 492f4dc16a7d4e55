"""Keep-alive rules for pooled upstream connections: how long an idle connection may be reused,
and when a request that met a closed connection may be sent again. Pure functions, tested
without sockets; ``upstream`` applies them.

Reuse. A server closes an idle keep-alive connection on its own clock (uvicorn after 5 s,
gunicorn after 2 s, Node after 5 s, nginx after 75 s). A request written on a connection the
server is closing meets that close: so a pooled connection is reused only while it has been idle
for less than the smaller of ``proxy.upstream_keepalive_s`` (default 1.5 s, below the common
servers' timeouts) and what the server announced in ``Keep-Alive: timeout=N`` less a safety
margin (``announced_limit``). ``Keep-Alive: max=0`` and ``Connection: close`` end the connection
after the answer.

Resending (``may_resend``). A request sent on a reused connection that the server closed before
any byte of the answer arrived is sent once more, on a new connection, when that cannot make the
server act twice:

- the connection had carried an earlier exchange (a fresh connection that fails is a failure of
  the server, not a keep-alive race: never resent);
- no byte of the answer arrived (not even a ``100 Continue``): once one did, the server was
  processing the request;
- the proxy holds the whole request (its body complete, at most ``REPLAY_MAX`` bytes written;
  a mirror always holds its request);
- and either nothing of it had been written to the connection (the close came first: the server
  cannot have seen it, whatever the method), or the request may be repeated by its own
  definition: an idempotent method (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or
  an ``Idempotency-Key`` header.

A POST that was written and then met a close with no answer is not resent: that is exactly what a
server that read the request, acted on it and died looks like, and the proxy cannot tell the two
apart. RFC 9112 §9.3.1 allows automatic retries only for idempotent requests; Go's net/http
resends a non-idempotent request only when nothing was written, aiohttp's client only for
idempotent methods, and nginx does not pass a POST, PATCH or LOCK to the next upstream once it was
sent (``proxy_next_upstream ... non_idempotent`` off by default). A timeout is never resent
either: the server may be working on it. The short default idle expiry is what keeps POSTs out
of the race in the first place.
"""

from __future__ import annotations

from typing import Final

DEFAULT_IDLE_S: Final = 1.5
"""The default of ``proxy.upstream_keepalive_s``: below gunicorn's 2 s and uvicorn's 5 s."""

REPLAY_MAX: Final = 64 << 10
"""Request bytes written on a reused connection kept for a resend; a longer request (a
streamed upload) is not resent."""

MARGIN_S: Final = 0.25
"""At least this much is taken off a server's announced idle timeout..."""
MARGIN_SHARE: Final = 0.1
"""...or this share of it, whichever is more: the server's clock starts when it wrote the
answer, the proxy's when it read it, and the close travels back while the proxy may write."""

_IDEMPOTENT: Final = (b"GET ", b"HEAD ", b"OPTIONS ", b"TRACE ", b"PUT ", b"DELETE ")
_KEYS: Final = (b"\r\nidempotency-key:", b"\r\nx-idempotency-key:")


def parse_keep_alive(value: bytes) -> tuple[float, int]:
    """The ``timeout`` (seconds) and ``max`` (requests) of a ``Keep-Alive`` header value;
    -1 for a parameter that is absent or unreadable.

    >>> parse_keep_alive(b"timeout=5, max=100")
    (5.0, 100)
    >>> parse_keep_alive(b"Max=0")
    (-1.0, 0)
    >>> parse_keep_alive(b'timeout="2.5"; junk, timeout=x')
    (2.5, -1)
    """
    timeout = -1.0
    most = -1
    for part in value.replace(b";", b",").split(b","):
        name, eq, raw = part.partition(b"=")
        if not eq:
            continue
        name = name.strip().lower()
        raw = raw.strip().strip(b'"')
        if name == b"timeout" and timeout < 0:
            timeout = _number(raw)
        elif name == b"max" and most < 0:
            n = _number(raw)
            most = int(n) if n >= 0 else -1
    return timeout, most


def _number(raw: bytes) -> float:
    """A non-negative decimal number, or -1."""
    if not raw or len(raw) > 12:
        return -1.0
    dot = False
    for c in raw:
        if c == 46 and not dot:  # "."
            dot = True
        elif not 48 <= c <= 57:
            return -1.0
    if raw == b".":
        return -1.0
    return float(raw)


def announced_limit(timeout_s: float, default_s: float) -> float:
    """How long a connection may stay idle and still be reused, when its server announced
    ``Keep-Alive: timeout=timeout_s`` (negative: nothing announced): the announced timeout less
    the safety margin, never more than ``default_s`` (``proxy.upstream_keepalive_s``).

    >>> announced_limit(-1.0, 1.5), announced_limit(5.0, 1.5), announced_limit(1.0, 1.5)
    (1.5, 1.5, 0.75)
    >>> announced_limit(0.2, 1.5), announced_limit(0.0, 1.5)
    (0.0, 0.0)
    """
    if timeout_s < 0:
        return default_s
    limit = timeout_s - max(MARGIN_S, timeout_s * MARGIN_SHARE)
    return min(default_s, max(limit, 0.0))


def idempotent(request: bytes) -> bool:
    r"""Whether a request (its bytes, from the request line) may be repeated by its own
    definition: an idempotent method, or an ``Idempotency-Key`` (or ``X-Idempotency-Key``)
    header in its head.

    >>> idempotent(b"GET / HTTP/1.1\r\n\r\n"), idempotent(b"POST / HTTP/1.1\r\n\r\n")
    (True, False)
    >>> idempotent(b"POST / HTTP/1.1\r\nIdempotency-Key: 7\r\n\r\n{}")
    True
    """
    if request.startswith(_IDEMPOTENT):
        return True
    end = request.find(b"\r\n\r\n")
    low = (request if end < 0 else request[: end + 2]).lower()
    return low.find(_KEYS[0]) >= 0 or low.find(_KEYS[1]) >= 0


def may_resend(
    *, reused: bool, answered: bool, whole: bool, written: bool, repeatable: bool
) -> bool:
    """Whether a request whose connection closed may be sent again on a new connection (the
    rule in this module's docstring). ``reused``: the connection had carried an earlier
    exchange; ``answered``: a byte of the answer arrived; ``whole``: the proxy holds the whole
    request; ``written``: a byte of it was written to the connection; ``repeatable``: an
    idempotent method or an Idempotency-Key (``idempotent``)."""
    if not reused or answered or not whole:
        return False
    return repeatable or not written
