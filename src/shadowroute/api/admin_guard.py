"""Who may talk to the admin plane, checked before any handler runs.

- **Host.** The ``Host`` header must be an IP address, ``localhost``, ``admin.host`` or one of
  ``admin.allowed_hosts`` (``*.suffix`` patterns, ``*`` for any): a page whose own domain
  was re-pointed at this address (DNS rebinding) is refused with 421.
- **Origin.** A write (any method but GET, HEAD, OPTIONS) whose ``Origin`` is neither the
  admin plane's own nor in ``admin.allowed_origins`` is refused with 403: a web page an
  operator opens cannot post labels or switch mirroring.
- **Read token.** With ``admin.read_token`` set, reads need it (or ``admin.token``), except
  ``/healthz``, ``/readyz`` and ``/metrics``.

Refusals are counted by reason (``shadowroute_admin_refused_total{reason}``); label records
refused at intake in ``shadowroute_labels_refused_total{reason}``.

>>> g = AdminGuard.of(Admin(host="0.0.0.0", token="t", allowed_hosts=["*.svc", "sr"]))
>>> [g.host_allowed(h) for h in ("10.0.0.7:9090", "[::1]:9090", "sr", "a.ns.svc", "evil.com")]
[True, True, True, True, False]
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson
from aiohttp import typedefs, web
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from shadowroute.core.config import Admin
from shadowroute.core.families import Family, describe

__all__ = ["AdminGuard", "GuardCollector"]


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REASONS = ("host", "origin", "read_token")


def _host_name(value: str) -> str:
    """The host of a ``Host`` header value, without the port, lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    return name if sep and port.isdigit() else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class AdminGuard:
    hosts: frozenset[str]
    suffixes: tuple[str, ...]
    any_host: bool
    origins: frozenset[str]
    read_tokens: tuple[bytes, ...]
    refused: Counter[str] = field(default_factory=Counter)
    labels_refused: Counter[str] = field(default_factory=Counter)
    """Label records refused at intake, by reason (``POST /v1/labels``)."""

    @classmethod
    def of(cls, admin: Admin) -> AdminGuard:
        names = [h.strip().lower() for h in admin.allowed_hosts]
        read: tuple[bytes, ...] = ()
        if admin.read_token is not None:
            tokens = [admin.read_token] + ([admin.token] if admin.token else [])
            read = tuple(b"Bearer " + t.get_secret_value().encode() for t in tokens)
        return cls(
            hosts=frozenset({"localhost", admin.host.lower(), *names}),
            suffixes=tuple(n[1:] for n in names if n.startswith("*.")),
            any_host="*" in names,
            origins=frozenset(o.rstrip("/").lower() for o in admin.allowed_origins),
            read_tokens=read,
        )

    def host_allowed(self, host_header: str) -> bool:
        if self.any_host:
            return True
        name = _host_name(host_header)
        return name in self.hosts or _is_ip(name) or name.endswith(self.suffixes)

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return True
        netloc = urlsplit(origin).netloc if "://" in origin else ""
        return bool(netloc) and host_header is not None and netloc == host_header.strip().lower()

    def read_allowed(self, authorization: str) -> bool:
        got = authorization.encode()
        return any(hmac.compare_digest(got, t) for t in self.read_tokens)

    def refusal(self, request: web.Request) -> web.Response | None:
        """None when the request may go on; otherwise the answer (and it is counted)."""
        host = request.headers.get("Host")
        if host is not None and not self.host_allowed(host):
            return self._refuse(
                "host", 421, f"unknown Host {host!r}: add it to admin.allowed_hosts"
            )
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and not self.origin_allowed(origin, host):
                return self._refuse(
                    "origin",
                    403,
                    f"writes from Origin {origin!r} are refused (admin.allowed_origins)",
                )
        elif (
            self.read_tokens
            and request.path not in OPEN_PATHS
            and not self.read_allowed(request.headers.get("Authorization", ""))
        ):
            resp = self._refuse("read_token", 401, "missing or wrong bearer token")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="shadowroute"'
            return resp
        return None

    def _refuse(self, reason: str, status: int, message: str) -> web.Response:
        self.refused[reason] += 1
        return web.Response(
            body=orjson.dumps({"error": message}), status=status, content_type="application/json"
        )

    def middleware(self) -> typedefs.Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: typedefs.Handler) -> web.StreamResponse:
            denied = self.refusal(request)
            if denied is not None:
                return denied
            return await handler(request)

        return guard


_ADMIN_REFUSED = Family(
    "shadowroute_admin_refused",
    "Admin-plane requests refused before any handler: unknown Host (DNS rebinding), "
    "foreign Origin on a write, missing read token.",
    "counter",
    ("reason",),
)
_LABELS_REFUSED = Family(
    "shadowroute_labels_refused",
    "Label records refused by POST /v1/labels, by reason: a rule (ts_in_future, "
    "ts_too_old, label_too_large), backlog_full, a bad line (bad_record) or a whole "
    "batch of the wrong content type (content_type).",
    "counter",
    ("reason",),
)


class GuardCollector(Collector):
    """``shadowroute_admin_refused_total{reason}``: requests the admin guard refused, and
    ``shadowroute_labels_refused_total{reason}``: label records refused."""

    FAMILIES = (_ADMIN_REFUSED, _LABELS_REFUSED)

    def __init__(self, guard: AdminGuard) -> None:
        self._guard = guard

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        fam = _ADMIN_REFUSED.counter()
        for reason in REASONS:
            fam.add_metric([reason], self._guard.refused[reason])
        yield fam
        labels = _LABELS_REFUSED.counter()
        for reason, n in sorted(self._guard.labels_refused.items()):
            labels.add_metric([reason], n)
        yield labels
