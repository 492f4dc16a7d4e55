"""Request planning without I/O: from a parsed request head to a plan or a refusal.

Everything the data plane decides about a client's request before a byte of it goes anywhere
is decided here, in one pure function (``Planner.plan``): the limits on the head, the request
target and method, the request id, the route, the header block production is sent (hop-by-hop
headers out, forwarding headers and the request id in, framing rebuilt from what was parsed),
the block candidates are sent, and the sampling (monitored or not, which candidates get a
mirror and why the others do not). No socket, no clock, no counter: the caller counts what
the plan says (``Plan.skipped``, ``Plan.too_large``, ``Plan.control_ignored``), and the
request id generator is handed in, so the same head always gives the same plan.

The routes the planner matches are ``RoutePlan`` objects; the data plane's runtime routes
extend them with their pools and mirror targets, so a plan names the runtime objects too.

>>> from shadowroute.core.config import Config
>>> cfg = Config.model_validate({"routes": [{"name": "r", "path_prefix": "/p", "jsonpath": "$.p",
...     "production": {"name": "m", "url": "http://m:8000/v1"},
...     "candidates": [{"name": "c", "url": "http://c:8001", "fraction": 1.0}]}]})
>>> planner = Planner(cfg, route_plans(cfg), lambda: b"gen-1")
>>> plan = planner.plan(Head(b"POST", b"/p/x", [(b"Host", b"a")]), b"10.0.0.1", False, True)
>>> for line in plan.upstream_head.split(b"\\r\\n"):
...     print(line.decode())
POST /v1/p/x HTTP/1.1
x-forwarded-for: 10.0.0.1
x-forwarded-proto: http
x-forwarded-host: a
x-request-id: gen-1
host: m:8000
<BLANKLINE>
<BLANKLINE>
>>> [c.name for c in plan.mirror_to], plan.monitored
(['c'], True)
>>> refusal = planner.plan(Head(b"GET", b"http://evil/p", []), b"10.0.0.1", False, True)
>>> refusal.status, refusal.message
(400, 'only origin-form request targets (/path) are accepted')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

from shadowroute.core import request_id as rid
from shadowroute.core.config import Config, Route
from shadowroute.core.sampling import sample_point
from shadowroute.dataplane import http1
from shadowroute.dataplane.control import ControlGuard

__all__ = [
    "CandidatePlan",
    "Head",
    "Plan",
    "Planner",
    "Refusal",
    "RoutePlan",
    "UpstreamTarget",
    "route_plans",
    "static_headers",
]

_HEADER_LINE_EXTRA: Final = 4  # ": " and CRLF around a header's name and value


class Refusal(Exception):
    """A request the proxy answers itself, with ``status`` and a plain-words ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class UpstreamTarget:
    """Where an upstream URL points: what a connection dials and what a request names.

    >>> t = UpstreamTarget("http://Model:8080/v2/")
    >>> t.host, t.port, t.host_header, t.base_path
    ('model', 8080, 'model:8080', '/v2')
    >>> UpstreamTarget("https://m/").host_header
    'm'
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if https else 80)
        default_port = self.port == (443 if https else 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        self.base_path = parts.path.rstrip("/")


def static_headers(host_header: str, headers: dict[str, str]) -> bytes:
    """The header lines the proxy adds to every request to one upstream: its Host, then the
    configured extra headers."""
    extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    return b"host: " + host_header.encode() + b"\r\n" + extra


class CandidatePlan:
    """What planning needs of a candidate: its name and the fraction of requests it gets."""

    def __init__(self, name: str, fraction: float) -> None:
        self.name = name
        self.fraction = fraction


class RoutePlan:
    """What planning needs of a route: how it matches, what production is sent, which
    methods are recorded, how requests are sampled, and its candidates."""

    def __init__(
        self, cfg: Route, prod_base: bytes, prod_static: bytes, candidates: list[CandidatePlan]
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.prefix = cfg.path_prefix.encode()
        self.host = cfg.host.lower().encode() if cfg.host else None
        self.methods = frozenset(m.upper().encode() for m in cfg.mirror_methods)
        self.monitor_fraction = cfg.monitor_fraction
        # A judged route's records carry the request: the judge reads the prompt.
        self.needs_input = cfg.capture.input or bool(
            cfg.drift.fields
            or cfg.drift.categorical
            or cfg.drift.auto
            or (cfg.drift.embedding is not None and cfg.drift.embedding.fields)
            or cfg.judge
        )
        self.prod_base = prod_base
        self.prod_static = prod_static
        self.candidates = candidates

    def matches(self, host: bytes | None, path: bytes) -> bool:
        if self.host is not None and (host is None or host.split(b":", 1)[0].lower() != self.host):
            return False
        return path.startswith(self.prefix)


def route_plans(config: Config) -> list[RoutePlan]:
    """The configured routes, for planning alone (no pools): what a test or a tool plans with."""
    out = []
    for r in config.routes:
        prod = UpstreamTarget(r.production.url)
        headers = {**r.production.headers, **r.production.secret_header_values()}
        out.append(
            RoutePlan(
                r,
                prod.base_path.encode(),
                static_headers(prod.host_header, headers),
                [CandidatePlan(c.name, c.fraction) for c in r.candidates],
            )
        )
    return out


class Head:
    """A request head as the parser read it."""

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        upgrade: bool = False,
        keep_alive: bool = True,
        http10: bool = False,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.header_size = 0
        """The header lines' size as sent: names, values and 4 bytes each (``: `` and CRLF);
        the parser's caller adds it up as lines arrive (0: computed by ``plan``)."""
        self.upgrade = upgrade
        self.keep_alive = keep_alive
        self.http10 = http10


class Plan:
    """What the proxy does with one request."""

    # Immutable defaults live on the class: a plan sets only what differs.
    mirror_private = b""
    chunked = False
    expect_continue = False
    length: int | None = None
    monitored = False
    capture = False
    """Whether the body is kept as it streams: for the mirrors, or for a monitored route that
    records input."""
    skipped = ""
    """The mirror outcome counted for each of the route's candidates not in ``mirror_to``
    (``sampled_out``, ``disabled``, ``method_skipped``; "" when none is counted)."""
    too_large = False
    """The body is over the capture limit: the chosen candidates are counted as ``too_large``
    and recorded as not mirrored."""
    control_ignored = False
    """The client sent the mirror control header without the right to."""

    def __init__(self, route: RoutePlan, head: Head, url: bytes, request_id: bytes) -> None:
        self.route = route
        self.method = head.method
        self.url = url
        self.request_id = request_id
        self.keep_alive = head.keep_alive and not head.upgrade
        self.http10 = head.http10
        self.upgrade = head.upgrade
        self.upstream_head = b""
        self.mirror_common = b""
        self.mirror_to: list[CandidatePlan] = []


class Planner:
    """The configuration's part of planning, read once; ``plan`` is called per request."""

    def __init__(
        self, config: Config, routes: Sequence[RoutePlan], new_id: Callable[[], bytes]
    ) -> None:
        pcfg, mcfg = config.proxy, config.mirror
        self.rid_header = pcfg.request_id_header.lower().encode()
        self.rid_prefix = self.rid_header + b": "
        self.control_header = mcfg.control_header.lower().encode()
        # Client headers that are not forwarded as they came: the router's own marker is
        # dropped, credentials go to production only.
        self.private = frozenset(h.lower().encode() for h in mcfg.private_headers)
        self.special = self.private | {mcfg.marker_header.lower().encode()}
        self.control_guard = ControlGuard(
            mcfg.control_from, config.admin.token.get_secret_value() if config.admin.token else None
        )
        self.proto_line = b"\r\nx-forwarded-proto: " + pcfg.forwarded_proto.encode() + b"\r\n"
        self.refuse_upgrades = pcfg.upgrade == "refuse"
        self.max_headers = pcfg.max_headers
        self.max_header_bytes = pcfg.max_header_bytes
        self.capture_limit = mcfg.capture_limit_bytes
        # The most specific first: the longest prefix, then (at equal prefixes) a route bound
        # to a host before one that is not; the first match wins.
        self.routes = sorted(routes, key=lambda r: (-len(r.prefix), r.host is None))
        self.new_id = new_id

    def route_for(self, host: bytes | None, path: bytes) -> RoutePlan | None:
        for r in self.routes:
            if r.matches(host, path):
                return r
        return None

    def plan(self, head: Head, peer: bytes, control_ok: bool, mirroring: bool) -> Plan | Refusal:
        """The plan for a request whose head is ``head``, from a client at ``peer`` (trusted
        with the control header when ``control_ok``), while mirroring is on or off; or the
        refusal the client gets."""
        headers = head.headers
        if len(headers) > self.max_headers:
            return Refusal(431, "too many request headers")
        size = head.header_size
        if not size:
            size = sum(len(n) + len(v) + _HEADER_LINE_EXTRA for n, v in headers)
        if size > self.max_header_bytes:
            return Refusal(431, "request head too large")
        method = head.method
        url = head.url
        if method == b"CONNECT":
            return Refusal(405, "CONNECT is not supported")
        upgrade = head.upgrade
        if upgrade and self.refuse_upgrades:
            return Refusal(501, "connection upgrades are not supported by this proxy")
        if not url.startswith(b"/"):
            if url == b"*" and method == b"OPTIONS":
                url = b"/"
            else:
                return Refusal(400, "only origin-form request targets (/path) are accepted")
        rh = http1.read_request_head(
            headers, self.rid_header, self.control_header, self.special, self.private
        )
        length: int | None = None
        if rh.length is not None:
            length = http1.content_length(rh.length)
            if length is None:
                return Refusal(400, "invalid content-length")
        request_id = rh.request_id
        if request_id is None:
            request_id = self.new_id()
        elif not rid.is_valid(request_id):
            return Refusal(400, f"invalid {self.rid_header.decode()} header")
        host = rh.host
        route = self.route_for(host, url.split(b"?", 1)[0])
        if route is None:
            return Refusal(404, "no route matches this request")
        plan = Plan(route, head, url, request_id)
        plan.chunked = rh.chunked
        plan.expect_continue = rh.expect
        plan.length = length
        control = rh.control
        if control is not None and not control_ok:
            control = self.control_guard.check(control)
            if control is None:
                plan.control_ignored = True
        # The forwarding headers and the request id, after the client's own lines: one join.
        common = rh.common
        if upgrade:
            common += rh.upgrade + b"connection: upgrade\r\n"
        xff = rh.xff
        private = rh.private
        parts = [common, private, b"x-forwarded-for: "]
        if xff:
            parts.append(xff)
            parts.append(b", ")
        parts.append(peer)
        parts.append(self.proto_line)
        if host is not None:
            parts.append(b"x-forwarded-host: ")
            parts.append(host)
            parts.append(b"\r\n")
        parts.append(self.rid_prefix)
        parts.append(request_id)
        parts.append(b"\r\n")
        common = b"".join(parts)
        # Framing is rebuilt from what was parsed, never copied from the client's lines.
        if rh.chunked:
            framing = b"transfer-encoding: chunked\r\n"
        elif length is not None:
            framing = b"content-length: %d\r\n" % length
        else:
            framing = b""
        plan.upstream_head = b"".join(
            (method, b" ", route.prod_base, url, b" HTTP/1.1\r\n", common, framing,
             route.prod_static, b"\r\n")
        )  # fmt: skip
        if method not in route.methods or upgrade:
            if route.candidates:
                plan.skipped = "method_skipped"
            plan.mirror_common = common
            return plan
        self._sample(plan, route, control, length, mirroring)
        if private and plan.mirror_to:
            # Candidates get the client's credentials only if they forward them.
            parts[1] = b""
            plan.mirror_common = b"".join(parts)
            plan.mirror_private = private
        else:
            plan.mirror_common = common
        return plan

    def _sample(
        self, plan: Plan, route: RoutePlan, control: bytes | None, length: int | None,
        mirroring: bool,
    ) -> None:  # fmt: skip
        """Whether the request is monitored and which candidates get a mirror."""
        f = route.monitor_fraction
        candidates = route.candidates
        u = sample_point(plan.request_id) if candidates or 0.0 < f < 1.0 else 0.0
        plan.monitored = monitored = f >= 1.0 or u < f
        too_large = length is not None and length > self.capture_limit
        if monitored and route.needs_input and not too_large:
            plan.capture = True
        if not candidates or control == b"skip":
            return
        if not mirroring:
            plan.skipped = "disabled"
            return
        if control == b"force" or _all_below(u, candidates):
            chosen = candidates  # the route's own list, shared: a plan's list is never changed
        else:
            chosen = [c for c in candidates if u < c.fraction]
            plan.skipped = "sampled_out"
            if not chosen:
                return
        plan.mirror_to = chosen
        if too_large:
            plan.too_large = True
        else:
            plan.capture = True


def _all_below(u: float, candidates: list[CandidatePlan]) -> bool:
    """Whether every candidate's fraction takes a request at sampling point ``u``."""
    return all(u < c.fraction for c in candidates)
